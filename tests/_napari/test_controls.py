"""Small parts of the dock: the axis box and the prompt layers."""

from __future__ import annotations

from napari_promptseg._napari.controls import axis_choices


def test_axis_choices_name_axes_by_their_labels_and_hide_napari_default_labels():
    assert axis_choices(["-4", "-3"]) == (["axis 0", "axis 1"], "axis 1")
    assert axis_choices(["t", "z"]) == (["t (axis 0)", "z (axis 1)"], "z (axis 1)")
    assert axis_choices(["time", "-3"]) == (["time (axis 0)", "axis 1"], "time (axis 0)")
    assert axis_choices([]) == ([], None)


def test_the_points_layer_shows_the_positive_colour_before_the_first_point(make_napari_viewer):
    import numpy as np

    from napari_promptseg._napari import layers

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((50, 60), np.uint16))
    points = layers.add_points_layer(viewer, image)
    assert points.current_face_color == "lime" == layers.POSITIVE
    points.add([10, 10])
    assert list(points.features["label"]) == [1]


def test_the_device_box_says_where_auto_put_the_model(make_napari_viewer, qtbot, demo_model):
    import numpy as np

    from tests._napari.test_keys_and_lifecycle import open_widget, settle

    _, _, w = open_widget(make_napari_viewer, qtbot, np.zeros((64, 64), np.uint16), demo_model)
    assert w.device_combo.itemText(0) == "auto (cpu)" and w._device() == "auto"
    settle(qtbot, w)
