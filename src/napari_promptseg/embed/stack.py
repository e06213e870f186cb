"""Lazy, cached embeddings of the 2D planes of a stack (z-stack, time series, T x Z, RGB frames).

Nothing is embedded up front: :meth:`StackEmbeddings.get` encodes one plane when it is first
asked for (the plane the user looks at), and :meth:`StackEmbeddings.prefetch_order` says which
neighbours to encode next, in the direction the user is moving. One intensity window is used
for the whole stack, never one per plane, so intensities do not jump between slices.

Plane indices are tuples of the leading (non-plane) data axes: ``(z,)`` for ``(Z, Y, X)``,
``(t, z)`` for ``(T, Z, Y, X)``, ``()`` for a 2D image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from napari_promptseg.core.image import stack_window
from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached
from napari_promptseg.embed.store import store_lead_axes

__all__ = ["StackEmbeddings", "embed_stack_iter"]

class StackEmbeddings:
    """Embeddings of the planes of ``stack``, computed on demand, thread-safe.

    stack: array-like ``(..., H, W)``, or ``(..., H, W, 3|4)`` with ``rgb=True`` (numpy, dask,
    zarr: planes are read one at a time). window: ``(lo, hi)`` for every plane (default
    :func:`stack_window`). cache: a shared pixel-keyed :class:`EmbeddingCache` (optional);
    disk: an on-disk cache passed to :func:`embed_cached` (optional). ``max_items`` embeddings
    are kept in memory by plane index (least recently used dropped): after changing the stack's
    pixels in place, make a new StackEmbeddings (the napari widget does on a data event).
    tiles: planes more than :data:`~napari_promptseg.embed.tiles.TILE_FACTOR` tiles long get a
    :class:`~napari_promptseg.embed.tiles.TiledEmbedding` each (their tiles embedded as prompts need
    them, read from the plane lazily; one tile cache and one window memory for all planes)
    instead of one squeezed embedding; :attr:`tiled` says whether they do.
    store: an :class:`~napari_promptseg.embed.store.EmbeddingStore` made for this stack and model
    (checked by the caller; its planes across the last two axes): a plane it holds is read from
    it (its pixel key checked) instead of encoded, and its window replaces ``window``; a plane
    it lacks, or holds for other pixels (:attr:`store_problems` says why), is embedded as without
    a store. A stack with a store is never tiled.
    """

    def __init__(self, model, stack, window: tuple[float, float] | None = None, *, rgb: bool = False,
                 cache: EmbeddingCache | None = None, disk=None, max_items: int = 16,
                 tiles: bool = False, store=None) -> None:
        if stack.ndim < (3 if rgb else 2):
            raise ValueError(f"stack of shape {stack.shape} has no {'RGB ' if rgb else ''}plane")
        self.model, self.stack, self.rgb, self.store = model, stack, rgb, store
        if store is not None:
            window = store.window
        elif window is None:
            window = stack_window(stack, rgb)
        self.window = window
        self.cache, self.disk, self.max_items = cache, disk, max_items
        self.lead_shape = tuple(stack.shape[: stack.ndim - (3 if rgb else 2)])
        self.plane_shape = tuple(int(v) for v in stack.shape[len(self.lead_shape):][:2])  # (H, W)
        self._mem = EmbeddingCache(max_items)  # by plane index
        self._inflight: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()
        self.computed = 0  # planes encoded (or read from a cache or the store) by this object
        self.from_store = 0  # planes read from the store
        self.store_problems: dict[tuple[int, ...], str] = {}  # plane -> why the store's was not used
        self._store_axes = store_lead_axes(store) if store is not None else ()
        from napari_promptseg.embed.tiles import wants_tiles

        self.tiled = bool(tiles) and store is None and wants_tiles(model, self.plane_shape)
        self._tile_cache = cache if cache is not None else EmbeddingCache(max(16, max_items))
        self._tile_regions: OrderedDict = OrderedDict()  # logits -> window, across planes

    def index(self, index) -> tuple[int, ...]:
        """``index`` as a tuple of ints, checked against the leading shape."""
        idx = tuple(int(i) for i in np.atleast_1d(index)) if self.lead_shape else ()
        if len(idx) != len(self.lead_shape) or any(
            not 0 <= i < n for i, n in zip(idx, self.lead_shape, strict=True)
        ):
            raise IndexError(f"plane index {index!r} is outside the stack's leading shape {self.lead_shape}")
        return idx

    def plane(self, index) -> np.ndarray:
        """The raw plane ``(H, W)`` or ``(H, W, C)`` at ``index``."""
        return np.asarray(self.stack[self.index(index)])

    def cached(self, index) -> Embedding | None:
        """The plane's embedding if it is in memory (never computes)."""
        return self._mem.get(self.index(index))

    def get(self, index) -> Embedding:
        """The plane's embedding, computed (or read from the caches) once; concurrent callers
        asking for the same plane wait for that one computation."""
        idx = self.index(index)
        while True:
            with self._lock:  # the memory check and the in-flight registration are one step
                emb = self._mem.get(idx)
                if emb is not None:
                    return emb
                event = self._inflight.get(idx)
                owner = event is None
                if owner:
                    event = self._inflight[idx] = threading.Event()
            if not owner:
                event.wait()
                continue  # computed (or failed: then this caller tries itself)
            try:
                if self.tiled:
                    from napari_promptseg.embed.tiles import TiledEmbedding

                    plane = _PlaneView(self.stack, idx) if idx else self.stack
                    emb = TiledEmbedding(self.model, plane, self.window, cache=self._tile_cache,
                                         disk=self.disk, regions=self._tile_regions)
                else:
                    emb = self._stored(idx) or embed_cached(self.model, self.plane(idx), self.window,
                                                            self.cache, disk=self.disk)
                self._mem.put(idx, emb)  # before the in-flight entry goes: waiters find it
                with self._lock:
                    self.computed += 1
                return emb
            finally:
                with self._lock:
                    self._inflight.pop(idx, None)
                event.set()

    def in_store(self, index) -> bool:
        """True when the store holds plane ``index`` (it is read, not encoded, unless its pixels differ)."""
        return self.store is not None and self.store_index(index) in self.store

    def store_index(self, index):
        """The store's index of plane ``index`` (its leading axes may be in another order)."""
        idx = self.index(index)
        return tuple(idx[a] for a in self._store_axes)

    def _stored(self, idx: tuple[int, ...]) -> Embedding | None:
        """The plane's embedding from the store; None when it has none or one for other pixels."""
        if self.store is None:
            return None
        from napari_promptseg.embed.store import StoreError

        try:
            emb = self.store.embedding_for(self.store_index(idx), self.model, self.plane(idx))
        except StoreError as err:
            with self._lock:
                self.store_problems[idx] = str(err)
            return None
        if emb is not None:
            with self._lock:
                self.from_store += 1
        return emb

    def prefetch_order(self, index, axis: int = 0, direction: int = 1, count: int = 4,
                       behind: int = 1) -> list[tuple[int, ...]]:
        """Planes to embed next around ``index``: ``count`` ahead along leading ``axis`` in
        ``direction`` (+1/-1), then ``behind`` the other way; planes in memory are skipped."""
        idx = list(self.index(index))
        if not idx:
            return []
        n = self.lead_shape[axis]
        step = 1 if direction >= 0 else -1
        offsets = [step * k for k in range(1, count + 1)] + [-step * k for k in range(1, behind + 1)]
        out = []
        for off in offsets:
            k = idx[axis] + off
            if 0 <= k < n:
                cand = tuple(idx[:axis] + [k] + idx[axis + 1:])
                with self._lock:
                    if cand not in self._mem and cand not in self._inflight:
                        out.append(cand)
        return out

    def line(self, index, axis: int) -> Sequence[tuple[int, ...]]:
        """All plane indices that share ``index``'s other leading coordinates, along ``axis``."""
        idx = list(self.index(index))
        return [tuple(idx[:axis] + [k] + idx[axis + 1:]) for k in range(self.lead_shape[axis])]


class _PlaneView:
    """Plane ``idx`` of ``stack`` without reading it: ``view[r0:r1, c0:c1]`` reads that window
    only (zarr, dask, numpy), as :class:`~napari_promptseg.embed.tiles.TiledEmbedding` asks."""

    def __init__(self, stack, idx: tuple[int, ...]) -> None:
        self.stack, self.idx = stack, idx
        self.shape = tuple(stack.shape[len(idx):])
        self.dtype = stack.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.stack[self.idx + key])


def embed_stack_iter(model, stack, window: tuple[float, float] | None = None, *, rgb: bool = False,
                     disk=None, planes=None):
    """Embed every plane of ``stack`` into the disk cache, one at a time; yields ``(done, total)``.

    For clusters and overnight runs: the embeddings stream to ``disk`` (a
    :class:`~napari_promptseg.embed.cache.DiskCache`, default: the user cache), nothing is held in
    memory beyond one plane, and planes already on disk are skipped, so an interrupted run
    resumes where it stopped. Opening the same data with the same model and window later (in
    napari or the API) finds every plane at once. planes: the plane indices to embed (default all).
    """
    from napari_promptseg.embed.cache import DiskCache

    disk = DiskCache() if disk is None else disk
    emb = StackEmbeddings(model, stack, window, rgb=rgb, disk=disk, max_items=1)
    todo = [tuple(int(v) for v in np.atleast_1d(i)) for i in planes] if planes is not None else list(
        np.ndindex(*emb.lead_shape))
    for done, idx in enumerate(todo, 1):
        emb.get(idx)
        yield done, len(todo)
