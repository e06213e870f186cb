"""Segment everything: parity with Meta's ``SamAutomaticMaskGenerator`` on identical weights (the
shipped model on generated nuclei, a random tiny SAM), and the result's own consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.generator_defaults import EVERYTHING_DEFAULTS
from napari_promptseg.models.sam.model import build_sam
from napari_promptseg.sample import nuclei_image
from napari_promptseg.segmentation.everything import segment_everything, segment_everything_iter

from .conftest import blobs_image, mask_iou

DEMO_PT = "src/napari_promptseg/models/data/promptseg_demo.pt"


@pytest.fixture(scope="module")
def demo():
    from importlib.resources import files

    model = ps.load_model("promptseg_demo", device="cpu")
    sam = build_sam("promptseg_demo").eval()
    path = files("napari_promptseg") / "models" / "data" / "promptseg_demo.pt"
    sam.load_state_dict(torch.load(str(path), weights_only=True))
    return model, sam


@pytest.fixture(scope="module")
def nuclei():
    return to_rgb_uint8(nuclei_image((200, 260), n=12)[0])


def _official(sam, image, **kw):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, **kw).generate(image)


def _assert_same(ref, ours, stability_atol=1e-3):
    assert len(ours.objects) == len(ref)
    for r, o in zip(ref, ours.objects):
        x, y, w, h = r["bbox"]
        assert mask_iou(r["segmentation"], o.mask) >= 0.99
        assert abs(r["predicted_iou"] - o.score) < 1e-4
        # an empty mask's stability is nan (0 / 0), as Meta's
        assert np.isclose(r["stability_score"], o.stability, rtol=0, atol=stability_atol, equal_nan=True)
        assert o.box == (y, x, y + h, x + w)
        np.testing.assert_allclose(o.point, r["point_coords"][0][::-1])
        assert o.crop_box == (r["crop_box"][1], r["crop_box"][0], r["crop_box"][1] + r["crop_box"][3],
                              r["crop_box"][0] + r["crop_box"][2])
        assert o.area == o.mask.sum()
        assert abs(o.area - r["area"]) <= max(2, 1e-3 * r["area"])  # a logit at 0 may round either way
    _assert_labels(ours)


def _assert_labels(res):
    lab = res.labels
    assert lab.dtype == np.int32 and lab.shape == res.objects[0].mask.shape if res.objects else True
    union = np.zeros(lab.shape, bool)
    for i, o in enumerate(res.objects):
        assert np.all(o.mask[lab == i + 1])  # an id only where its object is
        union |= o.mask
        smaller = [j for j, p in enumerate(res.objects) if p.area < o.area]
        for j in smaller:  # where a smaller object overlaps it, the smaller one (or a smaller still) wins
            both = o.mask & res.objects[j].mask
            assert not np.any(lab[both] == i + 1)
    assert np.array_equal(lab > 0, union)


@pytest.mark.parametrize("kw", [
    {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},  # Meta's defaults (not the model's own)
    {"points_per_side": 16, "pred_iou_thresh": 0.006, "stability_score_thresh": 0.8},
    {"points_per_side": 12, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.5,
     "min_mask_region_area": 50},
    {"points_per_side": 8, "pred_iou_thresh": -0.015, "stability_score_thresh": 0.6, "crop_n_layers": 1},
], ids=["defaults", "low_thresholds", "small_regions", "crop_layer"])
@pytest.mark.slow
def test_demo_model_equals_meta_generator(demo, nuclei, kw):
    model, sam = demo
    kw = {"points_per_side": 16, **kw}
    ref = _official(sam, nuclei, **kw)
    ours = segment_everything(model, nuclei, **kw)
    assert len(ref) >= 2
    _assert_same(ref, ours)


@pytest.mark.slow
def test_tiny_random_sam_equals_meta_generator(tiny_model, tiny_official):
    image = blobs_image((150, 230), seed=3)
    # random weights: masks alike everywhere, which NMS would reduce to one; keep them all
    kw = {"points_per_side": 10, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    ref = _official(tiny_official.model, image, **kw)
    ours = segment_everything(tiny_model, image, **kw)
    assert len(ref) >= 2
    _assert_same(ref, ours, stability_atol=5e-3)


def test_embedding_is_reused_and_gives_the_same_result(demo, nuclei, monkeypatch):
    model, _ = demo
    kw = {"points_per_side": 12, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.5}
    emb = model.embed(nuclei)
    from_image = segment_everything(model, nuclei, **kw)
    monkeypatch.setattr(type(model), "_embed_rgb", lambda *a: pytest.fail("encoded again"))
    from_emb = segment_everything(model, emb, **kw)
    assert len(from_emb.objects) == len(from_image.objects) > 0
    assert np.array_equal(from_emb.labels, from_image.labels)
    with pytest.raises(ValueError, match="pass the image"):
        segment_everything(model, emb, crop_n_layers=1)


def test_uint16_input_goes_through_its_window(demo):
    model, _ = demo
    img16 = nuclei_image((160, 200), n=8, seed=2)[0]
    lims = (float(img16.min()), float(img16.max()))
    kw = {"points_per_side": 10, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.5}
    a = segment_everything(model, img16, contrast_limits=lims, **kw)
    b = segment_everything(model, to_rgb_uint8(img16, lims), **kw)
    assert np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("batch, multimask", [(5, True), (None, True), (None, False)])
def test_batched_decoder_equals_prompt_by_prompt(demo, nuclei, batch, multimask):
    """batch None: as many prompts as fit the CPU's cache (8 for the demo model); the last
    attention runs for the tokens the heads read only."""
    model, _ = demo
    emb = model.embed(nuclei)
    pts = np.random.default_rng(0).uniform([0, 0], nuclei.shape[:2], (23, 2))
    s1, k1, l1 = model.decode_points(emb, pts, multimask, min_score=0.0, batch=batch)
    s2, k2, l2 = PromptableModel.decode_points(model, emb, pts, multimask, min_score=0.0)  # one by one
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    assert isinstance(s1, np.ndarray) and isinstance(k1, np.ndarray) and isinstance(l1, np.ndarray)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_allclose(l1, l2, atol=1e-3, rtol=1e-3)


def test_progress_and_cancel(demo, nuclei):
    model, _ = demo
    steps = list(segment_everything_iter(model, nuclei, points_per_side=10, points_per_batch=30))
    assert [(s.done, s.total) for s in steps[:-1]] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[-1].result is not None and all(s.result is None for s in steps[:-1])
    it = segment_everything_iter(model, nuclei, points_per_side=10, points_per_batch=30)
    assert next(it).done == 1
    it.close()  # cancelling: nothing else runs


@pytest.mark.parametrize("kw, match", [
    ({"points_per_sid": 8}, "unknown segment-everything parameter"),
    ({"points_per_side": None}, "exactly one of"),
    ({"points_per_batch": 0}, "points_per_batch must be >= 1"),
    ({"point_grids": [np.zeros((4, 2))], "points_per_side": None, "crop_n_layers": 1}, "needs 2"),
])
def test_bad_parameters_are_named(demo, nuclei, kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        segment_everything(demo[0], nuclei, **kw)


def test_point_grids_are_row_col_fractions(demo, nuclei):
    model, sam = demo
    rc = np.array([[0.3, 0.6], [0.7, 0.2], [0.5, 0.5]])
    ours = segment_everything(model, nuclei, points_per_side=None, point_grids=[rc],
                              pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ref = _official(sam, nuclei, points_per_side=None, point_grids=[rc[:, ::-1].copy()],
                    pred_iou_thresh=0.0, stability_score_thresh=0.0)
    _assert_same(ref, ours)


def test_a_model_declares_the_generator_thresholds_its_weights_need(demo, tiny_model):
    model, _ = demo
    assert tiny_model.everything_defaults == EVERYTHING_DEFAULTS  # official SAM: Meta's
    d = model.everything_defaults
    assert d["pred_iou_thresh"] < 0.88 and d["stability_score_thresh"] < 0.95
    img, truth = nuclei_image((160, 160), n=8, seed=3)
    plain = segment_everything(model, img, points_per_side=16)
    metas = segment_everything(model, img, points_per_side=16, pred_iou_thresh=0.88,
                               stability_score_thresh=0.95)
    assert len(plain.objects) >= 5 and len(plain.objects) > len(metas.objects)  # Meta's keep few
    own = {k: d[k] for k in ("pred_iou_thresh", "stability_score_thresh")}
    same = segment_everything(model, img, points_per_side=16, **own)
    assert [o.box for o in same.objects] == [o.box for o in plain.objects]
