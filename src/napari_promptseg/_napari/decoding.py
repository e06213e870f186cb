"""Run decodes off the UI thread so that the newest prompt state always wins.

At most one decode runs at a time; while it runs, newer requests replace each other in a single
slot, so rapid edits never queue up. Every result comes back on the UI thread with the token it
was submitted with; the caller drops results whose token is no longer current (stale).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["LatestOnlyRunner"]


class LatestOnlyRunner(QObject):
    """``submit(token, fn)`` runs ``fn()`` in a worker thread; ``finished(token, result, error)``."""

    finished = Signal(object, object, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: tuple[Any, Callable[[], Any]] | None = None
        self._busy = False
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False

    def submit(self, token: Any, fn: Callable[[], Any]) -> None:
        """Schedule ``fn``; an older request that has not started yet is discarded."""
        with self._lock:
            if self._closed:
                return
            self._pending = (token, fn)
            if self._busy:
                return
            self._busy = True
            self._idle.clear()
        # not a daemon: at exit Python waits for the running call (a daemon thread killed inside
        # torch aborts the process: "terminate called without an active exception")
        threading.Thread(target=self._loop, name="promptseg-worker", daemon=False).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._pending is None or self._closed:
                    self._pending = None
                    self._busy = False  # under the lock: a submit() now starts a new thread
                    self._idle.set()
                    return
                token, fn = self._pending
                self._pending = None
            try:
                result, error = fn(), None
            except BaseException as err:  # noqa: BLE001 - handed to the UI thread
                result, error = None, err
            with self._lock:  # close() cannot slip in between the check and the emit
                if not self._closed:
                    try:
                        self.finished.emit(token, result, error)  # queued to the UI thread
                    except RuntimeError:  # the Qt object was deleted with its widget
                        self._closed, self._pending = True, None

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no decode runs (for scripts and benchmarks; not for the UI thread)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Drop pending work; a running decode finishes but its result is not emitted."""
        with self._lock:
            self._closed = True
            self._pending = None
