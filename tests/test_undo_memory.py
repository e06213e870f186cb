"""The undo history is bounded in bytes (a setting), says when its oldest step goes, and lets the
steps of a labels array that is gone be freed with it (issue 28)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_promptseg.labels.history import LabelsHistory, commit_nbytes
from napari_promptseg.labels.write import write_objects
from napari_promptseg.session import AnnotationSession
from napari_promptseg.session.settings import MB, CommitSettings
from tests.test_session_risks import session, two_bars_stack


def square(k, n=20, size=10):
    plane = np.zeros((n * 2, n * 2), int)
    plane[k:k + size, k:k + size] = 1
    return plane


def test_the_history_drops_its_oldest_steps_past_max_bytes():
    labels = np.zeros((3, 40, 40), np.int32)
    one = commit_nbytes(write_objects(np.zeros_like(labels), {(0,): square(0)}))
    assert one == 100 * (8 + 4 + 4)  # 100 pixels: flat indices (int64), old and new (int32)
    h = LabelsHistory(max_bytes=int(2.5 * one))
    dropped = [h.record(write_objects(labels, {(k,): square(k)}, first_id=k + 1)) for k in range(3)]
    assert dropped == [0, 0, 1] and h.nbytes == 2 * one
    assert h.undo(labels)[0] is not None and h.undo(labels)[0] is not None
    assert h.undo(labels) == (None, "nothing to undo.")  # the first commit can no longer be undone
    assert labels[0].max() == 1 and not labels[1:].any()
    assert h.redo(labels)[0] is not None and h.nbytes == 2 * one  # moving steps keeps the bytes


def test_the_newest_step_stays_however_big_and_a_lower_bound_trims():
    labels = np.zeros((2, 40, 40), np.int32)
    h = LabelsHistory(max_bytes=10)
    assert h.record(write_objects(labels, {(0,): square(0)})) == 0  # alone: kept, so U still works
    assert h.record(write_objects(labels, {(1,): square(1)}, first_id=2)) == 1
    assert h.can_undo and h.nbytes == 1600
    h.max_bytes = None
    h.record(write_objects(labels, {(0,): square(20, size=5)}, first_id=3))
    assert h.nbytes == 1600 + 400
    h.max_bytes = 1000
    assert h.trim() == 1 and h.nbytes == 400


def test_undo_mb_is_a_validated_setting():
    assert CommitSettings().undo_mb == 512 and CommitSettings().undo_bytes == 512 * MB
    assert CommitSettings(undo_mb=0.5).undo_bytes == MB // 2
    for bad in (0, -1, True, "512", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="undo_mb"):
            CommitSettings(undo_mb=bad)
    s = AnnotationSession(None, np.zeros((20, 20), np.uint8), autosave=False)
    s.configure(undo_mb=64)
    assert s.commit_settings.undo_mb == 64.0
    with pytest.raises(ValueError, match="undo_mb"):
        s.configure(undo_mb=-3, overwrite=True)
    assert s.commit_settings == CommitSettings(undo_mb=64)  # a bad value changes nothing


def test_the_session_bounds_undo_by_the_setting_and_says_when_the_oldest_step_goes():
    s = session(two_bars_stack(3), autosave=False)
    per_commit = 10 * 60 * 16  # one bar of 10 x 60 pixels: 16 bytes a pixel
    s.configure(undo_mb=2.5 * per_commit / MB)
    for k in range(3):
        s.set_plane((k,))
        s.add_point((15, 40))
        assert s.commit() == (k + 1,)
        assert ("undo history is full" in s.statuses[-1].lower()) == (k == 2)
    said = s.statuses[-1]
    assert said.startswith("committed object 3. U: undo. Undo history is full (0.023 MB): the oldest step "
                           "can no longer be undone; raise 'undo memory' in the settings.")
    assert s.undo() is not None and s.undo() is not None
    assert s.undo() is None and s.statuses[-1] == "nothing to undo."
    assert s.target[0, 15, 40] == 1  # the first commit stays: its step went


def test_the_steps_of_a_labels_array_that_is_gone_are_freed():
    s = session(two_bars_stack(2), autosave=False)
    first = np.zeros((2, 60, 80), np.int32)
    s.set_target(first)
    s.add_point((15, 40))
    s.commit()
    gone = weakref.ref(first)
    second = np.zeros((2, 60, 80), np.int32)
    s.set_target(second)
    s.add_point((40, 40))
    s.commit()
    kept = s._labels.history()
    del first
    gc.collect()
    s.add_point((15, 40), plane=(1,))
    s.commit()
    assert gone() is None  # the history of the old labels kept it alive
    assert len(s._labels._histories) == 1 and s._labels.history() is kept
    assert s.undo() is not None and s.undo() is not None and second.max() == 0
    # a labels array still alive keeps its history when it becomes the target again
    s.redo()
    third = np.zeros((2, 60, 80), np.int32)
    s.set_target(third)
    s.add_point((15, 40))
    s.commit()
    s.set_target(second)
    assert s.undo() is not None and second.max() == 0


def test_lowering_undo_memory_applies_at_once_and_says_so():
    from napari_promptseg.session import AnnotationSession
    from tests.component_model import ComponentModel, blob_image

    img, truth = blob_image()
    s = AnnotationSession(ComponentModel(), img, autosave=False)
    said = []
    s.events.status.connect(said.append)
    for i in sorted(set(np.unique(truth)) - {0})[:2]:
        s.new_object()
        s.add_point(np.argwhere(truth == i).mean(0).round())
        assert s.commit()
    s.configure(undo_mb=1e-6)  # smaller than one step: only the newest stays
    assert any("oldest step can no longer be undone" in t for t in said), said
    assert s.undo() and not s.undo()
