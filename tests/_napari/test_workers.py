"""The worker scheduler: every job ends with on_done or on_error, steps jobs included."""

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
