"""Writing masks into a labels array: next free ids, preserved objects, exact undo and redo.

numpy only. A :class:`Commit` records the flat indices it changed with their old and new
values, so undo and redo restore the array exactly (and touch nothing else).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

__all__ = ["Commit", "CommitHistory", "commit_masks", "commit_labels", "next_free_id"]


@dataclass(frozen=True)
class Commit:
    """One commit: ``labels.flat[indices]`` went from ``old`` to ``new``; ``ids`` were written."""

    indices: np.ndarray
    old: np.ndarray
    new: np.ndarray
    ids: tuple[int, ...]

    def undo(self, labels: np.ndarray) -> None:
        labels.reshape(-1)[self.indices] = self.old

    def redo(self, labels: np.ndarray) -> None:
        labels.reshape(-1)[self.indices] = self.new


def next_free_id(labels: np.ndarray) -> int:
    """The id above the largest id in ``labels`` (1 for an empty array)."""
    return int(labels.max(initial=0)) + 1


def _check_labels(labels: np.ndarray) -> None:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        kind = getattr(labels, "dtype", type(labels))
        raise TypeError(f"labels must be an integer numpy array, got {kind}")
    if not labels.flags.c_contiguous:
        raise ValueError("labels must be C-contiguous so that commits can be undone in place")


def commit_masks(
    labels: np.ndarray, masks, overwrite: bool = False, first_id: int | None = None
) -> Commit:
    """Write each mask of ``masks`` into ``labels`` in place, with consecutive new ids.

    labels: C-contiguous integer array of any shape (a slice ``labels[z]`` of a stack works);
    masks: sequence of bool arrays of ``labels``'s shape. The first mask gets ``first_id``
    (default :func:`next_free_id`; pass ``next_free_id(stack)`` when ``labels`` is one slice of a
    stack, so that ids stay unique in the whole stack), the next one that id + 1, and so on
    (masks with nothing to write get no id). Pixels that already hold another object keep it
    unless ``overwrite``; where two of ``masks`` overlap, the earlier one wins.
    Returns the :class:`Commit` (nothing changed: ``ids == ()``).
    """
    _check_labels(labels)
    flat = labels.reshape(-1)
    next_id = next_free_id(labels) if first_id is None else int(first_id)
    if np.iinfo(labels.dtype).max < next_id + len(masks) - 1:
        raise OverflowError(
            f"labels of dtype {labels.dtype} cannot hold id {next_id + len(masks) - 1}; "
            "convert the labels layer to a wider integer type (e.g. int32)"
        )
    taken = np.zeros(flat.shape, bool)
    idx_parts, new_parts, ids = [], [], []
    for mask in masks:
        m = np.asarray(mask, bool)
        if m.shape != labels.shape:
            raise ValueError(f"mask shape {m.shape} does not match labels shape {labels.shape}")
        where = np.flatnonzero(m.reshape(-1))
        where = where[~taken[where]]
        if not overwrite:
            where = where[flat[where] == 0]
        if where.size == 0:
            continue
        taken[where] = True
        idx_parts.append(where)
        new_parts.append(np.full(where.size, next_id, labels.dtype))
        ids.append(next_id)
        next_id += 1
    if not ids:
        empty = np.zeros(0, np.intp)
        return Commit(empty, empty.astype(labels.dtype), empty.astype(labels.dtype), ())
    indices = np.concatenate(idx_parts)
    new = np.concatenate(new_parts)
    old = flat[indices].copy()
    flat[indices] = new
    return Commit(indices, old, new, tuple(ids))


def commit_labels(
    labels: np.ndarray, groups: np.ndarray, overwrite: bool = False, first_id: int | None = None,
    offset: int = 0,
) -> Commit:
    """Write each non-zero group of ``groups`` into ``labels`` in place with consecutive new ids.

    Like :func:`commit_masks` with one mask per group (groups in increasing order), but memory
    scales with the object voxels, not with (objects x volume): for stacks. groups: integer array
    of ``labels``'s shape, 0 = nothing. ``labels`` may be a C-contiguous block of a larger array
    (e.g. planes ``z0:z1`` of a stack): ``offset`` (the block's flat start in that array) is
    added to the returned indices so the Commit undoes in the whole array; pass ``first_id``
    from the whole array then.
    """
    _check_labels(labels)
    g_all = np.asarray(groups)
    if g_all.shape != labels.shape:
        raise ValueError(f"groups shape {g_all.shape} does not match labels shape {labels.shape}")
    flat, gflat = labels.reshape(-1), g_all.reshape(-1)
    where = np.flatnonzero(gflat)
    g = gflat[where]
    if not overwrite:
        keep = flat[where] == 0
        where, g = where[keep], g[keep]
    present, rank = np.unique(g, return_inverse=True)
    next_id = next_free_id(labels) if first_id is None else int(first_id)
    if len(present) and np.iinfo(labels.dtype).max < next_id + len(present) - 1:
        raise OverflowError(
            f"labels of dtype {labels.dtype} cannot hold id {next_id + len(present) - 1}; "
            "convert the labels layer to a wider integer type (e.g. int32)"
        )
    if not len(present):
        empty = np.zeros(0, np.intp)
        return Commit(empty, empty.astype(labels.dtype), empty.astype(labels.dtype), ())
    new = (next_id + rank).astype(labels.dtype)
    old = flat[where].copy()
    flat[where] = new
    ids = tuple(range(next_id, next_id + len(present)))
    return Commit(where + offset, old, new, ids)


class CommitHistory:
    """Undo and redo stacks of :class:`Commit` for one labels array."""

    def __init__(self) -> None:
        self._done: list[Commit] = []
        self._undone: list[Commit] = []
        self._array = None  # weak reference to the array the commits were made in

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def record(self, commit: Commit, labels: np.ndarray | None = None) -> None:
        """Remember a commit that was just applied to ``labels`` (a new commit clears the redo
        stack; a commit into another array than before starts a new history)."""
        if not commit.ids:
            return
        if labels is not None and not self.tracks(labels):
            self.clear()
        if labels is not None:
            self._array = weakref.ref(labels)
        self._done.append(commit)
        self._undone.clear()

    def tracks(self, labels: np.ndarray) -> bool:
        """False when the recorded commits were made in another array than ``labels``."""
        return self._array is None or self._array() is labels

    def undo(self, labels: np.ndarray) -> Commit | None:
        """Undo the last commit in ``labels``; None when there is nothing to undo."""
        return self._move(self._done, self._undone, labels, Commit.undo)

    def redo(self, labels: np.ndarray) -> Commit | None:
        """Apply the last undone commit again; None when there is nothing to redo."""
        return self._move(self._undone, self._done, labels, Commit.redo)

    @staticmethod
    def _move(src: list, dst: list, labels: np.ndarray, apply) -> Commit | None:
        if not src:
            return None
        c = src.pop()
        apply(c, labels)
        dst.append(c)
        return c

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()
        self._array = None
