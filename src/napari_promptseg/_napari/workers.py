"""The one way slow work runs in the GUI: session :class:`~napari_promptseg.session.Job` objects in
napari's (superqt) thread workers.

Per job kind at most one runs and only the newest waits (rapid edits never queue up; a waiting
job that is replaced is cancelled), except the kinds in :data:`~napari_promptseg.session.jobs.
QUEUED_KINDS` (autosave): those all run in order and are never cancelled. Results come back on the
UI thread through the workers' signals; the session drops stale ones. Labelled jobs get a napari
progress bar. A job that fails (not cancelled) is also shown in napari's notifications. ``close()``
cancels everything else (an encoder stops at its next block, so closing returns at once, and
napari's quit, which quits and awaits every worker, does not wait for a whole embedding either) and
waits for a running autosave.
"""

from __future__ import annotations

from napari.qt.threading import create_worker

from napari_promptseg.core.cancel import Cancelled, cancel_scope
from napari_promptseg.session.jobs import QUEUED_KINDS, Job

__all__ = ["WorkerScheduler", "CLOSE_WAIT_MS"]

#: how long closing waits for cancelled jobs to stop (ms)
CLOSE_WAIT_MS = 10_000


class _Stopped:
    """A cancelled (or, for steps, failed) job's result: its exception, returned (an exception
    returned by the work would be raised again)."""

    def __init__(self, err: Exception) -> None:
        self.err = err


class WorkerScheduler:
    """``scheduler(job)``: run ``job`` in a napari worker (see the module docstring)."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[Job, object]] = {}
        self._waiting: dict[str, list[Job]] = {}  # one job per kind, several for QUEUED_KINDS
        self._closed = False

    def __call__(self, job: Job) -> None:
        if self._closed:
            return
        if job.kind in self._running:
            waiting = self._waiting.setdefault(job.kind, [])
            if job.kind not in QUEUED_KINDS:
                for old in waiting:
                    old.token.cancel()
                    old.on_error(Cancelled("replaced by newer work"))
                waiting.clear()
            waiting.append(job)
            return
        self._start(job)

    @property
    def busy(self) -> bool:
        """True while a job on the image runs or waits (a model load in the background is not one:
        see :meth:`running`)."""
        return any(k != "load" for k in (*self._running, *(k for k, w in self._waiting.items() if w)))

    def running(self, kind: str) -> bool:
        return kind in self._running or bool(self._waiting.get(kind))

    def _start(self, job: Job) -> None:
        from napari.utils import progress

        pbar = progress(total=0, desc=f"promptseg: {job.label}") if job.label else None

        if job.on_step is not None:
            def work():
                with cancel_scope(lambda: worker.abort_requested):
                    try:
                        yield from job.iterate()
                    except Cancelled as err:  # returned, not raised: napari shows a worker's errors
                        return _Stopped(err)
                    except RuntimeError as err:  # superqt takes it for a deleted worker: never finished
                        return _Stopped(err)
        else:
            def work():
                with cancel_scope(lambda: worker.abort_requested):
                    try:
                        return job.compute()
                    except Cancelled as err:
                        return _Stopped(err)

        # errors reach the job through on_errored; without _ignore_errors napari re-raises them too
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        state = {"error": None, "result": None}

        def on_step(item) -> None:
            if pbar is not None and hasattr(item, "total"):
                pbar.total = max(int(item.total), 1)
                pbar.n = min(int(item.done), pbar.total)
                pbar.refresh()
            if not self._closed and not job.token.cancelled:
                job.on_step(item)

        def on_returned(result) -> None:
            state["result"] = result

        def on_errored(err) -> None:
            state["error"] = err

        def on_finished() -> None:
            if pbar is not None:
                pbar.close()
            try:  # the kind stays taken meanwhile: a job these schedule waits (newest wins)
                if not self._closed:
                    stopped = state["result"] if isinstance(state["result"], _Stopped) else None
                    cancelled = worker.abort_requested or job.token.cancelled  # a result not to apply
                    if state["error"] is not None or cancelled or stopped is not None:
                        err = state["error"] or (stopped.err if stopped else Cancelled("cancelled"))
                        job.on_error(err)
                        if not isinstance(err, Cancelled):
                            _notify(job, err)
                    else:
                        job.on_done(state["result"])
            finally:
                if self._running.get(job.kind, (None,))[0] is job:
                    del self._running[job.kind]
                waiting = self._waiting.get(job.kind)
                if waiting and not self._closed:
                    self._start(waiting.pop(0))

        if job.on_step is not None:
            worker.yielded.connect(on_step)
        worker.returned.connect(on_returned)
        worker.errored.connect(on_errored)
        worker.finished.connect(on_finished)
        self._running[job.kind] = (job, worker)
        worker.start()

    def cancel(self, kind: str) -> None:
        """Cancel the running and waiting job of ``kind``; a waiting job hears it (on_error).
        Jobs of :data:`QUEUED_KINDS` (autosave) are never cancelled."""
        if kind in QUEUED_KINDS:
            return
        for job in self._waiting.pop(kind, []):
            job.token.cancel()
            job.on_error(Cancelled("cancelled"))
        if kind in self._running:
            self._running[kind][0].token.cancel()

    def close(self, wait_ms: int = CLOSE_WAIT_MS) -> None:
        """Cancel every job (their results are dropped) and wait up to ``wait_ms`` for the running
        ones to stop: a worker still running when a script's interpreter exits emits into deleted
        Qt objects and aborts the process. Cancelled work stops at its next check (an encoder at
        its next block), so this is short."""
        from qtpy.QtCore import QThreadPool

        self._closed = True
        for kind, waiting in self._waiting.items():
            for job in waiting:
                if kind in QUEUED_KINDS:  # never dropped: saved here, on the caller's thread
                    try:
                        job.compute()  # its result is not applied: the session is closed
                    except Exception as err:  # noqa: BLE001 - closing goes on; the user is told
                        _notify(job, err)
                else:
                    job.token.cancel()
        self._waiting.clear()
        running = list(self._running.values())
        for job, worker in running:
            if job.kind not in QUEUED_KINDS:  # a running autosave finishes (waited for below)
                job.token.cancel()
                worker.quit()
        if running:
            QThreadPool.globalInstance().waitForDone(int(wait_ms))


def _notify(job: Job, err: BaseException) -> None:
    """A failed job in napari's notifications (the status line has the session's own words)."""
    from napari.utils.notifications import show_error

    from napari_promptseg.embed.entry import explain_error

    show_error(f"promptseg: {job.label or job.kind} failed: {explain_error(err)}")
