"""kill -9 at each step of a commit and of its autosave (a one-plane commit saved at once, a commit
of 24 planes saved in a job, an image switch while an autosave waits): a new process finds the
autosave, restores it, and gets every commit saved before the kill; the commit being saved is
there plane by plane (each plane old or new, never torn); nothing is reported unreadable."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_promptseg.labels.autosave import AutosaveWarning
from napari_promptseg.session import AnnotationSession
from tests.component_model import ComponentModel
from tests.faults import kill_child
from tests.faults.helpers import kill9, start_child, wait_line

CHILD = Path(kill_child.__file__)
N_PLANES = kill_child.N_PLANES


@functools.lru_cache
def states(scenario: str) -> tuple[np.ndarray, ...]:
    return tuple(kill_child.expected(scenario))


def reopen():
    """A new session on the image, as a new process opens it: (session, restorable summaries)."""
    s = AnnotationSession(ComponentModel(), None)
    found: list[str] = []
    s.events.restorable.connect(found.append)
    said: list[str] = []
    s.events.status.connect(said.append)
    s.set_image(kill_child.stack(N_PLANES))
    s.said = said
    return s, found


def restored(s) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutosaveWarning)  # a torn plane file would be reported
        s.restore_autosave()
    return np.asarray(s.target[...])


def commit_more(s) -> None:
    """The user goes on after restoring: a new commit is saved after the restored ones."""
    s.set_plane((20,))
    s.new_object()
    s.add_point((15, 40))
    assert s.commit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutosaveWarning)
        _, _, planes = s.annotation_store.load()
    assert (planes[(20,)][15, 40] != 0) and s.annotation_store.records()[-1]["op"] == "commit"


NEW_PLANES = {  # how many of the victim commit's planes (in save order) are in their new state
    "commit:written": lambda k, n: 0,
    "job:scheduled": lambda k, n: 0,
    "save:plane-tmp": lambda k, n: k - 1,
    "save:plane-renamed": lambda k, n: k,
    "save:journal": lambda k, n: n,
    "save:journal-torn": lambda k, n: n,
    "save:after-journal": lambda k, n: n,
}
CASES = [("small", step, 1) for step in ("commit:written", "save:plane-tmp", "save:plane-renamed",
                                          "save:journal", "save:journal-torn", "save:after-journal")]
CASES += [("big", "commit:written", 1), ("big", "job:scheduled", 1), ("big", "save:plane-tmp", 10),
          ("big", "save:plane-renamed", 10), ("big", "save:journal", 1), ("big", "save:after-journal", 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "step", "k"), CASES, ids=[f"{a}-{b}-{c}" for a, b, c in CASES])
def test_kill_during_a_commit_loses_nothing_saved_before(scenario, step, k):
    proc = start_child(CHILD, scenario, step, k)
    said = wait_line(proc)
    assert said == f"at {step}", said or proc.stderr.read()
    kill9(proc)

    before, after = states(scenario)[-2:]
    victim = [z for z in range(N_PLANES) if not np.array_equal(before[z], after[z])]
    assert len(victim) == (1 if scenario == "small" else N_PLANES)
    new = set(victim[:NEW_PLANES[step](k, len(victim))])

    s, found = reopen()
    assert found and "commit" in found[0]  # the autosave is found and offered
    labels = restored(s)
    for z in range(N_PLANES):
        want = after[z] if z in new else before[z]
        np.testing.assert_array_equal(labels[z], want, err_msg=f"plane {z}")
    journaled = 2 if step == "save:after-journal" else 1  # the victim's line is whole only then
    assert [r["op"] for r in s.annotation_store.records()] == ["commit"] * journaled
    commit_more(s)


@pytest.mark.slow
def test_kill_during_the_first_save_leaves_a_store_the_next_session_uses():
    """Killed before the store's meta.json was in place: nothing to restore, no error, and the
    next session's commits are saved."""
    proc = start_child(CHILD, "first", "save:meta")
    assert wait_line(proc) == "at save:meta"
    kill9(proc)
    s, found = reopen()
    assert found == [] and not any("autosave" in t for t in s.said)
    s.ensure_target()
    assert s.restore_autosave() == () and "nothing autosaved" in s.said[-1]
    commit_more(s)


@pytest.mark.slow
def test_kill_after_an_image_switch_keeps_the_first_images_queued_autosave():
    """Image A's second big commit waits for the autosave job of its first (done in the worker,
    not yet applied on the UI thread); the user opens image B and commits there. Killed once
    every job ran: a new process restores both of A's commits (and B's)."""
    proc = start_child(CHILD, "switch", "none")
    said = wait_line(proc)
    assert said == "idle", said or proc.stderr.read()
    kill9(proc)
    s, found = reopen()
    assert found
    labels = restored(s)
    assert (labels[:, 15, 40] != 0).all(), "image A's first commit is not restored"
    assert (labels[:, 40, 40] != 0).all(), "image A's second commit is not restored"
