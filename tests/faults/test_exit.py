"""A script closes napari while the dock's jobs run and ends: the interpreter exits with code 0,
not SIGABRT (a worker outliving the viewer emitted into deleted Qt objects), with nothing on
stderr about deleted objects or tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults import exit_child
from tests.faults.helpers import REPO, child_env

KINDS = ["prefetch", "propagate", "everything", "load"]


@pytest.mark.slow
def test_a_script_that_closes_napari_during_jobs_exits_cleanly(tmp_path):
    env = child_env(PROMPTSEG_CACHE_DIR=str(tmp_path / "cache"))
    try:
        done = subprocess.run([sys.executable, str(Path(exit_child.__file__)), *KINDS], env=env,
                              cwd=str(REPO), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the script hung: {err.stdout!r} {err.stderr!r}")
    said = done.stdout.split("\n")
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-3000:]}"
    assert [line for line in said if line] == [f"closed {k}" for k in KINDS]
    for bad in ("Traceback", "has been deleted", "Fatal Python error"):
        assert bad not in done.stderr, done.stderr[-3000:]
