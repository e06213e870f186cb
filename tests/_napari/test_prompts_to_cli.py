"""Prompts placed in napari, saved with napari's own writer, segmented headless by `promptseg
segment`: the same masks as the widget's preview (a lab annotates a few images in napari and runs
the rest on a cluster)."""

import numpy as np
import tifffile

import napari_promptseg as ps
from napari_promptseg._napari.demo import WIDGET_NAME
from napari_promptseg.cli.main import main
from napari_promptseg.sample import nuclei_image
from tests._napari.test_widget import preview, settle


def test_points_saved_from_napari_segment_to_the_widgets_masks(make_napari_viewer, qtbot, tmp_path):
    import napari

    img, lab = nuclei_image((128, 144), n=8, seed=3)
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack")
    viewer = make_napari_viewer()
    layer = viewer.add_image(img, name="nuclei")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ps.load_model("promptseg_demo", device="cpu"))
    qtbot.waitUntil(lambda: w.ready, timeout=30000)
    a, b = (np.argwhere(lab == i).mean(axis=0).round() for i in [i for i in np.unique(lab) if i][:2])
    points = w.bridge.points_layer
    points.add([a])
    w.new_object()
    points.add([b])
    settle(qtbot, w)
    shown = preview(w).copy()
    assert set(np.unique(shown)) == {0, 1, 2}

    napari.save_layers(str(tmp_path / "prompts.csv"), [points])  # index, axis-0, axis-1, label, object
    lo, hi = layer.contrast_limits  # the widget embeds through the layer's contrast limits
    code = main(["segment", str(tmp_path / "img.tif"), "--model", "promptseg_demo", "--device", "cpu",
                 "--prompts", str(tmp_path / "prompts.csv"), "--window", str(lo), str(hi),
                 "--out", str(tmp_path / "labels.tif")])
    assert code == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), shown)
