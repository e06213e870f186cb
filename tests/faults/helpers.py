"""Shared pieces of the fault suite: a deterministic scheduler with the napari worker scheduler's
rules, child processes killed at an injected step, and fault-injecting wrappers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from napari_promptseg.core.cancel import Cancelled

REPO = Path(__file__).resolve().parents[2]


class KindScheduler:
    """The rules of ``_napari.workers.WorkerScheduler`` without threads: per kind one job runs and
    only the newest waits (a replaced waiting job is cancelled and told through ``on_error``).
    A running job's work is computed by :meth:`compute` (the worker thread finished) and its
    result applied by :meth:`deliver` (the UI thread's event loop got to it), so a test can put
    user actions between the two, as happens in the viewer."""

    def __init__(self):
        self.running: dict[str, list] = {}  # kind -> [job, computed?, result, error]
        self.waiting: dict = {}

    def __call__(self, job):
        if job.kind in self.running:
            old = self.waiting.pop(job.kind, None)
            if old is not None:
                old.token.cancel()
                old.on_error(Cancelled("replaced by newer work"))
            self.waiting[job.kind] = job
        else:
            self.running[job.kind] = [job, False, None, None]

    def compute(self, kind):
        entry = self.running[kind]
        job = entry[0]
        try:
            if job.on_step is not None:
                entry[2] = list(job.iterate())
            else:
                entry[2] = job.compute()
        except Exception as err:  # noqa: BLE001 - handed to on_error at delivery, as a worker does
            entry[3] = err
        entry[1] = True

    def deliver(self, kind):
        job, computed, result, error = self.running[kind]
        if not computed:
            self.compute(kind)
            job, computed, result, error = self.running[kind]
        try:
            if error is not None or job.token.cancelled:
                job.on_error(error or Cancelled("cancelled"))
            elif job.on_step is not None:
                for item in result:
                    job.on_step(item)
                job.on_done(None)
            else:
                job.on_done(result)
        finally:
            del self.running[kind]
            nxt = self.waiting.pop(kind, None)
            if nxt is not None:
                self.running[kind] = [nxt, False, None, None]

    def drain(self, kind=None):
        """Run and deliver every job (of ``kind``) until none is left."""
        while True:
            kinds = [k for k in self.running if kind is None or k == kind]
            if not kinds:
                return
            self.deliver(kinds[0])


def child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path]), **extra}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def start_child(script: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(**env), text=True, cwd=str(REPO))


def wait_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The child's next stdout line (empty when it ended); kills it after ``timeout`` seconds."""
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        raise AssertionError(f"the child said nothing for {timeout} s (a hang)")
    return out[0].strip()


def kill9(proc: subprocess.Popen) -> str:
    """SIGKILL ``proc`` and reap it; returns its stderr."""
    os.kill(proc.pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    return err


def raiser(err: BaseException):
    """A function that raises ``err`` whatever it is given (an injected fault)."""

    def fail(*args, **kwargs):
        raise err

    return fail


def after(n: int, err: BaseException, fn):
    """``fn``, that raises ``err`` from its ``n``-th call on (1-based) instead of running."""
    calls = [0]

    def maybe(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= n:
            raise err
        return fn(*args, **kwargs)

    maybe.calls = calls
    return maybe


def until(predicate, timeout: float = 10.0, step: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(step)
