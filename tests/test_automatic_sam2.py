"""Segment everything with SAM 2 models: parity with Meta's ``SAM2AutomaticMaskGenerator`` on
identical random weights (the tiny config on a 256-pixel input, tests/conftest.py), its defaults
and its own parameters (``mask_threshold``, ``multimask_output``, ``use_m2m``), and the batched
SAM 2 decoder.

Random weights give small logits (about +-0.3) that cover most of the image, so the cases use a
small ``stability_score_offset``, a ``mask_threshold`` inside that range and, where box NMS would
merge the whole-image masks into one, ``box_nms_thresh=1.0``. Meta's ``min_mask_region_area``
needs the CUDA extension ``sam2._C`` for its connected components (without it Meta's generator
warns and skips the step); here Meta's hook gets an OpenCV equivalent, independent of our scipy
version.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.generator_defaults import EVERYTHING_DEFAULTS, SAM2_EVERYTHING_DEFAULTS
from napari_promptseg.segmentation.everything import segment_everything

from .conftest import SAM2_CONFIG, SAM2_TEST_OVERRIDES, blobs_image, mask_iou
from .test_automatic import _assert_labels

S = 256  # the test model's input side
IMAGE = blobs_image((150, 230), seed=3)  # non-square


def _cv2_connected_components(mask):
    """What ``sam2._C.get_connected_componnets`` returns, by OpenCV: for ``(N, 1, H, W)`` masks,
    8-connected labels of the foreground and each foreground pixel's component area."""
    import cv2

    m = mask.to(torch.uint8).cpu().numpy()
    labels, counts = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m[i, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0
        labels[i, 0], counts[i, 0] = lab, area[lab]
    return torch.as_tensor(labels), torch.as_tensor(counts)


@pytest.fixture(scope="module")
def meta(sam2_ckpt):
    """``generate(image, **params)`` of Meta's SAM 2 generator on its own copy of the weights."""
    import sam2.utils.misc
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    net = build_sam2(SAM2_CONFIG, str(sam2_ckpt), device="cpu", hydra_overrides_extra=SAM2_TEST_OVERRIDES)

    def generate(image, **kw):
        gen = SAM2AutomaticMaskGenerator(net, **kw)
        gen.predictor._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]  # 1024's
        return gen.generate(image)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sam2.utils.misc, "get_connected_components", _cv2_connected_components)
        yield generate


def _same_mask(a: np.ndarray, b: np.ndarray) -> bool:
    """IoU >= 0.99, or (tiny masks) at most 2 pixels differ: a logit at the threshold may round
    either way."""
    return mask_iou(a, b) >= 0.99 or int((a ^ b).sum()) <= 2


def _assert_same(ref, ours):
    assert len(ours.objects) == len(ref)
    for r, o in zip(ref, ours.objects):  # Meta's order
        assert _same_mask(r["segmentation"], o.mask)
        assert abs(r["predicted_iou"] - o.score) < 1e-4
        assert np.isclose(r["stability_score"], o.stability, rtol=0, atol=1e-3, equal_nan=True)
        x, y, w, h = r["bbox"]
        np.testing.assert_allclose(o.box, (y, x, y + h, x + w), atol=1)
        np.testing.assert_allclose(o.point, r["point_coords"][0][::-1], atol=1e-3)
        cx, cy, cw, ch = r["crop_box"]
        assert o.crop_box == (cy, cx, cy + ch, cx + cw)
        assert o.area == o.mask.sum() and abs(o.area - r["area"]) <= 2
    _assert_labels(ours)


BASE = {"points_per_side": 10, "stability_score_offset": 0.05, "box_nms_thresh": 1.0}
CASES = {
    # predicted-IoU and stability filters each drop masks; masks are logits > 0.1
    "thresholds": {"pred_iou_thresh": 0.54, "stability_score_thresh": 0.3, "mask_threshold": 0.1},
    # one mask per point (SAM 2's decoder falls back to the most stable of three)
    "single_mask": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "mask_threshold": 0.1,
                    "multimask_output": False},
    # every mask decoded again with its own logits as mask prompt; the new IoU is filtered
    "m2m": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.6, "mask_threshold": 0.1, "use_m2m": True},
    # holes and specks of <= 40 low-resolution pixels removed before the upscaling
    "small_regions": {"pred_iou_thresh": 0.51, "stability_score_thresh": 0.6, "min_mask_region_area": 40},
    # 2 x 2 crops, each embedded; crop-edge filter, box NMS within and across crops
    "crop_layer": {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                   "mask_threshold": 0.2, "crop_n_layers": 1, "box_nms_thresh": 0.7},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_sam2_model_equals_meta_sam2_generator(sam2_model, meta, case):
    kw = {**BASE, **CASES[case]}
    ref = meta(IMAGE, **kw)
    ours = segment_everything(sam2_model, IMAGE, **kw)
    assert len(ref) >= 5
    _assert_same(ref, ours)
    n_points = kw["points_per_side"] ** 2
    if case in ("thresholds", "m2m", "small_regions"):  # the filters did remove masks
        assert len(ref) < 3 * n_points
    if case == "single_mask":
        assert len(ref) <= n_points
    if case == "crop_layer":  # masks of the crops survive (not only the whole image's)
        assert len({r["crop_box"][2] for r in ref}) > 1
    if case == "small_regions":  # the low-resolution clean-up changed the result
        plain = segment_everything(sam2_model, IMAGE, **{**kw, "min_mask_region_area": 0})
        assert [o.area for o in plain.objects] != [o.area for o in ours.objects]


def test_sam2_defaults_are_metas(sam2_model):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    sig = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    metas = {k: v.default for k, v in sig.items() if k not in ("self", "model", "output_mode", "kwargs")}
    assert sam2_model.everything_defaults == metas == SAM2_EVERYTHING_DEFAULTS
    assert metas["pred_iou_thresh"] != EVERYTHING_DEFAULTS["pred_iou_thresh"]  # 0.8, SAM's 0.88


def test_sam2_parameters_are_refused_where_they_mean_nothing(sam2_model, demo_model):
    with pytest.raises(TypeError, match="use_m2m: parameter.* SAM2AutomaticMaskGenerator"):
        segment_everything(demo_model, IMAGE, points_per_side=4, use_m2m=True)
    with pytest.raises(TypeError, match="mask_threshold"):
        segment_everything(demo_model, IMAGE, points_per_side=4, mask_threshold=0.5)
    with pytest.raises(TypeError, match="use_m2m must be True or False"):
        segment_everything(sam2_model, IMAGE, points_per_side=4, use_m2m="yes")
    with pytest.raises(ValueError, match="mask_threshold must be a finite number"):
        segment_everything(sam2_model, IMAGE, points_per_side=4, mask_threshold=float("nan"))
    with pytest.raises(TypeError, match="unknown segment-everything parameter.*output_mode"):
        segment_everything(sam2_model, IMAGE, points_per_side=4, output_mode="binary_mask")


@pytest.mark.parametrize("multimask", [True, False])
def test_batched_sam2_decoder_equals_prompt_by_prompt(sam2_model, multimask):
    emb = sam2_model.embed(IMAGE)
    pts = np.random.default_rng(0).uniform([0, 0], np.subtract(IMAGE.shape[:2], 1), (23, 2))
    thr = float(np.median(PromptableModel.decode_points(sam2_model, emb, pts, multimask=multimask)[0]))
    s1, k1, l1 = sam2_model.decode_points(emb, pts, multimask=multimask, min_score=thr, batch=5)
    s2, k2, l2 = PromptableModel.decode_points(sam2_model, emb, pts, multimask=multimask, min_score=thr)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_array_equal(k1, k2)
    assert 0 < len(k1) < s1.size and k1.dtype == np.int64
    np.testing.assert_allclose(l1, l2, atol=1e-4)
    # a mask prompt per point (Meta's use_m2m step), by the official decoder in batches
    prior = torch.as_tensor(np.stack([sam2_model.predict(emb, points=[p]).logits[0] for p in pts[:7]]))
    s1, k1, l1 = sam2_model.decode_points(emb, pts[:7], multimask=False, mask_input=prior, batch=3)
    s2, k2, l2 = PromptableModel.decode_points(sam2_model, emb, pts[:7], multimask=False, mask_input=prior)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_allclose(l1, l2, atol=1e-4)


def test_sam2_everything_by_tiles(sam2_model):
    image = blobs_image((300, 420), seed=4)
    kw = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
          "stability_score_offset": 0.05, "mask_threshold": 0.1, "min_mask_region_area": 20}
    res = segment_everything(sam2_model, image, tiles=True, **kw)
    assert len(res.objects) > 0 and res.labels.shape == image.shape[:2]
    _assert_labels(res)
