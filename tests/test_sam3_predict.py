"""SAM 3's point / box / mask prompts (``model.predict``) against Meta's ``Sam3Image.predict_inst``
on identical random weights.

A module fixture builds the test-only ``sam3_tiny_336`` architecture with its interactive predictor
(Meta's parts composed smaller, :mod:`napari_promptseg.models.sam3.tracker`), runs every case
through Meta's ``Sam3Processor.set_image`` + ``predict_inst`` (Meta's (x, y) pixels), saves the
weights in Meta's checkpoint format (``{"model": {"detector.*", "tracker.*"}}``) and loads ours
from that file with ``ps.load_model``. Each case then runs our ``predict`` with (row, col)
prompts on non-square images (a 240 x 330 uint16 gray image and a 280 x 200 RGB one): masks equal
(IoU >= 0.99), scores and low-resolution logits within 1e-4. The full 840 M-parameter model runs
the same cases with ``PROMPTSEG_SAM3_FULL=1`` (~9 min on a busy 2-core CPU, ~8 GB).
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.models.registry import ModelSpec

from .test_sam3_parity import _gray16, _rgb

pytest.importorskip("sam3")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.slow  # the tiny architecture too: ~25 s for its fixture and cases
TINY = ModelSpec("sam3_tiny_test", "sam3", "sam3_tiny_336", "", "", 0, "40M", "test", "none")


# name -> (image, points (row, col), labels, box (row0, col0, row1, col1), multimask, refine):
# refine = the prompt also gets the best logits of the same prompt without a mask as mask_input
CASES = {
    "point": ("gray", [[60, 80]], [1], None, True, False),
    "point_single": ("gray", [[150, 200]], [1], None, False, False),
    "pos_neg": ("gray", [[60, 80], [60, 120]], [1, 0], None, True, False),
    "pos_neg_single": ("gray", [[90, 260], [150, 200], [20, 20]], [1, 1, 0], None, False, False),
    "box": ("gray", None, None, [30, 50, 95, 115], False, False),
    "box_multimask": ("gray", None, None, [115, 165, 185, 235], True, False),
    "box_point": ("gray", [[150, 200]], [0], [30, 160, 200, 300], False, False),
    "rgb_point": ("rgb", [[70, 60]], [1], None, True, False),
    "rgb_box_point": ("rgb", [[190, 145]], [1], [140, 100, 240, 190], True, False),
    "rgb_refine": ("rgb", [[190, 145], [70, 60]], [1, 0], None, False, True),
}


def _meta_case(net, state, points, labels, box, multimask, refine):
    kw = {"multimask_output": multimask}
    if points is not None:
        kw["point_coords"] = np.asarray(points, np.float64)[:, ::-1].copy()  # (x, y) = (col, row)
        kw["point_labels"] = np.asarray(labels)
    if box is not None:
        r0, c0, r1, c1 = box
        kw["box"] = np.array([c0, r0, c1, r1], np.float64)
    mask_input = None
    if refine:
        _, s, low = net.predict_inst(state, **kw)
        mask_input = low[int(np.argmax(s))][None]
        kw["mask_input"] = mask_input
    masks, scores, low = net.predict_inst(state, **kw)
    return {"masks": masks > 0, "scores": scores, "logits": low, "mask_input": mask_input}


def _checkpoint(net, path, tracker: bool = True):
    """``net``'s weights in Meta's checkpoint layout; without the tracker (``tracker=False``):
    the detector only, as a checkpoint of the image model without interactivity."""
    from napari_promptseg.models.sam3.tracker import meta_state

    sd = meta_state(net)
    if not tracker:
        sd = {k: v for k, v in sd.items() if k.startswith("detector.") and ".sam2_convs." not in k}
        sd["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)  # a stray tracker key
    torch.save({"model": sd}, path)


def _pair(spec, tmp_path_factory):
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from napari_promptseg.models.sam3.device import on_device
    from napari_promptseg.models.sam3.model import SAM3_ARCHS, build_sam3_network

    autocast = (torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda"))
    torch.manual_seed(0)
    net = build_sam3_network("cpu", spec.arch)
    leaked = (torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda")) != autocast
    images = {"gray": _gray16(), "rgb": _rgb()}
    processor = Sam3Processor(net, resolution=SAM3_ARCHS[spec.arch][0], device="cpu")
    ref, maps = {}, {}
    with on_device("cpu"):
        for key, img in images.items():
            state = processor.set_image(Image.fromarray(to_rgb_uint8(img)))
            maps[key] = [t.clone() for t in state["backbone_out"]["sam2_backbone_out"]["backbone_fpn"]]
            for name, (which, *case) in CASES.items():
                if which == key:
                    ref[name] = _meta_case(net, state, *case)
            del state
    folder = tmp_path_factory.mktemp("sam3_predict")
    _checkpoint(net, folder / "full.pt")
    if spec is TINY:
        _checkpoint(net, folder / "detector_only.pt", tracker=False)
    del net, processor
    gc.collect()
    ours = ps.load_model(spec, checkpoint=folder / "full.pt", device="cpu")
    (folder / "full.pt").unlink()
    return {"model": ours, "images": images, "ref": ref, "maps": maps, "leaked": leaked,
            "detector_only": folder / "detector_only.pt", "embeddings": {}}


@pytest.fixture(scope="module")
def sam3_tiny(tmp_path_factory):
    return _pair(TINY, tmp_path_factory)


@pytest.fixture(scope="module")
def sam3_full(tmp_path_factory):
    return _pair(ps.models.get_spec("sam3"), tmp_path_factory)


FULL = pytest.mark.skipif(not os.environ.get("PROMPTSEG_SAM3_FULL"),
                          reason="full-size SAM 3 parity: set PROMPTSEG_SAM3_FULL=1 (minutes, ~8 GB)")
ARCHS = [pytest.param("sam3_tiny", id="tiny"), pytest.param("sam3_full", id="full", marks=FULL)]


def _embedding(pair, key):
    if key not in pair["embeddings"]:
        pair["embeddings"][key] = pair["model"].embed(pair["images"][key])
    return pair["embeddings"][key]


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_holds_meta_tracker_maps(request, arch):
    from napari_promptseg.models.sam3.tracker import TRACKER_KEYS

    pair = request.getfixturevalue(arch)
    assert not pair["leaked"], "building SAM 3 left Meta's CUDA autocast on"
    assert pair["model"].supports_prompts
    for key in ("gray", "rgb"):
        emb = _embedding(pair, key)
        for name, theirs in zip(TRACKER_KEYS, pair["maps"][key], strict=True):
            torch.testing.assert_close(emb.features[name], theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_predict_equals_meta_predict_inst(request, arch, case):
    pair = request.getfixturevalue(arch)
    ours, theirs = pair["model"], pair["ref"][case]
    img, points, labels, box, multimask, _refine = CASES[case]
    emb = _embedding(pair, img)
    pred = ours.predict(emb, points=points, labels=labels, box=box, mask_input=theirs["mask_input"],
                        multimask=multimask)
    k = 3 if multimask else 1
    h, w = pair["images"][img].shape[:2]
    assert pred.masks.shape == (k, h, w) and pred.scores.shape == (k,)
    assert pred.logits.shape == (k, *ours.low_res_shape)
    np.testing.assert_allclose(pred.scores, theirs["scores"], atol=1e-4)
    np.testing.assert_allclose(pred.logits, theirs["logits"], atol=1e-4)
    for i in range(k):
        assert _iou(pred.masks[i], theirs["masks"][i]) >= 0.99, (case, i)
        np.testing.assert_array_equal(pred.mask(i), pred.masks[i])


def test_the_cases_compare_real_masks(sam3_tiny):
    """Random weights make noisy masks: at least a few of Meta's are neither empty nor full, so the
    mask comparison above checks more than a constant."""
    fractions = np.concatenate([r["masks"].mean(axis=(1, 2)) for r in sam3_tiny["ref"].values()])
    assert ((fractions > 0.02) & (fractions < 0.98)).sum() >= 3, fractions


def test_points_are_row_col_on_a_non_square_image(sam3_tiny):
    """A point given as (row, col) equals Meta's point at (x, y) = (col, row); swapping the two
    (a transposed prompt) gives another result."""
    ours = sam3_tiny["model"]
    emb = _embedding(sam3_tiny, "gray")
    ref = sam3_tiny["ref"]["point"]
    good = ours.predict(emb, points=[[60, 80]], multimask=True)
    swapped = ours.predict(emb, points=[[80, 60]], multimask=True)
    np.testing.assert_allclose(good.scores, ref["scores"], atol=1e-4)
    assert np.abs(swapped.logits - ref["logits"]).max() > 1e-3
    with pytest.raises(ValueError, match="outside the image"):
        ours.predict(emb, points=[[300, 10]])  # row 300 >= H = 240


def test_a_saved_embedding_predicts_the_same(sam3_tiny, tmp_path):
    ours = sam3_tiny["model"]
    emb = _embedding(sam3_tiny, "rgb")
    emb.save(tmp_path / "e.npz")
    back = type(emb).load(tmp_path / "e.npz")
    assert back.preprocessing == ours.preprocessing == "sam3-rgb8-v2"
    a = ours.predict(emb, points=[[70, 60]], box=[40, 30, 100, 90])
    b = ours.predict(back, points=[[70, 60]], box=[40, 30, 100, 90])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_clicks_reuse_an_embedding_from_the_disk_cache(sam3_tiny, tmp_path, monkeypatch):
    from napari_promptseg.embed.cache import embed_cached

    ours, img = sam3_tiny["model"], sam3_tiny["images"]["gray"]
    first = embed_cached(ours, img, None, disk=ps.DiskCache(tmp_path / "c", dtype="float32"))
    ref = ours.predict(first, points=[[60, 80]], labels=[1], multimask=False)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the image was encoded again")

    monkeypatch.setattr(ours, "_embed_rgb", no_encoder)
    again = embed_cached(ours, img, None, disk=ps.DiskCache(tmp_path / "c", dtype="float32"))
    pred = ours.predict(again, points=[[60, 80]], labels=[1], multimask=False)
    np.testing.assert_array_equal(pred.scores, ref.scores)
    np.testing.assert_array_equal(pred.masks, ref.masks)


def test_predict_keeps_torch_attention_flags(sam3_tiny):
    """Meta's SAM heads switch every SDPA back-end on at each call; ours restore the user's."""
    ours = sam3_tiny["model"]
    emb = _embedding(sam3_tiny, "gray")
    flash = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        ours.predict(emb, points=[[60, 80]])
        assert not torch.backends.cuda.flash_sdp_enabled()
    finally:
        torch.backends.cuda.enable_flash_sdp(flash)


def test_a_checkpoint_without_tracker_weights_finds_but_cannot_predict(sam3_tiny):
    from napari_promptseg.models.sam3.tracker import TRACKER_KEYS

    model = ps.load_model(TINY, checkpoint=sam3_tiny["detector_only"], device="cpu")
    assert model.supports_concepts and not model.supports_prompts
    assert model.net.backbone.vision_backbone.sam2_convs is None  # the image encoder skips it
    emb = model.embed(sam3_tiny["images"]["gray"])
    assert not set(TRACKER_KEYS) & emb.features.keys()
    with pytest.raises(ValueError, match="lacks SAM 3's tracker weights"):
        model.predict(emb, points=[[60, 80]])
    scores, boxes, logits = model.detect(emb, "nucleus")  # ps.find's one grounding pass
    assert scores.shape == (200,) and boxes.shape == (200, 4)
