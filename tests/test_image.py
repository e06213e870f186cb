"""Image preparation: any real dtype and layout -> (H, W, 3) uint8, one window, clear errors."""

import numpy as np
import pytest

from napari_promptseg.core.image import intensity_window, to_rgb_uint8


def test_uint8_rgb_passes_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("channels", [3, 4])
def test_uint8_rgb_ignores_contrast_limits(channels):
    img = np.random.default_rng(1).integers(0, 256, (6, 7, channels), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img, contrast_limits=(0, 10)), img[..., :3])
    np.testing.assert_array_equal(to_rgb_uint8(img, contrast_limits=(0, 40)), img[..., :3])


@pytest.mark.parametrize("shape", [(8, 9), (8, 9, 1)])
def test_dim_uint8_gray_is_stretched_by_contrast_limits(shape):
    """A dim 8-bit fluorescence image reaches the model with the stretch the user sees."""
    img = np.zeros(shape, np.uint8)
    img.reshape(8, 9)[2, 3] = 20
    img.reshape(8, 9)[4, 5] = 40
    img.reshape(8, 9)[6, 7] = 200
    out = to_rgb_uint8(img, contrast_limits=(0, 40))
    assert out.shape == (8, 9, 3) and out.dtype == np.uint8
    assert abs(int(out[2, 3, 0]) - 128) <= 1  # 20 of (0, 40) -> mid-gray
    assert out[4, 5, 0] == 255 and out[6, 7, 0] == 255 and out[0, 0, 0] == 0
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("limits", [None, (0, 255), (0.0, 255.0)])
def test_uint8_gray_full_range_or_no_limits_is_identity(limits):
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = to_rgb_uint8(img, contrast_limits=limits)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], img)


def test_uint8_gray_bad_limits_raise():
    with pytest.raises(ValueError, match="contrast_limits"):
        to_rgb_uint8(np.zeros((4, 4), np.uint8), contrast_limits=(10, 0))


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 1)])
def test_gray_is_repeated_to_rgb(shape):
    img = np.arange(120, dtype=np.uint8).reshape(shape)
    out = to_rgb_uint8(img)
    assert out.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], img.reshape(10, 12))


def test_rgba_drops_alpha():
    img = np.zeros((6, 7, 4), np.uint8)
    img[..., 0], img[..., 3] = 200, 17
    out = to_rgb_uint8(img)
    assert out.shape == (6, 7, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_bool_maps_to_0_255():
    img = np.zeros((5, 5), bool)
    img[2, 3] = True
    out = to_rgb_uint8(img)
    assert out[2, 3, 0] == 255 and out.sum() == 255 * 3


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.float16, np.float32,
              np.float64]
)
def test_every_real_dtype_maps_through_the_window(dtype):
    ramp = np.linspace(0, 100, 50 * 40).reshape(50, 40).astype(dtype)
    out = to_rgb_uint8(ramp, contrast_limits=(0, 100))
    assert out.dtype == np.uint8 and out.shape == (50, 40, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert (np.diff(out[..., 0].ravel().astype(int)) >= 0).all()  # monotone


def test_uint16_uses_robust_window_not_full_range():
    rng = np.random.default_rng(1)
    img = rng.integers(1000, 1200, (64, 64)).astype(np.uint16)
    out = to_rgb_uint8(img)
    # 0..65535 scaling would squash everything into ~4 grey levels
    assert out[..., 0].max() - out[..., 0].min() > 200


def test_explicit_contrast_limits_clip():
    img = np.array([[0, 50, 100, 150, 200]], dtype=np.float32).repeat(2, 0)
    out = to_rgb_uint8(img, contrast_limits=(50, 150))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])


def test_nan_and_inf_are_handled():
    img = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    out = to_rgb_uint8(img)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[0, 2, 0] == 0
    lo, hi = intensity_window(img)
    assert np.isfinite(lo) and np.isfinite(hi)


def test_constant_float_image_does_not_divide_by_zero():
    out = to_rgb_uint8(np.full((8, 8), 3.5))
    assert out.dtype == np.uint8 and (out == 0).all()


def test_one_window_for_a_whole_stack():
    stack = np.stack([np.full((8, 8), v, np.float32) for v in (10, 20, 30)])
    stack[:, 0, 0] = 0
    stack[:, -1, -1] = 40
    lo, hi = intensity_window(stack, (0, 100))
    slices = [to_rgb_uint8(s, contrast_limits=(lo, hi))[1, 1, 0] for s in stack]
    assert slices[0] < slices[1] < slices[2]  # no per-slice stretching


def test_huge_images_are_subsampled_for_the_window():
    img = np.zeros((3000, 3000), np.uint16)
    img[::2] = 1000
    lo, hi = intensity_window(img)
    assert lo == 0 and hi == 1000


def test_subsampled_window_sees_every_channel():
    # 1000 x 1000 x 3 float: a flat stride of 3 would read channel 0 only
    img = np.zeros((1000, 1000, 3), np.float32)
    img[..., 0] = np.linspace(0, 1, 1000)[None]
    img[..., 1] = np.linspace(0, 1000, 1000)[:, None]
    lo, hi = intensity_window(img)
    assert hi > 900
    out = to_rgb_uint8(img)
    assert out[..., 1].max() == 255 and out[..., 1].min() == 0 and len(np.unique(out[..., 1])) > 200


def test_window_keeps_precision_for_large_offsets():
    img = (1e8 + np.arange(101, dtype=np.float64)).reshape(1, -1).repeat(3, 0)
    out = to_rgb_uint8(img, contrast_limits=(1e8, 1e8 + 100))[0, :, 0]
    assert len(np.unique(out)) == 101 and out[0] == 0 and out[-1] == 255


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 3, 4, 5, 6)), "2D"),
        (np.zeros((4, 5, 6, 3)), "2D"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((5, 5), complex), "complex"),
        (np.zeros((3, 40, 50)), "channel-first"),
        (np.zeros((4, 40, 50)), "stack of slices"),
        (np.zeros((40, 50, 2)), "2 channels"),
        (np.zeros((10, 40, 50)), "z-stack"),
        (np.zeros((1, 50)), "too small"),
        (np.array([["a", "b"], ["c", "d"]]), "not a real numeric"),
        (np.full((4, 4), np.nan), "no finite values"),
    ],
)
def test_bad_images_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(bad)


def test_non_array_is_a_type_error():
    with pytest.raises(TypeError, match="array"):
        to_rgb_uint8(object())


@pytest.mark.parametrize("limits", [(1,), (5, 1), (0, np.inf), ("a", "b")])
def test_bad_contrast_limits(limits):
    with pytest.raises(ValueError, match="contrast_limits"):
        to_rgb_uint8(np.zeros((4, 4), np.float32), contrast_limits=limits)
