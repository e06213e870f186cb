"""Interactive segmentation logic, free of Qt and napari: which prompts form which object, how
each object is decoded, and how the objects are drawn into one preview.

Coordinates are ``(row, col)`` in image pixels; boxes are ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .results import Embedding, Prediction

__all__ = ["ObjectPrompt", "group_prompts", "decode_objects", "compose_preview", "bounding_box"]


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts of one object: points ``(N, 2)``, labels ``(N,)`` (1/0), box ``(4,)`` or None."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None

    @property
    def ambiguous(self) -> bool:
        """One point and nothing else: SAM returns three candidate masks (whole, part, sub-part)."""
        return len(self.points) == 1 and self.box is None


def _in_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    r0, c0, r1, c1 = min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])
    r, c = points[:, 0], points[:, 1]
    return (r >= r0 - 0.5) & (r <= r1 + 0.5) & (c >= c0 - 0.5) & (c <= c1 + 0.5)


def group_prompts(points, labels, boxes) -> list[ObjectPrompt]:
    """Split the current prompts into objects.

    points ``(N, 2)``, labels ``(N,)``, boxes ``(B, 4)``. No box: all points form one object (none
    when there is no positive point). One box: the box and all points form one object. Several
    boxes: one object per box, and each point refines the first box that contains it (points
    outside every box are not used).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    lab = np.asarray(labels, np.int32).reshape(-1)
    bxs = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(lab) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(lab)} labels")
    if len(bxs) == 0:
        return [ObjectPrompt(pts, lab)] if (lab == 1).any() else []
    if len(bxs) == 1:
        return [ObjectPrompt(pts, lab, bxs[0])]
    owner = np.full(len(pts), -1)
    for i in range(len(bxs) - 1, -1, -1):  # reversed: the first containing box wins
        owner[_in_box(pts, bxs[i])] = i
    return [ObjectPrompt(pts[owner == i], lab[owner == i], bxs[i]) for i in range(len(bxs))]


def decode_objects(model, embedding: Embedding, objects, mask_inputs=None) -> list[Prediction]:
    """Decode each object; ambiguous ones (one point, no box, no mask input) get three masks.

    mask_inputs: optional ``{object index: (h, w) logits}`` from an earlier prediction of the same
    object (refinement).
    """
    mask_inputs = mask_inputs or {}
    out = []
    for i, obj in enumerate(objects):
        mi = mask_inputs.get(i)
        out.append(model.predict(
            embedding,
            points=obj.points if len(obj.points) else None,
            labels=obj.labels if len(obj.points) else None,
            box=obj.box,
            mask_input=mi,
            multimask=obj.ambiguous and mi is None,
        ))
    return out


def compose_preview(masks, shape: tuple[int, ...], dtype=None) -> np.ndarray:
    """One labels image of ``shape`` with object ``i`` of ``masks`` as id ``i + 1`` (earlier wins).
    dtype: default uint8 (cheap for napari to draw) while the ids fit, else int32."""
    dtype = dtype or (np.uint8 if len(masks) < 256 else np.int32)
    out = np.zeros(shape, dtype)
    for i, m in enumerate(masks):
        out[np.asarray(m, bool) & (out == 0)] = i + 1
    return out


def bounding_box(mask) -> np.ndarray | None:
    """``(row0, col0, row1, col1)`` of a 2D mask's pixels, or None when it is empty."""
    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return None
    return np.array([rows[0], cols[0], rows[-1], cols[-1]], np.float64)
