"""The README's main job: the demo session in a real viewer, driven through real layer events."""

import numpy as np
import pytest

from napari_promptseg._napari.demo import DemoSession
from napari_promptseg.sample import nuclei_image


class SpyModel:
    """Wraps a real model and records the (row, col) points it was asked about."""

    def __init__(self, model):
        self.model, self.calls, self.name = model, [], model.name

    def embed(self, image, contrast_limits=None):
        self.limits = contrast_limits
        return self.model.embed(image, contrast_limits=contrast_limits)

    def predict(self, emb, points):
        self.calls.append(np.asarray(points))
        return self.model.predict(emb, points=points)


@pytest.fixture
def session(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    image, _ = nuclei_image((128, 160), n=6, seed=1)
    spy = SpyModel(tiny_model)
    s = DemoSession(viewer, image, lambda: spy, point=(64, 80))
    qtbot.waitUntil(lambda: s.embedding is not None, timeout=30000)
    return s, spy


def test_first_mask_appears_without_blocking(session):
    s, spy = session
    assert spy.limits == tuple(s.image_layer.contrast_limits)  # the layer's window, not 0..65535
    np.testing.assert_allclose(spy.calls[-1], [[64, 80]])
    expected = spy.model.predict(s.embedding, points=[[64, 80]])
    np.testing.assert_array_equal(s.mask_layer.data, expected.masks[expected.best])


def test_points_are_converted_from_world_to_data_coordinates(session):
    s, spy = session
    s.image_layer.scale = (2.0, 0.5)
    s.image_layer.translate = (10.0, -4.0)
    s.points_layer.add([[10 + 2 * 30, -4 + 0.5 * 100]])  # world position of data pixel (30, 100)
    np.testing.assert_allclose(spy.calls[-1][-1], [30, 100])


def test_removing_all_points_clears_the_mask(session):
    s, spy = session
    s.points_layer.data = np.zeros((0, 2))
    assert not s.mask_layer.data.any()


def test_a_failing_model_load_is_reported_not_raised(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = nuclei_image((64, 64), n=2, seed=2)

    def offline():
        raise RuntimeError("could not reach https://example.invalid/w.pth")

    s = DemoSession(viewer, image, offline)
    qtbot.waitUntil(lambda: "could not reach" in viewer.status, timeout=10000)
    assert s.embedding is None and not s.mask_layer.data.any()
