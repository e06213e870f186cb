"""Propagation runs of the session (numpy only): seeds from the prompted planes, the run as a job
with steps, and how its planes merge into the propagated objects. The algorithm is
:func:`napari_promptseg.propagate_iter`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from napari_promptseg.core.cancel import CancelToken
from napari_promptseg.embed.entry import explain_error
from napari_promptseg.propagation.api import propagate_iter
from napari_promptseg.session.jobs import Job
from napari_promptseg.session.planes import Plane, PlaneStore, masks_of

__all__ = ["PropagationRun", "Propagator", "seeds_and_absent", "check_scale", "plane_spacing"]


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
    token: CancelToken = field(default_factory=CancelToken)
    visited: set[int] = field(default_factory=set)  # planes this run wrote (or must keep)
    done: int = 0
    total: int = 0
    stops: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # object -> (slice, why)

    def stops_text(self) -> str:
        """Where and why each object's fronts stopped: ``"object 1 stopped at 3 (contrast) and 17
        (extent)"``; "" when none did."""
        said = [f"object {o} stopped at {' and '.join(f'{k} ({why})' for k, why in sorted(ks))}"
                for o, ks in sorted(self.stops.items())]
        return "; ".join(said)

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


def check_scale(scale, ndim: int) -> tuple[float, ...] | None:
    """``scale`` (a voxel size over an image's ``ndim`` non-channel axes; NaN: not a length) as
    floats, or None; a wrong length or a value <= 0 raises ``ValueError``."""
    if scale is None:
        return None
    s = tuple(float(v) for v in scale)
    if len(s) != ndim or any(not v > 0 and not np.isnan(v) for v in s) or any(np.isinf(v) for v in s):
        raise ValueError(f"scale must hold {ndim} numbers > 0 (NaN for an axis that is not a length, "
                         f"e.g. time), one per non-channel axis; got {scale!r}")
    return s


def plane_spacing(scale: tuple[float, ...] | None, axis: int) -> float | None:
    """The distance between the planes along leading ``axis`` in pixel widths: ``scale[axis]``
    over the mean of the plane's two (the last) axes; None when ``scale`` is None or NaN there."""
    if scale is None or np.isnan(scale[axis]) or np.isnan(scale[-1]) or np.isnan(scale[-2]):
        return None
    return scale[axis] / ((scale[-1] + scale[-2]) / 2)


class Propagator:
    """The session's propagation runs and the objects they left on each plane (:attr:`planes`).

    show(planes): compose those planes' previews again; status(text); progress(done, total);
    finished(): a run ended (prefetching may resume); blocked(plane): ``(H, W)`` bool pixels a
    run must leave empty (committed objects) or None.
    """

    def __init__(self, schedule: Callable[[Job], None], show, status, progress, finished, blocked) -> None:
        self.schedule, self.show, self.status, self.progress = schedule, show, status, progress
        self.finished, self.blocked = finished, blocked
        self.planes: dict[Plane, np.ndarray] = PlaneStore()  # propagated object ids per plane
        self.ids: set[int] = set()  # the objects runs have propagated
        self.run: PropagationRun | None = None

    def start(self, model, stack, here: Plane, axis: int, prompted: Iterable[Plane],
              preview: Callable[[Plane], np.ndarray], options,
              marks: Mapping[Plane, Iterable[int]] | None = None, spacing: float | None = None) -> bool:
        """Propagate from the ``prompted`` planes on the line along ``axis`` through ``here``, from
        their ``preview(plane)`` (``(H, W)`` ids), with ``options`` (``ps.PromptPropagation`` or
        ``ps.MemoryTracking``); marks: ``{plane: object ids}`` the user marked absent there (the
        fronts of those objects stop before it; other objects pass); spacing: the distance between the
        planes along ``axis`` in pixel widths (None: unknown; the extent stop rule then does not
        apply). The prompt method's image stop rules read the planes through ``stack.plane``.
        False: no seed."""
        line = set(stack.line(here, axis))
        previews = {p[axis]: preview(p) for p in prompted if p in line}
        self.cancel()
        seeds, absent = seeds_and_absent(previews)
        for p, objs in (marks or {}).items():  # the user's end marks: absent there, for those objects
            if p in line:
                for o in objs:
                    if o in absent:
                        absent[o] = sorted({*absent[o], p[axis]})
        if not seeds:
            self.status("prompt an object on at least one plane of this line of the stack first.")
            return False
        self.ids.update(o for objs in seeds.values() for o in objs)
        run = self.run = PropagationRun(axis, here, stack.lead_shape[axis])
        run.visited.update(previews)  # prompted planes: what runs left there is added to, not replaced
        shape = next(iter(previews.values())).shape

        def step(res) -> None:
            if run is not self.run:
                return
            p = run.plane_of(res.index)
            for o, why in res.stopped.items():
                run.stops.setdefault(o, []).append((res.index, why))
            self.planes[p] = run.merge(res.index, res.masks, self.planes.get(p), shape, self.blocked(p))
            self.show([p])
            run.done, run.total = res.done, max(res.total, 1)
            self.progress(run.done, run.total)
            self.status(f"propagating: {res.done} / {res.total} planes (Cancel stops; K commits when done).")

        def done(_) -> None:
            if run is not self.run:
                return
            self.run = None
            left = [run.plane_of(k) for k in range(run.n) if k not in run.visited]
            stale = [p for p in left if self.planes.pop(p, None) is not None]  # an earlier run's
            self.show(stale)
            self.progress(run.total, run.total)
            stops = run.stops_text()
            self.status(f"propagation done{f' ({stops})' if stops else ''}: check the planes, correct any "
                        "plane with points (H: the object ends here) and press P again; K commits.")
            self.finished()

        def failed(err: BaseException) -> None:
            if run is self.run:
                self.run = None
                self.progress(run.total, run.total)
                if not run.token.cancelled:
                    kept = " the planes done stay in the preview;" if run.done else ""
                    self.status(f"propagation failed: {explain_error(err).rstrip('.')}.{kept} P propagates "
                                "again.")
            self.finished()  # prefetching may resume

        def work():
            return propagate_iter(model, lambda k: stack.get(run.plane_of(k)), run.n, seeds, options,
                                  absent=absent, planes=lambda k: stack.plane(run.plane_of(k)),
                                  spacing=spacing)

        how = " with SAM 2's memory" if options.method == "memory" else ""
        self.status(f"propagating{how} from plane{'s' * (len(seeds) > 1)} "
                    f"{', '.join(map(str, sorted(seeds)))}…")
        self.schedule(Job("propagate", work, done, failed, step, "propagating", run.token))
        return True

    def clear(self) -> None:
        """Forget the propagated objects (a running propagation is not stopped)."""
        self.planes.clear()
        self.ids.clear()

    def cancel(self, why: str | None = None) -> None:
        """Stop the running propagation (``why``: said in the status line, e.g. "the model
        changed"); the planes it finished stay, and no later step of it is shown."""
        run, self.run = self.run, None
        if run is not None:
            run.token.cancel()
            self.progress(run.total, run.total)
            self.status(f"propagation stopped{f' ({why})' if why else ''}: the planes it finished stay in "
                        "the preview; P propagates again.")
            self.finished()
