"""Prompt data and validation (numpy only).

Coordinates are napari's: ``(row, col)`` in the image's data pixels, pixel centres at integers,
so the image covers ``-0.5 <= row <= H - 0.5`` and ``-0.5 <= col <= W - 0.5``.
Boxes are ``(row0, col0, row1, col1)`` with the corners in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Prompt", "ObjectPrompt", "make_prompt", "inside_image", "xy_prompt"]


@dataclass(frozen=True)
class Prompt:
    """The prompts of one object: what the session keeps per plane and object, and, validated by
    :func:`make_prompt`, what a model decodes.

    points: ``(N, 2)`` float64 ``(row, col)``; labels: ``(N,)`` int32, 1 = object, 0 = background;
    box: ``(4,)`` float64 ``(row_min, col_min, row_max, col_max)`` or None;
    mask_input: ``(1, h, w)`` float32 low-resolution logits or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @property
    def ambiguous(self) -> bool:
        """One point and nothing else: SAM returns three candidate masks (whole, part, sub-part)."""
        return len(self.points) == 1 and self.box is None


#: the session's name for :class:`Prompt` in release 0.1
ObjectPrompt = Prompt


def xy_prompt(prompt: Prompt) -> tuple[np.ndarray, np.ndarray] | None:
    """SAM 2's (and SAM 3's tracker's) one point prompt: the box's corners (labels 2, 3) then the
    points, as ``(x, y) = (col, row)`` image pixels ``(N, 2)`` float64 and int labels ``(N,)``;
    None without a box or points."""
    coords, labels = [], []
    if prompt.box is not None:
        r0, c0, r1, c1 = prompt.box
        coords += [[c0, r0], [c1, r1]]
        labels += [2, 3]
    if len(prompt.points):
        coords += prompt.points[:, ::-1].tolist()
        labels += prompt.labels.astype(int).tolist()
    if not coords:
        return None
    return np.asarray(coords, np.float64), np.asarray(labels, np.int64)


def inside_image(points, shape: tuple[int, int]) -> np.ndarray:
    """``(N,)`` bool: which ``(row, col)`` points lie on the image of ``shape = (H, W)``
    (pixel edges included: ``-0.5 <= row <= H - 0.5``)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    return (pts[:, 0] >= -0.5) & (pts[:, 0] <= h - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= w - 0.5)


def _points(points, labels, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if points is None:
        if labels is not None and np.size(labels) > 0:
            raise ValueError("labels were given without points")
        return np.zeros((0, 2)), np.zeros((0,), np.int32)
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"points must be numbers shaped (N, 2) as (row, col), got {points!r}") from None
    if pts.ndim == 1 and pts.shape[0] == 2:
        pts = pts[None]
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2) as (row, col), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or inf")
    if labels is None:
        lab = np.ones(len(pts), np.int32)
    else:
        lab_raw = np.asarray(labels).reshape(-1)
        if lab_raw.dtype.kind not in "biuf" or not np.isin(lab_raw, (0, 1)).all():
            raise ValueError(
                f"labels must be 1 (object) or 0 (background), got {np.unique(lab_raw).tolist()}"
            )
        lab = lab_raw.astype(np.int32)
        if len(lab) != len(pts):
            raise ValueError(f"got {len(pts)} points but {len(lab)} labels")
    outside = ~inside_image(pts, shape)
    if outside.any():
        bad = pts[outside][0].tolist()
        raise ValueError(
            f"point (row, col) = {bad} lies outside the image of shape (H, W) = {shape}; "
            "points are (row, col) in data pixels"
        )
    return pts, lab


def _box(box, shape: tuple[int, int]) -> np.ndarray | None:
    if box is None:
        return None
    try:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (row0, col0, row1, col1), got {box!r}") from None
    if b.shape != (4,):
        raise ValueError(f"box must be 4 numbers (row0, col0, row1, col1), got {b.size} values")
    if not np.isfinite(b).all():
        raise ValueError("box contains NaN or inf")
    h, w = shape
    r0, r1 = sorted((b[0], b[2]))
    c0, c1 = sorted((b[1], b[3]))
    if r1 < -0.5 or c1 < -0.5 or r0 > h - 0.5 or c0 > w - 0.5:
        raise ValueError(f"box {b.tolist()} lies entirely outside the image of shape {shape}")
    # Clip to the image's extent; a box partly outside keeps its inside part.
    r0, r1 = np.clip([r0, r1], -0.5, h - 0.5)
    c0, c1 = np.clip([c0, c1], -0.5, w - 0.5)
    if r1 - r0 <= 0 or c1 - c0 <= 0:
        raise ValueError(f"box {b.tolist()} has zero height or width inside the image")
    return np.array([r0, c0, r1, c1])


def _mask_input(mask_input, mask_shape: tuple[int, int]) -> np.ndarray | None:
    if mask_input is None:
        return None
    m = np.asarray(mask_input)
    if m.dtype.kind not in "iuf":
        raise ValueError(
            f"mask_input must be low-resolution logits (float), got dtype {m.dtype}; pass one row "
            "of a previous Prediction.logits"
        )
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != tuple(mask_shape):
        raise ValueError(
            f"mask_input must have shape {tuple(mask_shape)} or (1, *that) (the model's "
            f"low-resolution logits, e.g. prediction.logits[prediction.best]), got {np.shape(mask_input)}"
        )
    m = m.astype(np.float32)
    if not np.isfinite(m).all():
        raise ValueError("mask_input contains NaN or inf")
    return m[None]


def make_prompt(
    image_shape: tuple[int, int],
    mask_shape: tuple[int, int],
    points=None,
    labels=None,
    box=None,
    mask_input=None,
) -> Prompt:
    """Validate a prompt for an image of ``image_shape = (H, W)``.

    ``labels`` default to all 1 (object). ``mask_shape`` is the model's low-resolution logit
    shape (256 x 256 for SAM). Raises ``ValueError`` with the reason for any bad input,
    including an empty prompt.
    """
    pts, lab = _points(points, labels, image_shape)
    b = _box(box, image_shape)
    m = _mask_input(mask_input, mask_shape)
    if len(pts) == 0 and b is None and m is None:
        raise ValueError("empty prompt: give at least one point, a box or a mask_input")
    return Prompt(pts, lab, b, m)
