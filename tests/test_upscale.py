"""The banded mask upscaling equals SAM's two bilinear resizes followed by ``> 0``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_promptseg.models.upscale import resize_operator, upscale_levels, upscale_masks

from .conftest import mask_iou


def _official(low, input_size, original_size, padded, level=0.0):
    x = F.interpolate(low[None], (padded, padded), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, original_size, mode="bilinear", align_corners=False)
    return (x[0] > level).numpy()


def _input_size(h, w, padded):
    s = padded / max(h, w)
    return int(h * s + 0.5), int(w * s + 0.5)


@pytest.mark.parametrize("use_numpy", [True, False])  # False: the cuda/mps code path, on the CPU
@pytest.mark.parametrize(
    "original", [(700, 1300), (1024, 1024), (2048, 1536), (5, 7), (30, 2000), (333, 257)]
)
def test_matches_official_on_noisy_logits(original, use_numpy):
    torch.manual_seed(0)
    low = torch.randn(3, 256, 256)
    size = _input_size(*original, 1024)
    ours = upscale_masks(low, size, original, 1024, use_numpy=use_numpy)
    ref = _official(low, size, original, 1024)
    assert ours.shape == ref.shape == (3, *original)
    assert min(mask_iou(a, b) for a, b in zip(ours, ref)) >= 0.999


@pytest.mark.parametrize("use_numpy", [True, False])
def test_matches_official_on_a_local_object_and_skips_the_rest(use_numpy):
    low = torch.full((2, 256, 256), -5.0)
    low[0, 100:120, 30:60] = 4.0
    low[1, 10:12, 100:150] = 1.0
    original = (3000, 2000)
    size = _input_size(*original, 1024)
    ours = upscale_masks(low, size, original, 1024, use_numpy=use_numpy)
    np.testing.assert_array_equal(ours, _official(low, size, original, 1024))
    assert ours[0].any() and ours[1].any()


@pytest.mark.parametrize("use_numpy", [True, False])
def test_levels_equal_official_thresholds_in_one_resize(use_numpy):
    """The stability score's three thresholds (mask, +offset, -offset) from one resize; the
    rows skipped for the lowest level are the ones none of its logits reach."""
    low = torch.full((3, 64, 64), -3.0)
    low[0, 10:30, 5:25] = 2.5  # above all levels
    low[1, 40:50, 40:60] = 0.5  # above 0 and -1 only
    low[2, 5:8, 30:40] = -0.5  # above -1 only
    original, levels = (700, 500), (0.0, 1.0, -1.0)
    size = _input_size(*original, 256)
    outs = upscale_levels(low, size, original, 256, levels, use_numpy=use_numpy)
    for out, level in zip(outs, levels):
        np.testing.assert_array_equal(out, _official(low, size, original, 256, level))
    assert [[bool(m.any()) for m in out] for out in outs] == [[True, True, False], [True, False, False],
                                                               [True, True, True]]


def test_all_negative_logits_give_empty_masks():
    out = upscale_masks(torch.full((1, 64, 64), -1.0), (256, 200), (512, 400), 256)
    assert out.shape == (1, 512, 400) and not out.any()


def test_resize_operator_rows_are_convex_combinations():
    R = resize_operator(256, 1024, 700, 1300)
    assert R.shape == (1300, 256)
    assert (R >= 0).all()
    torch.testing.assert_close(R.sum(1), torch.ones(1300))
    assert int((R != 0).sum(1).max()) <= 4


def test_positive_logits_only_in_the_padding():
    low = torch.full((1, 64, 64), -3.0)
    low[0, :, 60:] = 2.0  # columns beyond the valid input width (image is 3:1 tall)
    out = upscale_masks(low, (256, 85), (600, 200), 256)
    np.testing.assert_array_equal(out, _official(low, (256, 85), (600, 200), 256))
    assert not out.any()


def test_matches_official_on_random_shapes():
    rng = np.random.default_rng(0)
    torch.manual_seed(1)
    for _ in range(12):
        original = (int(rng.integers(2, 3000)), int(rng.integers(2, 3000)))
        padded = int(rng.choice([256, 1024]))
        low = torch.randn(2, padded // 4, padded // 4) + float(rng.normal(0, 1))
        size = _input_size(*original, padded)
        if min(size) < 1:
            continue
        ours = upscale_masks(low, size, original, padded)
        ref = _official(low, size, original, padded)
        assert min(mask_iou(a, b) for a, b in zip(ours, ref)) >= 0.999, original
