"""The dock widget in a real viewer, driven through real layer events, with a deterministic backend."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from napari_promptseg._napari.demo import WIDGET_NAME
from tests.component_model import ComponentModel, blob_image


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read from a vispy event (as in napari's own tests)."""

    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    button: int = 1
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    handled: bool = False


def click(layer, world, modifiers=(), button=1):
    """A mouse click at ``world`` through napari's callback chain (press, then release)."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind, run in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        ev = MouseEvent(kind, tuple(world), list(modifiers), button)
        run(layer, ReadOnlyWrapper(ev, exceptions=("handled",)))


def open_widget(make_napari_viewer, qtbot, model, **image_kwargs):
    """A viewer with the blob image ("cells"), the widget docked, ``model`` set and embedded."""
    viewer = make_napari_viewer()
    img, truth = blob_image()
    layer = viewer.add_image(img, name="cells", **image_kwargs)
    dock, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(model)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    return SimpleNamespace(viewer=viewer, w=w, layer=layer, truth=truth, model=model, dock=dock)


def settle(qtbot, w, timeout=10000):
    """Wait until no decode runs and its result has reached the UI thread."""
    qtbot.waitUntil(lambda: not w._runner.busy, timeout=timeout)
    qtbot.wait(30)


@pytest.fixture
def env(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, truth = blob_image()
    layer = viewer.add_image(img, name="cells")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    model = ComponentModel()
    w.set_model(model)
    assert w.image_layer is layer  # the only image is picked at once
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    return SimpleNamespace(viewer=viewer, w=w, layer=layer, truth=truth, model=model)


def test_point_in_points_layer_gives_the_mask_under_it(env, qtbot):
    w = env.w
    w.points_layer.add([[25, 30]])  # inside object 1
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, env.truth == 1)
    assert env.model.calls[-1]["multimask"] and env.model.calls[-1]["mask_input"] is None
    assert "0.90" in w.status.text()


def test_scale_and_translate_of_the_image_are_respected(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, truth = blob_image()
    layer = viewer.add_image(img, name="cells", scale=(1, 0.25), translate=(5, -7))
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    world = np.array([5 + 80, -7 + 0.25 * 40])  # world position of image pixel (80, 40): object 2
    w.points_layer.add(w.points_layer.world_to_data(world))
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 2)
    np.testing.assert_allclose(w.preview_layer.scale, layer.scale)
    # the user moves the image afterwards: the prompt layers follow, a click still lands right
    layer.translate = (0, 0)
    w.clear()
    w.points_layer.add(w.points_layer.world_to_data(np.array([45, 0.25 * 115])))  # pixel (45, 115)
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 3)


def test_prompt_layer_with_its_own_transform_is_converted_through_world(env, qtbot):
    w = env.w
    w.points_layer.scale = (2.0, 2.0)  # the user rescaled the points layer, not the image
    w.points_layer.add([[20, 57]])  # points-layer data (20, 57) -> world (40, 114) = image pixel
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, env.truth == 3)


def test_negative_points_boxes_and_several_boxes(env, qtbot):
    w, truth = env.w, env.truth
    w.boxes_layer.add_rectangles(np.array([[[75, 145], [5, 5]]]))  # any drag direction
    settle(qtbot, w)
    in_box = np.zeros_like(truth, bool)
    in_box[5:76, 5:146] = True
    np.testing.assert_array_equal(w.preview_layer.data > 0, (truth > 0) & in_box)
    # Shift-click makes a negative point (through napari's own mouse callbacks)
    click(w.points_layer, (45, 115), modifiers=["Shift"])
    settle(qtbot, w)
    assert list(w.points_layer.features["label"]) == [0]
    np.testing.assert_array_equal(w.preview_layer.data > 0, (truth > 0) & in_box & (truth != 3))
    click(w.points_layer, (30, 20))  # a plain click is positive again
    click(w.points_layer, (25, 120), button=2)  # right click: negative
    settle(qtbot, w)
    assert list(w.points_layer.features["label"]) == [0, 1, 0]
    np.testing.assert_array_equal(w.points_layer.data, [[45, 115], [30, 20], [25, 120]])
    # a second box: two objects at once, each with its own id in the preview
    w.clear()
    w.boxes_layer.add_rectangles(np.array([[[8, 8], [42, 52]], [[58, 18], [102, 62]]]))
    settle(qtbot, w)
    assert len(w.predictions) == 2
    np.testing.assert_array_equal(w.preview_layer.data, np.where(truth == 1, 1, np.where(truth == 2, 2, 0)))


def test_toggle_negative_mode_key(env, qtbot):
    w = env.w
    w.toggle_negative()
    assert w.negative_check.isChecked()
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    assert list(w.points_layer.features["label"]) == [0]
    assert not w.preview_layer.data.any()  # only a negative point: no object
    w.toggle_negative()
    w.points_layer.add([[80, 40]])
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, env.truth == 2)


def test_commit_ids_preserve_others_undo_redo(env, qtbot):
    w, truth = env.w, env.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    assert w.commit() == (1,)
    target = env.viewer.layers["promptseg labels"]
    np.testing.assert_array_equal(target.data, np.where(truth == 1, 1, 0))
    assert len(w.points_layer.data) == 0 and not w.preview_layer.data.any()  # ready for the next
    after_first = target.data.copy()
    # a box over everything: the committed object is kept
    w.boxes_layer.add_rectangles(np.array([[[0, 0], [119, 159]]]))
    settle(qtbot, w)
    assert w.commit() == (2,)
    np.testing.assert_array_equal(target.data, np.where(truth == 1, 1, np.where(truth > 0, 2, 0)))
    after_second = target.data.copy()
    w.undo()
    np.testing.assert_array_equal(target.data, after_first)
    w.redo()
    np.testing.assert_array_equal(target.data, after_second)
    w.undo()
    w.undo()
    assert not target.data.any()
    w.undo()  # nothing left: no error
    assert "nothing to undo" in w.status.text()
    # overwrite on request
    w.redo()
    w.overwrite_check.setChecked(True)
    w.boxes_layer.add_rectangles(np.array([[[0, 0], [119, 159]]]))
    settle(qtbot, w)
    assert w.commit() == (2,)
    np.testing.assert_array_equal(target.data, np.where(truth > 0, 2, 0))


def test_commit_into_a_chosen_layer_of_the_wrong_shape_is_refused(env, qtbot):
    w = env.w
    env.viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    w.labels_combo.setCurrentText("small")
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    assert w.commit() == ()
    assert "shape" in w.status.text()
    assert not env.viewer.layers["small"].data.any()


def test_clear_removes_prompts_and_preview_only(env, qtbot):
    w = env.w
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.commit()
    w.points_layer.add([[80, 40]])
    settle(qtbot, w)
    w.clear()
    settle(qtbot, w)
    assert len(w.points_layer.data) == 0 and not w.preview_layer.data.any()
    np.testing.assert_array_equal(env.viewer.layers["promptseg labels"].data, np.where(env.truth == 1, 1, 0))


def test_cycling_candidate_masks(env, qtbot):
    w, truth = env.w, env.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 1)  # best (0.90) first
    w.next_mask()
    assert (w.preview_layer.data > 0).sum() > (truth == 1).sum()  # the grown mask (0.60)
    assert "[0.60]" in w.status.text()
    w.next_mask()
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth > 0)  # all bright pixels (0.30)
    w.next_mask()
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 1)


def test_next_mask_skips_candidates_the_model_scores_as_wrong(make_napari_viewer, qtbot):
    # promptseg_demo's second and third outputs are untrained (whole image, score ~0)
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(multimask_scores=(0.9, 0.6, 0.02)))
    w, truth = e.w, e.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.next_mask()
    assert "[0.60]" in w.status.text()
    w.next_mask()  # the 0.02 candidate (all bright pixels) is skipped: back to the best
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 1)
    e2 = open_widget(make_napari_viewer, qtbot, ComponentModel(multimask_scores=(0.9, 0.05, 0.02)))
    e2.w.points_layer.add([[25, 30]])
    settle(qtbot, e2.w)
    assert "score 0.90" in e2.w.status.text() and "J: next" not in e2.w.status.text()
    e2.w.next_mask()
    np.testing.assert_array_equal(e2.w.preview_layer.data > 0, e2.truth == 1)
    assert "score below 0.1" in e2.w.status.text()


def test_refinement_logits_belong_to_one_object(env, qtbot):
    w, model = env.w, env.model
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.next_mask()  # the user prefers candidate 1: its logits refine the next click
    chosen = w.predictions[0].logits[1].copy()
    w.points_layer.add([[35, 45]])
    settle(qtbot, w)
    call = model.calls[-1]
    np.testing.assert_array_equal(call["mask_input"][0], chosen)
    assert not call["multimask"]
    w.commit()
    w.points_layer.add([[80, 40]])  # a new object starts without the old logits
    settle(qtbot, w)
    assert model.calls[-1]["mask_input"] is None
    w.points_layer.add([[85, 45]])
    settle(qtbot, w)
    assert model.calls[-1]["mask_input"] is not None
    w.points_layer.selected_data = {1}
    w.points_layer.remove_selected()  # removing a point resets the logits
    settle(qtbot, w)
    assert model.calls[-1]["mask_input"] is None


def test_painted_preview_refines_the_object(env, qtbot):
    w, truth = env.w, env.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    painted = np.zeros_like(truth)
    painted[20:70, 90:140] = 1  # the user paints object 3 into the preview
    w.preview_layer.data = painted
    w.refine_from_preview()
    settle(qtbot, w)
    call = env.model.calls[-1]
    assert call["mask_input"] is not None and call["box"] is not None
    np.testing.assert_allclose(call["box"], [20, 90, 69, 139])
    assert (w.preview_layer.data[truth == 3] > 0).all()


def test_stale_results_are_dropped_under_rapid_edits(make_napari_viewer, qtbot):
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(delay=0.15))
    w, truth, model = e.w, e.truth, e.model
    shown = []
    w.preview_layer.events.data.connect(lambda e: shown.append((w.preview_layer.data > 0).copy()))
    for p in ([25, 30], [80, 40], [45, 115], [85, 45], [30, 100]):
        w.points_layer.data = np.array([p], float)  # each edit replaces the previous prompt
    settle(qtbot, w)
    assert len(model.calls) == 2  # the first edit, then only the newest: the others were coalesced
    assert len(shown) == 1  # the first (stale) result was dropped
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 3)  # the newest state won


def test_layers_removed_while_a_decode_runs(make_napari_viewer, qtbot):
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(delay=0.3))
    viewer, w, layer, img = e.viewer, e.w, e.layer, e.layer.data
    preview = w.preview_layer
    w.points_layer.add([[25, 30]])
    assert w._runner.busy  # the decode is running while the image goes
    viewer.layers.remove(layer)
    settle(qtbot, w)
    assert not preview.data.any()  # nothing written
    assert w.image_layer is None and not w.ready
    w.commit()  # no image: nothing happens, no exception
    # the preview layer removed mid-run
    layer = viewer.add_image(img, name="cells2")
    w.set_image(layer)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    preview = w.preview_layer
    w.points_layer.add([[25, 30]])
    viewer.layers.remove(preview)
    settle(qtbot, w)
    assert w.preview_layer is None and not preview.data.any()  # nothing written into it
    w.points_layer.add([[80, 40]])  # the next edit brings a new preview layer
    settle(qtbot, w)
    assert w.preview_layer is not None and w.preview_layer.data.any()


def test_contrast_limits_reach_the_model_and_a_new_window_re_embeds(env, qtbot):
    w, model = env.w, env.model
    emb = w.embedding
    assert emb.features["components"].max() == 3  # 1000 vs 30000 through the layer's window
    env.layer.contrast_limits = (0, 65535)  # 30000 maps below 127: nothing is bright any more
    qtbot.waitUntil(lambda: w.embedding is not emb and w.embedding is not None, timeout=10000)
    assert w.embedding.features["components"].max() == 0
    calls = model.embed_calls
    env.layer.contrast_limits = (1000, 30000)  # back to a window seen before: from the cache
    qtbot.waitUntil(lambda: w.embedding is not None and w.embedding.features["components"].max() == 3,
                    timeout=10000)
    assert model.embed_calls == calls


def test_keys_pressed_on_the_canvas(env, qtbot):
    from qtpy.QtCore import Qt

    w = env.w
    canvas = env.viewer.window._qt_viewer.canvas.native
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    qtbot.keyClick(canvas, Qt.Key_J)
    assert "[0.60]" in w.status.text()
    qtbot.keyClick(canvas, Qt.Key_K)
    target = env.viewer.layers["promptseg labels"]
    assert target.data.max() == 1
    qtbot.keyClick(canvas, Qt.Key_U)
    assert not target.data.any()
    qtbot.keyClick(canvas, Qt.Key_U, Qt.ShiftModifier)
    assert target.data.max() == 1
    qtbot.keyClick(canvas, Qt.Key_N)
    assert w.negative_check.isChecked()
    w.points_layer.add([[80, 40]])
    qtbot.keyClick(canvas, Qt.Key_Q)
    assert len(w.points_layer.data) == 0


def test_failed_model_load_is_reported_not_raised(env, qtbot, monkeypatch):
    monkeypatch.setenv("PROMPTSEG_OFFLINE", "1")
    env.w.set_model("vit_b")
    qtbot.waitUntil(lambda: "could not load vit_b" in env.w.status.text(), timeout=20000)
    assert env.w.model is env.model  # the previous model stays usable


def test_sample_data_contribution(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-promptseg", "nuclei")
    layer = viewer.layers["nuclei"]
    assert layer.data.dtype == np.uint16 and layer.data.ndim == 2


def test_real_sam_end_to_end(make_napari_viewer, qtbot, tiny_model):
    """The widget with the real SAM backend (tiny random weights): the preview is SAM's best mask."""
    viewer = make_napari_viewer()
    img, _ = blob_image()
    layer = viewer.add_image(img, name="cells", scale=(2, 2))
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(tiny_model)
    qtbot.waitUntil(lambda: w.ready, timeout=30000)
    w.points_layer.add(w.points_layer.world_to_data(np.array([2 * 25, 2 * 30])))
    settle(qtbot, w, timeout=30000)
    expected = tiny_model.embed(img, contrast_limits=tuple(layer.contrast_limits))
    pred = tiny_model.predict(expected, points=[[25, 30]])
    np.testing.assert_array_equal(w.preview_layer.data > 0, pred.masks[pred.best])
    w.commit()
    np.testing.assert_array_equal(viewer.layers["promptseg labels"].data > 0, pred.masks[pred.best])


def test_model_download_in_a_worker_with_progress(env, qtbot, monkeypatch, tiny_spec, tiny_ckpt):
    """A registry name downloads (local server) and loads in a worker; the image is embedded."""
    import dataclasses

    from napari_promptseg.models import registry
    from tests.test_weights import _Server

    server = _Server(tiny_ckpt.read_bytes())
    try:
        spec = dataclasses.replace(tiny_spec, name="tiny_download", url=f"{server.url}/good.pth")
        monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
        statuses = []
        monkeypatch.setattr(env.w, "_set_status", lambda text: statuses.append(text))
        env.w.set_model("tiny_download", device="cpu")
        qtbot.waitUntil(lambda: env.w.model is not env.model and env.w.ready, timeout=60000)
        assert env.w.model.name == "tiny_download" and env.w.embedding.model == "tiny_download"
        assert any(s.startswith("downloading tiny_download") for s in statuses)
        assert server.hits == {"good": 1}
    finally:
        server.close()


def test_image_removed_while_embedding(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, _ = blob_image()
    layer = viewer.add_image(img, name="cells")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    model = ComponentModel(embed_delay=0.4)
    w.set_model(model)
    assert model.embed_calls <= 1 and not w.ready
    viewer.layers.remove(layer)
    qtbot.wait(800)
    assert w.embedding is None and w.image_layer is None  # the late result was dropped


def test_commit_while_the_newest_prompts_decode_commits_their_mask(make_napari_viewer, qtbot):
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(delay=0.3))
    viewer, w, truth = e.viewer, e.w, e.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.points_layer.add([[80, 40]])  # object 2 joins: decoding
    assert w.commit() == ()  # deferred, not the old preview
    settle(qtbot, w)
    target = viewer.layers["promptseg labels"]
    np.testing.assert_array_equal(target.data, np.where((truth == 1) | (truth == 2), 1, 0))


def test_next_mask_during_a_decode_keeps_the_newest_result(make_napari_viewer, qtbot):
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(delay=0.3))
    w, truth = e.w, e.truth
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.points_layer.data = np.array([[80, 40]], float)
    w.next_mask()
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 2)


def test_closing_the_dock_ends_the_session(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    e = open_widget(make_napari_viewer, qtbot, ComponentModel())
    viewer, w, dock = e.viewer, e.w, e.dock
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    points = w.points_layer
    viewer.window.remove_dock_widget(dock)
    assert w._closed and w._on_press not in points.mouse_drag_callbacks
    assert all(k not in viewer.keymap for k in ("K", "U", "Shift-U"))
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_K)
    assert "promptseg labels" not in viewer.layers  # K no longer commits
    points.add([[80, 40]])  # no decode any more, no error
    assert points in viewer.layers and len(points.data) == 2  # the layers and their data stay


def test_rotated_and_affine_images(make_napari_viewer, qtbot):
    affine = np.array([[1.0, 0.3, 4.0], [0.0, 2.0, -3.0], [0.0, 0.0, 1.0]])
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(), rotate=30, affine=affine)
    w, truth, layer = e.w, e.truth, e.layer
    world = layer.data_to_world(np.array([80.0, 40.0]))  # where pixel (80, 40) is on screen
    click(w.points_layer, world)
    settle(qtbot, w)
    np.testing.assert_allclose(w.points_layer.world_to_data(world), [80, 40], atol=1e-6)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 2)


def test_rgb_image(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, truth = blob_image()
    rgb = np.stack([(img > 5000) * 200] * 3, -1).astype(np.uint8)
    viewer.add_image(rgb, name="rgb")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    assert w.preview_layer.data.shape == truth.shape and w.points_layer.ndim == 2
    click(w.points_layer, (45, 115))
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, truth == 3)


def test_a_box_off_the_image_does_not_break_the_others(env, qtbot):
    w = env.w
    w.boxes_layer.add_rectangles(np.array([[[8, 8], [42, 52]], [[500, 500], [600, 600]]]))
    settle(qtbot, w)
    np.testing.assert_array_equal(w.preview_layer.data > 0, env.truth == 1)


def test_renamed_target_keeps_receiving_commits_and_undo(env, qtbot):
    w = env.w
    w.points_layer.add([[25, 30]])
    settle(qtbot, w)
    w.commit()
    target = env.viewer.layers["promptseg labels"]
    target.name = "my cells"
    assert w.labels_combo.currentText() == "my cells"
    w.points_layer.add([[80, 40]])
    settle(qtbot, w)
    assert w.commit() == (2,)
    assert target.data.max() == 2 and "promptseg labels" not in env.viewer.layers
    w.undo()
    assert target.data.max() == 1


def test_painting_the_preview_wins_over_a_decode_in_flight(make_napari_viewer, qtbot):
    e = open_widget(make_napari_viewer, qtbot, ComponentModel(delay=0.3))
    w, truth = e.w, e.truth
    w.points_layer.add([[25, 30]])
    w.preview_layer.brush_size = 5
    w.preview_layer.paint((100, 150), 1)  # the user paints while the decode runs
    settle(qtbot, w)
    assert w.preview_layer.data[100, 150] == 1 and not w.preview_layer.data[truth == 1].any()


def test_offline_default_is_the_demo_model(make_napari_viewer, qtbot):
    """Nothing downloaded (isolated cache): the widget loads the packaged demo model by itself,
    says so, and segments a nucleus of the sample image."""
    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.sample import nuclei_image

    viewer = make_napari_viewer()
    w = open_demo(viewer)
    qtbot.waitUntil(lambda: w.ready, timeout=60000)
    assert w.model.name == "promptseg_demo" and "offline demo model" in w.status.text()
    assert w.model_combo.currentText() == "promptseg_demo"
    from scipy import ndimage as ndi

    _, truth = nuclei_image()

    def isolated(j):
        ring = ndi.binary_dilation(truth == j, iterations=2) & (truth != j)
        return not np.any(truth[ring])

    # the largest nucleus that touches no other (one click on a touching one may give the cluster)
    counts = np.bincount(truth.ravel())
    i = max((j for j in range(1, len(counts)) if counts[j] and isolated(j)), key=lambda j: counts[j])
    w.points_layer.add(np.argwhere(truth == i).mean(0))
    settle(qtbot, w, timeout=30000)
    pred = w.preview_layer.data > 0
    iou = (pred & (truth == i)).sum() / (pred | (truth == i)).sum()
    assert iou > 0.85, iou  # measured 0.98 through the API (step-11652 weights: 0.97, step 6135: 0.95)


def test_choosing_a_model_that_needs_a_download_waits_for_load(env, qtbot):
    w = env.w
    w.model_combo.setCurrentText("vit_h")
    w._on_model_chosen()
    assert "press 'Load model' to download vit_h" in w.status.text()
    assert w.model is env.model


def test_local_checkpoint_architecture_is_read_from_the_file(tiny_ckpt):
    from napari_promptseg._napari.widget import _guess_registry_name
    from napari_promptseg.models.registry import get_spec
    from napari_promptseg.models.weights import packaged_path

    assert _guess_registry_name(packaged_path(get_spec("promptseg_demo"))) == "promptseg_demo"
    assert _guess_registry_name(tiny_ckpt) == "vit_b"  # no registry model has that width: the default
