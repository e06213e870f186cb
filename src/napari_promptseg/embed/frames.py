"""The planes of a z-stack or the frames of a video along one axis, embedded lazily with one window.

What ``ps.propagate``, ``ps.segment`` on a stack and :class:`~napari_promptseg.Tracker` share:
the stack's layout checks, its intensity window (or an embeddings store's), and the embedding of
plane ``k`` read from the store, the caches, or the encoder, one plane read at a time. Nothing is
read when a :class:`Frames` is made: the window is computed (from sampled planes) at first use,
so callers check the rest of their input before any pixel is read.
"""

from __future__ import annotations

import numpy as np

from napari_promptseg.core.image import check_limits, image_plane, stack_window
from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.cache import embed_cached

__all__ = ["Frames"]

_UNSET = object()


class Frames:
    """The planes of ``stack`` across ``axis``, embedded on demand.

    stack: ``(N, H, W)`` gray or ``(N, H, W, 3|4)`` RGB(A), any real dtype (numpy, zarr, dask: a
    plane is read when it is needed); axis: the axis of the planes among the 3 non-channel axes
    (negative counts from the last). contrast_limits: the window for every plane (default: the
    stack's robust percentiles; uint8 passes unchanged). embeddings: an embeddings store (or its
    path) made for this stack, model and axis: its planes are read, the others embedded. cache /
    disk: an ``EmbeddingCache`` / ``DiskCache`` for the planes embedded here.

    Attributes: ``n`` planes of ``plane_shape`` ``(H, W)``; ``spatial``: the stack's shape
    without its channel axis; :attr:`window`. Only one plane of the stack is read at a time
    (:meth:`plane`), and only the sampled planes for the window.
    """

    def __init__(self, model, stack, axis: int = 0, *, contrast_limits=None, embeddings=None,
                 cache=None, disk=None) -> None:
        arr = stack if hasattr(stack, "shape") and hasattr(stack, "ndim") else np.asarray(stack)
        if arr.ndim == 4 and arr.shape[-1] in (3, 4):
            spatial = tuple(arr.shape[:3])
        elif arr.ndim == 3:
            spatial = tuple(arr.shape)
        else:
            raise ValueError(
                f"stack must be (N, H, W) gray or (N, H, W, 3|4) RGB, got shape {tuple(arr.shape)}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
            raise ValueError(f"axis must be one of the 3 non-channel axes (-3..2), got {axis!r}")
        self.model, self.array, self.axis = model, arr, int(axis) % 3
        self.spatial = spatial
        self.n = spatial[self.axis]
        self.plane_shape = tuple(s for i, s in enumerate(spatial) if i != self.axis)
        self.cache, self.disk = cache, disk
        self.store = None
        if embeddings is not None:
            from napari_promptseg.embed.store import EmbeddingStore, StoreError, open_embeddings

            store = embeddings if isinstance(embeddings, EmbeddingStore) else open_embeddings(embeddings)
            store.check(model, tuple(arr.shape), self.axis)
            if contrast_limits is not None and tuple(check_limits(contrast_limits)) != store.window:
                raise StoreError(f"contrast_limits {contrast_limits} differ from the store's window "
                                 f"{store.window}: leave contrast_limits out to use the store")
            self.store, self._window = store, store.window
        elif contrast_limits is not None:
            self._window = check_limits(contrast_limits)
        else:  # computed at first use
            self._window = _UNSET

    @property
    def window(self) -> tuple[float, float] | None:
        """The intensity window of every plane: the store's, ``contrast_limits``, or the stack's
        robust percentiles from up to 16 sampled planes (read at first use; None for uint8)."""
        if self._window is _UNSET:
            self._window = stack_window(self.array, self.array.ndim == 4, (self.axis,))
        return self._window

    def plane(self, k: int) -> np.ndarray:
        """Plane ``k``: ``(H, W)`` or ``(H, W, 3|4)`` (only its pixels are read)."""
        return image_plane(self.array, (self.axis,), (int(k),))

    def embedding(self, k: int) -> Embedding:
        """Plane ``k``'s embedding: from the store, else through the caches, else encoded."""
        pixels = self.plane(k)
        stored = None if self.store is None else self.store.embedding_for(int(k), self.model, pixels)
        return stored or embed_cached(self.model, pixels, self.window, self.cache, disk=self.disk)

    def labels_view(self, out: np.ndarray) -> np.ndarray:
        """``out`` (shaped :attr:`spatial`) as ``(n, H, W)``: a view, plane ``k`` is ``[k]``."""
        return np.moveaxis(out, self.axis, 0)
