"""The dock on a real RGB video layer (T x H x W x 3) with a SAM 2 model (random weights, tiny
config): a click on frame 3, P on the canvas tracks with memory both ways into the preview, a
correction on a tracked frame and P again re-track; the result equals the tracker run directly."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_promptseg._napari.demo import WIDGET_NAME
from napari_promptseg.propagation.memory import MemoryTracker
from napari_promptseg.session.planes import masks_of
from tests._napari.test_keys_and_lifecycle import press
from tests._napari.test_stack_widget import preview, wait_propagation
from tests._napari.test_widget import click, settle
from tests.conftest import mask_iou, moving_blobs


def _reference(model, frames, seeds):
    """The tracker fed the preview's masks of the prompted frames, as the session does."""
    tr = MemoryTracker(model, lambda k: model.embed(frames[k]), len(frames), frames.shape[1:3])
    for k, objs in sorted(seeds.items()):
        for o, m in objs.items():
            tr.add_mask(k, o, m)
    out = {}
    for r in tr.propagate_iter():
        for o, m in r.masks.items():
            out.setdefault(r.index, {}).setdefault(o, m)
    return out


@pytest.mark.slow
def test_click_then_p_tracks_a_video_with_memory_and_a_correction_retracks(
        make_napari_viewer, qtbot, sam2_model):
    frames = moving_blobs(6)
    viewer = make_napari_viewer()
    layer = viewer.add_image(frames, name="video", rgb=True)
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(sam2_model)
    assert w.method_combo.isEnabled() and w.method_combo.currentText() == "memory (SAM 2)"
    assert not w.min_score_spin.isEnabled()  # the prompt method's limits do not apply
    # the default: a track ends where its object does
    assert w.stop_after_spin.isEnabled() and w.stop_after_spin.value() == 1
    w.stop_after_spin.setValue(4)
    assert w.session.propagation_settings.stop_after == 4
    w.stop_after_spin.setValue(0)
    assert w.session.propagation_settings.stop_after is None
    viewer.dims.set_point(0, 3)
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    assert w.bridge.displayed_plane() == (3,)
    click(w.bridge.points_layer, (3, 50, 60))
    settle(qtbot, w, timeout=20000)
    seed3 = preview(w)[3].copy()
    assert (seed3 == 1).any() and not preview(w)[[0, 1, 2, 4, 5]].any()

    viewer.layers.selection.active = layer
    press(qtbot, viewer, Qt.Key_P)  # the key on the canvas, not the button
    qtbot.waitUntil(lambda: w.session.propagating or w.scheduler.running("propagate"), timeout=5000)
    assert "memory" in w.status.text()
    wait_propagation(qtbot, w, timeout=60000)
    got = preview(w)
    ref = _reference(sam2_model, frames, {3: masks_of(seed3)})
    for k in (0, 1, 2, 4, 5):  # both directions from frame 3
        want = ref.get(k, {}).get(1, np.zeros(frames.shape[1:3], bool))
        assert mask_iou(got[k] == 1, want) >= 0.99, k
    np.testing.assert_array_equal(got[3], seed3)  # the prompted frame is the user's

    # a correction on frame 5 (a negative point), then P: frame 5 becomes a prompted frame
    viewer.dims.set_point(0, 5)
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    w.negative_check.setChecked(True)
    click(w.bridge.points_layer, (5, 20, 20))
    settle(qtbot, w, timeout=20000)
    seed5 = preview(w)[5].copy()
    press(qtbot, viewer, Qt.Key_P)
    qtbot.waitUntil(lambda: w.session.propagating or w.scheduler.running("propagate"), timeout=5000)
    wait_propagation(qtbot, w, timeout=60000)
    got = preview(w)
    ref = _reference(sam2_model, frames, {3: masks_of(seed3), 5: masks_of(seed5)})
    np.testing.assert_array_equal(got[5], seed5)
    for k in (0, 1, 2, 4):
        want = ref.get(k, {}).get(1, np.zeros(frames.shape[1:3], bool))
        assert mask_iou(got[k] == 1, want) >= 0.99, k

    w.commit()  # one id through time
    lab = np.asarray(w.target_labels().data)
    assert lab.shape == frames.shape[:3] and set(np.unique(lab)) <= {0, 1}
    assert all((lab[k] == 1).any() == (got[k] == 1).any() for k in range(6))
