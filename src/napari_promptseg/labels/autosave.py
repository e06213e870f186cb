"""Crash-safe autosave of committed labels and the prompts that made them (numpy, stdlib, xxhash).

The annotation session calls :meth:`AnnotationStore.save` after every commit, undo and redo with
the full content of the planes that changed; opening the same image again (same content key,
:func:`~napari_promptseg.core.hashing.image_key`) offers to restore with
:meth:`AnnotationStore.load`. A store folder holds ``meta.json`` (shape, dtype, format version),
``planes/plane_<i>_<j>.npz`` (plane index (i, j); ``plane.npz`` in 2D) and ``journal.jsonl``
(one json record per save, with the planes it wrote and the label ids on each, so that
:meth:`AnnotationStore.summary` reads no plane). Each plane is written to a temporary file in the same folder,
fsynced and renamed over the old one (an all-zero plane is stored by deleting its file); only
then is the journal line appended and fsynced. A kill at any instant leaves each plane in its
previous or its new state; torn journal lines are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_promptseg.core.hashing import image_key

__all__ = ["AnnotationStore", "AutosaveWarning", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT = "napari-promptseg annotations"
_PLANE = re.compile(r"plane((?:_\d+)*)\.npz")


class AutosaveWarning(UserWarning):
    """A stored plane could not be read; it is left out of what is restored."""


def _fsync_dir(path: Path) -> None:
    try:  # makes a rename durable on POSIX; directories cannot be opened on Windows
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported by every file system
        pass
    os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, os.PathLike)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not json-serialisable")


class AnnotationStore:
    """Autosaved labels of one image in the folder ``root`` (created on the first save)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.root)!r})"

    @classmethod
    def for_image(cls, image: Any, *, rgb: bool = False, source_path: str | None = None) -> AnnotationStore:
        """The store of ``image``: ``<source_path>.promptseg/<key[:16]>/`` when the image file's
        folder is writable, else ``<cache root>/annotations/<key>/`` (``$PROMPTSEG_CACHE_DIR``)."""
        key = image_key(image, rgb=rgb)
        if source_path:
            src = Path(source_path).expanduser()
            side = Path(f"{src}.promptseg")
            folder = side if side.is_dir() else src.parent
            if src.parent.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                return cls(side / key[:16])
        from napari_promptseg.models.weights import cache_dir

        return cls(cache_dir() / "annotations" / key)

    # -- paths -----------------------------------------------------------------------------------

    _meta = property(lambda self: self.root / "meta.json")
    _journal = property(lambda self: self.root / "journal.jsonl")

    def _plane_path(self, idx: tuple[int, ...]) -> Path:
        return self.root / "planes" / ("plane" + "".join(f"_{i}" for i in idx) + ".npz")

    def _read_meta(self) -> tuple[tuple[int, ...], np.dtype]:
        try:
            meta = json.loads(self._meta.read_text())
            if meta.get("format") != _FORMAT or meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
            return tuple(int(s) for s in meta["shape"]), np.dtype(meta["dtype"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"the autosaved annotations in {self.root} cannot be read ({type(e).__name__}: {e}); "
                f"delete the folder {self.root} to discard them"
            ) from None

    # -- writing ---------------------------------------------------------------------------------

    def save(self, planes: Mapping[tuple[int, ...], np.ndarray], record: dict, *,
             shape: tuple[int, ...], dtype: Any) -> None:
        """Store the full current content of the changed ``planes``, then journal ``record``.

        planes: {plane index (the leading axes of ``shape``, ``()`` in 2D): (H, W) array};
        record: json-able dict (numpy values are converted), stored with the plane list under
        ``"planes"`` and the ids on each of those planes under ``"plane_ids"``; shape, dtype: of
        the whole labels array. The meta is (re)written when it is missing or its dtype differs;
        a different shape raises ValueError.
        """
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if len(shape) < 2:
            raise ValueError(f"labels shape must be (..., H, W), got {shape}")
        lead, hw = shape[:-2], shape[-2:]
        checked = {}
        for idx, plane in planes.items():
            idx = tuple(int(i) for i in (idx if isinstance(idx, tuple) else (idx,)))
            if len(idx) != len(lead) or not all(0 <= i < s for i, s in zip(idx, lead)):
                raise ValueError(f"plane index {idx} does not fit the leading axes {lead}")
            arr = np.asarray(plane)
            if arr.shape != hw:
                raise ValueError(f"plane {idx} has shape {arr.shape}, expected {hw}")
            checked[idx] = arr.astype(dtype, copy=False)
        (self.root / "planes").mkdir(parents=True, exist_ok=True)
        try:
            old_shape, old_dtype = self._read_meta() if self._meta.exists() else (None, None)
        except ValueError:
            old_shape, old_dtype = None, None  # unreadable: replaced by the current one
        if old_shape is not None and old_shape != shape:
            raise ValueError(f"{self.root} holds labels of shape {old_shape}, not {shape}")
        if old_dtype != dtype:
            meta = {"format": _FORMAT, "version": FORMAT_VERSION, "shape": list(shape), "dtype": dtype.str}
            _write_atomic(self._meta, lambda f: f.write(json.dumps(meta).encode()))
        for idx, arr in checked.items():
            path = self._plane_path(idx)
            if arr.any():
                _write_atomic(path, lambda f, a=arr: np.savez_compressed(f, plane=a))
            else:
                path.unlink(missing_ok=True)
        _fsync_dir(self.root / "planes")
        _fsync_dir(self.root)
        line = json.dumps({**record, "planes": [list(i) for i in checked],
                           "plane_ids": [np.unique(a[a != 0]).tolist() for a in checked.values()]},
                          default=_json_default)
        with open(self._journal, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line: end it, so that ours stays whole
                    line = "\n" + line
            f.write((line + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        """Delete the store's folder."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------

    def records(self) -> list[dict]:
        """The journal, oldest first; lines torn by a crash are skipped."""
        return list(self._iter_records())

    def _iter_records(self):
        try:
            data = self._journal.read_bytes()
        except OSError:
            return
        for raw in data.split(b"\n"):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # empty, or torn by a crash
            if isinstance(rec, dict):
                yield rec

    def exists(self) -> bool:
        """Whether there is something to restore (at least one journal record)."""
        return next(self._iter_records(), None) is not None

    def load(self) -> tuple[tuple[int, ...], np.dtype, dict[tuple[int, ...], np.ndarray]]:
        """(shape, dtype, {plane index: (H, W) array}) of every non-empty stored plane.

        Raises ValueError (naming the folder to delete) when the meta is missing or corrupt; an
        unreadable plane is reported with :class:`AutosaveWarning` and left out.
        """
        shape, dtype = self._read_meta()
        lead, planes = shape[:-2], {}
        try:
            names = sorted(os.listdir(self.root / "planes"))
        except OSError:
            names = []
        for name in names:
            m = _PLANE.fullmatch(name)
            if not m:
                continue  # temporary files of an interrupted write
            idx = tuple(int(i) for i in m.group(1).split("_")[1:])
            try:
                with open(self.root / "planes" / name, "rb") as f, np.load(f, allow_pickle=False) as z:
                    arr = z["plane"]
                if len(idx) != len(lead) or arr.shape != shape[-2:]:
                    raise ValueError(f"shape {arr.shape} at {idx} does not fit {shape}")
            except Exception as e:  # noqa: BLE001 - one bad plane must not block the others
                warnings.warn(f"autosaved plane {self.root / 'planes' / name} is unreadable "
                              f"({type(e).__name__}: {e}); it is not restored", AutosaveWarning,
                              stacklevel=2)
                continue
            if arr.any():
                planes[idx] = arr.astype(dtype, copy=False)
        return shape, dtype, planes

    def summary(self) -> str:
        """One line for a restore dialog, e.g. "12 commits, 7 labels on 3 planes, last saved ...",
        read from the journal and the meta only: no plane is read (a store written before the
        journal listed each plane's ids says "labels on N planes")."""
        recs = self.records()
        ops = Counter(str(r.get("op", "save")) for r in recs)
        parts = [_n(n, op) for op, n in ops.items()] or ["nothing saved"]
        try:
            self._read_meta()
        except ValueError:
            parts.append("labels unreadable")
        else:
            latest = _plane_ids(recs)  # each save stored its planes whole: the last record is the truth
            if all(ids is not None for ids in latest.values()):
                on = [set(ids) for ids in latest.values() if ids]
                parts.append(f"{_n(len(set().union(*on)), 'label')} on {_n(len(on), 'plane')}")
            else:
                parts.append(f"labels on {_n(len(self._plane_names()), 'plane')}")
        try:
            mtime = self._journal.stat().st_mtime
            parts.append(f"last saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(mtime))}")
        except OSError:
            pass
        return ", ".join(parts)

    def _plane_names(self) -> list[str]:
        """The names of the stored (non-empty) plane files."""
        try:
            return [n for n in os.listdir(self.root / "planes") if _PLANE.fullmatch(n)]
        except OSError:
            return []


def _plane_ids(records: list[dict]) -> dict[str, list | None]:
    """{plane index (as json): the ids its last record says it holds (None: not said, a record of
    an older version)}."""
    latest: dict[str, list | None] = {}
    for r in records:
        planes, ids = r.get("planes"), r.get("plane_ids")
        if not isinstance(planes, list):
            continue
        if not (isinstance(ids, list) and len(ids) == len(planes)):
            ids = [None] * len(planes)
        for p, i in zip(planes, ids):
            try:
                latest[json.dumps(p)] = [int(v) for v in i] if isinstance(i, list) else None
            except (TypeError, ValueError):
                latest[json.dumps(p)] = None
    return latest


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
