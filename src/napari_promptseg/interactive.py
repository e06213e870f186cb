"""The prompts of one object and a mask's bounding box (numpy only); the annotation session
(:mod:`napari_promptseg.session`) groups prompts per plane and object.

Coordinates are ``(row, col)`` in image pixels; boxes are ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ObjectPrompt", "bounding_box"]


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


def bounding_box(mask) -> np.ndarray | None:
    """``(row0, col0, row1, col1)`` of a 2D mask's pixels, or None when it is empty."""
    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return None
    return np.array([rows[0], cols[0], rows[-1], cols[-1]], np.float64)
