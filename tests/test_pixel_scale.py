"""Each model sees objects at its pixel scale: small images are padded, not blown up."""

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached
from napari_promptseg.training.sampling import interior_point
from napari_promptseg.training.synthetic import synthetic_image


@pytest.fixture(scope="module")
def demo():
    return ps.load_model("promptseg_demo", device="cpu")


def _iou(a, b):
    u = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / u if u else 1.0


def _one_click(model, size, seeds, zoom=None):
    vals = []
    for seed in seeds:
        img, lab = synthetic_image(seed, (size, size))
        emb = model.embed(img, zoom=zoom)
        for i in range(1, lab.max() + 1):
            gt = lab == i
            if gt.sum() >= 10:
                p = model.predict(emb, points=[interior_point(gt)])
                vals.append(_iou(p.masks[p.best], gt))
    return float(np.mean(vals)), len(vals)


def test_demo_model_declares_its_scale_and_pads_small_images(demo):
    assert demo.pixel_scale == 1.0
    emb = demo.embed(np.zeros((61, 57), np.uint8))
    assert emb.input_size == (61, 57) and emb.original_size == (61, 57)
    assert demo.embed(np.zeros((61, 57), np.uint8), zoom=2).input_size == (122, 114)
    assert demo.embed(np.zeros((61, 57), np.uint8), zoom="fit").input_size == (256, 239)
    assert demo.embed(np.zeros((512, 300), np.uint8)).input_size == (256, 150)  # larger: fit


def test_one_click_iou_does_not_drop_on_small_images(demo):
    ref, n_ref = _one_click(demo, 256, range(100, 102))
    for size in (48, 96, 160):
        iou, n = _one_click(demo, size, range(100, 100 + max(2, (256 // size) ** 2 // 2)))
        assert n >= 10 and iou >= ref - 0.05, (size, iou, ref)
    fit, _ = _one_click(demo, 48, range(100, 104), zoom="fit")
    assert fit < ref - 0.3  # blown up 5x into the input, as before: what the scale fixes


def test_padded_prompts_and_masks_stay_aligned(demo):
    img, lab = synthetic_image(7, (80, 120))
    emb = demo.embed(img, zoom=1.5)
    gt = lab == np.bincount(lab.ravel())[1:].argmax() + 1
    r0, c0 = np.argwhere(gt).min(0)
    r1, c1 = np.argwhere(gt).max(0)
    p = demo.predict(emb, box=(r0, c0, r1, c1), multimask=False)
    assert p.masks.shape == (1, 80, 120) and _iou(p.masks[0], gt) > 0.6
    again = demo.predict(emb, box=(r0, c0, r1, c1), mask_input=p.logits[0], multimask=False)
    assert _iou(again.masks[0], gt) > 0.6


def test_bad_zoom_is_refused_with_the_reason(demo):
    with pytest.raises(ValueError, match="larger than the model's 256-pixel input"):
        demo.embed(np.zeros((200, 200), np.uint8), zoom=2)
    for bad in (0, -1, float("nan"), "big"):
        with pytest.raises(ValueError, match="zoom must be a positive number"):
            demo.embed(np.zeros((20, 20), np.uint8), zoom=bad)


def test_the_cache_keeps_embeddings_of_different_zooms_apart(demo):
    img = (np.random.default_rng(0).random((60, 60)) * 255).astype(np.uint8)
    cache = EmbeddingCache()
    a = embed_cached(demo, img, cache=cache)
    b = embed_cached(demo, img, cache=cache, zoom="fit")
    c = embed_cached(demo, img, cache=cache, zoom=1.0)
    assert a.input_size == (60, 60) and b.input_size == (256, 256) and c is a and len(cache) == 2


def test_official_sam_keeps_meta_resize():
    from napari_promptseg.models.registry import REGISTRY

    assert all(s.pixel_scale is None for s in REGISTRY.values() if s.name != "promptseg_demo")
