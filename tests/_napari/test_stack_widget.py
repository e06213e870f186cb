"""The dock widget on z-stacks, time series and T x Z images, with the deterministic backend."""

import numpy as np
import pytest

from napari_promptseg._napari.demo import WIDGET_NAME
from tests._napari.test_widget import click, settle
from tests.component_model import ComponentModel

BG, FG = 1000, 30000


def sphere_stack(n=20, shape=(120, 160), center=(10, 60, 80), radius=8.0, zscale=4.0):
    """uint16 (n, H, W) stack with a ball (physical radius ``radius`` in x/y pixels, z spacing
    ``zscale``) and a disjoint bright bar on every plane (a second object); truth ids 1 (ball), 2."""
    z, y, x = np.ogrid[:n, : shape[0], : shape[1]]
    ball = ((z - center[0]) * zscale) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= (radius * 4) ** 2
    truth = np.zeros((n, *shape), np.int32)
    truth[ball] = 1
    truth[:, 5:15, 10:150] = 2
    img = np.where(truth > 0, FG, BG).astype(np.uint16)
    return img, truth


def iou(a, b):
    return np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum())


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
    assert w._slice == (7,)
    click(w.points_layer, (38, 60, 80))  # world coordinates: (z, y, x)
    np.testing.assert_allclose(w.points_layer.data[0], [7, 60, 80])
    np.testing.assert_allclose(w.points_layer.face_color[0], [0, 1, 0, 1])  # positive: lime
    settle(qtbot, w)
    preview = np.asarray(w.preview_layer.data)
    assert preview.shape == img.shape
    np.testing.assert_array_equal(preview[7] > 0, truth[7] == 1)
    assert not preview[np.arange(20) != 7].any()  # nothing on the other planes
    ids = w.commit()
    labels = w.target_labels().data
    assert labels.shape == img.shape and ids == (1,)
    np.testing.assert_array_equal(labels[7] == 1, truth[7] == 1)
    assert (labels > 0).sum() == (truth[7] == 1).sum()
    assert w.target_labels().scale[0] == 4  # committed labels keep the anisotropic scale


def test_prompts_take_their_plane_from_their_own_coordinates(make_napari_viewer, qtbot):
    img, truth = sphere_stack()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img)
    # points added by a script on two planes that are not displayed
    w.points_layer.data = np.array([[9.0, 60, 80], [12.0, 10, 50]])
    settle(qtbot, w, timeout=20000)
    preview = np.asarray(w.preview_layer.data)
    np.testing.assert_array_equal(preview[9] > 0, truth[9] == 1)
    np.testing.assert_array_equal(preview[12] > 0, truth[12] == 2)
    assert not preview[[0, 5, 10, 11]].any()
    # removing plane 12's point clears only plane 12
    w.points_layer.data = w.points_layer.data[:1]
    settle(qtbot, w)
    preview = np.asarray(w.preview_layer.data)
    assert not preview[12].any() and (preview[9] > 0).any()


def test_first_mask_does_not_wait_for_the_other_planes(make_napari_viewer, qtbot):
    img = np.full((100, 64, 64), BG, np.uint16)
    img[:, 20:40, 20:40] = FG
    model = ComponentModel(embed_delay=0.05)
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    assert model.embed_calls <= 2  # the displayed plane (plus at most one prefetch started)
    click(w.points_layer, (w._slice[0], 30, 30))
    settle(qtbot, w)
    assert (np.asarray(w.preview_layer.data)[w._slice] > 0).sum() == 400
    assert model.embed_calls <= 1 + w.PREFETCH + 1


def test_neighbours_are_prefetched_in_the_direction_of_movement(make_napari_viewer, qtbot):
    img = np.full((60, 48, 48), BG, np.uint16)
    viewer, layer, w, model = open_stack(make_napari_viewer, qtbot, img)
    # start far from the plane shown on opening (the middle, ~29): its own prefetch (one of which
    # is one plane behind) may still be running and must not reach the planes checked below
    goto(viewer, w, qtbot, 45)
    goto(viewer, w, qtbot, 46)  # moving up
    qtbot.waitUntil(lambda: all(w._stack.cached((46 + k,)) is not None for k in range(1, w.PREFETCH + 1)),
                    timeout=10000)
    # prefetching is over: nothing left to fetch around plane 46 and no embedding in flight
    qtbot.waitUntil(lambda: not w._stack.prefetch_order(w._slice, *w._move, count=w.PREFETCH)
                    and w._embed_token is None and not w._embedder.busy, timeout=10000)
    assert w._stack.cached((45,)) is not None  # one behind
    assert w._stack.cached((46 - 3,)) is None and w._stack.cached((46 + w.PREFETCH + 2,)) is None
    goto(viewer, w, qtbot, 20)  # moving down: the next ones are below
    qtbot.waitUntil(lambda: w._stack.cached((19,)) is not None and w._stack.cached((18,)) is not None,
                    timeout=10000)


def test_one_intensity_window_for_the_whole_stack(make_napari_viewer, qtbot):
    img = np.full((6, 40, 40), BG, np.uint16)
    img[0, 10:20, 10:20] = FG
    img[3, 10:20, 10:20] = BG + 500  # a dim object: below the stack's window midpoint
    viewer, layer, w, model = open_stack(make_napari_viewer, qtbot, img)
    goto(viewer, w, qtbot, 3)
    # per-plane min-max would have stretched plane 3's dim square to full brightness
    assert w.embedding.features["components"].max() == 0
    goto(viewer, w, qtbot, 0)
    assert w.embedding.features["components"].max() == 1


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
    qtbot.waitUntil(lambda: w.ready and w._slice == (1, 5), timeout=10000)
    click(w.points_layer, (1, 5, 60, 100))
    settle(qtbot, w)
    preview = np.asarray(w.preview_layer.data)
    np.testing.assert_array_equal(preview[1, 5] > 0, np.roll(truth3[5] == 1, 20, axis=1))
    assert not preview[0].any()


def test_rgb_stack(make_napari_viewer, qtbot):
    img3, truth3 = sphere_stack(n=6, center=(3, 60, 80))
    rgb = np.repeat((img3 > BG).astype(np.uint8)[..., None] * 200, 3, axis=-1)
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, rgb, rgb=True)
    assert w.n_lead == 1 and w.preview_layer.data.shape == img3.shape
    goto(viewer, w, qtbot, 2)
    click(w.points_layer, (2, 60, 80))
    settle(qtbot, w)
    np.testing.assert_array_equal(np.asarray(w.preview_layer.data)[2] > 0, truth3[2] == 1)


def test_2d_image_refuses_propagation(make_napari_viewer, qtbot):
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, np.full((40, 40), BG, np.uint16))
    w.propagate()
    assert "2D" in w.status.text()


@pytest.mark.parametrize("overwrite", [False, True])
def test_propagation_fills_the_stack_commits_and_undoes(make_napari_viewer, qtbot, overwrite):
    img, truth = sphere_stack()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, scale=(4, 1, 1))
    labels = w.target_labels()
    labels.data[15, 50:70, 70:90] = 9  # a committed object inside the ball's plane 15
    before = labels.data.copy()
    w.overwrite_check.setChecked(overwrite)
    goto(viewer, w, qtbot, 10 * 4)
    click(w.points_layer, (40, 60, 80))
    settle(qtbot, w)
    w.propagate()
    w.wait_propagation()
    preview = np.asarray(w.preview_layer.data)
    ball = truth == 1
    expect = ball if overwrite else ball & (before == 0)
    # the default prompt (box + the previous plane's low-res logits) follows the ball; the test
    # backend's coarse logits cells shave its edges, and a tip under min_area pixels is dropped
    assert iou(preview > 0, expect) >= 0.9
    assert not (preview > 0)[~ball].any()  # no bleeding into the bar, nothing past the ball's end
    planes = np.flatnonzero((preview > 0).any(axis=(1, 2)))
    assert planes.min() <= 4 and planes.max() >= 16  # the ball spans planes 2..18
    if not overwrite:
        assert not preview[before > 0].any()  # the committed object is left out of the preview
    np.testing.assert_array_equal(labels.data, before)  # nothing committed yet
    goto(viewer, w, qtbot, 13 * 4)
    assert "1 propagated object" in w.status.text()
    ids = w.commit()
    assert len(ids) == 1
    np.testing.assert_array_equal(labels.data == ids[0], preview > 0)  # one id for the 3D object
    assert (labels.data[15, 50:70, 70:90] == (ids[0] if overwrite else 9)).all()
    w.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_two_prompted_planes_and_a_correction(make_napari_viewer, qtbot):
    """Two prompted planes fill the stack between them and beyond; a plane prompted with only a
    negative point says "not here": propagation neither writes it nor runs past it."""
    img = np.full((20, 120, 160), BG, np.uint16)
    zz, yy, xx = np.ogrid[:20, :120, :160]
    tube = (zz >= 3) & (zz <= 16) & ((yy - 60) ** 2 + (xx - 80) ** 2 <= 20**2)
    img[tube] = FG
    # the whole bright object under the previous logits, cropped by the box (see ComponentModel)
    model = ComponentModel(mask_input="objects")
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    w.points_layer.data = np.array([[5.0, 60, 80], [14.0, 60, 80]])
    settle(qtbot, w, timeout=20000)
    w.propagate()
    w.wait_propagation()
    preview = np.asarray(w.preview_layer.data)
    np.testing.assert_array_equal(preview > 0, tube)  # between the planes, and on to both ends
    w.points_layer.data = np.concatenate([w.points_layer.data, [[10.0, 60, 80]]])
    w.points_layer.features.loc[2, "label"] = 0
    w.points_layer.events.data(value=w.points_layer.data, action="added", data_indices=(2,),
                               vertex_indices=((),))
    settle(qtbot, w)
    assert not np.asarray(w.preview_layer.data)[10].any()
    w.propagate()
    w.wait_propagation()
    preview = np.asarray(w.preview_layer.data)
    expect = tube.copy()
    expect[10] = False
    np.testing.assert_array_equal(preview > 0, expect)


def test_cancel_mid_propagation_keeps_labels_and_a_consistent_preview(make_napari_viewer, qtbot):
    img, truth = sphere_stack()
    model = ComponentModel(delay=0.15, mask_input="objects")  # exact masks: a plane is whole or empty
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    labels = w.target_labels()
    before = labels.data.copy()
    goto(viewer, w, qtbot, 10)
    click(w.points_layer, (10, 60, 80))
    settle(qtbot, w)
    w.propagate()
    qtbot.waitUntil(lambda: (np.asarray(w.preview_layer.data) > 0).any(axis=(1, 2)).sum() >= 3, timeout=10000)
    w.cancel()
    assert not w._propagating
    qtbot.wait(600)  # a step in flight must not land after the cancel
    preview = np.asarray(w.preview_layer.data)
    done = (preview > 0).any(axis=(1, 2))
    assert 3 <= done.sum() < (truth == 1).any(axis=(1, 2)).sum()
    for z in np.flatnonzero(done):  # every written plane is whole
        np.testing.assert_array_equal(preview[z] > 0, truth[z] == 1)
    np.testing.assert_array_equal(labels.data, before)


def test_reopening_a_stack_uses_the_disk_cache(make_napari_viewer, qtbot):
    img, truth = sphere_stack(n=8)
    first = ComponentModel()
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=first)
    qtbot.waitUntil(lambda: first.embed_calls >= 2 and not w._embedder.busy, timeout=10000)
    n_first = first.embed_calls
    second = ComponentModel()  # a second viewer (or a new session) with the same model
    viewer2, layer2, w2, _ = open_stack(make_napari_viewer, qtbot, img, model=second)
    qtbot.waitUntil(lambda: not w2._embedder.busy, timeout=10000)
    assert n_first >= 2 and second.embed_calls == 0  # every plane the first one embedded: from disk
    click(w2.points_layer, (w2._slice[0], 60, 80))
    settle(qtbot, w2)
    z = w2._slice[0]
    np.testing.assert_array_equal(np.asarray(w2.preview_layer.data)[z] > 0, truth[z] == 1)


def test_stack_demo_with_the_trained_model_end_to_end(make_napari_viewer, qtbot):
    """The z-stack sample, the packaged demo model, one click on the middle plane, P, K."""
    from scipy import ndimage as ndi

    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.sample import STACK_SCALE, nuclei_stack

    viewer = make_napari_viewer()
    w = open_demo(viewer, model="promptseg_demo", stack=True)
    qtbot.waitUntil(lambda: w.ready, timeout=60000)
    _, truth = nuclei_stack()
    layer = viewer.layers["nuclei stack"]
    assert tuple(layer.scale) == STACK_SCALE and w._slice == (16,)
    # the nucleus with the largest area on the middle plane; click its interior-most pixel
    ids, areas = np.unique(truth[16][truth[16] > 0], return_counts=True)
    target = int(ids[np.argmax(areas)])
    dist = ndi.distance_transform_edt(truth[16] == target)
    r, c = np.unravel_index(np.argmax(dist), dist.shape)
    click(w.points_layer, (16 * STACK_SCALE[0], r, c))
    settle(qtbot, w)
    obj = truth == target
    assert iou(np.asarray(w.preview_layer.data)[16] > 0, obj[16]) >= 0.6
    w.propagate()
    w.wait_propagation(timeout=120)
    got = np.asarray(w.preview_layer.data) > 0
    planes = obj.any(axis=(1, 2))
    assert got.any(axis=(1, 2))[planes].mean() >= 0.7  # most of the nucleus' planes are reached
    assert iou(got, obj) >= 0.5
    ids = w.commit()
    assert len(ids) == 1 and (w.target_labels().data == ids[0]).sum() == got.sum()


def two_tubes(n=20):
    """Two bright cylinders through planes 3..16 (ids 1 left, 2 right)."""
    img = np.full((n, 120, 160), BG, np.uint16)
    truth = np.zeros(img.shape, np.int32)
    zz, yy, xx = np.ogrid[:n, :120, :160]
    for i, cx in enumerate((45, 115), 1):
        truth[(zz >= 3) & (zz <= 16) & ((yy - 60) ** 2 + (xx - cx) ** 2 <= 18**2)] = i
    img[truth > 0] = FG
    return img, truth


def test_cells_clicked_on_two_planes_without_propagation_stay_two_labels(make_napari_viewer, qtbot):
    img, truth = two_tubes()
    model = ComponentModel(mask_input="objects")
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    w.points_layer.data = np.array([[4.0, 60, 45], [12.0, 60, 115]])  # cell A on plane 4, B on 12
    settle(qtbot, w, timeout=20000)
    ids = w.commit()
    labels = w.target_labels().data
    assert len(ids) == 2
    assert set(np.unique(labels[4])) - {0} != set(np.unique(labels[12])) - {0}
    np.testing.assert_array_equal(labels[4] > 0, truth[4] == 1)
    np.testing.assert_array_equal(labels[12] > 0, truth[12] == 2)


def test_correcting_one_object_keeps_the_other_propagated_objects(make_napari_viewer, qtbot):
    img, truth = two_tubes()
    model = ComponentModel(mask_input="objects")
    viewer, layer, w, _ = open_stack(make_napari_viewer, qtbot, img, model=model)
    for cx in (45, 115):  # one box per tube on plane 5
        w.boxes_layer.add_rectangles(np.array([[[5, 40, cx - 20], [5, 40, cx + 20], [5, 80, cx + 20],
                                                [5, 80, cx - 20]]], float))
    settle(qtbot, w, timeout=20000)
    w.propagate()
    w.wait_propagation()
    np.testing.assert_array_equal(np.asarray(w.preview_layer.data), truth)
    # a point on the right tube on plane 12 edits that object; the left one stays on plane 12
    w.points_layer.data = np.array([[12.0, 60, 115]])
    settle(qtbot, w)
    np.testing.assert_array_equal(np.asarray(w.preview_layer.data)[12], truth[12])
    # re-propagating from planes 5 and 12: both objects still run through the whole stack
    model.delay = 0.05
    w.propagate()
    qtbot.waitUntil(lambda: w.status.text().startswith("propagating:"), timeout=10000)
    w.cancel()  # cancelled midway: the planes it did not reach keep the earlier result
    np.testing.assert_array_equal(np.asarray(w.preview_layer.data), truth)
    model.delay = 0.0
    w.propagate()
    w.wait_propagation()
    np.testing.assert_array_equal(np.asarray(w.preview_layer.data), truth)
    ids = w.commit()
    labels = w.target_labels().data
    assert len(ids) == 2  # one 3D label per tube
    for i in ids:
        z = np.flatnonzero((labels == i).any(axis=(1, 2)))
        assert (z.min(), z.max()) == (3, 16)
