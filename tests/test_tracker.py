"""ps.Tracker: SAM2VideoPredictor's loop (prompt any frame, propagate, correct, propagate again)
for both families: the prompt method with the deterministic ComponentModel, SAM 2's memory on
tiny random weights against MemoryTracker (itself equal to Meta's predictor, test_sam2_parity)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.propagation.memory import MemoryTracker

from .component_model import ComponentModel
from .test_propagate import P, ellipsoids, image_of
from .test_sam2_parity import FRAMES, P1, PROMPT_FRAME, H, T, W

OPTS = ps.PromptPropagation(min_area=1, strategy=P)


def test_prompt_method_equals_propagate_and_embeds_each_frame_once():
    truth = ellipsoids(12, (48, 48), [(6, 24, 24, 5.5, 10, 10, 0.3, 0)])
    stack = image_of(truth)
    model = ComponentModel()
    tr = ps.Tracker(model, stack, options=OPTS)
    first = tr.add_prompt(6, obj=1, points=[[24, 24]])
    np.testing.assert_array_equal(first, truth[6] == 1)
    results = list(tr.propagate())
    assert {r.index for r in results} == set(range(12)) - {6}
    expected = ps.propagate(ComponentModel(), stack, {6: [{"points": [[24, 24]]}]}, options=OPTS)
    np.testing.assert_array_equal(tr.labels(), expected)
    calls = model.embed_calls
    list(tr.propagate())  # again: every frame's embedding is cached
    assert model.embed_calls == calls == 12


def test_prompt_method_corrections_and_absent_frames():
    truth = ellipsoids(12, (48, 48), [(6, 24, 24, 5.5, 10, 10, 0, 0)])
    tr = ps.Tracker(ComponentModel(), image_of(truth), options=OPTS)
    with pytest.raises(ValueError, match="no prompts"):
        tr.propagate()
    tr.add_prompt(6, 1, points=[[24, 24]])
    list(tr.propagate())
    assert (tr.labels()[2] == 1).any()
    tr.add_mask(4, 1, np.zeros((48, 48), bool))  # "the object ends here"
    list(tr.propagate())
    has = (tr.labels() == 1).any(axis=(1, 2))
    assert has[5:].any() and not has[:5].any()
    fix = np.zeros((48, 48), bool)
    fix[20:28, 20:28] = True
    assert tr.add_mask(9, 1, fix).sum() == 64  # a painted correction is a seed
    list(tr.propagate(start=9))
    np.testing.assert_array_equal(tr.masks[9][1], fix)
    with pytest.raises(ValueError, match="out of range"):
        tr.add_prompt(12, 1, points=[[1, 1]])
    with pytest.raises(ValueError, match="positive integers"):
        tr.add_prompt(0, 0, points=[[1, 1]])
    with pytest.raises(ValueError, match="does not match the frames"):
        tr.add_mask(0, 1, np.ones((5, 5), bool))


@pytest.mark.slow
def test_memory_tracking_is_the_memory_tracker_step_for_step(sam2_model):
    tr = ps.Tracker(sam2_model, FRAMES)
    assert isinstance(tr.options, ps.MemoryTracking)
    ref = MemoryTracker(sam2_model, lambda k: sam2_model.embed(FRAMES[k]), T, (H, W))
    first = tr.add_prompt(PROMPT_FRAME, 1, points=P1)
    np.testing.assert_array_equal(first, ref.add_points(PROMPT_FRAME, 1, P1))
    ours = {(r.index, r.direction): r.masks for r in tr.propagate()}
    theirs = {(r.index, r.direction): r.masks for r in ref.propagate_iter()}
    assert sorted(ours) == sorted(theirs)
    for key, masks in theirs.items():
        assert set(ours[key]) == set(masks)
        for o, m in masks.items():
            np.testing.assert_array_equal(ours[key][o], m)
    fix = [[0.5 * H, 0.5 * W]]  # a negative click on frame 4: re-tracked forward from there
    got = tr.add_prompt(4, 1, points=fix, labels=[0])
    np.testing.assert_array_equal(got, ref.add_points(4, 1, fix, [0]))
    ours = {r.index: r.masks for r in tr.propagate(start=4)}
    theirs = {r.index: r.masks for r in ref.propagate_iter(start=4)}
    assert sorted(ours) == sorted(theirs) == [4, 5]
    for k in theirs:
        for o, m in theirs[k].items():
            np.testing.assert_array_equal(tr.masks[k][o], m)
    labels = tr.labels()
    assert labels.shape == (T, H, W) and labels.dtype == np.int32


def test_memory_tracking_needs_a_memory():
    with pytest.raises(ValueError, match="needs a SAM 2 model"):
        ps.Tracker(ComponentModel(), np.zeros((3, 20, 20), np.uint8), options=ps.MemoryTracking())
