"""Segment everything in the annotation session: a new labels array (committed labels untouched),
per-plane results equal to :func:`segment_everything`, 3D ids linked across planes, progress,
cancel, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.sample import nuclei_image
from napari_promptseg.segmentation.everything import segment_everything
from napari_promptseg.segmentation.link3d import link_plane
from napari_promptseg.session import AnnotationSession
from napari_promptseg.session.jobs import run_now

KW = {"points_per_side": 12, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}


@pytest.fixture(scope="module")
def demo():
    return ps.load_model("promptseg_demo", device="cpu")


@pytest.fixture(scope="module")
def nuclei():
    return nuclei_image((160, 200), n=10, seed=4)


def _disk(shape, r, c, rad):
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 < rad ** 2


def test_link_plane_keeps_ids_of_overlapping_objects_one_to_one():
    shape = (60, 80)
    prev = np.zeros(shape, np.int32)
    prev[_disk(shape, 20, 20, 8)] = 7
    prev[_disk(shape, 40, 60, 8)] = 3
    cur = np.zeros(shape, np.int32)
    cur[_disk(shape, 21, 21, 8)] = 1  # object 7, moved a pixel
    cur[_disk(shape, 45, 15, 5)] = 2  # new
    cur[_disk(shape, 40, 62, 8)] = 3  # object 3
    out, nxt = link_plane(prev, cur, next_id=8)
    assert set(np.unique(out[cur == 1])) == {7} and set(np.unique(out[cur == 3])) == {3}
    assert set(np.unique(out[cur == 2])) == {8} and nxt == 9
    assert np.array_equal(out > 0, cur > 0)
    # two pieces over one object: only the better match keeps its id
    two = np.zeros(shape, np.int32)
    two[_disk(shape, 20, 20, 8) & (np.mgrid[:60, :80][1] < 18)] = 1
    two[_disk(shape, 20, 20, 8) & (np.mgrid[:60, :80][1] >= 18)] = 2
    out, nxt = link_plane(prev, two, next_id=8)
    assert sorted(np.unique(out[two > 0])) == [7, 8] and nxt == 9
    assert link_plane(None, two, 1)[1] == 3 and link_plane(prev, np.zeros(shape), 5)[1] == 5


def test_session_plane_equals_the_api_and_committed_labels_stay(demo, nuclei):
    img, truth = nuclei
    s = AnnotationSession(demo, img, autosave=False)
    s.add_point(np.argwhere(truth == 1).mean(0))
    s.commit()
    before = np.array(s.target)
    assert before.any()
    out = s.segment_everything(**KW)
    ref = segment_everything(demo, img, contrast_limits=s.stack.window, **KW)
    assert len(ref.objects) >= 3
    assert np.array_equal(out, ref.labels) and out is not s.target
    assert np.array_equal(np.array(s.target), before)  # nothing committed changed


def test_stack_objects_are_linked_across_planes_with_progress(demo, nuclei):
    img, _ = nuclei
    stack = np.stack([np.roll(img, k, axis=1) for k in (0, 2, 4)])  # nuclei drift 2 px per plane
    s = AnnotationSession(demo, stack, autosave=False)
    steps, written = [], []
    s.events.progress.connect(lambda d, t: steps.append((d, t)))
    s.events.everything.connect(lambda arr, planes: written.append(planes))
    out = s.segment_everything("line", axis=0, **KW)
    assert written == [((0,),), ((1,),), ((2,),)]
    lab = np.asarray(out[:])
    assert lab.shape == stack.shape and lab.dtype == np.int32
    counts = [len(np.unique(p)) - 1 for p in lab]
    assert min(counts) >= 3
    # the same nucleus has the same id on every plane: most ids are on all three planes
    ids = [set(np.unique(p)) - {0} for p in lab]
    assert len(ids[0] & ids[1] & ids[2]) >= 0.8 * min(counts)
    done = [d for d, t in steps[:-1]]
    assert done == sorted(done) and steps[-1][0] == steps[-1][1]


def test_cancel_keeps_the_finished_planes(demo, nuclei):
    img, _ = nuclei
    stack = np.stack([img, img, img])
    jobs = []
    s = AnnotationSession(demo, stack, scheduler=jobs.append, autosave=False, prefetch=0)
    for j in list(jobs):
        jobs.remove(j)
        run_now(j)  # the first plane's embedding
    statuses = []
    s.events.status.connect(statuses.append)
    out = s.segment_everything("line", **KW)
    job = next(j for j in jobs if j.kind == "everything")
    for item in job.iterate():
        job.on_step(item)
        if item.plane is not None:  # the first plane is done: the user cancels
            s.cancel()
    job.on_error(RuntimeError("cancelled"))
    assert job.token.cancelled and not s.segmenting_everything
    lab = np.asarray(out[:])
    assert lab[0].any() and not lab[1].any() and not lab[2].any()
    assert any("stopped after 1 of 3 planes" in t for t in statuses)


def test_bad_parameters_fail_before_any_work(demo, nuclei):
    jobs = []
    s = AnnotationSession(demo, nuclei[0], scheduler=jobs.append, autosave=False)
    jobs.clear()
    with pytest.raises(TypeError, match="unknown segment-everything parameter"):
        s.segment_everything(points_per_sid=4)
    with pytest.raises(ValueError, match="scope"):
        s.segment_everything("everything")
    assert not jobs
    assert AnnotationSession(None, nuclei[0], autosave=False).segment_everything() is None


def test_crop_layers_reuse_the_plane_embedding(demo, nuclei, monkeypatch):
    img, _ = nuclei
    s = AnnotationSession(demo, img, autosave=False, disk=None)
    calls = []
    real = type(demo)._embed_rgb
    monkeypatch.setattr(type(demo), "_embed_rgb", lambda self, rgb, *a: calls.append(rgb.shape) or
                        real(self, rgb, *a))
    out = s.segment_everything(**{**KW, "points_per_side": 8, "crop_n_layers": 1})
    assert len(calls) == 4 and all(c[0] < img.shape[0] for c in calls)  # the 2x2 crops, not the plane
    ref = segment_everything(demo, img, contrast_limits=s.stack.window,
                             **{**KW, "points_per_side": 8, "crop_n_layers": 1})
    assert np.array_equal(out, ref.labels)
