"""Mask geometry shared by every layer (numpy only): boxes, specks, interior points, IoU.

Masks are ``(H, W)`` bool; boxes are ``(row0, col0, row1, col1)`` through the centres of the
outermost pixels (inclusive), the convention of SAM's tight training boxes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["extent", "bounding_box", "mask_boxes", "prompt_box", "without_specks", "interior_point",
           "mask_iou", "SPECK_FRACTION", "BOX_MARGIN_PX"]

#: a piece of a mask smaller than this fraction of its largest piece does not widen its box
SPECK_FRACTION = 0.05
#: pixels added to each side of a grown box prompt besides its relative margin (:func:`prompt_box`)
BOX_MARGIN_PX = 2.0


def extent(mask) -> tuple[int, int, int, int] | None:
    """``(row0, col0, row1, col1)`` of a 2D mask's pixels (inclusive), or None when it is empty."""
    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def bounding_box(mask) -> np.ndarray | None:
    """:func:`extent` as a ``(4,)`` float64 box prompt, or None when the mask is empty."""
    e = extent(mask)
    return None if e is None else np.array(e, np.float64)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(M, H, W)`` bool -> ``(M, 4)`` int64 extents; an empty mask gets zeros (as Meta's
    ``batched_mask_to_box``)."""
    out = np.zeros((len(masks), 4), np.int64)
    for i, m in enumerate(masks):
        e = extent(m)
        if e is not None:
            out[i] = e
    return out


def prompt_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The box prompt of a non-empty mask: its :func:`extent` as float64, widened to the pixels'
    edges where a side would be 0.

    margin > 0: each side moves out by ``margin`` x the box's extent along that axis (in pixels,
    ``row1 - row0 + 1``) plus :data:`BOX_MARGIN_PX`, clipped to the image (pixel centres
    ``0 .. H - 1``, ``0 .. W - 1``); 0 gives the tight box."""
    box = np.array(extent(mask), np.float64)
    if margin > 0:
        h, w = mask.shape
        for lo, hi, size in ((0, 2, h), (1, 3, w)):
            grow = margin * (box[hi] - box[lo] + 1) + BOX_MARGIN_PX
            box[lo], box[hi] = max(box[lo] - grow, 0.0), min(box[hi] + grow, size - 1.0)
    for lo, hi in ((0, 2), (1, 3)):
        if box[lo] == box[hi]:
            box[lo] -= 0.5
            box[hi] += 0.5
    return box


def without_specks(mask: np.ndarray, fraction: float = SPECK_FRACTION) -> np.ndarray:
    """``mask`` without its specks: 8-connected pieces under ``fraction`` of the largest (a stray
    pixel of a mask, e.g. where a window cuts a neighbour, would stretch a box prompt made from it
    far beyond the object)."""
    from scipy import ndimage

    e = extent(mask)
    if e is None:
        return mask
    r0, c0, r1, c1 = e
    crop = mask[r0:r1 + 1, c0:c1 + 1]
    lab, n = ndimage.label(crop, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.concatenate([[False], sizes >= fraction * sizes.max()])
    out = np.zeros_like(mask, dtype=bool)
    out[r0:r1 + 1, c0:c1 + 1] = keep[lab]
    return out


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` float64 of the mask pixel farthest from the background (the maximum of the
    distance transform; the first such pixel in row-major order). The mask must not be empty."""
    from scipy import ndimage as ndi

    r0, c0, r1, c1 = extent(mask)
    crop = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], 1)
    d = ndi.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return np.array([r - 1 + r0, c - 1 + c0], np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
