"""Where commits go (numpy, no Qt): the target labels array, undo/redo per target, the next free
id, and the autosave store of the image. Used by :class:`~.core.AnnotationSession`; every method
returns what happened and the session turns it into events and a status line.

Plane indices are tuples of the leading axes (``()`` for 2D); planes are ``(H, W)`` arrays.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from ..labels_io import LabelsCommit, LabelsHistory, PlaneEdit, level0, max_label, read_plane, write_objects

__all__ = ["CommitLog"]


class CommitLog:
    """The labels that receive commits (see the module docstring)."""

    def __init__(self) -> None:
        self.target = None  # numpy, zarr or dask array, or a multiscale list (level 0 first)
        self.store = None  # AnnotationStore of the image, or None (autosave off)
        self._histories: dict[int, tuple[object, LabelsHistory]] = {}
        self._max: int | None = None  # largest id in the target, None: not known
        self._earlier_store = False  # the store holds a session that was not restored

    @property
    def shape(self) -> tuple[int, ...] | None:
        return None if self.target is None else tuple(level0(self.target).shape)

    def set_target(self, target) -> None:
        """Commit into ``target`` from now on (None: a new array at the next commit)."""
        if target is not self.target:
            self.target, self._max = target, None

    def target_edited(self, value: int | None = None) -> None:
        """The target was edited outside the session (napari's brush): ``value`` is the id painted,
        None when unknown (the largest id is then found again at the next commit)."""
        if value is None or self._max is None:
            self._max = None
        else:
            self._max = max(self._max, int(value))

    def ensure(self, shape: tuple[int, ...], lazy: bool) -> bool:
        """Make a new int32 target of ``shape`` (a lazy zarr array when ``lazy``) if there is none;
        returns True when one was made."""
        if self.target is not None:
            return False
        from ..labels_io import lazy_labels

        self.target = lazy_labels(shape, np.int32) if lazy else np.zeros(shape, np.int32)
        self._max = 0
        return True

    def history(self) -> LabelsHistory:
        arr = level0(self.target)
        key = id(arr)
        if key not in self._histories or self._histories[key][0] is not arr:
            self._histories[key] = (arr, LabelsHistory())
        return self._histories[key][1]

    def commit(self, groups: Mapping[tuple[int, ...], np.ndarray], overwrite: bool, record: dict) -> tuple[
            LabelsCommit, str | None]:
        """Write ``{plane: (H, W) object ids}`` with new label ids (one per object). Raises
        TypeError, ValueError or OverflowError (wrong target); returns the commit and an autosave
        error message (None when saved or autosave is off)."""
        if self._max is None:
            self._max = max_label(self.target)
        c = write_objects(self.target, groups, overwrite=overwrite, first_id=self._max + 1)
        if not c.ids:
            return c, None
        self._max = max(self._max, *c.ids)
        self.history().record(c)
        return c, self._autosave("commit", c, {"ids": list(c.ids), **record,
                                               "objects": {str(k): v for k, v in c.mapping.items()}})

    def replay(self, which: str) -> tuple[LabelsCommit | None, str | None]:
        """``which`` = "undo" or "redo": (the commit, None), or (None, why not)."""
        if self.target is None:
            return None, f"nothing to {which}."
        c, why = getattr(self.history(), which)(self.target)
        if c is None:
            return None, why or f"nothing to {which}."
        self._max = None  # an undone id is free again: the next commit finds the largest one
        return c, self._autosave(which, c, {"ids": list(c.ids)})

    # ------------------------------------------------------------------ autosave
    def open_store(self, image, rgb: bool, source_path: str | None) -> str | None:
        """The autosave store of ``image``; returns its summary when it holds an earlier session."""
        from ..autosave import AnnotationStore

        self.store = AnnotationStore.for_image(image, rgb=rgb, source_path=source_path)
        self._earlier_store = self.store.exists()
        return self.store.summary() if self._earlier_store else None

    def _autosave(self, op: str, c: LabelsCommit, record: dict) -> str | None:
        if self.store is None:
            return None
        try:
            if self._earlier_store:  # not restored: keep it aside, never mix two sessions
                self._set_aside()
            planes = sorted({e.plane for e in c.edits})
            self.store.save({p: read_plane(self.target, p) for p in planes},
                            {"op": op, "time": time.time(), **record},
                            shape=self.shape, dtype=level0(self.target).dtype)
        except OSError as err:
            return f"autosave failed ({err}); the labels in napari are fine: save them (File > Save)."
        return None

    def _set_aside(self) -> None:
        from ..autosave import AnnotationStore

        root = self.store.root
        root.rename(root.with_name(f"{root.name}.earlier-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.store = AnnotationStore(root)
        self._earlier_store = False

    def restore(self) -> tuple[LabelsCommit | None, str]:
        """Write the autosaved planes into the target (one undoable commit): (commit, message)."""
        if self.store is None or not self._earlier_store:
            return None, "nothing autosaved for this image."
        shape, _, planes = self.store.load()
        if self.shape != tuple(shape):
            return None, f"cannot restore: the autosave has shape {tuple(shape)}, the labels {self.shape}."
        edits = []
        for p, new in planes.items():
            cur = read_plane(self.target, p)
            idx = np.flatnonzero(cur.ravel() != new.ravel())
            if len(idx):
                edits.append(PlaneEdit(p, idx, cur.ravel()[idx], new.ravel()[idx].astype(cur.dtype)))
        ids = tuple(sorted({int(i) for e in edits for i in np.unique(e.new) if i}))
        c = LabelsCommit(tuple(edits), ids, {})
        c.redo(self.target)
        self.history().record(c)
        self._max = None
        self._earlier_store = False  # the store is this session's now: later commits add to it
        return c, f"restored {len(ids)} autosaved label{'s' * (len(ids) != 1)}. U: undo."
