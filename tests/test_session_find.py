"""Find (SAM 3 concept prompts) in the annotation session, headless, on a tiny random-weight SAM 3:
the model gets the prompts given, each plane's labels equal ``ps.find`` on the same embedding, the
score threshold re-filters without a model call, a line of planes gets 3D ids linked like
:func:`link_plane`, cancel keeps the planes done, and every error is a message."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.core.results import Found, FoundObject
from napari_promptseg.sample import nuclei_image
from napari_promptseg.segmentation.link3d import link_plane
from napari_promptseg.session import AnnotationSession
from napari_promptseg.session.find import NEEDS_SAM3, PlaneFinds

from .component_model import ComponentModel, mask_piece

SHAPE = (64, 80)


def _import_sam3() -> str | None:
    """Import Meta's ``sam3`` now, at collection, before any viewer loads Mesa's LLVM: from then
    on the triton guard hides triton, which ``sam3`` imports (``sam3.model.edt``). Returns why it
    cannot be imported, or None."""
    try:
        from napari_promptseg.models.sam3.device import import_sam3

        import_sam3()
        import open_clip  # noqa: F401 - the tokenizer's vocabulary
    except ImportError as err:
        return f"{err} ({err.__cause__ or err})"
    return None


SAM3_MISSING = _import_sam3()


@functools.lru_cache(maxsize=1)
def tiny_sam3():
    """SAM 3's image model composed small (``sam3_tiny_336``, as tests/test_sam3_parity.py) with
    random weights, built once per process; its scores spread as in the parity tests."""
    import torch

    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models.registry import ModelSpec
    from napari_promptseg.models.sam3.model import Sam3Model, build_sam3_network

    spec = ModelSpec("sam3_tiny_test", "sam3", "sam3_tiny_336", "", "", 0, "40M", "test", "none")
    torch.manual_seed(0)
    net = build_sam3_network("cpu", "sam3_tiny_336")
    with torch.no_grad():
        for p in net.dot_prod_scoring.parameters():
            p.mul_(3.0)
    return Sam3Model(spec, net, "sam3-tiny-random", resolve_device("cpu"), resolution=336)


@pytest.fixture
def sam3():
    if SAM3_MISSING:
        pytest.skip(f"SAM 3 cannot be imported here: {SAM3_MISSING}")
    return tiny_sam3()


@pytest.fixture
def detects(sam3, monkeypatch):
    """The prompts of every ``detect`` call (the model's one pass per Find and plane)."""
    seen = []
    orig = sam3.detect

    def spy(emb, text=None, boxes=None, box_labels=None):
        seen.append((text, None if boxes is None else np.array(boxes), None if box_labels is None
                     else np.array(box_labels)))
        return orig(emb, text, boxes, box_labels)

    monkeypatch.setattr(sam3, "detect", spy)
    return seen


@pytest.fixture(scope="module")
def image():
    return nuclei_image(SHAPE, n=5, seed=2)[0]


def between(scores, k: int) -> float:
    """A threshold that keeps the ``k`` best of ``scores`` (decreasing)."""
    return float((scores[k - 1] + scores[k]) / 2)


def above(found: Found, t: float) -> Found:
    """What ``ps.find(threshold=t)`` returns, from its threshold-0 result."""
    return Found([o for o in found.objects if o.score > t], found.shape, t)


def test_a_plane_equals_ps_find_and_the_threshold_filters_without_the_model(sam3, detects, image):
    s = AnnotationSession(sam3, image, autosave=False)
    ref = ps.find(sam3, s.stack.get(()), text="nucleus", threshold=0.0)  # the same embedding
    assert len(ref) > 20
    hi, lo = between(ref.scores, 5), between(ref.scores, 20)
    planes, statuses = [], []
    s.events.found.connect(lambda arr, p: planes.append(p))
    s.events.status.connect(statuses.append)
    out = s.find(" nucleus ", threshold=hi)
    assert [d[0] for d in detects] == ["nucleus", "nucleus"]  # one pass for ps.find, one for the session
    assert out.shape == SHAPE and out.dtype == np.int32 and out is not s.target
    assert planes == [((),)] and s.found.target is out
    np.testing.assert_array_equal(s.found.kept[()].scores, ref.scores)
    np.testing.assert_array_equal(out, above(ref, hi).labels)
    assert "5 objects scoring >= " in statuses[-1]
    s.set_find_threshold(lo)  # the slider: more objects, no model call
    assert len(detects) == 2 and planes == [((),), ((),)]
    np.testing.assert_array_equal(out, above(ref, lo).labels)
    assert "20 objects" in statuses[-1]
    s.set_find_threshold(1.0)
    assert not out.any() and len(detects) == 2


def test_exemplar_and_negative_boxes_reach_the_model(sam3, detects, image):
    s = AnnotationSession(sam3, image, autosave=False)
    out = s.find(exemplars=[[40, 50, 10, 20]], negative=[[2, 3, 12, 14]], threshold=0.0)
    text, boxes, labels = detects[-1]
    assert text is None
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 50], [2, 3, 12, 14]])  # corners sorted
    np.testing.assert_array_equal(labels, [True, False])
    ref = ps.find(sam3, s.stack.get(()), exemplars=[[40, 50, 10, 20]], negative=[[2, 3, 12, 14]],
                  threshold=0.0)
    np.testing.assert_array_equal(out, ref.labels)
    assert s.found.query.name == "1 exemplar box"


def test_every_plane_of_a_stack_gets_linked_3d_ids(sam3, detects, image):
    other = nuclei_image(SHAPE, n=5, seed=3)[0]
    stack = np.stack([image, image, other])
    s = AnnotationSession(sam3, stack, autosave=False)
    s.set_plane((1,))
    written, steps = [], []
    s.events.found.connect(lambda arr, p: written.append(p))
    s.events.progress.connect(lambda d, t: steps.append((d, t)))
    out = s.find("nucleus", scope="line", axis=0, threshold=0.0)
    assert written == [((0,),), ((1,),), ((2,),)] and steps[-1] == (1, 1) and (6, 6) in steps
    assert [d[0] for d in detects] == ["nucleus"] * 3 and out.shape == stack.shape
    kept = [s.found.kept[(z,)] for z in range(3)]  # each equals ps.find (the test above)
    np.testing.assert_array_equal(kept[0].scores, kept[1].scores)

    def linked(thr):
        prev, nid, planes = None, 1, []
        for k in kept:
            prev, nid = link_plane(prev, k.labels(thr), nid)
            planes.append(prev)
        return np.stack(planes)

    np.testing.assert_array_equal(np.asarray(out[:]), linked(0.0))  # as the planes came
    for k in (8, 15):  # thresholds at which every plane shows objects
        t = min(between(f.scores, k) for f in kept)
        s.set_find_threshold(t)  # relinked from the kept objects, no model call
        lab = np.asarray(out[:])
        np.testing.assert_array_equal(lab, linked(t))
        np.testing.assert_array_equal(lab[0], lab[1])  # the same plane twice: the same ids
        assert all(p.any() for p in lab) and s.found.shown == int(lab.max())
    assert len(detects) == 3 and len(written) == 9


def test_cancel_keeps_the_planes_done(sam3, image):
    stack = np.stack([image] * 3)
    s = AnnotationSession(sam3, stack, autosave=False)
    statuses = []
    s.events.status.connect(statuses.append)
    s.events.found.connect(lambda arr, p: s.finding and s.cancel())  # Cancel after the first plane
    out = s.find("nucleus", scope="line", threshold=0.0)
    assert not s.finding and s.found.done == [(0,)]
    lab = np.asarray(out[:])
    assert lab[0].any() and not lab[1:].any()
    assert any("find stopped after 1 of 3 planes" in x for x in statuses)
    s.set_find_threshold(0.5)  # the kept plane still filters
    assert not np.asarray(out[:]).any()


def test_errors_are_messages(sam3, image):
    statuses = []
    s = AnnotationSession(ComponentModel(), image, autosave=False)
    s.events.status.connect(statuses.append)
    with pytest.raises(TypeError, match=NEEDS_SAM3):
        s.find("nucleus")
    assert statuses[-1].startswith(NEEDS_SAM3) and "components cannot find concepts" in statuses[-1]
    s.set_model(None)
    with pytest.raises(TypeError, match=NEEDS_SAM3):
        s.find("nucleus")
    s.set_model(sam3)
    for kwargs, match in (({}, "nothing to find"), ({"text": "  "}, "nothing to find"),
                          ({"exemplars": [[1, 2, 3]]}, r"exemplars must be boxes .*\(N, 4\)"),
                          ({"negative": [[100, 100, 120, 130]], "text": "x"}, r"negative\[0\]: .* outside"),
                          ({"text": "x", "threshold": 1.5}, r"threshold must be in \[0, 1\]"),
                          ({"text": "x", "scope": "volume"}, "scope must be")):
        with pytest.raises(ValueError, match=match):
            s.find(**kwargs)
        assert statuses[-1].startswith("find: ")
    assert s.found is None


def test_a_failing_model_says_so(sam3, image, monkeypatch):
    s = AnnotationSession(sam3, image, autosave=False)
    statuses = []
    s.events.status.connect(statuses.append)

    def broken(*args, **kwargs):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(sam3, "detect", broken)
    with pytest.raises(RuntimeError, match="exploded"):  # a script hears it
        s.find("nucleus")
    assert statuses[-1] == "find failed: detector exploded." and not s.finding


def test_edited_labels_are_kept_and_a_new_image_drops_the_results(sam3, image):
    s = AnnotationSession(sam3, image, autosave=False)
    out = s.find("nucleus", threshold=0.0)
    s.set_target(out)  # chosen as the commit target, then painted
    out[:3, :3] = 99
    s.labels_edited(99)
    before = out.copy()
    statuses = []
    s.events.status.connect(statuses.append)
    s.set_find_threshold(0.9)
    np.testing.assert_array_equal(out, before)
    assert "edited" in statuses[-1] and s.find_threshold == 0.9
    s.set_image(image[::-1].copy())
    assert s.found is None


def test_kept_objects_are_compact_and_exact():
    rng = np.random.default_rng(0)
    masks = [rng.random((30, 40)) > 0.7, np.zeros((30, 40), bool)]
    masks[0][:5] = False
    found = Found([FoundObject(s, (0, 0, 1, 1), *mask_piece(m), (30, 40))
                   for m, s in zip(masks, (0.8, 0.7))], (30, 40))
    finds = PlaneFinds.from_found(found)
    assert len(finds) == 2 and tuple(finds.windows[0][:2]) == (5, 0) and not finds.windows[1].any()
    np.testing.assert_array_equal(finds.mask(0), masks[0])
    assert not finds.mask(1).any() and finds.count(0.75) == 1
    np.testing.assert_array_equal(finds.labels(0.5), found.labels)
    assert not finds.labels(0.81).any()
