"""Where commits go (numpy, no Qt): the target labels array, undo/redo per target, the next free
id, and the autosave store of the image. Used by :class:`~.core.AnnotationSession`; every method
returns what happened (commits, undo and redo with their status line) and the session turns it
into events and a status line.

Plane indices are tuples of the leading axes (``()`` for 2D); planes are ``(H, W)`` arrays.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from napari_promptseg.core.cancel import Cancelled
from napari_promptseg.labels.history import LabelsHistory
from napari_promptseg.labels.write import (
    LabelsCommit,
    PlaneEdit,
    lazy_labels,
    level0,
    max_label,
    read_plane,
    write_objects,
)

__all__ = ["CommitLog"]

#: commits touching more planes than this are autosaved in a job, not on the caller's thread
SYNC_PLANES = 16
#: autosave folders this process wrote: opening the image again in this process is not "earlier"
_OURS: set = set()


class CommitLog:
    """The labels that receive commits (see the module docstring)."""

    def __init__(self, schedule=None, on_problem: Callable[[str], None] = lambda text: None) -> None:
        self.schedule = schedule  # runs the "autosave" job of a big commit (None: save at once)
        self.on_problem = on_problem  # an autosave job failed: tell the user (the status line)
        self._queue: deque = deque()  # (planes, record) not saved yet, in order
        self._jobs = 0  # autosave jobs scheduled and not finished
        self._lock = threading.Lock()  # one drain at a time
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

    def blocked(self, plane: tuple[int, ...], overwrite: bool) -> np.ndarray | None:
        """Pixels a propagation leaves empty on ``plane``: committed objects, unless ``overwrite``."""
        if self.target is None or overwrite:
            return None
        return read_plane(self.target, plane) != 0

    def ensure(self, shape: tuple[int, ...], lazy: bool) -> bool:
        """Make a new int32 target of ``shape`` (a lazy zarr array when ``lazy``) if there is none;
        returns True when one was made."""
        if self.target is not None:
            return False
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

    def commit_preview(self, groups: Mapping[tuple[int, ...], np.ndarray], overwrite: bool, record: dict,
                       shape: tuple[int, ...]) -> tuple[LabelsCommit | None, str | None]:
        """:meth:`commit` of a preview's ``groups`` into the target of an image of ``shape``:
        (the commit, the status line), or (None, why nothing was written)."""
        if self.shape != shape:
            return None, (f"cannot commit: the labels' shape {self.shape} is not the image's {shape}; "
                          "choose other labels or new ones.")
        try:
            c, problem = self.commit(groups, overwrite, record)
        except (TypeError, ValueError, OverflowError) as err:
            return None, f"cannot commit: {err}"
        if not c.ids:
            return None, ("nothing committed: every pixel already belongs to another object "
                          "(check 'overwrite other objects' to replace them).")
        return c, problem or f"committed object{'s' * (len(c.ids) > 1)} {_ids(c)}. U: undo."

    def step(self, which: str) -> tuple[LabelsCommit | None, str | None]:
        """:meth:`replay` with the status line (``"undid object 3. Shift-U: redo."``)."""
        c, problem = self.replay(which)
        if c is None:
            return None, problem
        verb, hint = ("undid", " Shift-U: redo.") if which == "undo" else ("redid", "")
        return c, problem or f"{verb} object{'s' * (len(c.ids) > 1)} {_ids(c)}.{hint}"

    def replay(self, which: str) -> tuple[LabelsCommit | None, str | None]:
        """``which`` = "undo" or "redo": (the commit, None), or (None, why not)."""
        if self.target is None:
            return None, f"nothing to {which}."
        c, why = getattr(self.history(), which)(self.target)
        if c is None:
            return None, why or f"nothing to {which}."
        if isinstance(level0(self.target), np.ndarray):
            self._max = None  # an undone id is free again (found cheaply); lazy arrays keep the bound
        return c, self._autosave(which, c, {"ids": list(c.ids)})

    # ------------------------------------------------------------------ autosave
    def open_store(self, image, rgb: bool, source_path: str | None) -> str | None:
        """The autosave store of ``image``; returns its summary when it holds an earlier session."""
        from napari_promptseg.labels.autosave import AnnotationStore

        self.store = AnnotationStore.for_image(image, rgb=rgb, source_path=source_path)
        found = self.store.exists()
        # another process's (e.g. one that crashed) is set aside at our first save if not restored;
        # this process's own (the image opened again) is simply continued
        self._earlier_store = found and self.store.root not in _OURS
        return self.store.summary() if found else None

    def open_store_for(self, image, rgb: bool, source_path: str | None) -> tuple[str | None, str | None]:
        """:meth:`open_store`: (its summary when it holds an earlier session, None); (None, why
        autosave is off) when it cannot be opened."""
        try:
            return self.open_store(image, rgb, source_path), None
        except (OSError, ValueError) as err:
            self.store = None
            return None, f"autosave is off for this image: {err}"

    def _autosave(self, op: str, c: LabelsCommit, record: dict) -> str | None:
        """Save the planes ``c`` touched with ``record``: at once for up to
        :data:`SYNC_PLANES` planes (a kill right after loses nothing), else in a job (a
        propagated commit of hundreds of planes must not freeze the viewer)."""
        if self.store is None:
            return None
        planes = sorted({e.plane for e in c.edits})
        self._queue.append((planes, {"op": op, "time": time.time(), **record}))
        if self.schedule is None or (len(planes) <= SYNC_PLANES and not self._jobs):
            return self._drain()
        from napari_promptseg.session.jobs import Job

        def finished(problem: str | None) -> None:  # a replaced job's queue is drained by the next
            self._jobs -= 1
            if problem:
                self.on_problem(problem)

        def failed(err: BaseException) -> None:
            finished(None if isinstance(err, Cancelled) else f"autosave failed ({err}).")

        self._jobs += 1  # a small commit now queues behind this job, in order
        label = f"autosaving {len(planes)} planes"
        self.schedule(Job("autosave", self._drain, finished, failed, label=label))
        return None

    def _drain(self) -> str | None:
        """Save every queued commit in order (reads the target's planes as they are now)."""
        with self._lock:
            return self._drain_locked()

    def _drain_locked(self) -> str | None:
        try:
            while self._queue:
                planes, record = self._queue[0]
                if self._earlier_store:  # not restored: keep it aside, never mix two sessions
                    self._set_aside()
                _OURS.add(self.store.root)
                self.store.save({p: read_plane(self.target, p) for p in planes}, record,
                                shape=self.shape, dtype=level0(self.target).dtype)
                self._queue.popleft()
        except Exception as err:  # noqa: BLE001 - the labels are written: report, never lose them
            self._queue.clear()
            return f"autosave failed ({err}); the labels in napari are fine: save them (File > Save)."
        return None

    def _set_aside(self) -> None:
        from napari_promptseg.labels.autosave import AnnotationStore

        root = self.store.root
        root.rename(root.with_name(f"{root.name}.earlier-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.store = AnnotationStore(root)
        self._earlier_store = False

    def restore(self) -> tuple[LabelsCommit | None, str]:
        """Write the autosaved planes into the target (one undoable commit): (commit, message)."""
        if self.store is None or not self.store.exists():
            return None, "nothing autosaved for this image."
        shape, _, planes = self.store.load()
        if self.shape != tuple(shape):
            return None, f"cannot restore: the autosave has shape {tuple(shape)}, the labels {self.shape}."
        edits = []
        for p, new in planes.items():  # only into empty pixels: labels already there are kept
            cur = read_plane(self.target, p).ravel()
            idx = np.flatnonzero((cur == 0) & (new.ravel() != 0))
            if len(idx):
                edits.append(PlaneEdit(p, idx, cur[idx], new.ravel()[idx].astype(cur.dtype)))
        ids = tuple(sorted({int(i) for e in edits for i in np.unique(e.new)}))
        c = LabelsCommit(tuple(edits), ids, {})
        c.redo(self.target)
        self.history().record(c)
        if self._max is not None and ids:
            self._max = max(self._max, *ids)
        self._earlier_store = False  # the store is this session's now: later commits add to it
        return c, f"restored {len(ids)} autosaved label{'s' * (len(ids) != 1)}. U: undo."


def _ids(c: LabelsCommit) -> str:
    return ", ".join(map(str, c.ids))
