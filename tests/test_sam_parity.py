"""Parity with Meta's ``SamPredictor`` on identical random weights.

Our (row, col) prompts are converted to SAM's (x, y) by hand here, independently of the code
under test. Masks must agree with IoU >= 0.999 and scores within 1e-4, on non-square images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.models import get_spec

from .conftest import blobs_image, mask_iou, random_sam_checkpoint

IMAGES = {
    "rgb_700x1300": lambda: blobs_image((700, 1300), seed=1),
    "gray_900x500": lambda: blobs_image((900, 500), seed=2)[..., 1],
}
SMALL = {"rgb_60x90_smaller_than_input": lambda: blobs_image((60, 90), seed=4)}


def _prompts(h, w):
    """(name, our kwargs) for points, negative points, box, box + points."""
    return [
        ("one_point", dict(points=[[0.4 * h, 0.3 * w]])),
        ("neg_points", dict(points=[[0.4 * h, 0.3 * w], [0.6 * h, 0.5 * w], [0.2 * h, 0.8 * w]],
                            labels=[1, 0, 0])),
        ("box", dict(box=[0.7 * h, 0.6 * w, 0.2 * h, 0.1 * w])),  # corners in reverse order
        ("box_points", dict(box=[0.2 * h, 0.1 * w, 0.7 * h, 0.6 * w],
                            points=[[0.5 * h, 0.4 * w], [0.3 * h, 0.2 * w]], labels=[1, 0])),
    ]


def _official_kwargs(kw):
    out = {}
    if "points" in kw:
        pts = np.asarray(kw["points"], float)
        out["point_coords"] = pts[:, ::-1].copy()  # (row, col) -> (x, y)
        out["point_labels"] = np.asarray(kw.get("labels", [1] * len(pts)))
    if "box" in kw:
        r0, c0, r1, c1 = kw["box"]
        out["box"] = np.array([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)])
    if "mask_input" in kw:
        out["mask_input"] = np.asarray(kw["mask_input"]).reshape(1, *np.shape(kw["mask_input"])[-2:])
    return out


def _assert_same(ours, masks, scores, logits):
    assert ours.masks.shape == masks.shape and ours.masks.dtype == bool
    for a, b in zip(ours.masks, masks):
        assert mask_iou(a, b) >= 0.999
    np.testing.assert_allclose(ours.scores, scores, atol=1e-4)
    np.testing.assert_allclose(ours.logits, logits, atol=1e-3, rtol=1e-3)
    assert ours.best == int(np.argmax(scores))


def _check_model(model, predictor, image):
    emb = model.embed(image)
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    predictor.set_image(rgb)
    assert torch.equal(emb.features["image_embed"], predictor.features)  # bit-identical
    assert emb.original_size == predictor.original_size
    assert emb.input_size == predictor.input_size
    h, w = image.shape[:2]
    for _name, kw in _prompts(h, w):
        for multimask in (True, False):
            ours = model.predict(emb, multimask=multimask, **kw)
            m, s, lg = predictor.predict(multimask_output=multimask, **_official_kwargs(kw))
            _assert_same(ours, m, s, lg)
    # refinement: a previous prediction's logits as mask_input, with and without points
    first = model.predict(emb, points=[[0.5 * h, 0.5 * w]])
    for kw in (dict(points=[[0.5 * h, 0.5 * w]], mask_input=first.logits[first.best]),
               dict(mask_input=first.logits[first.best][None])):
        ours = model.predict(emb, multimask=False, **kw)
        m, s, lg = predictor.predict(multimask_output=False, **_official_kwargs(kw))
        _assert_same(ours, m, s, lg)


@pytest.mark.parametrize("image_name", list(IMAGES) + list(SMALL))
def test_tiny_sam_equals_official(tiny_model, tiny_official, image_name):
    _check_model(tiny_model, tiny_official, {**IMAGES, **SMALL}[image_name]())


def test_uint16_goes_through_the_window_then_equals_official(tiny_model, tiny_official):
    rng = np.random.default_rng(3)
    img16 = (blobs_image((300, 420), seed=3)[..., 0].astype(np.uint16) * 40 + 1000)
    img16 += rng.integers(0, 5, img16.shape, dtype=np.uint16)
    lo, hi = 1000.0, 1000.0 + 255 * 40
    emb = tiny_model.embed(img16, contrast_limits=(lo, hi))
    u8 = np.rint((img16 - lo) * 255 / (hi - lo)).clip(0, 255).astype(np.uint8)
    tiny_official.set_image(np.repeat(u8[..., None], 3, -1))
    torch.testing.assert_close(emb.features["image_embed"], tiny_official.features)


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
    from napari_promptseg.models.triton_guard import guard_triton

    guard_triton()
    from segment_anything import SamPredictor, sam_model_registry

    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    random_sam_checkpoint("vit_b", path, seed=1)
    model = ps.load_model("vit_b", checkpoint=path, device="cpu")
    official = sam_model_registry["vit_b"](checkpoint=str(path)).eval()  # Meta's own loader
    return model, SamPredictor(official)


@pytest.mark.slow
@pytest.mark.parametrize("image_name", list(IMAGES))
def test_vit_b_equals_official(vit_b, image_name):
    model, predictor = vit_b
    assert model.spec == get_spec("vit_b")
    _check_model(model, predictor, IMAGES[image_name]())
