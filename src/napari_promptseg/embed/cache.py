"""Embedding caches keyed by what went into the model (never by layer names or object ids).

The key hashes the model-input pixels (the uint8 RGB image after the intensity window) with the
model name, checkpoint id and preprocessing version, so a changed image, window or model never
reuses a stale embedding. Two levels: :class:`EmbeddingCache` in memory (a few embeddings, on the
model's device) and :class:`~napari_promptseg.embed.disk_cache.DiskCache` on disk (bounded by bytes,
shared by processes).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.disk_cache import CacheWarning, DiskCache

__all__ = ["embedding_key", "EmbeddingCache", "embed_cached", "DiskCache", "CacheWarning"]


def embedding_key(model, rgb: np.ndarray, zoom: float | None = None) -> str:
    """Cache key for ``model`` encoding the ``(H, W, 3)`` uint8 image ``rgb`` at the resolved
    ``zoom`` (:meth:`~.models.base.PromptableModel.input_zoom`; None: the long side fills the input)."""
    import xxhash

    h = xxhash.xxh3_128()
    what = (model.name, model.checkpoint_id, model.preprocessing, rgb.shape)
    h.update(repr(what if zoom is None else (*what, float(zoom))).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


class EmbeddingCache:
    """A thread-safe in-memory LRU of embeddings (``max_items`` most recently used), keyed by
    :func:`embedding_key` (or any hashable key, e.g. a plane index)."""

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Embedding | None:
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
            return emb

    def put(self, key: Hashable, embedding: Embedding) -> None:
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def embed_cached(
    model,
    image,
    contrast_limits=None,
    cache: EmbeddingCache | None = None,
    disk: DiskCache | None = None,
    zoom: float | str | None = None,
) -> Embedding:
    """``model.embed(image, contrast_limits, zoom)``, reusing an embedding of the same model input.

    Looks in the memory ``cache`` first, then in the ``disk`` cache (loaded onto
    ``model.device``), else encodes; a new embedding is stored in both. A disk cache that cannot
    be written (full, read-only, removed) is skipped: the embedding is still returned (and kept
    in ``cache``), and a :class:`CacheWarning` says once per kind of problem what happened and
    what to do (:meth:`DiskCache.take_problems` has the same lines for a status line).
    """
    rgb = to_rgb_uint8(image, contrast_limits)
    z = model.input_zoom(rgb.shape[:2], zoom)
    if cache is None and disk is None:
        return model.embed(rgb, zoom=z if z is not None else "fit")
    key = embedding_key(model, rgb, z)
    emb = None if cache is None else cache.get(key)
    if emb is not None:
        return emb
    if disk is not None:
        emb = disk.get(key, device=model.device, model=model, original_size=rgb.shape[:2])
    if emb is None:
        emb = model.embed(rgb, zoom=z if z is not None else "fit")  # uint8 RGB goes in unchanged
        if disk is not None:
            try:
                disk.put(key, emb)
            except OSError as e:  # full, read-only, removed: said once per kind of problem
                message = disk.write_failed(e)
                if message:
                    warnings.warn(message, CacheWarning, stacklevel=2)
    if cache is not None:
        cache.put(key, emb)
    return emb
