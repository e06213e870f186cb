"""The worker scheduler: every job ends with on_done or on_error, steps jobs included; at most one
job of a kind runs."""

from __future__ import annotations

import pytest

from napari_promptseg._napari.workers import WorkerScheduler
from napari_promptseg.session import Job


@pytest.mark.parametrize("error", [RuntimeError("a RuntimeError"), ValueError("a ValueError")])
def test_a_failing_steps_job_reports_its_error(qtbot, error):
    """superqt takes a generator's RuntimeError for a deleted worker and would end it silently
    (a WeightsError is one): the job must still hear of it, and the kind must be free again."""
    steps, ends = [], []

    def work():
        yield 1
        raise error

    scheduler = WorkerScheduler()
    scheduler(Job("load", work, lambda r: ends.append(("done", r)), lambda e: ends.append(("error", e)),
                  steps.append))
    qtbot.waitUntil(lambda: bool(ends), timeout=5000)
    assert steps == [1] and ends == [("error", error)]
    qtbot.waitUntil(lambda: not scheduler.running("load"), timeout=5000)
    scheduler.close()


def test_a_job_scheduled_by_on_done_waits_for_its_kind_and_one_runs_at_a_time(qtbot):
    """Embedding done -> prefetch: a job of the same kind scheduled from on_done must not start
    beside the one that was waiting (both ran before, one invisible to busy and close)."""
    import threading

    running, most, ends = [0], [0], []
    lock = threading.Lock()

    def work(name):
        def run():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            threading.Event().wait(0.05)
            with lock:
                running[0] -= 1
            return name
        return run

    scheduler = WorkerScheduler()

    def first_done(result):
        ends.append(result)
        scheduler(Job("embed", work("from on_done"), ends.append, lambda e: ends.append(("error", e))))

    scheduler(Job("embed", work("first"), first_done, lambda e: ends.append(("error", e))))
    scheduler(Job("embed", work("waiting"), ends.append, lambda e: ends.append(("error", e))))
    qtbot.waitUntil(lambda: len(ends) == 3, timeout=5000)
    assert most[0] == 1  # never two of a kind at once
    assert ends[0] == "first" and ends[-1] == "from on_done"  # the newest wins
    assert isinstance(ends[1], tuple) and "replaced" in str(ends[1][1])  # the replaced one is told
    qtbot.waitUntil(lambda: not scheduler.busy, timeout=5000)
    scheduler.close()


def test_cancelling_a_kind_tells_its_waiting_job(qtbot):
    import threading

    gate, ends = threading.Event(), []
    scheduler = WorkerScheduler()
    scheduler(Job("propagate", lambda: gate.wait(5), ends.append, lambda e: ends.append(("error", e))))
    scheduler(Job("propagate", lambda: "never", ends.append, lambda e: ends.append(("waiting", e))))
    scheduler.cancel("propagate")
    assert [k for k, _ in ends] == ["waiting"]  # at once, not silently dropped
    gate.set()
    qtbot.waitUntil(lambda: len(ends) == 2, timeout=5000)
    assert ends[1][0] == "error"  # the running one ends as cancelled
    scheduler.close()


def test_close_waits_for_the_running_jobs_to_stop(qtbot):
    """A worker still running when a script exits emits into deleted Qt objects and aborts the
    process (closing a viewer while a plane embeds): close() returns once the cancelled work
    stopped."""
    import threading
    import time

    from napari_promptseg.core.cancel import check_cancelled

    events, started = [], threading.Event()

    def work():
        started.set()
        for _ in range(500):  # stops at its next check once cancelled
            check_cancelled()
            time.sleep(0.01)
        events.append("not cancelled")

    def slow_end():
        started.set()
        time.sleep(0.3)  # work that does not check: close still waits for it
        events.append("ended")

    scheduler = WorkerScheduler()
    scheduler(Job("embed", work, lambda r: None, lambda e: None))
    scheduler(Job("decode", slow_end, lambda r: None, lambda e: None))
    qtbot.waitUntil(started.is_set, timeout=5000)
    t0 = time.perf_counter()
    scheduler.close()
    assert events == ["ended"]  # both stopped before close returned; the first by its cancel check
    assert time.perf_counter() - t0 < 5


def test_autosave_jobs_all_run_in_order_and_are_never_cancelled(qtbot):
    """A newer autosave (e.g. the next image's) used to replace the waiting one and cancel(kind)
    dropped it: each holds commits that are then never saved."""
    import threading

    gate, ran, ends = threading.Event(), [], []
    scheduler = WorkerScheduler()

    def save(name, wait=False):
        def run():
            if wait:
                gate.wait(5)
            ran.append(name)
            return name
        return run

    for name in ("first", "second", "third"):
        scheduler(Job("autosave", save(name, wait=name == "first"), ends.append,
                      lambda e: ends.append(("error", e))))
    scheduler.cancel("autosave")
    gate.set()
    qtbot.waitUntil(lambda: len(ends) == 3, timeout=5000)
    assert ran == ends == ["first", "second", "third"]
    scheduler.close()


def test_close_runs_a_waiting_autosave_and_waits_for_the_running_one(qtbot):
    import threading
    import time

    started, ran = threading.Event(), []

    def slow():
        started.set()
        time.sleep(0.2)
        ran.append("running")

    scheduler = WorkerScheduler()
    scheduler(Job("autosave", slow, lambda r: None, lambda e: None))
    scheduler(Job("autosave", lambda: ran.append("waiting"), lambda r: None, lambda e: None))
    qtbot.waitUntil(started.is_set, timeout=5000)
    scheduler.close()
    assert sorted(ran) == ["running", "waiting"]  # neither was dropped


def test_a_failed_job_is_shown_in_napari_notifications(qtbot, monkeypatch):
    shown, ends = [], []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)

    def fail():
        raise MemoryError("no memory for the encoder")

    scheduler = WorkerScheduler()
    scheduler(Job("embed", fail, ends.append, ends.append, label="embedding plane 3"))
    qtbot.waitUntil(lambda: bool(ends), timeout=5000)
    assert isinstance(ends[0], MemoryError)
    assert len(shown) == 1 and shown[0].startswith(
        "promptseg: embedding plane 3 failed: out of memory (MemoryError: no memory for the encoder); "
        "free memory")
    scheduler.close()
