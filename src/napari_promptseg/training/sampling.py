"""Prompt sampling as in SAM's training (numpy only; (row, col) pixel coordinates).

- first prompt: one positive point uniformly inside the object (often near its interior), or
  the object's box with each side jittered by ~10 % of its length (at most 20 px);
- corrective clicks: a point in the error region of the previous prediction, positive where the
  object was missed, negative where background was included; the previous low-res logits go
  back in as the mask prompt (the loop does that part);
- evaluation prompts: the object's interior-most pixel and its tight box.
"""

from __future__ import annotations

import numpy as np

from napari_promptseg.core.geometry import extent
from napari_promptseg.core.geometry import interior_point as _interior_point

__all__ = [
    "pick_objects", "random_point", "jittered_box", "corrective_click", "interior_point", "tight_box",
]


def pick_objects(labels: np.ndarray, k: int, rng: np.random.Generator, min_area: int = 10) -> np.ndarray:
    """Up to ``k`` distinct object ids of ``labels`` (H, W) with at least ``min_area`` pixels."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts >= min_area)
    ids = ids[ids > 0]
    if len(ids) > k:
        ids = rng.choice(ids, k, replace=False)
    return np.sort(ids)


def random_point(mask: np.ndarray, rng: np.random.Generator, interior_prob: float = 0.5) -> np.ndarray:
    """A ``(row, col)`` pixel of ``mask`` (H, W) bool, uniform over the mask or, with probability
    ``interior_prob``, over the pixels at least 2 px from its edge (when there are any)."""
    from scipy import ndimage as ndi

    r0, c0, r1, c1 = extent(mask)
    crop = mask[r0 : r1 + 1, c0 : c1 + 1]
    if rng.random() < interior_prob:
        inner = ndi.binary_erosion(crop, iterations=2)
        if inner.any():
            crop = inner
    rr, cc = np.nonzero(crop)
    i = int(rng.integers(len(rr)))
    return np.array([rr[i] + r0, cc[i] + c0], np.float32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """``(row0, col0, row1, col1)`` of the mask's outermost pixels (inclusive)."""
    return np.array(extent(mask), np.float32)


def jittered_box(
    mask: np.ndarray, rng: np.random.Generator, frac: float = 0.1, max_px: float = 20.0
) -> np.ndarray:
    """The tight box with each coordinate moved by N(0, frac x side length), clipped to
    ``max_px``, kept inside the image and non-degenerate."""
    r0, c0, r1, c1 = tight_box(mask)
    hb, wb = r1 - r0 + 1, c1 - c0 + 1
    sd = np.array([hb, wb, hb, wb], np.float32) * frac
    box = np.array([r0, c0, r1, c1], np.float32) + np.clip(rng.normal(0, 1, 4) * sd, -max_px, max_px)
    h, w = mask.shape
    box = np.clip(box, 0, [h - 1, w - 1, h - 1, w - 1])
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])],
                    np.float32)


def corrective_click(
    gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """The next click after predicting ``pred`` for object ``gt`` (both (H, W) bool).

    A pixel uniform over the error region (preferring pixels >= 2 px inside it, as a user
    clicks well inside a mistake): label 1 if it is a missed object pixel, 0 if a false one.
    Without errors: a positive point inside the object.
    """
    from scipy import ndimage as ndi

    err = gt != pred
    if not err.any():
        return random_point(gt, rng), 1
    r0, c0, r1, c1 = extent(err)
    crop = err[r0 : r1 + 1, c0 : c1 + 1]
    inner = ndi.binary_erosion(crop, iterations=2)
    if inner.any() and rng.random() < 0.7:
        crop = inner
    rr, cc = np.nonzero(crop)
    i = int(rng.integers(len(rr)))
    r, c = rr[i] + r0, cc[i] + c0
    return np.array([r, c], np.float32), int(gt[r, c])


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The mask pixel farthest from the background, float32
    (:func:`~napari_promptseg.core.geometry.interior_point`)."""
    return _interior_point(mask).astype(np.float32)
