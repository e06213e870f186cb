"""The dock widget on z-stacks, time series and T x Z images, with the deterministic backend: the
napari plumbing (planes from the layers' transforms and coordinates, embedding and prefetching in
workers, keys, progress, cancel). The propagation and commit logic itself is tested without a
viewer in tests/test_session_stack.py."""

import numpy as np
import pytest

from napari_promptseg._napari.demo import WIDGET_NAME
from tests._napari.test_widget import click, settle
from tests.component_model import ComponentModel
from tests.test_session_stack import BG, iou, sphere_stack


def wait_propagation(qtbot, w, timeout=20000):
    qtbot.waitUntil(lambda: not w.session.propagating and not w.scheduler.running("propagate"),
                    timeout=timeout)


def preview(w) -> np.ndarray:
    return np.asarray(w.bridge.preview_layer.data[...])


def labels(w) -> np.ndarray:
    return np.asarray(w.target_labels().data[...])


def open_stack(make_napari_viewer, qtbot, data, model=None, **kwargs):
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="stack", **kwargs)
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    model = model or ComponentModel()
    w.set_model(model)
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    return viewer, layer, w, model


def goto(viewer, w, qtbot, world_z):
    """Show the plane at world coordinate ``world_z`` on the first axis; wait for its embedding."""
    step = list(viewer.dims.point)
    step[0] = world_z
    viewer.dims.point = step
    qtbot.waitUntil(lambda: w.ready, timeout=10000)


def test_prompt_on_plane_7_with_anisotropic_scale_lands_on_plane_7(make_napari_viewer, qtbot):
    img, truth = sphere_stack()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, scale=(4, 1, 1), translate=(10, 0, 0))
    goto(viewer, w, qtbot, 10 + 7 * 4)  # world z of plane 7
    assert w.bridge.displayed_plane() == (7,) and w.session.plane == (7,)
    points = w.bridge.points_layer
    click(points, (38, 60, 80))  # world coordinates: (z, y, x)
    np.testing.assert_allclose(points.data[0], [7, 60, 80])
    np.testing.assert_allclose(points.face_color[0], [0, 1, 0, 1])  # positive: lime
    assert set(w.session.prompts) == {(7,)}
    settle(qtbot, w)
    got = preview(w)
    assert got.shape == img.shape
    np.testing.assert_array_equal(got[7] > 0, truth[7] == 1)
    assert not got[np.arange(20) != 7].any()  # nothing on the other planes
    w.commit()
    lab = labels(w)
    assert lab.shape == img.shape and set(np.unique(lab)) == {0, 1}
    np.testing.assert_array_equal(lab[7] == 1, truth[7] == 1)
    assert (lab > 0).sum() == (truth[7] == 1).sum()
    assert w.target_labels().scale[0] == 4  # committed labels keep the anisotropic scale
    assert w.target_labels().translate[0] == 10


def test_prompts_take_their_plane_from_their_own_coordinates(make_napari_viewer, qtbot):
    img, truth = sphere_stack()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img)
    # points added by a script on two planes that are not displayed; without O they are one object
    w.bridge.points_layer.data = np.array([[9.0, 60, 80], [12.0, 10, 50]])
    assert set(w.session.prompts) == {(9,), (12,)}
    settle(qtbot, w, timeout=20000)
    got = preview(w)
    np.testing.assert_array_equal(got[9] > 0, truth[9] == 1)
    np.testing.assert_array_equal(got[12] > 0, truth[12] == 2)
    assert not got[[0, 5, 10, 11]].any()
    # removing plane 12's point clears only plane 12
    w.bridge.points_layer.data = w.bridge.points_layer.data[:1]
    settle(qtbot, w)
    got = preview(w)
    assert not got[12].any() and (got[9] > 0).any()


def test_first_mask_does_not_wait_for_the_other_planes(make_napari_viewer, qtbot):
    img = np.full((100, 64, 64), BG, np.uint16)
    img[:, 20:40, 20:40] = 30000
    model = ComponentModel(embed_delay=0.05)
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    assert model.embed_calls <= 2  # the displayed plane (plus at most one prefetch started)
    z = w.session.plane[0]
    click(w.bridge.points_layer, (z, 30, 30))
    qtbot.waitUntil(lambda: (preview(w)[z] > 0).sum() == 400, timeout=10000)
    assert model.embed_calls <= 1 + w.session.prefetch + 1  # shown while only neighbours were embedded
    settle(qtbot, w)
    assert model.embed_calls <= 1 + w.session.prefetch + 1  # and prefetching stops there


def test_neighbours_are_prefetched_in_the_direction_of_movement(make_napari_viewer, qtbot):
    img = np.full((60, 48, 48), BG, np.uint16)
    viewer, layer, w, model = open_stack(make_napari_viewer, qtbot, img)
    stack, n = w.session.stack, w.session.prefetch
    assert n >= 2
    # start far from the plane shown on opening (the middle, ~29): its own prefetch (one of which
    # is one plane behind) may still be running and must not reach the planes checked below
    goto(viewer, w, qtbot, 45)
    goto(viewer, w, qtbot, 46)  # moving up
    qtbot.waitUntil(lambda: all(stack.cached((46 + k,)) is not None for k in range(1, n + 1)), timeout=10000)
    # prefetching is over: nothing left to fetch around plane 46 and no embedding in flight
    qtbot.waitUntil(lambda: not stack.prefetch_order((46,), 0, 1, count=n) and not w.scheduler.busy,
                    timeout=10000)
    assert stack.cached((45,)) is not None  # one behind
    assert stack.cached((46 - 3,)) is None and stack.cached((46 + n + 2,)) is None
    goto(viewer, w, qtbot, 20)  # moving down: the next ones are below
    qtbot.waitUntil(lambda: stack.cached((19,)) is not None and stack.cached((18,)) is not None,
                    timeout=10000)
    qtbot.waitUntil(lambda: not w.scheduler.busy, timeout=10000)
    assert stack.cached((20 + 2,)) is None  # only one behind


def test_one_intensity_window_for_the_whole_stack(make_napari_viewer, qtbot):
    img = np.full((6, 40, 40), BG, np.uint16)
    img[0, 10:20, 10:20] = 30000
    img[3, 10:20, 10:20] = BG + 500  # a dim object: below the stack's window midpoint
    viewer, layer, w, model = open_stack(make_napari_viewer, qtbot, img)
    goto(viewer, w, qtbot, 3)
    # per-plane min-max would have stretched plane 3's dim square to full brightness
    assert w.session.stack.cached((3,)).features["components"].max() == 0
    goto(viewer, w, qtbot, 0)
    assert w.session.stack.cached((0,)).features["components"].max() == 1


def test_time_by_z_image_defaults_to_z_and_prompts_land_on_t_and_z(make_napari_viewer, qtbot):
    img3, truth3 = sphere_stack(n=8)
    img = np.stack([img3, np.roll(img3, 20, axis=2)])  # (T, Z, Y, X), the object moves in x
    viewer = make_napari_viewer()
    viewer.add_image(img, name="tz")
    viewer.dims.axis_labels = ("t", "z", "y", "x")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=10000)
    assert w.axis_combo.currentText().startswith("z") and w.propagation_axis == 1
    viewer.dims.point = (1, 5, 0, 0)
    qtbot.waitUntil(lambda: w.ready and w.session.plane == (1, 5), timeout=10000)
    click(w.bridge.points_layer, (1, 5, 60, 100))
    assert set(w.session.prompts) == {(1, 5)}
    settle(qtbot, w)
    got = preview(w)
    assert got.shape == img.shape
    np.testing.assert_array_equal(got[1, 5] > 0, np.roll(truth3[5] == 1, 20, axis=1))
    assert not got[0].any() and not got[1, np.arange(8) != 5].any()


def test_rgb_stack(make_napari_viewer, qtbot):
    img3, truth3 = sphere_stack(n=6, center=(3, 60, 80))
    rgb = np.repeat((img3 > BG).astype(np.uint8)[..., None] * 200, 3, axis=-1)
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, rgb, rgb=True)
    assert w.session.lead_shape == (6,) and w.bridge.preview_layer.data.shape == img3.shape
    goto(viewer, w, qtbot, 2)
    click(w.bridge.points_layer, (2, 60, 80))
    settle(qtbot, w)
    got = preview(w)
    np.testing.assert_array_equal(got[2] > 0, truth3[2] == 1)
    assert not got[np.arange(6) != 2].any()


def test_2d_image_refuses_propagation(make_napari_viewer, qtbot):
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, np.full((40, 40), BG, np.uint16))
    assert not w.buttons["propagate"].isEnabled()
    w.propagate()
    assert "2D" in w.status.text()
    assert not w.session.propagating and not w.scheduler.running("propagate")


def test_propagation_with_the_p_key_progress_commit_and_undo(make_napari_viewer, qtbot):
    """End to end through the canvas: click, P (the points layer is active: its own P, add mode,
    must not win), progress in the status line, K commits one 3D label, U undoes it."""
    from qtpy.QtCore import Qt

    img, truth = sphere_stack()
    viewer, layer, w, model = open_stack(make_napari_viewer, qtbot, img, scale=(4, 1, 1))
    canvas = viewer.window._qt_viewer.canvas.native
    progress, status = [], []
    w.session.events.progress.connect(lambda done, total: progress.append((done, total)))
    w.session.events.status.connect(status.append)
    goto(viewer, w, qtbot, 10 * 4)
    points = w.bridge.points_layer
    click(points, (40, 60, 80))
    settle(qtbot, w)
    points.mode = "pan_zoom"
    assert viewer.layers.selection.active is points
    qtbot.keyClick(canvas, Qt.Key_P)
    assert points.mode == "pan_zoom"  # napari's P (add mode) of the points layer did not take the key
    assert w.session.propagating or progress  # started (it may already be done)
    wait_propagation(qtbot, w)
    assert any(s.startswith("propagating: ") for s in status)
    assert progress and progress[-1][0] == progress[-1][1] > 0  # the progress ends complete
    assert "propagation done" in w.status.text()
    got = preview(w)
    ball = truth == 1
    assert iou(got > 0, ball) >= 0.9
    assert not (got > 0)[~ball].any()
    assert w.target_labels() is None  # nothing committed yet
    qtbot.keyClick(canvas, Qt.Key_K)
    lab = labels(w)
    assert set(np.unique(lab)) == {0, 1}
    np.testing.assert_array_equal(lab == 1, got > 0)  # one id for the 3D object
    assert not preview(w).any() and len(points.data) == 0  # the commit cleared prompts and preview
    qtbot.keyClick(canvas, Qt.Key_U)
    assert not labels(w).any()


def test_propagate_starts_from_the_plane_shown_now(make_napari_viewer, qtbot):
    """propagate() (the button and P) reads the displayed plane itself: a caller need not sync it."""
    img, truth = sphere_stack()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img)
    goto(viewer, w, qtbot, 10)
    click(w.bridge.points_layer, (10, 60, 80))
    settle(qtbot, w)
    with viewer.dims.events.point.blocker():  # the view moves without telling the bridge
        viewer.dims.set_point(0, 12)
    assert w.session.plane == (10,) and w.bridge.displayed_plane() == (12,)
    w.propagate()
    assert w.session.plane == (12,)
    wait_propagation(qtbot, w)
    assert iou(preview(w) > 0, truth == 1) >= 0.9


@pytest.mark.slow
def test_cancel_button_stops_a_propagation_in_the_widget(make_napari_viewer, qtbot):
    img, truth = sphere_stack()
    model = ComponentModel(delay=0.15, mask_input="objects")  # exact masks: a plane is whole or empty
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    goto(viewer, w, qtbot, 10)
    click(w.bridge.points_layer, (10, 60, 80))
    settle(qtbot, w)
    w.propagate()
    assert w.session.propagating and w.scheduler.running("propagate")
    qtbot.waitUntil(lambda: (preview(w) > 0).any(axis=(1, 2)).sum() >= 3, timeout=10000)
    w.buttons["cancel"].click()
    assert not w.session.propagating
    qtbot.waitUntil(lambda: not w.scheduler.running("propagate"), timeout=5000)  # the worker ends
    shown = preview(w)
    qtbot.wait(400)  # a step in flight must not land after the cancel
    got = preview(w)
    np.testing.assert_array_equal(got, shown)
    done = (got > 0).any(axis=(1, 2))
    assert 3 <= done.sum() < (truth == 1).any(axis=(1, 2)).sum()
    for z in np.flatnonzero(done):  # every written plane is whole
        np.testing.assert_array_equal(got[z] > 0, truth[z] == 1)
    assert w.target_labels() is None  # nothing committed


def test_cancelling_an_embedding_is_not_reported_as_an_error(make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    img = np.full((10, 48, 48), BG, np.uint16)
    model = ComponentModel(embed_delay=2.0)  # stops at its next cancel check (every 20 ms)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="stack")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    errors = []
    notification_manager.notification_ready.connect(errors.append)
    w.set_model(model)
    qtbot.waitUntil(lambda: model.embed_calls == 1, timeout=5000)  # the encoder is running
    w.buttons["cancel"].click()
    qtbot.waitUntil(lambda: not w.scheduler.running("embed"), timeout=1500)  # it stopped long before 2 s
    qtbot.wait(50)
    notification_manager.notification_ready.disconnect(errors.append)
    assert not w.ready and w.status.text() == "cancelled."
    assert not errors  # napari reports a worker's exception to the user: a cancel is none


@pytest.mark.slow
def test_reopening_a_stack_uses_the_disk_cache(make_napari_viewer, qtbot):
    img, truth = sphere_stack(n=8)
    first = ComponentModel()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=first)
    qtbot.waitUntil(lambda: first.embed_calls >= 2 and not w.scheduler.busy, timeout=10000)
    n_first = first.embed_calls
    second = ComponentModel()  # a second viewer (or a new session) with the same model
    viewer2, layer2, w2, _ = open_stack(make_napari_viewer, qtbot, img, model=second)
    qtbot.waitUntil(lambda: not w2.scheduler.busy, timeout=10000)
    assert n_first >= 2 and second.embed_calls == 0  # every plane the first one embedded: from disk
    assert w2.session.stack.computed >= 1
    z = w2.session.plane[0]
    click(w2.bridge.points_layer, (z, 60, 80))
    settle(qtbot, w2)
    np.testing.assert_array_equal(preview(w2)[z] > 0, truth[z] == 1)


@pytest.mark.slow
def test_stack_demo_with_the_trained_model_end_to_end(make_napari_viewer, qtbot):
    """The realistic z-stack sample (haze, a PSF longer in z, noise, scale (2, 1, 1)), the packaged
    demo model, one click on a nucleus' middle plane, P (the default stop rules with the layer's
    voxel size), K: the mask stops near where the nucleus ends."""
    from scipy import ndimage as ndi

    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.training.fluorescence3d import sample_stack

    viewer = make_napari_viewer()
    w = open_demo(viewer, model="promptseg_demo", stack=True)
    qtbot.waitUntil(lambda: w.ready, timeout=60000)
    _, truth, scale = sample_stack()
    layer = viewer.layers["nuclei stack"]
    assert tuple(layer.scale) == tuple(scale) and w.session.scale == tuple(scale)
    # the nucleus with the largest area in the stack; click its interior-most pixel on its middle plane
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    target = int(ids[np.argmax(sizes)])
    obj = truth == target
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    viewer.dims.set_point(0, z * scale[0])
    qtbot.waitUntil(lambda: w.session.plane == (z,), timeout=10000)
    dist = ndi.distance_transform_edt(obj[z])
    r, c = np.unravel_index(np.argmax(dist), dist.shape)
    click(w.bridge.points_layer, (z * scale[0], r, c))
    settle(qtbot, w, timeout=60000)
    assert iou(preview(w)[z] > 0, obj[z]) >= 0.6
    w.propagate()
    wait_propagation(qtbot, w, timeout=120000)
    got = preview(w) > 0
    reached = got.any(axis=(1, 2))
    assert reached[zs].mean() >= 0.7  # most of the nucleus' planes are reached
    assert reached.sum() <= len(zs) + 2  # and it stops near its ends: not on through the haze
    assert iou(got, obj) >= 0.5
    assert "object 1 stopped at" in w.status.text()  # where and why its fronts stopped
    w.commit()
    lab = labels(w)
    assert set(np.unique(lab)) == {0, 1} and (lab == 1).sum() == got.sum()


def test_voxel_size_from_the_layer():
    """The layer's scale reaches the session; napari's default (all 1 pixel) is unknown; a time
    axis is NaN (its spacing is not a length: the extent stop rule does not apply there)."""
    from napari.layers import Image

    from napari_promptseg._napari.layers import voxel_size

    assert voxel_size(Image(np.zeros((3, 8, 8)))) is None
    assert voxel_size(Image(np.zeros((3, 8, 8)), scale=(2, 1, 1))) == (2.0, 1.0, 1.0)
    t = voxel_size(Image(np.zeros((3, 8, 8)), scale=(5, 0.5, 0.5), units=("s", "um", "um")))
    assert np.isnan(t[0]) and t[1:] == (0.5, 0.5)
