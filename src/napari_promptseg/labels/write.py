"""Committing objects into a labels array of any backing, plane by plane; each commit can be undone
(:mod:`napari_promptseg.labels.history` keeps the undo and redo stacks).

numpy + zarr only (no napari, no Qt). A *target* is a writable integer array whose last two axes
are (H, W): a numpy array, a zarr array, a dask array (written with ``__setitem__``, which updates
the dask array object in place), or a multiscale list/tuple of such arrays (level 0 is the truth,
lower levels get the nearest-neighbour downsampled plane). A *plane index* is the tuple of the
leading axes: ``()`` for (H, W), ``(z,)`` for (Z, H, W), ``(t, z)`` for (T, Z, H, W).
The target object is never replaced: only the bounding box of the changed pixels of each plane is
written (``target[idx + (rows, cols)] = values``), so a zarr array only rewrites those chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import zarr
import zarr.storage

__all__ = [
    "LabelsCommit", "PlaneEdit", "Plane", "lazy_labels", "level0", "max_label", "read_plane", "write_objects",
]

Plane = tuple[int, ...]
_WIDER = "convert the labels layer to a wider integer type (e.g. int32)"


def lazy_labels(shape: tuple[int, ...], dtype=np.uint32) -> zarr.Array:
    """An empty in-memory zarr labels array of ``shape`` (..., H, W), filled with 0.

    One chunk per plane (1, ..., 1, H, W), no compressor; nothing is allocated until a plane is
    written (and a plane written back to all zeros is dropped again)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"labels need at least 2 axes (H, W), got shape {shape}")
    chunks = (1,) * (len(shape) - 2) + shape[-2:]
    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype,
                             fill_value=0, compressors=None)


def _levels(target) -> list:
    if isinstance(target, Sequence) and not isinstance(target, str):
        if not len(target):
            raise ValueError("empty multiscale labels")
        return list(target)
    return [target]


def level0(target):
    """The full-resolution array of a multiscale target (a list/tuple of levels), else ``target``."""
    return _levels(target)[0]


def _key(idx: Plane, rows: slice = slice(None), cols: slice = slice(None)) -> tuple:
    return (*idx, rows, cols)


def read_plane(target, idx: Plane) -> np.ndarray:
    """A (H, W) copy of plane ``idx`` of level 0."""
    return np.array(level0(target)[_key(tuple(idx))])


def max_label(target, planes=None) -> int:
    """The largest id in level 0 (0 if empty), read plane by plane, or only over ``planes``."""
    base = level0(target)
    if planes is None and isinstance(base, np.ndarray):
        return int(base.max(initial=0))
    todo = np.ndindex(tuple(base.shape[:-2])) if planes is None else planes
    return max((int(read_plane(base, tuple(i)).max(initial=0)) for i in todo), default=0)


@dataclass(frozen=True, eq=False)
class PlaneEdit:
    """Plane ``plane`` of level 0: flat pixels ``indices`` (into its (H, W)) went ``old`` -> ``new``."""

    plane: Plane
    indices: np.ndarray
    old: np.ndarray
    new: np.ndarray


def _level_index(idx: Plane, lead0: tuple, lead: tuple) -> Plane | None:
    """The plane of a lower level sampled from level-0 plane ``idx`` (None: that level has none)."""
    out = []
    for i, s0, s in zip(idx, lead0, lead):
        f = max(1, round(s0 / s))
        if i % f or i // f >= s:
            return None
        out.append(i // f)
    return tuple(out)


def _write(levels: list, idx: Plane, plane: np.ndarray, where: np.ndarray) -> None:
    """Write the bounding box of flat pixels ``where`` of (H, W) ``plane`` into every level."""
    h0, w0 = plane.shape
    rows, cols = np.divmod(where, w0)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    levels[0][_key(idx, slice(r0, r1), slice(c0, c1))] = plane[r0:r1, c0:c1]
    lead0 = tuple(levels[0].shape[:-2])
    for lvl in levels[1:]:
        lidx = _level_index(idx, lead0, tuple(lvl.shape[:-2]))
        if lidx is None:
            continue
        h, w = lvl.shape[-2:]
        ry = np.minimum(np.arange(h) * max(1, round(h0 / h)), h0 - 1)  # plane[::f], edge-padded
        rx = np.minimum(np.arange(w) * max(1, round(w0 / w)), w0 - 1)
        rs, cs = np.flatnonzero((ry >= r0) & (ry < r1)), np.flatnonzero((rx >= c0) & (rx < c1))
        if rs.size and cs.size:
            sub = plane[np.ix_(ry[rs[0] : rs[-1] + 1], rx[cs[0] : cs[-1] + 1])]
            lvl[_key(lidx, slice(int(rs[0]), int(rs[-1]) + 1), slice(int(cs[0]), int(cs[-1]) + 1))] = sub


def _apply(target, edits: tuple[PlaneEdit, ...], attr: str) -> None:
    levels = _levels(target)
    for e in edits:
        plane = read_plane(levels[0], e.plane)
        plane.reshape(-1)[e.indices] = getattr(e, attr)
        _write(levels, e.plane, plane, e.indices)


@dataclass(frozen=True, eq=False)
class LabelsCommit:
    """One commit: per-plane edits, the new ``ids`` (increasing) and ``mapping`` object key -> id."""

    edits: tuple[PlaneEdit, ...] = ()
    ids: tuple[int, ...] = ()
    mapping: dict[int, int] = field(default_factory=dict)

    def undo(self, target) -> None:
        """Put the old values back, plane by plane (lower multiscale levels follow)."""
        _apply(target, self.edits, "old")

    def redo(self, target) -> None:
        """Write the new values again, plane by plane."""
        _apply(target, self.edits, "new")

    def changed_since(self, target, undone: bool = False) -> list[Plane]:
        """Planes whose committed pixels no longer hold what this commit left there (its new values,
        or the old ones when ``undone``): someone edited them since. Empty: safe to undo/redo."""
        attr = "old" if undone else "new"
        return [e.plane for e in self.edits
                if not np.array_equal(read_plane(target, e.plane).reshape(-1)[e.indices], getattr(e, attr))]


def _check_target(levels: list) -> None:
    for lvl in levels:
        dtype = np.dtype(getattr(lvl, "dtype", object))
        if dtype.kind not in "iu":
            raise TypeError(f"labels must have an integer dtype, got {dtype}")
        if getattr(lvl, "ndim", 0) < 2:
            raise ValueError(f"labels need at least 2 axes (H, W), got shape {getattr(lvl, 'shape', None)}")
        frozen = isinstance(lvl, np.ndarray) and not lvl.flags.writeable
        if frozen or getattr(lvl, "read_only", False) or not hasattr(lvl, "__setitem__"):
            raise TypeError(
                f"the labels array ({type(lvl).__name__}) cannot be written in place; write into a zarr "
                "array (e.g. lazy_labels(shape)) or a new labels layer instead"
            )


def _check_index(idx, lead: tuple) -> Plane:
    idx = tuple(int(i) for i in (idx if isinstance(idx, tuple) else (idx,)))
    if len(idx) != len(lead) or any(not 0 <= i < s for i, s in zip(idx, lead)):
        raise ValueError(f"plane index {idx} does not fit the labels' leading shape {lead}")
    return idx


def write_objects(
    target, planes: Mapping[Plane, np.ndarray], *, overwrite: bool = False, first_id: int | None = None
) -> LabelsCommit:
    """Write object keys into ``target`` in place, plane by plane; return the :class:`LabelsCommit`.

    planes: {plane index: (H, W) integer array of object keys, 0 = nothing}. Every distinct non-zero
    key over all planes gets one new id (an object on several planes is one 3D label), consecutive
    from ``first_id`` (default ``max_label(target) + 1``) in increasing key order; keys left with no
    pixel get no id. Pixels already non-zero keep their value unless ``overwrite``. Only the given
    planes are read and written (plus the matching planes of lower multiscale levels).
    """
    levels = _levels(target)
    _check_target(levels)
    base = levels[0]
    lead, hw = tuple(base.shape[:-2]), tuple(base.shape[-2:])
    found = []  # (plane index, flat pixels to write, their keys, the level-0 plane)
    for idx, keys in planes.items():
        idx = _check_index(idx, lead)
        k = np.asarray(keys)
        if k.shape != hw:
            raise ValueError(f"objects for plane {idx} have shape {k.shape}; the labels planes are {hw}")
        if k.dtype.kind not in "iub":
            raise TypeError(f"object keys must be integers, got {k.dtype}")
        plane = read_plane(base, idx)
        where = np.flatnonzero(k)
        if not overwrite:
            where = where[plane.reshape(-1)[where] == 0]
        found.append((idx, where, k.reshape(-1)[where].astype(np.int64), plane))
    present = np.unique(np.concatenate([f[2] for f in found])) if found else np.zeros(0, np.int64)
    if not present.size:
        return LabelsCommit()
    start = max_label(base) + 1 if first_id is None else int(first_id)
    last = start + present.size - 1
    if start < 1:
        raise ValueError(f"first_id must be >= 1, got {start}")
    if last > np.iinfo(base.dtype).max:
        raise OverflowError(f"labels of dtype {np.dtype(base.dtype)} cannot hold id {last}; {_WIDER}")
    edits = []
    for idx, where, k, plane in found:
        if not where.size:
            continue
        flat = plane.reshape(-1)
        new = (start + np.searchsorted(present, k)).astype(plane.dtype)
        edits.append(PlaneEdit(idx, where.astype(np.intp), flat[where].copy(), new))
        flat[where] = new
        _write(levels, idx, plane, where)
    ids = tuple(range(start, last + 1))
    return LabelsCommit(tuple(edits), ids, {int(key): i for key, i in zip(present, ids)})
