"""The annotation session's segmentation logic, without a viewer: prompts per object, candidate
masks, refinement, commits with undo/redo, and newest-wins decoding under an asynchronous scheduler.

The deterministic :class:`~tests.component_model.ComponentModel` labels the bright components of
:func:`~tests.component_model.blob_image` (objects 1: rows 10-40 x cols 10-50, 2: rows 60-100 x
cols 20-60, 3: rows 20-70 x cols 90-140)."""

import numpy as np
import pytest

from napari_promptseg.session import AnnotationSession, Prompt, run_now
from tests.component_model import ComponentModel, blob_image


class Jobs:
    """A scheduler without Qt: it only collects the jobs; the test computes and finishes them in
    any order (``finish(job)``, or ``job.compute()`` now and ``job.on_done(result)`` later)."""

    def __init__(self) -> None:
        self.jobs = []

    def __call__(self, job) -> None:
        self.jobs.append(job)

    def of(self, kind: str) -> list:
        return [j for j in self.jobs if j.kind == kind]

    def finish(self, job) -> None:
        self.jobs.remove(job)
        run_now(job)

    def finish_all(self) -> None:
        while self.jobs:
            self.finish(self.jobs[0])


def make(model=None, scheduler=run_now):
    img, truth = blob_image()
    model = model or ComponentModel()
    s = AnnotationSession(model, img, scheduler=scheduler)
    statuses = []
    s.events.status.connect(statuses.append)
    if scheduler is not run_now:
        scheduler.finish_all()  # the embedding
    assert s.ready
    return s, truth, model, statuses


def point(rc, label=1) -> Prompt:
    return Prompt(np.array([rc], np.float64), np.array([label], np.int32))


def test_a_point_gives_the_mask_under_it_with_candidates():
    s, truth, model, statuses = make()
    s.add_point((25, 30))
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
    assert s.preview.dtype == np.uint8 and set(np.unique(s.preview)) == {0, 1}  # uint8 until id 256
    assert model.calls[-1]["multimask"] and model.calls[-1]["mask_input"] is None
    assert list(s.predictions) == [1] and s.choices == {1: 0}
    assert "0.90" in statuses[-1] and not s.decoding


def test_negative_points():
    s, truth, model, _ = make()
    s.add_point((25, 30), positive=False)  # only a negative point: no object, nothing decoded
    assert not s.preview.any() and s.predictions == {} and model.calls == []
    s.clear()
    s.add_box((5, 5, 75, 145))
    in_box = np.zeros_like(truth, bool)
    in_box[5:76, 5:146] = True
    np.testing.assert_array_equal(s.preview > 0, (truth > 0) & in_box)
    s.add_point((45, 115), positive=False)  # removes object 3 from the box's mask
    np.testing.assert_array_equal(s.preview > 0, (truth > 0) & in_box & (truth != 3))
    call = model.calls[-1]
    assert list(call["labels"]) == [0] and call["box"] is not None
    s.add_point((30, 20))  # positive again (object 1, already in the box)
    np.testing.assert_array_equal(s.preview > 0, (truth > 0) & in_box & (truth != 3))
    assert list(model.calls[-1]["labels"]) == [0, 1]
    # a new object prompted with a negative point only is absent: object 1 is unchanged
    s.new_object()
    s.add_point((80, 40), positive=False)
    assert list(s.predictions) == [1]
    assert set(np.unique(s.preview)) == {0, 1}


def test_several_boxes_are_several_objects():
    s, truth, _, _ = make()
    s.add_box((8, 8, 42, 52))
    assert s.new_object() == 2
    s.add_box((58, 18, 102, 62))
    assert sorted(s.predictions) == [1, 2]
    np.testing.assert_array_equal(s.preview, np.where(truth == 1, 1, np.where(truth == 2, 2, 0)))
    # a point refines the current object (2) only (this model adds the component under it)
    s.add_point((45, 115))
    np.testing.assert_array_equal(s.preview, np.where(truth == 1, 1, np.where(truth >= 2, 2, 0)))
    assert s.prompts[()][2].points.tolist() == [[45, 115]] and len(s.prompts[()][1].points) == 0
    # the same id for another box of the same object: its box is replaced
    s.add_box((18, 88, 72, 142))
    np.testing.assert_array_equal(s.preview, np.where(truth == 1, 1, np.where(truth == 3, 2, 0)))


def test_commit_ids_preserve_others_undo_redo_overwrite():
    s, truth, _, statuses = make()
    s.add_point((25, 30))
    assert s.commit() == (1,)
    target = s.target
    np.testing.assert_array_equal(target, np.where(truth == 1, 1, 0))
    assert s.prompts == {} and not s.preview.any()  # ready for the next object
    after_first = target.copy()
    # a box over everything: the committed object keeps its pixels
    s.add_box((0, 0, 119, 159))
    assert s.commit() == (2,)
    np.testing.assert_array_equal(target, np.where(truth == 1, 1, np.where(truth > 0, 2, 0)))
    after_second = target.copy()
    assert s.undo() is not None
    np.testing.assert_array_equal(target, after_first)
    assert s.redo() is not None
    np.testing.assert_array_equal(target, after_second)
    s.undo()
    s.undo()
    assert not target.any()
    assert s.undo() is None  # nothing left: no error
    assert "nothing to undo" in statuses[-1]
    # overwrite on request
    s.redo()
    s.configure(overwrite=True)
    s.add_box((0, 0, 119, 159))
    assert s.commit() == (2,)
    np.testing.assert_array_equal(target, np.where(truth > 0, 2, 0))
    assert s.target is target  # written in place


def test_commit_gives_one_new_label_per_object():
    # new behaviour (objects are explicit): one commit of two objects gives two labels
    s, truth, _, _ = make()
    s.add_point((25, 30))
    s.new_object()
    s.add_point((80, 40))
    assert s.commit() == (1, 2)
    np.testing.assert_array_equal(s.target, np.where(truth == 1, 1, np.where(truth == 2, 2, 0)))
    assert s.current_object == 1  # the next prompts start a new first object
    s.add_point((45, 115))
    assert s.commit() == (3,)
    np.testing.assert_array_equal(s.target, np.where(truth <= 3, truth, 0))


def test_undo_refuses_when_the_committed_pixels_were_edited():
    # new behaviour: U no longer erases brush edits made after the commit; the status says why
    s, truth, _, statuses = make()
    s.add_point((25, 30))
    s.commit()
    s.target[30, 20] = 0  # the user erased a committed pixel
    edited = s.target.copy()
    assert s.undo() is None
    np.testing.assert_array_equal(s.target, edited)
    assert "changed at the committed pixels" in statuses[-1]
    s.target[30, 20] = 1  # put back: undo works again
    assert s.undo() is not None and not s.target.any()


def test_commit_into_a_target_of_the_wrong_shape_is_refused():
    s, _, _, statuses = make()
    small = np.zeros((10, 10), np.int32)
    s.set_target(small)
    s.add_point((25, 30))
    assert s.commit() == ()
    assert "shape" in statuses[-1] and not small.any()
    assert s.preview.any()  # the preview stays for another target


def test_cycling_candidate_masks():
    s, truth, _, statuses = make()
    s.add_point((25, 30))
    np.testing.assert_array_equal(s.preview > 0, truth == 1)  # best (0.90) first
    s.next_mask()
    assert s.choices == {1: 1}
    assert (s.preview > 0).sum() > (truth == 1).sum()  # the grown mask (0.60)
    assert "[0.60]" in statuses[-1]
    s.next_mask()
    np.testing.assert_array_equal(s.preview > 0, truth > 0)  # all bright pixels (0.30)
    s.next_mask()
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
    assert s.choices == {1: 0}


def test_the_best_scoring_candidate_is_shown_first_whatever_its_index():
    s, truth, _, statuses = make(ComponentModel(multimask_scores=(0.3, 0.9, 0.6)))
    s.add_point((25, 30))
    assert s.choices == {1: 1} and "[0.90]" in statuses[-1]
    grown = s.predictions[1].masks[1]
    np.testing.assert_array_equal(s.preview > 0, grown)
    assert grown.sum() > (truth == 1).sum()
    s.next_mask()  # then by score: 0.60 (index 2: all bright pixels), 0.30 (index 0)
    np.testing.assert_array_equal(s.preview > 0, truth > 0)
    s.next_mask()
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
    s.next_mask()
    assert s.choices == {1: 1}


def test_next_mask_skips_candidates_the_model_scores_as_wrong():
    # promptseg_demo's second and third outputs are untrained (whole image, score ~0)
    s, truth, _, statuses = make(ComponentModel(multimask_scores=(0.9, 0.6, 0.02)))
    s.add_point((25, 30))
    s.next_mask()
    assert "[0.60]" in statuses[-1]
    s.next_mask()  # the 0.02 candidate (all bright pixels) is skipped: back to the best
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
    s, truth, _, statuses = make(ComponentModel(multimask_scores=(0.9, 0.05, 0.02)))
    s.add_point((25, 30))
    assert "score 0.90" in statuses[-1] and "J: next" not in statuses[-1]
    s.next_mask()
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
    assert s.choices == {1: 0} and "score below 0.1" in statuses[-1]


def test_refinement_logits_belong_to_one_object():
    s, _, model, _ = make()
    s.add_point((25, 30))
    s.next_mask()  # the user prefers candidate 1 of object 1: its logits refine object 1's next click
    chosen1 = s.predictions[1].logits[1].copy()
    s.new_object()
    s.add_point((80, 40))  # object 2 starts without object 1's logits
    assert model.calls[-1]["mask_input"] is None
    best2 = s.predictions[2].logits[0].copy()
    n = len(model.calls)
    s.select_object(1)
    s.add_point((35, 45))
    assert len(model.calls) == n + 1  # only the changed object is decoded again
    call = model.calls[-1]
    np.testing.assert_array_equal(call["mask_input"][0], chosen1)
    assert not call["multimask"] and len(call["points"]) == 2
    s.select_object(2)
    s.add_point((85, 45))
    np.testing.assert_array_equal(model.calls[-1]["mask_input"][0], best2)  # object 2's own logits
    # removing a point resets that object's logits
    prompts = s.prompts
    o = prompts[()][2]
    prompts[()][2] = Prompt(o.points[1:], o.labels[1:], o.box)
    s.set_prompts(prompts)
    assert model.calls[-1]["mask_input"] is None and model.calls[-1]["points"].tolist() == [[85, 45]]
    # after a commit, a new object starts without any logits
    s.commit()
    s.add_point((45, 115))
    s.add_point((50, 120))
    assert model.calls[-2]["mask_input"] is None
    assert model.calls[-1]["mask_input"] is not None


def test_painted_preview_refines_the_object():
    s, truth, model, _ = make()
    s.add_point((25, 30))
    s.preview[...] = 0
    s.preview[20:70, 90:140] = 1  # the user paints object 3 (as object 1) into the preview
    s.preview_edited([()])
    s.refine_from_preview()
    call = model.calls[-1]
    assert call["mask_input"] is not None and call["box"] is not None
    np.testing.assert_allclose(call["box"], [20, 90, 69, 139])
    assert (s.preview[truth == 3] == 1).all()


def test_refine_with_an_empty_preview_says_so():
    s, _, model, statuses = make()
    s.refine_from_preview()
    assert model.calls == [] and "preview is empty" in statuses[-1]


# ---------------------------------------------------------------------- asynchronous decoding
def test_stale_results_are_dropped_newest_wins():
    jobs = Jobs()
    s, truth, model, _ = make(scheduler=jobs)
    shown = []
    s.events.preview.connect(lambda planes: shown.append((s.preview > 0).copy()))
    edits = ([25, 30], [80, 40], [45, 115])
    for p in edits:  # each edit replaces the previous prompt
        s.set_prompts({(): {1: point(p)}})
    decodes = jobs.of("decode")
    assert len(decodes) == 3 and s.decoding
    results = [j.compute() for j in decodes]
    # the newest result arrives first and is shown; the older ones arrive later and are dropped
    decodes[2].on_done(results[2])
    np.testing.assert_array_equal(s.preview > 0, truth == 3)
    assert not s.decoding
    decodes[0].on_done(results[0])
    decodes[1].on_done(results[1])
    assert len(shown) == 1
    np.testing.assert_array_equal(s.preview > 0, truth == 3)
    assert s.predictions[1].masks[0][45, 115]


def test_a_stale_result_arriving_first_is_dropped_and_the_newest_still_shows():
    jobs = Jobs()
    s, truth, _, _ = make(scheduler=jobs)
    s.set_prompts({(): {1: point([25, 30])}})
    s.set_prompts({(): {1: point([80, 40])}})
    old, new = jobs.of("decode")
    jobs.finish(old)
    assert not s.preview.any() and s.decoding  # still waiting for the newest
    jobs.finish(new)
    np.testing.assert_array_equal(s.preview > 0, truth == 2)
    assert not s.decoding


def test_commit_while_the_newest_prompts_decode_commits_their_mask():
    jobs = Jobs()
    s, truth, _, statuses = make(scheduler=jobs)
    s.add_point((25, 30))
    jobs.finish_all()
    s.add_point((80, 40))  # a second point of object 1: decoding
    stale = jobs.of("decode")[-1]
    s.add_point((90, 30))  # and another one: the previous decode is stale now
    assert s.commit() == ()  # deferred, not the old preview
    assert s.target is None and "as soon as" in statuses[-1]
    jobs.finish(stale)
    assert s.target is None  # a stale result does not trigger the commit
    jobs.finish_all()
    np.testing.assert_array_equal(s.target, np.where((truth == 1) | (truth == 2), 1, 0))
    assert s.prompts == {} and not s.preview.any()


def test_a_failed_decode_cancels_the_waiting_commit():
    jobs = Jobs()
    s, _, _, statuses = make(scheduler=jobs)
    s.add_point((25, 30))
    s.commit()
    (job,) = jobs.of("decode")
    jobs.jobs.remove(job)
    job.on_error(RuntimeError("out of memory"))
    assert "could not decode" in statuses[-1] and not s.decoding
    jobs.finish_all()
    assert s.target is None  # nothing committed later by surprise


def test_next_mask_during_a_decode_keeps_the_newest_result():
    jobs = Jobs()
    s, truth, _, _ = make(scheduler=jobs)
    s.add_point((25, 30))
    jobs.finish_all()
    s.set_prompts({(): {1: point([80, 40])}})  # the point moved: decoding
    s.next_mask()  # acts on what is shown
    assert (s.preview > 0).sum() > (truth == 1).sum()
    jobs.finish_all()
    np.testing.assert_array_equal(s.preview > 0, truth == 2)
    assert s.choices == {1: 0}


@pytest.mark.parametrize("order", ["embed first", "decode queued before the embedding"])
def test_a_prompt_before_the_embedding_is_decoded_when_it_is_ready(order):
    jobs = Jobs()
    img, truth = blob_image()
    s = AnnotationSession(ComponentModel(), img, scheduler=jobs)
    assert not s.ready
    s.add_point((25, 30))
    if order == "embed first":
        jobs.finish(jobs.of("embed")[0])
    jobs.finish_all()
    np.testing.assert_array_equal(s.preview > 0, truth == 1)
