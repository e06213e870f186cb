"""The session's preview (numpy + zarr, no Qt): the array napari shows, composed plane by plane.

Object ids are uint8 until one passes 255 (napari draws uint8 labels several times faster), then
the array is copied to uint32; a stack's preview is a lazy zarr array with one chunk per plane,
so nothing is allocated before a plane gets an object. Plane indices are tuples of the leading
axes (``()`` for 2D).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_promptseg.labels.write import lazy_labels
from napari_promptseg.session.planes import Plane, PlaneDecode, compose, content_box, top_id, union_box

__all__ = ["Preview"]


class Preview:
    """``array``: ``(..., H, W)`` object ids; ``painted``: planes the user painted since they
    were last composed; ``on_reset(array)``: called when the array is replaced (wider ids)."""

    def __init__(self, shape: tuple[int, ...], n_lead: int,
                 on_reset: Callable[[object], None] = lambda array: None) -> None:
        self.shape, self.n_lead = tuple(shape), n_lead
        self.array = np.zeros(shape, np.uint8) if not n_lead else lazy_labels(self.shape, np.uint8)
        self.painted: set[Plane] = set()
        self.written: set[Plane] = set()  # planes ever written (what a wider copy must carry over)
        self.boxes: dict[Plane, tuple[int, int, int, int] | None] = {}  # where a plane has objects
        self.on_reset = on_reset

    def plane(self, p: Plane) -> np.ndarray:
        """``(H, W)`` object ids on plane ``p``."""
        return np.asarray(self.array[p] if p else self.array)

    def show(self, p: Plane, decoded: PlaneDecode | None, propagated: np.ndarray | None,
             kept: np.ndarray | None) -> None:
        """Compose plane ``p``: decoded objects, then objects refined from paint (``kept``), then
        propagated ones (see :func:`~.planes.compose`)."""
        if kept is not None:
            propagated = kept if propagated is None else np.where(kept > 0, kept, propagated)
        if top_id(decoded, propagated) > np.iinfo(self.array.dtype).max:
            self._widen()
        # only the part that held or will hold objects is composed and written: a decode on a
        # 16k x 16k slide touches its object's box, not a new 1 GB plane (painted planes: all)
        h, w = self.shape[-2:]
        box = content_box(decoded, propagated)
        window = union_box(self.boxes.get(p), box)
        if window is not None:
            r0, c0, r1, c1 = window
            self.array[(*p, slice(r0, r1), slice(c0, c1))] = compose(
                decoded, propagated, (h, w), self.array.dtype, window)
        self.boxes[p] = box
        self.painted.discard(p)
        self.written.add(p)

    def edited(self, planes) -> None:
        """The user painted ``planes``."""
        self.painted.update(planes)
        self.written.update(planes)
        self.boxes.update({p: (0, 0, *self.shape[-2:]) for p in planes})  # paint may be anywhere

    def _widen(self) -> None:
        old = self.array
        if not self.n_lead:
            self.array = old.astype(np.uint32)
        else:
            self.array = lazy_labels(self.shape, np.uint32)
            for p in self.written:
                self.array[p] = np.asarray(old[p])
        self.on_reset(self.array)
