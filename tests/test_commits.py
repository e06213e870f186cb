"""Commits write new ids, keep other objects, and undo/redo restore the labels exactly."""

import numpy as np
import pytest

from napari_promptseg.commits import CommitHistory, commit_masks, next_free_id


def test_next_free_id():
    assert next_free_id(np.zeros((3, 3), np.uint8)) == 1
    assert next_free_id(np.array([[0, 7], [2, 0]])) == 8


def test_commit_keeps_other_objects_unless_overwrite():
    labels = np.zeros((6, 6), np.int32)
    labels[:2] = 5
    m = np.zeros((6, 6), bool)
    m[1:4] = True
    c = commit_masks(labels, [m])
    assert c.ids == (6,)
    assert (labels[:2] == 5).all() and (labels[2:4] == 6).all() and not labels[4:].any()
    c2 = commit_masks(labels, [m], overwrite=True)
    assert c2.ids == (7,) and (labels[1:4] == 7).all() and (labels[0] == 5).all()


def test_several_masks_get_consecutive_ids_and_earlier_wins():
    labels = np.zeros((4, 4), np.uint16)
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    empty = np.zeros((4, 4), bool)
    c = commit_masks(labels, [a, empty, b])
    assert c.ids == (1, 2)
    np.testing.assert_array_equal(labels[:, 0], [1, 1, 2, 0])


def test_undo_redo_restore_exactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (20, 30)).astype(np.int32)
    start = labels.copy()
    h = CommitHistory()
    snaps = []
    for k in range(3):
        m = rng.random((20, 30)) > 0.5
        h.record(commit_masks(labels, [m], overwrite=bool(k % 2)))
        snaps.append(labels.copy())
    assert h.undo(labels) is not None
    np.testing.assert_array_equal(labels, snaps[1])
    h.undo(labels)
    h.undo(labels)
    np.testing.assert_array_equal(labels, start)
    assert h.undo(labels) is None and not h.can_undo
    h.redo(labels)
    h.redo(labels)
    np.testing.assert_array_equal(labels, snaps[1])
    h.record(commit_masks(labels, [np.ones((20, 30), bool)], overwrite=True))
    assert not h.can_redo  # a new commit clears the redo stack


def test_commit_into_a_slice_of_a_stack():
    stack = np.zeros((3, 5, 5), np.int32)
    stack[0, 0, 0] = 9
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    c = commit_masks(stack[1], [m], first_id=next_free_id(stack))
    assert c.ids == (10,) and stack[1, 2, 2] == 10 and stack.sum() == 19
    c.undo(stack[1])
    assert stack.sum() == 9


def test_bad_labels_and_masks_are_clear_errors():
    with pytest.raises(TypeError, match="integer"):
        commit_masks(np.zeros((3, 3)), [np.ones((3, 3), bool)])
    with pytest.raises(ValueError, match="shape"):
        commit_masks(np.zeros((3, 3), np.int32), [np.ones((4, 3), bool)])
    with pytest.raises(OverflowError, match="wider"):
        commit_masks(np.full((3, 3), 255, np.uint8), [np.ones((3, 3), bool)], overwrite=True)
    full = np.full((3, 3), 254, np.uint8)  # 255 still fits
    assert commit_masks(full, [np.ones((3, 3), bool)], overwrite=True).ids == (255,)


def test_history_refuses_an_array_it_did_not_commit_into():
    labels = np.zeros((4, 4), np.int32)
    h = CommitHistory()
    h.record(commit_masks(labels, [np.ones((4, 4), bool)]), labels)
    assert h.tracks(labels) and not h.tracks(labels.copy())


def test_commit_labels_equals_commit_masks_and_undoes_in_the_whole_stack():
    from napari_promptseg.commits import commit_labels, commit_masks

    rng = np.random.default_rng(0)
    stack = np.zeros((6, 20, 30), np.int32)
    stack[2, 5:10, 5:10] = 7  # an existing object
    groups = np.zeros(stack.shape, np.uint16)
    groups[1:4, 4:12, 4:12] = 3
    groups[4, 0:3, 0:3] = 300
    groups[5][rng.random((20, 30)) < 0.1] = 1
    for overwrite in (False, True):
        a, b = stack.copy(), stack.copy()
        ca = commit_masks(a, [groups == g for g in (1, 3, 300)], overwrite=overwrite)
        block = b[1:6]  # a C-contiguous block of planes: commit there, undo in the whole stack
        cb = commit_labels(block, groups[1:6], overwrite=overwrite, first_id=8, offset=1 * 20 * 30)
        np.testing.assert_array_equal(a, b)
        assert ca.ids == cb.ids == (8, 9, 10)
        cb.undo(b)
        np.testing.assert_array_equal(b, stack)
        cb.redo(b)
        np.testing.assert_array_equal(a, b)
    assert commit_labels(stack.copy(), np.zeros_like(groups)).ids == ()
    with pytest.raises(OverflowError, match="wider"):
        commit_labels(np.array([[254, 0], [0, 0]], np.uint8), np.array([[0, 0], [1, 2]], np.uint8))
    with pytest.raises(ValueError, match="shape"):
        commit_labels(stack, groups[0])
