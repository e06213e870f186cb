"""Keys pressed on the canvas with each of our layers (and the image) active; nothing lost in
napari's own layers (zarr labels, brush edits, autosave); big volumes; closing during an embedding."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_promptseg._napari.demo import WIDGET_NAME
from tests.component_model import ComponentModel
from tests.test_session_risks import BG, FG, two_bars_stack


def open_widget(make_napari_viewer, qtbot, data, model=None, **kwargs):
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="img", **kwargs)
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(model or ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    return viewer, layer, w


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.scheduler.busy, timeout=10000)
    qtbot.wait(20)


def press(qtbot, viewer, key, modifier=Qt.NoModifier):
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)


@pytest.mark.parametrize("active", ["points", "boxes", "preview", "image"])
def test_every_key_works_on_the_canvas_with_each_layer_active(make_napari_viewer, qtbot, active):
    viewer, layer, w = open_widget(make_napari_viewer, qtbot, two_bars_stack(8))
    b = w.bridge
    viewer.dims.set_point(0, 3)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)

    def activate():
        viewer.layers.selection.active = {"points": b.points_layer, "boxes": b.boxes_layer,
                                          "preview": b.preview_layer, "image": layer}[active]

    b.points_layer.add([[3, 15, 40]])
    settle(qtbot, w)
    activate()
    press(qtbot, viewer, Qt.Key_J)  # next candidate
    assert w.session.choices == {1: 1}
    press(qtbot, viewer, Qt.Key_J)
    press(qtbot, viewer, Qt.Key_J)
    assert w.session.choices == {1: 0}
    press(qtbot, viewer, Qt.Key_P)  # propagate: the points layer's own P (add mode) must not win
    qtbot.waitUntil(lambda: not w.session.propagating, timeout=10000)
    settle(qtbot, w)
    assert all((w.session.preview_plane((k,)) == 1).any() for k in range(8))
    press(qtbot, viewer, Qt.Key_O)  # new object
    assert w.session.current_object == 2 and w.object_spin.value() == 2
    press(qtbot, viewer, Qt.Key_N)  # negative points
    assert w.negative_check.isChecked() and b.points_layer.feature_defaults["label"][0] == 0
    press(qtbot, viewer, Qt.Key_N)
    press(qtbot, viewer, Qt.Key_K)  # commit
    settle(qtbot, w)
    target = viewer.layers["promptseg labels"]
    assert np.asarray(target.data[:, 15, 40]).min() == 1 and len(b.points_layer.data) == 0
    press(qtbot, viewer, Qt.Key_U)  # undo
    assert not np.asarray(target.data[:, 15, 40]).any()
    press(qtbot, viewer, Qt.Key_U, Qt.ShiftModifier)  # redo
    assert np.asarray(target.data[:, 15, 40]).min() == 1
    b.points_layer.add([[3, 40, 40]])
    settle(qtbot, w)
    activate()
    b.preview_layer.paint((3, 40, 12), 1, refresh=True)  # brush into the preview, then G refines
    press(qtbot, viewer, Qt.Key_G)
    settle(qtbot, w)
    assert w.session.preview_plane((3,))[40, 40] == 1
    press(qtbot, viewer, Qt.Key_Q)  # clear
    assert len(b.points_layer.data) == 0 and not w.session.preview_plane((3,)).any()
    # the layer's own keys still work once our session is closed
    w.close_session()
    viewer.layers.selection.active = b.points_layer
    b.points_layer.mode = "pan_zoom"
    press(qtbot, viewer, Qt.Key_P)  # napari: points add mode
    assert b.points_layer.mode == "add"


def test_keys_are_listed_in_the_dock(make_napari_viewer, qtbot):
    from napari_promptseg._napari.keys import KEYS

    viewer, _, w = open_widget(make_napari_viewer, qtbot, two_bars_stack(3))
    from qtpy.QtWidgets import QLabel

    text = " ".join(lab.text() for lab in w.findChildren(QLabel))
    for key, (_, what) in KEYS.items():
        assert f"{key}: {what}" in text


def test_commit_into_a_zarr_labels_layer_writes_the_store_and_undo_respects_the_brush(
        make_napari_viewer, qtbot, tmp_path):
    import zarr

    stack = two_bars_stack(6)
    viewer, layer, w = open_widget(make_napari_viewer, qtbot, stack)
    store = zarr.create_array(tmp_path / "labels.zarr", shape=stack.shape, chunks=(1, 60, 80), dtype=np.int32)
    labels = viewer.add_labels(store, name="mine")
    w.labels_combo.setCurrentText("mine")
    viewer.dims.set_point(0, 2)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    w.bridge.points_layer.add([[2, 15, 40]])
    settle(qtbot, w)
    w.commit()
    assert labels.data is store  # written in place, not replaced by an in-memory copy
    assert zarr.open_array(tmp_path / "labels.zarr")[2, 15, 40] == 1
    labels.paint((2, 15, 40), 5, refresh=True)  # brush work on the committed object
    w.undo()
    assert "brush" in w.status.text()
    assert zarr.open_array(tmp_path / "labels.zarr")[2, 15, 40] == 5  # the brush work stays


def test_multiscale_labels_layer_receives_commits(make_napari_viewer, qtbot):
    img = two_bars_stack(1)[0]
    viewer, layer, w = open_widget(make_napari_viewer, qtbot, img)
    pyramid = [np.zeros((60, 80), np.int32), np.zeros((30, 40), np.int32)]
    labels = viewer.add_labels(pyramid, name="pyramid", multiscale=True)
    w.labels_combo.setCurrentText("pyramid")
    w.bridge.points_layer.add([[15, 40]])
    settle(qtbot, w)
    w.commit()
    assert pyramid[0][15, 40] == 1 and pyramid[1][7, 20] == 1 and labels.data[0] is pyramid[0]


@pytest.mark.slow
def test_autosave_is_offered_when_the_image_is_opened_again(make_napari_viewer, qtbot):
    stack = two_bars_stack(5)
    viewer, layer, w = open_widget(make_napari_viewer, qtbot, stack)
    w.bridge.points_layer.add([[0, 15, 40]])
    settle(qtbot, w)
    w.commit()
    viewer.close()
    viewer2, _, w2 = open_widget(make_napari_viewer, qtbot, stack.copy())
    qtbot.waitUntil(lambda: not w2.restore_button.isHidden(), timeout=10000)  # the summary is a job
    assert "autosaved" in w2.status.text() or w2.session.annotation_store.exists()
    qtbot.mouseClick(w2.restore_button, Qt.LeftButton)
    assert np.asarray(viewer2.layers["promptseg labels"].data[0, 15, 40]) == 1


@pytest.mark.slow
def test_dim_8bit_image_reaches_the_model_through_its_contrast_limits(make_napari_viewer, qtbot):
    img = np.full((60, 80), 5, np.uint8)
    img[10:20, 10:70] = 40  # dim: below the test model's threshold of 127 without a stretch
    viewer, layer, w = open_widget(make_napari_viewer, qtbot, img)
    layer.contrast_limits = (0, 60)
    qtbot.waitUntil(lambda: w.session.window == (0.0, 60.0) and w.ready, timeout=10000)
    w.bridge.points_layer.add([[15, 40]])
    settle(qtbot, w)
    assert (w.session.preview_plane() == 1).sum() == 10 * 60


def test_closing_the_dock_during_an_embedding_returns_at_once(make_napari_viewer, qtbot):
    from qtpy.QtCore import QThreadPool

    viewer = make_napari_viewer()
    viewer.add_image(two_bars_stack(1)[0], name="img")
    dock, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel(embed_delay=60))  # a minute-long encoder
    qtbot.waitUntil(lambda: w.scheduler.running("embed"), timeout=5000)
    t0 = time.monotonic()
    viewer.window.remove_dock_widget(dock)
    assert QThreadPool.globalInstance().waitForDone(2000)  # the encoder stopped at its next step
    assert time.monotonic() - t0 < 2.5


def test_closing_napari_during_an_embedding_returns_at_once(make_napari_viewer, qtbot):
    from qtpy.QtCore import QThreadPool

    viewer = make_napari_viewer()
    viewer.add_image(two_bars_stack(1)[0], name="img")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel(embed_delay=60))
    qtbot.waitUntil(lambda: w.scheduler.running("embed"), timeout=5000)
    t0 = time.monotonic()
    viewer.close()
    assert QThreadPool.globalInstance().waitForDone(2000)
    assert time.monotonic() - t0 < 2.5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_opening_a_500_plane_2048px_zarr_stack_costs_little_memory(make_napari_viewer, qtbot, tmp_path):
    """500 x 2048 x 2048 uint16 (4 GB): the preview and new labels are lazy; < 1 GB extra before
    the first click (one plane embedded)."""
    import zarr

    z = zarr.create_array(tmp_path / "big.zarr", shape=(500, 2048, 2048), chunks=(1, 2048, 2048),
                          dtype=np.uint16, fill_value=BG)
    plane = np.full((2048, 2048), BG, np.uint16)
    plane[100:300, 100:900] = FG
    z[250] = plane
    viewer = make_napari_viewer()
    layer = viewer.add_image(z, name="big", contrast_limits=(BG, FG))
    viewer.dims.set_point(0, 250)
    import napari_promptseg as ps

    ps.load_model("promptseg_demo")  # PyTorch itself (~640 MB for a CUDA build) is not ours to count
    before = _rss_bytes()
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=60000)
    settle(qtbot, w)
    extra = _rss_bytes() - before
    print(f"extra RSS before the first click: {extra / 2**20:.0f} MiB")
    assert extra < 1 << 30, f"{extra / 2**20:.0f} MiB"
    w.bridge.points_layer.add([[250, 200, 500]])
    settle(qtbot, w)
    assert w.session.preview_plane((250,))[200, 500] == 1
    assert w.session.preview.nchunks_initialized == 1
    assert layer.data is z


def test_h_on_the_canvas_marks_where_the_object_ends_and_p_stops_there(make_napari_viewer, qtbot):
    """Issue 29: the user's word wins, through the real key on the canvas."""
    viewer, _, w = open_widget(make_napari_viewer, qtbot, two_bars_stack(10))
    viewer.dims.set_point(0, 2)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    w.bridge.points_layer.add([[2, 15, 40]])
    settle(qtbot, w)
    viewer.dims.set_point(0, 7)
    press(qtbot, viewer, Qt.Key_H)
    assert "object 1 ends before plane 7" in w.status.text()
    press(qtbot, viewer, Qt.Key_P)
    settle(qtbot, w)
    preview = np.asarray(w.bridge.preview_layer.data)
    assert [k for k in range(10) if (preview[k] == 1).any()] == list(range(7))
    assert w.buttons["mark_end"].isEnabled()
