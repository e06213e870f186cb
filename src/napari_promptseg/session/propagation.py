"""A propagation run of the session (numpy only): its seeds from the prompted planes, and how its
planes merge into the session's propagated objects. The algorithm is
:func:`napari_promptseg.propagate_iter`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..cancel import CancelToken
from .planes import Plane, masks_of

__all__ = ["PropagationRun", "seeds_and_absent"]


def seeds_and_absent(previews: Mapping[int, np.ndarray]) -> tuple[dict, dict]:
    """From the previews of the prompted planes along the axis (``{k: (H, W) ids}``): the seeds
    ``{k: {object id: mask}}`` and, per object, the prompted planes it is absent from (a prompted
    plane is the user's: an object not there stops before it)."""
    seeds = {k: m for k, plane in previews.items() if (m := masks_of(plane))}
    objects = {o for objs in seeds.values() for o in objs}
    absent = {o: [k for k in previews if o not in seeds.get(k, {})] for o in objects}
    return seeds, absent


@dataclass(eq=False)
class PropagationRun:
    """One run along ``axis`` through the line of planes that contains ``here``."""

    axis: int
    here: Plane
    n: int
    prompted: set[int]
    token: CancelToken = field(default_factory=CancelToken)
    visited: set[int] = field(default_factory=set)  # planes this run wrote (or must keep)
    done: int = 0
    total: int = 0

    def plane_of(self, k: int) -> Plane:
        idx = list(self.here)
        idx[self.axis] = k
        return tuple(idx)

    def merge(self, k: int, masks: Mapping[int, np.ndarray], before: np.ndarray | None, shape,
              blocked: np.ndarray | None) -> np.ndarray:
        """Plane ``k``'s propagated objects after this step: the first visit of the run replaces
        what an earlier run left, a second one (the other direction) adds to this run's objects;
        ``blocked`` pixels (committed objects) stay empty."""
        plane = (np.array(before, np.uint32) if (k in self.visited and before is not None)
                 else np.zeros(shape, np.uint32))
        self.visited.add(k)
        for oid, m in sorted(masks.items()):
            plane[np.asarray(m, bool) & (plane == 0)] = oid
        if blocked is not None:
            plane[blocked] = 0
        return plane
