"""The realistic fluorescence z-stack generator (napari_promptseg.training.fluorescence3d): what a
microscope does to nuclei (anisotropic voxels, a PSF longer along z, haze, noise) and a ground
truth that matches the image."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_promptseg.training.fluorescence3d import SAMPLE_SHAPE, Nucleus, fluorescence_stack, sample_stack


@pytest.fixture(scope="module")
def volume():
    return fluorescence_stack((31, 64, 64), seed=1)


def test_types_scale_and_determinism(volume):
    img, lab, scale = volume
    assert img.shape == lab.shape == (31, 64, 64)
    assert img.dtype == np.uint16 and lab.dtype == np.int32 and scale == (2.0, 1.0, 1.0)
    again = fluorescence_stack((31, 64, 64), seed=1)
    np.testing.assert_array_equal(again[0], img)
    np.testing.assert_array_equal(again[1], lab)
    other = fluorescence_stack((31, 64, 64), seed=2)
    assert not np.array_equal(other[0], img)
    assert fluorescence_stack((8, 16, 16), seed=0, z_step=3.0, n=1)[2] == (3.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="z_step"):
        fluorescence_stack((8, 16, 16), z_step=0)


def test_ground_truth_is_consistent_with_the_image(volume):
    img, lab, _ = volume
    ids = np.unique(lab[lab > 0])
    assert len(ids) >= 15 and list(ids) == list(range(1, len(ids) + 1))  # numbered without gaps
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        assert ndi.label(lab[sl] == i)[1] == 1  # one connected piece each
    inside = img[lab > 0].astype(float)
    far = img[ndi.distance_transform_edt(lab == 0) > 6].astype(float)
    assert np.median(inside) > 3 * np.median(far - 100) + 100  # nuclei shine over the dark level


def test_bright_and_dim_nuclei_sit_above_each_other_and_touch(volume):
    img, lab, _ = volume
    n = int(lab.max())
    means = ndi.mean(img.astype(float), lab, range(1, n + 1))
    assert means.max() - 100 > 3 * (means.min() - 100)  # bright and dim
    foot = [(lab == i).any(axis=0) for i in range(1, n + 1)]
    zs = [np.flatnonzero((lab == i).any(axis=(1, 2))) for i in range(1, n + 1)]
    stacked = sum(1 for i in range(n) for j in range(i + 1, n)
                  if (foot[i] & foot[j]).sum() > 0.3 * min(foot[i].sum(), foot[j].sum())
                  and (zs[i][-1] < zs[j][0] or zs[j][-1] < zs[i][0]))
    assert stacked >= 3  # one above the other along z, apart in z
    grown = ndi.grey_dilation(lab, size=(1, 3, 3))
    assert ((grown != lab) & (lab > 0) & (grown > 0)).any()  # neighbours touch in the plane


def test_the_psf_is_longer_along_z_and_haze_lies_beyond_the_ends():
    """One nucleus, no noise: the image fades farther beyond its ends along z than beyond its
    side (in the same physical units), and the haze lifts the planes above and below it."""
    one = [Nucleus(z=30.0, y=32.0, x=32.0, a=9.0, b=9.0, c=9.0, theta=0.0, bright=1.0)]
    img, lab, scale = fluorescence_stack((31, 64, 64), seed=0, nuclei=one, photons=1000.0, read_noise=0.0)
    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    xs = np.flatnonzero(lab.any(axis=(0, 1)))
    f = img.astype(float) - np.median(img[0])  # over the far background
    peak = f[15, 32, 32]
    beyond_z = f[zs[-1] + 2, 32, 32] / peak  # 2 planes = 4 pixel widths beyond the end
    beyond_x = f[15, 32, xs[-1] + 4] / peak  # 4 pixels beyond the side
    assert beyond_z > 2 * beyond_x
    clear = fluorescence_stack((31, 64, 64), seed=0, nuclei=one, photons=1000.0, read_noise=0.0, haze=0)[0]
    g = clear.astype(float) - np.median(clear[0])
    assert f[zs[-1] + 4, 32, 32] > 1.5 * g[zs[-1] + 4, 32, 32] + 0.01 * peak  # haze beyond the end
    assert scale[0] / scale[2] == 2.0  # anisotropic voxels


def test_noise_is_shot_and_read_noise():
    img, lab, _ = fluorescence_stack((31, 64, 64), seed=3)
    bg = img[ndi.distance_transform_edt(lab == 0) > 8].astype(float)
    assert 8 < bg.std() < 40  # read noise 8 plus the shot noise of the background and haze


def test_fast_enough_for_tests_and_benchmarks():
    t0 = time.perf_counter()
    fluorescence_stack((40, 128, 128), seed=0)
    assert time.perf_counter() - t0 < 2.0  # ~0.3 s on a free core


def test_the_demo_sample_is_such_a_stack():
    img, lab, scale = sample_stack()
    assert img.shape == SAMPLE_SHAPE and img.dtype == np.uint16 and scale == (2.0, 1.0, 1.0)
    assert lab.max() >= 30
