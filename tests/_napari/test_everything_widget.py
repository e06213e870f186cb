"""Segment everything from the dock: Shift-E on the canvas and the button, the parameters in their
collapsible section, a new labels layer (committed labels untouched), every plane of a stack with
3D ids, cancel."""

from __future__ import annotations

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg._napari.demo import WIDGET_NAME
from napari_promptseg._napari.layers import EVERYTHING_NAME
from napari_promptseg.sample import nuclei_image

from .test_widget import settle


@pytest.fixture(scope="module")
def demo():
    return ps.load_model("promptseg_demo", device="cpu")


def _open(make_napari_viewer, qtbot, demo, image, **kw):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="nuclei", **kw)
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(demo)
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    settle(qtbot, w, 20000)
    # the spins show the model's own defaults (the demo model's thresholds, not Meta's 0.88)
    own = demo.everything_defaults["pred_iou_thresh"]
    assert w.everything_params["pred_iou_thresh"] == pytest.approx(own) and own != 0.88
    w.everything_spins["points_per_side"].setValue(12)
    w.everything_spins["pred_iou_thresh"].setValue(0.5)
    w.everything_spins["stability_score_thresh"].setValue(0.8)
    return viewer, layer, w


@pytest.mark.slow
def test_shift_e_on_the_canvas_writes_a_new_labels_layer(make_napari_viewer, qtbot, demo):
    from qtpy.QtCore import Qt

    img, truth = nuclei_image((160, 200), n=10, seed=4)
    viewer, layer, w = _open(make_napari_viewer, qtbot, demo, img, scale=(0.5, 0.5), translate=(3, 4))
    assert w.everything_params["points_per_side"] == 12
    w.session.add_point(np.argwhere(truth == 1).mean(0))
    settle(qtbot, w)
    w.commit()
    committed = np.array(viewer.layers["promptseg labels"].data)
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.layers.selection.active = w.bridge.points_layer
    qtbot.keyClick(canvas, Qt.Key_E, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: EVERYTHING_NAME in viewer.layers and not w.session.segmenting_everything,
                    timeout=60000)
    settle(qtbot, w)
    out = viewer.layers[EVERYTHING_NAME]
    ref = ps.segment_everything(demo, img, contrast_limits=w.session.stack.window, **w.everything_params)
    assert len(ref.objects) >= 3
    assert np.array_equal(np.asarray(out.data), ref.labels)
    assert tuple(out.scale) == (0.5, 0.5) and tuple(out.translate) == (3, 4)
    assert np.array_equal(np.asarray(viewer.layers["promptseg labels"].data), committed)
    assert f"{len(ref.objects)} objects" in w.status.text()
    assert viewer.layers.selection.active is w.bridge.points_layer  # keys keep working where they did
    assert EVERYTHING_NAME in [w.labels_combo.itemText(i) for i in range(w.labels_combo.count())]


@pytest.mark.slow
def test_every_plane_of_a_stack_from_the_button(make_napari_viewer, qtbot, demo):
    img, _ = nuclei_image((120, 150), n=8, seed=5)
    stack = np.stack([np.roll(img, k, axis=1) for k in (0, 2, 4)])
    viewer, layer, w = _open(make_napari_viewer, qtbot, demo, stack)
    w.scope_combo.setCurrentText("every plane along the axis")
    w.everything_button.click()
    qtbot.waitUntil(lambda: not w.session.segmenting_everything, timeout=90000)
    lab = np.asarray(viewer.layers[EVERYTHING_NAME].data[:])
    assert lab.shape == stack.shape
    ids = [set(np.unique(p)) - {0} for p in lab]
    assert all(len(i) >= 2 for i in ids) and len(ids[0] & ids[1] & ids[2]) >= 2  # linked in 3D
    assert "3 planes" in w.status.text()


def test_cancel_stops_the_run(make_napari_viewer, qtbot, demo):
    img, _ = nuclei_image((120, 150), n=8, seed=5)
    stack = np.stack([img] * 6)
    viewer, layer, w = _open(make_napari_viewer, qtbot, demo, stack)
    w.scope_combo.setCurrentText("every plane along the axis")
    w.everything_button.click()
    qtbot.waitUntil(lambda: EVERYTHING_NAME in viewer.layers, timeout=60000)  # the first plane is done
    w.cancel()
    assert not w.session.segmenting_everything
    settle(qtbot, w, 60000)
    lab = np.asarray(viewer.layers[EVERYTHING_NAME].data[:])
    assert lab[0].any() and not lab[-1].any()
    assert "stopped after" in w.status.text() or "cancelled" in w.status.text()


def test_a_huge_2d_image_is_tiled_transparently(make_napari_viewer, qtbot, demo):
    from napari_promptseg.embed.tiles import TiledEmbedding
    from napari_promptseg.training.sampling import interior_point
    from napari_promptseg.training.synthetic import synthetic_image

    from .test_widget import click

    img, lab = synthetic_image(8, (1400, 1100), style="sparse")
    viewer = make_napari_viewer()
    viewer.add_image(img.astype(np.uint16) * 10, name="slide", scale=(0.5, 0.5))
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(demo)
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    assert isinstance(w.session.stack.cached(()), TiledEmbedding)
    statuses = []
    w.session.events.status.connect(statuses.append)
    gt = lab == np.bincount(lab.ravel())[1:].argmax() + 1
    click(w.bridge.points_layer, np.asarray(interior_point(gt)) * 0.5)  # world = data x scale
    settle(qtbot, w, 20000)
    assert any(t.startswith("embedding tile ") for t in statuses)
    shown = np.asarray(w.bridge.preview_layer.data) > 0
    assert shown.shape == img.shape and (shown & gt).sum() / (shown | gt).sum() > 0.5
    assert len(w.session.stack.cached(()).cache) <= 2  # a tile (and a window around the object) of 42


def test_a_stack_of_huge_planes_is_tiled_and_propagates_with_the_key(make_napari_viewer, qtbot, demo):
    """A z-stack of 1400 x 1100 planes: the click on plane 1 embeds a tile of plane 1 (the status
    says so), P propagates window by window, and the preview follows the nucleus."""
    from qtpy.QtCore import Qt

    from napari_promptseg.embed.tiles import TiledEmbedding
    from napari_promptseg.training.sampling import interior_point
    from napari_promptseg.training.synthetic import synthetic_image

    from .test_keys_and_lifecycle import press
    from .test_stack_widget import goto, preview, wait_propagation
    from .test_widget import click

    img, lab = synthetic_image(8, (1400, 1100), style="sparse")
    stack = np.stack([np.roll(img, 2 * z, axis=1) for z in range(3)]).astype(np.uint16) * 10
    truth = np.stack([np.roll(lab, 2 * z, axis=1) for z in range(3)])
    viewer = make_napari_viewer()
    # the window a person sets to see the nuclei (the full uint16 range leaves them dim)
    viewer.add_image(stack, name="stack", scale=(3, 0.5, 0.5), contrast_limits=(1450, 14800))
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(demo)
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    goto(viewer, w, qtbot, 3)  # plane 1
    assert w.session.stack.tiled
    statuses = []
    w.session.events.status.connect(statuses.append)
    oid = np.bincount(lab.ravel())[1:].argmax() + 1
    y, x = interior_point(truth[1] == oid)
    click(w.bridge.points_layer, (3, y * 0.5, x * 0.5))  # world = data x scale
    settle(qtbot, w, 20000)
    assert isinstance(w.session.stack.cached((1,)), TiledEmbedding)
    assert any(t.startswith("embedding tile ") for t in statuses)
    press(qtbot, viewer, Qt.Key_P)
    wait_propagation(qtbot, w, 60000)
    got = preview(w)
    for z in range(3):
        inter = ((got[z] > 0) & (truth[z] == oid)).sum()
        assert inter / ((got[z] > 0) | (truth[z] == oid)).sum() > 0.5, z
