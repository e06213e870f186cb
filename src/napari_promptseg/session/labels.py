"""Where commits go (numpy, no Qt): the target labels array, undo/redo per target, the next free
id, and the autosave store of the image. Used by :class:`~.core.AnnotationSession`; every method
returns what happened (commits, undo and redo with their status line) and the session turns it
into events and a status line.

Plane indices are tuples of the leading axes (``()`` for 2D); planes are ``(H, W)`` arrays.

Nothing committed is dropped from the autosave: a save that fails keeps its commits queued, and
they are saved again at the next save and by :meth:`CommitLog.flush` (closing, switching images).
The undo history of each live target is bounded in bytes (``undo_bytes``); the history of a target
that is gone (freed) is dropped with it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter, deque
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
from napari_promptseg.session.settings import MB

__all__ = ["CommitLog"]

#: commits touching more planes than this are autosaved in a job, not on the caller's thread
SYNC_PLANES = 16
#: autosave folders this process wrote: opening the image again in this process is not "earlier"
_OURS: set = set()


class CommitLog:
    """The labels that receive commits (see the module docstring)."""

    def __init__(self, schedule=None, on_problem: Callable[[str], None] = lambda text: None,
                 undo_bytes: Callable[[], int | None] | int | None = None) -> None:
        self.schedule = schedule  # runs the "autosave" and "summary" jobs (None: at once)
        self.on_problem = on_problem  # an autosave job failed: tell the user (the status line)
        self.undo_bytes = undo_bytes  # the bound of each target's undo history (or a getter of it)
        self._queue: deque = deque()  # (planes, record, target) not saved yet, in order
        self._jobs = 0  # autosave jobs scheduled and not finished
        self._lock = threading.Lock()  # one drain at a time (a job's and a flush)
        self.target = None  # numpy, zarr or dask array, or a multiscale list (level 0 first)
        self.store = None  # AnnotationStore of the image, or None (autosave off)
        # id(level 0) -> (a reference to it, its history): weak, so a freed target frees its steps
        self._histories: dict[int, tuple[Callable[[], object], LabelsHistory]] = {}
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
        """The undo history of the current target, bounded by :attr:`undo_bytes` (histories of
        targets that are gone are dropped)."""
        arr = level0(self.target)
        for key, (ref, _) in list(self._histories.items()):
            held = ref()
            if held is None or (held is not arr and isinstance(ref, _Strong)):
                del self._histories[key]
        key = id(arr)
        if key not in self._histories or self._histories[key][0]() is not arr:
            self._histories[key] = (_ref(arr), LabelsHistory())
        h = self._histories[key][1]
        limit = self.undo_bytes() if callable(self.undo_bytes) else self.undo_bytes
        h.max_bytes = None if limit is None else int(limit)
        return h

    def _record(self, c: LabelsCommit) -> str | None:
        """Put ``c`` on the undo history; a note when the oldest steps had to go."""
        h = self.history()
        return _full(h, h.record(c))

    def trim_history(self) -> str | None:
        """Apply a changed :attr:`undo_bytes` to the current target's history now: a note when
        the oldest steps had to go."""
        if self.target is None:
            return None
        h = self.history()
        return _full(h, h.trim())

    def commit(self, groups: Mapping[tuple[int, ...], np.ndarray], overwrite: bool, record: dict) -> tuple[
            LabelsCommit, str | None]:
        """Write ``{plane: (H, W) object ids}`` with new label ids (one per object). Raises
        TypeError, ValueError or OverflowError (wrong target); returns the commit and what went
        wrong or was lost on the way (an autosave error, the oldest undo steps dropped; None: nothing)."""
        c, problem, note = self._commit(groups, overwrite, record)
        return c, _join(problem, note)

    def _commit(self, groups, overwrite: bool, record: dict) -> tuple[LabelsCommit, str | None, str | None]:
        if self._max is None:
            self._max = max_label(self.target)
        c = write_objects(self.target, groups, overwrite=overwrite, first_id=self._max + 1)
        if not c.ids:
            return c, None, None
        self._max = max(self._max, *c.ids)
        note = self._record(c)
        return c, self._autosave("commit", c, {"ids": list(c.ids), **record,
                                               "objects": {str(k): v for k, v in c.mapping.items()}}), note

    def commit_preview(self, groups: Mapping[tuple[int, ...], np.ndarray], overwrite: bool, record: dict,
                       shape: tuple[int, ...]) -> tuple[LabelsCommit | None, str | None]:
        """:meth:`commit` of a preview's ``groups`` into the target of an image of ``shape``:
        (the commit, the status line), or (None, why nothing was written)."""
        if self.shape != shape:
            return None, (f"cannot commit: the labels' shape {self.shape} is not the image's {shape}; "
                          "choose other labels or new ones.")
        try:
            c, problem, note = self._commit(groups, overwrite, record)
        except (TypeError, ValueError, OverflowError) as err:
            return None, f"cannot commit: {err}"
        if not c.ids:
            return None, ("nothing committed: every pixel already belongs to another object "
                          "(check 'overwrite other objects' to replace them).")
        return c, _join(problem or f"committed object{'s' * (len(c.ids) > 1)} {_ids(c)}. U: undo.", note)

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
    def open_store(self, image, rgb: bool, source_path: str | None) -> bool:
        """Use the autosave store of ``image``; returns whether it holds an earlier session."""
        from napari_promptseg.labels.autosave import AnnotationStore

        self.store = AnnotationStore.for_image(image, rgb=rgb, source_path=source_path)
        found = self.store.exists()
        # another process's (e.g. one that crashed) is set aside at our first save if not restored;
        # this process's own (the image opened again) is simply continued
        self._earlier_store = found and self.store.root not in _OURS
        return found

    def open_store_for(self, image, rgb: bool, source_path: str | None,
                       on_summary: Callable[[str], None]) -> str | None:
        """:meth:`open_store`; when it holds an earlier session, its summary is read (from the
        journal) in a "summary" job and handed to ``on_summary``. Returns why autosave is off
        for this image (it cannot be opened), None when it is on."""
        try:
            found = self.open_store(image, rgb, source_path)
        except (OSError, ValueError) as err:
            self.store = None
            return f"autosave is off for this image: {err}"
        if found:
            from napari_promptseg.session.jobs import Job, run_now

            def failed(err: BaseException) -> None:
                if not isinstance(err, Cancelled):
                    on_summary(f"its summary cannot be read: {err}")

            (self.schedule or run_now)(Job("summary", self.store.summary, on_summary, failed))
        return None

    def _autosave(self, op: str, c: LabelsCommit, record: dict) -> str | None:
        """Save the planes ``c`` touched with ``record`` (after any commits still queued): at
        once when up to :data:`SYNC_PLANES` planes wait (a kill right after loses nothing), else
        in a job (a propagated commit of hundreds of planes must not freeze the viewer)."""
        if self.store is None:
            return None
        planes = sorted({e.plane for e in c.edits})
        self._queue.append((planes, {"op": op, "time": time.time(), **record}, self.target))
        waiting = 0 if self._jobs else sum(len(q[0]) for q in tuple(self._queue))  # with retried ones
        if self.schedule is None or (not self._jobs and waiting <= SYNC_PLANES):
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

    def flush(self) -> str | None:
        """Save every queued commit now, on the caller's thread (waiting for an autosave job that
        is saving): None when everything is saved (or autosave is off), else what was not saved
        and what to do. Call it before the log is dropped (closing, another image)."""
        with self._lock:
            return self._drain_locked(final=True)

    def _drain(self) -> str | None:
        """Save every queued commit in order (reads the target's planes as they are now)."""
        with self._lock:
            return self._drain_locked(final=False)

    def _drain_locked(self, final: bool) -> str | None:
        while self._queue:
            planes, record, target = self._queue[0]
            try:
                if self.store is None:  # autosave went off: nothing to save into
                    self._queue.clear()
                    return None
                if self._earlier_store:  # not restored: keep it aside, never mix two sessions
                    self._set_aside()
                _OURS.add(self.store.root)
                base = level0(target)
                self.store.save({p: read_plane(target, p) for p in planes}, record,
                                shape=tuple(base.shape), dtype=base.dtype)
            except Exception as err:  # noqa: BLE001 - the labels are written: report, never lose them
                return self._unsaved(err, final)
            self._queue.popleft()
        return None

    def _unsaved(self, err: Exception, final: bool) -> str:
        """What a failed save left out of the autosave (kept queued), and what to do."""
        queued = tuple(self._queue)
        ops = Counter(str(q[1].get("op")) for q in queued)  # commit, undo, redo
        planes = len({p for q in queued for p in q[0]})
        what = f"{', '.join(f'{n} {op}{_s(n)}' for op, n in ops.items())} on {planes} plane{_s(planes)}"
        then = ("" if final else "; it is tried again at the next commit, undo or redo and when the "
                "image is closed or changes")
        return (f"autosave failed ({err}): {what} not in the autosave{then}; the labels in napari are "
                "fine: save them (File > Save) to be safe.")

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
        note = self._record(c)
        if self._max is not None and ids:
            self._max = max(self._max, *ids)
        self._earlier_store = False  # the store is this session's now: later commits add to it
        return c, _join(f"restored {len(ids)} autosaved label{'s' * (len(ids) != 1)}. U: undo.", note)


def _ids(c: LabelsCommit) -> str:
    return ", ".join(map(str, c.ids))


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _join(text: str | None, note: str | None) -> str | None:
    """``text``, then ``note`` as a sentence of its own."""
    if not note:
        return text
    return f"{text} {note[0].upper()}{note[1:]}" if text else note


def _full(h: LabelsHistory, dropped: int) -> str | None:
    """The note when ``dropped`` oldest steps left the undo history ``h``."""
    if not dropped:
        return None
    which = "the oldest step" if dropped == 1 else f"the {dropped} oldest steps"
    mb = h.max_bytes / MB
    size = f"{mb:.0f}" if mb >= 10 else f"{mb:.2g}"
    return (f"undo history is full ({size} MB): {which} can no longer be undone; "
            "raise 'undo memory' in the settings.")


class _Strong:
    """A strong reference that reads like a weak one (for arrays that take no weak reference)."""

    def __init__(self, obj) -> None:
        self._obj = obj

    def __call__(self):
        return self._obj


def _ref(obj) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return _Strong(obj)
