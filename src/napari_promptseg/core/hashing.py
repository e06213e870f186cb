"""Content keys of images: which image is this (autosaves are found by it)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from napari_promptseg.core.image import sampled_planes

__all__ = ["image_key"]

_DOMAIN = "napari-promptseg annotations"  # part of every key: keys of release 0.1 stay valid


def image_key(image: Any, rgb: bool = False) -> str:
    """Content key (xxh3_128 hex digest) of ``image``: shape, dtype and pixels.

    image: numpy, dask or zarr array-like of shape (..., H, W), or (..., H, W, C) when ``rgb``.
    Planes are read one at a time; of a stack with more than 16 planes only 16 evenly spaced
    ones are hashed (with the shape), so a huge lazy stack is never read whole.
    """
    import xxhash

    shape = tuple(int(s) for s in image.shape)
    dtype = np.dtype(image.dtype)
    lead = shape[: max(0, len(shape) - (3 if rgb else 2))]
    h = xxhash.xxh3_128()
    h.update(json.dumps([_DOMAIN, list(shape), dtype.str, bool(rgb)]).encode())
    for idx in sampled_planes(lead):
        plane = np.asarray(image[idx] if idx else image)
        h.update(np.ascontiguousarray(plane, dtype=dtype).tobytes())
    return h.hexdigest()
