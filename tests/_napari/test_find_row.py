"""The dock's Find row (SAM 3 concept prompts) in a real viewer, on a tiny random-weight SAM 3:
shown for a concept model only; text typed + Enter and the button find into a new labels layer
(the image's transforms, committed labels untouched); the score slider re-filters with no model
call; exemplar boxes drawn in their Shapes layer (green, red with Alt or the checkbox) reach the
model; every plane of a stack with 3D ids; Cancel; errors in the status line and napari's
notifications; the found layer as the commit target for clicks."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

import napari_promptseg as ps
from napari_promptseg._napari import layers as L
from napari_promptseg._napari.controls import items
from napari_promptseg._napari.demo import WIDGET_NAME
from napari_promptseg.sample import nuclei_image
from napari_promptseg.segmentation.link3d import link_plane
from tests.component_model import ComponentModel
from tests.test_session_find import SAM3_MISSING, SHAPE, above, tiny_sam3

from .test_widget import click, settle

TIMEOUT = 120_000  # ms: a SAM 3 pass takes seconds on a busy 2-core machine


@pytest.fixture
def sam3(monkeypatch):
    """The tiny SAM 3 with its random scores stretched to 0..1 (order kept), so that the slider's
    0.01 steps matter; records every detect call's prompts in ``.calls``."""
    if SAM3_MISSING:  # imported at collection, before a viewer (see tests/test_session_find.py)
        pytest.skip(f"SAM 3 cannot be imported here: {SAM3_MISSING}")
    model = tiny_sam3()
    calls, orig = [], model.detect

    def detect(emb, text=None, boxes=None, box_labels=None):
        calls.append((text, None if boxes is None else np.array(boxes),
                      None if box_labels is None else np.array(box_labels)))
        scores, pred, logits = orig(emb, text, boxes, box_labels)
        lo, hi = float(scores.min()), float(scores.max())
        return (scores - lo) / max(hi - lo, 1e-12), pred, logits

    monkeypatch.setattr(model, "detect", detect)
    model.calls = calls
    yield model
    del model.calls


@pytest.fixture(scope="module")
def image():
    return nuclei_image(SHAPE, n=5, seed=2)[0]


def _open(make_napari_viewer, qtbot, model, image, **kw):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei", **kw)
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(model)
    qtbot.waitUntil(lambda: w.ready, timeout=TIMEOUT)
    settle(qtbot, w, TIMEOUT)
    return viewer, w


def _found(qtbot, w):
    qtbot.waitUntil(lambda: w.find_row.found_layer is not None and not w.session.finding
                    and not w.scheduler.busy, timeout=TIMEOUT)
    return w.find_row.found_layer


def test_type_a_phrase_press_enter_then_move_the_slider(sam3, make_napari_viewer, qtbot, image):
    viewer, w = _open(make_napari_viewer, qtbot, ComponentModel(), image, scale=(0.5, 0.5),
                      translate=(3, 4))
    row = w.find_row
    assert "sam3" in items(w.model_combo)
    assert not row.isVisibleTo(w) and L.EXEMPLARS_NAME not in viewer.layers  # SAM: no Find row
    w.set_model(sam3)
    qtbot.waitUntil(lambda: w.ready, timeout=TIMEOUT)
    settle(qtbot, w, TIMEOUT)
    assert row.isVisibleTo(w) and L.EXEMPLARS_NAME in viewer.layers and not row.scope_combo.isEnabled()
    assert viewer.layers.selection.active is w.bridge.points_layer  # clicks still prompt objects
    qtbot.keyClicks(row.text, "nucleus")
    qtbot.keyClick(row.text, Qt.Key.Key_Return)
    layer = _found(qtbot, w)
    assert layer.name == "found: nucleus" and tuple(layer.scale) == (0.5, 0.5)
    assert tuple(layer.translate) == (3, 4) and layer.name in items(w.labels_combo)
    assert [c[0] for c in sam3.calls] == ["nucleus"]
    ref = ps.find(sam3, w.session.stack.get(()), text="nucleus", threshold=0.0)  # the same embedding
    n = len(sam3.calls)
    assert (ref.scores >= 0.5).sum() >= 1 and row.threshold == 0.5
    np.testing.assert_array_equal(np.asarray(layer.data), above(ref, 0.5).labels)
    assert w.target_labels() is None  # nothing committed, no labels made
    row.slider.setValue(20)  # as a drag does: valueChanged, live
    assert row.score_label.text() == "score ≥ 0.20" and len(sam3.calls) == n  # no model call
    np.testing.assert_array_equal(np.asarray(layer.data), above(ref, 0.2).labels)
    assert f"{(ref.scores > 0.2).sum()} objects scoring >= 0.20" in w.status.text()
    row.slider.setValue(100)  # only the best (stretched to score 1)
    assert set(np.unique(layer.data)) <= {0, 1} and viewer.layers[layer.name] is layer
    w.set_model(ComponentModel())
    assert not row.isVisibleTo(w)


def test_exemplar_boxes_positive_negative_and_alt(sam3, make_napari_viewer, qtbot, image):
    from napari.utils.colormaps.standardize_color import transform_color

    viewer, w = _open(make_napari_viewer, qtbot, sam3, image)
    row = w.find_row
    ly = viewer.layers[L.EXEMPLARS_NAME]
    assert ly is row.layer and ly.mode == "add_rectangle" and "Alt" in row.negative_check.toolTip()
    ly.add_rectangles(np.array([[[10, 12], [30, 40]]], float))  # an example
    row.negative_check.setChecked(True)
    ly.add_rectangles(np.array([[[40, 50], [60, 70]]], float))  # a counter-example
    row.negative_check.setChecked(False)
    viewer.layers.selection.active = ly
    click(ly, (20, 60), modifiers=["Alt"])  # a box started with Alt held: a counter-example
    assert len(ly.data) == 3 and list(ly.features["label"]) == [1, 0, 0]
    np.testing.assert_allclose(ly.edge_color, transform_color([L.POSITIVE, L.NEGATIVE, L.NEGATIVE]))
    row.find_button.click()
    layer = _found(qtbot, w)
    assert layer.name == "found: 1 exemplar box"
    text, boxes, labels = sam3.calls[-1]
    assert text is None and labels.tolist() == [True, False, False]
    np.testing.assert_allclose(boxes[:2], [[10, 12, 30, 40], [40, 50, 60, 70]])
    assert 19 <= boxes[2][0] <= boxes[2][2] <= 21 and 59 <= boxes[2][1] <= boxes[2][3] <= 61
    row.clear_boxes()
    assert not len(ly.data)


def test_every_plane_of_a_stack_gets_3d_ids(sam3, make_napari_viewer, qtbot, image):
    viewer, w = _open(make_napari_viewer, qtbot, sam3, np.stack([image, image]))
    row = w.find_row
    assert row.scope_combo.isEnabled() and row.layer.ndim == 3
    row.scope_combo.setCurrentText("every plane along the axis")
    row.slider.setValue(30)
    row.text.setText("cell")
    row.find_button.click()
    lab = np.asarray(_found(qtbot, w).data[:])
    assert lab.shape == (2, *SHAPE) and len(sam3.calls) == 2
    ref = ps.find(sam3, w.session.stack.get((0,)), text="cell", threshold=0.0)
    first, _ = link_plane(None, above(ref, 0.3).labels, 1)
    np.testing.assert_array_equal(lab[0], first)
    np.testing.assert_array_equal(lab[1], lab[0])  # the same plane twice: the same 3D ids
    assert "on 2 of 2 planes" in w.status.text()
    row.slider.setValue(60)  # a line of planes is relinked in a worker, no model call
    settle(qtbot, w, TIMEOUT)
    first, _ = link_plane(None, above(ref, 0.6).labels, 1)
    lab = np.asarray(w.find_row.found_layer.data[:])
    np.testing.assert_array_equal(lab, np.stack([first, first]))
    assert len(sam3.calls) == 3 and "scoring >= 0.60 on 2 of 2 planes" in w.status.text()


def test_cancel_and_errors_are_said(sam3, make_napari_viewer, qtbot, image, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer, w = _open(make_napari_viewer, qtbot, sam3, np.stack([image] * 4))
    row = w.find_row
    row.find_button.click()  # nothing typed, no box
    assert "nothing to find" in w.status.text() and not w.session.finding
    row.layer.add_rectangles(np.array([[[0, 500, 500], [0, 500, 600], [0, 600, 600], [0, 600, 500]]], float))
    row.text.setText("nucleus")
    row.find_button.click()
    assert "lies entirely outside" in w.status.text()
    row.clear_boxes()
    row.scope_combo.setCurrentText("every plane along the axis")
    row.find_button.click()
    qtbot.waitUntil(lambda: row.found_layer is not None, timeout=TIMEOUT)  # the first plane is in
    w.cancel()
    assert not w.session.finding
    settle(qtbot, w, TIMEOUT)
    lab = np.asarray(row.found_layer.data[:])
    assert not lab[-1].any() and w.session.found.done[0] == (0,) and len(w.session.found.done) < 4
    assert "stopped after" in w.status.text() or "cancelled" in w.status.text()

    def broken(*args, **kwargs):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(sam3, "detect", broken)
    row.scope_combo.setCurrentText("this plane")
    row.find_button.click()
    qtbot.waitUntil(lambda: not w.session.finding and not w.scheduler.busy, timeout=TIMEOUT)
    assert w.status.text() == "find failed: detector exploded."
    assert any("detector exploded" in str(x) for x in shown)


def test_the_found_layer_takes_corrections(sam3, make_napari_viewer, qtbot, image, monkeypatch):
    viewer, w = _open(make_napari_viewer, qtbot, sam3, image)
    row = w.find_row
    row.text.setText("nucleus")
    row.slider.setValue(90)
    row.find_button.click()
    layer = _found(qtbot, w)
    w.labels_combo.setCurrentText(layer.name)  # commit into the found labels
    assert w.target_labels() is layer and w.session.target is layer.data
    before = np.array(layer.data)
    statuses = []
    w.session.events.status.connect(statuses.append)
    click(w.bridge.points_layer, (32, 40))
    settle(qtbot, w, TIMEOUT)
    if w.session.preview_plane().any():  # SAM 3 decodes points (its tracker's heads)
        w.commit()
        after = np.asarray(layer.data)
        assert after.max() > before.max() and ((after == before) | (after == after.max())).all()
        row.slider.setValue(10)
        np.testing.assert_array_equal(np.asarray(layer.data), after)  # corrected: kept as it is
        assert "edited" in w.status.text()
    else:  # a SAM 3 without point prompts: a message, not a traceback
        assert "could not decode the prompts" in w.status.text()
    w.clear()

    def not_yet(*args, **kwargs):
        raise NotImplementedError("sam3_tiny_test: point prompts are not supported with SAM 3 yet")

    monkeypatch.setattr(sam3, "_predict", not_yet)
    click(w.bridge.points_layer, (20, 20))
    settle(qtbot, w, TIMEOUT)
    assert "could not decode the prompts: sam3_tiny_test: point prompts are not supported" in w.status.text()


@pytest.mark.slow  # Meta's video model: ~30 s on 2 cores
def test_track_a_concept_through_the_frames_with_the_video_model(sam3, make_napari_viewer, qtbot, image):
    """The scope 'every frame: detect here, then track': SAM 3's video model from the displayed
    frame (ps.track_concept), Enter typed in the text field; one id per track."""
    video = np.stack([image, np.roll(image, 2, axis=1), np.roll(image, 4, axis=1)])
    viewer, w = _open(make_napari_viewer, qtbot, sam3, video)
    viewer.dims.set_current_step(0, 1)
    row = w.find_row
    row.scope_combo.setCurrentText("every frame: detect here, then track (video)")
    assert row.scope == "track"
    row.slider.setValue(10)
    row.text.setText("cell")
    qtbot.keyClick(row.text, Qt.Key.Key_Return)
    lab = np.asarray(_found(qtbot, w).data[:])
    want = ps.track_concept(sam3, video, text="cell", frame=1, threshold=0.1,
                            contrast_limits=w.session.stack.window)
    np.testing.assert_array_equal(lab, want)
    assert not sam3.calls  # Meta's video model ran, not the image model's detect
    assert "tracked 'cell'" in w.status.text() and "of 3 frames" in w.status.text()
