"""The dock widget with a precomputed embeddings store, in a real viewer: a tif opened with
``viewer.open`` and a store made beside it by ``ps.embed_store_iter`` (the shipped demo model)
is used by itself, and a click gives a mask with no encoder call; *Load embeddings…* takes
another store, and one made for other pixels is refused with its message. The store logic
itself is tested without a viewer in tests/test_session_store.py."""

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg._napari.demo import WIDGET_NAME
from tests._napari.test_widget import click, settle
from tests.test_session_stack import iou
from tests.test_session_store import centre, nuclei_stack


@pytest.mark.slow
def test_a_store_beside_the_file_is_used_and_one_for_other_pixels_refused(
        make_napari_viewer, qtbot, demo_model, calls, tmp_path, monkeypatch):
    import tifffile

    stack, lab = nuclei_stack()
    tifffile.imwrite(tmp_path / "cells.tif", stack, photometric="minisblack")
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "cells.zarr"))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "cells.tif"), plugin="napari")
    assert layer.source.path == str(tmp_path / "cells.tif") and layer.data.shape == stack.shape
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    assert w.bridge.image_layer is layer
    calls.clear()
    w.set_model(demo_model)
    assert w.session.embeddings_store.path == tmp_path / "cells.zarr"
    assert "using the embeddings store cells.zarr: 4 of 4 planes" in w.status.text()
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    assert "embeddings from cells.zarr" in w.session.describe()
    z = w.session.plane[0]
    click(w.bridge.points_layer, (z, *centre(lab[z])))
    settle(qtbot, w, timeout=20000)
    mask = np.asarray(w.bridge.preview_layer.data[z]) > 0
    assert iou(mask, lab[z] == 1) > 0.5
    qtbot.waitUntil(lambda: not w.scheduler.busy, timeout=20000)  # prefetching too: from the store
    assert calls == []  # no encoder call: every plane came from the store
    assert w.session.stack.from_store >= 1

    other, _ = nuclei_stack(seed=3)
    list(ps.embed_store_iter(demo_model, other, tmp_path / "other.zarr", planes=[z]))
    calls.clear()
    before = w.session.stack
    assert not w.load_embeddings(str(tmp_path / "other.zarr"))
    assert "other pixels" in w.status.text() and "other.zarr" in w.status.text()
    assert w.session.embeddings_store.path.name == "cells.zarr" and w.session.stack is before
    assert (np.asarray(w.bridge.preview_layer.data[z]) > 0).sum() == mask.sum()  # nothing changed

    # the button's path: a store chosen by hand (the file dialog answered by the test)
    from qtpy.QtWidgets import QFileDialog

    w.session.use_embeddings(None)
    settle(qtbot, w, timeout=20000)
    calls.clear()
    asked = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a: asked.append(a) or str(tmp_path / "cells.zarr")))
    w.embeddings_button.click()
    assert asked and asked[0][2] == str(tmp_path)  # the dialog opens beside the image's file
    assert w.session.embeddings_store.path == tmp_path / "cells.zarr"
    settle(qtbot, w, timeout=20000)
    qtbot.waitUntil(lambda: not w.scheduler.busy, timeout=20000)
    assert calls == []


def test_a_store_for_another_model_beside_the_file_is_not_used(make_napari_viewer, qtbot, demo_model,
                                                              tmp_path):
    import tifffile

    from tests.component_model import ComponentModel

    stack, _ = nuclei_stack()
    tifffile.imwrite(tmp_path / "cells.tif", stack, photometric="minisblack")
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "cells.zarr", planes=[0]))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "cells.tif"), plugin="napari")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    assert w.session.embeddings_store is None
    assert not w.load_embeddings(str(tmp_path / "cells.zarr"))
    assert "made with model 'promptseg_demo'" in w.status.text()


def test_an_image_opened_after_the_model_finds_its_store(make_napari_viewer, qtbot, demo_model, calls,
                                                         tmp_path):
    import tifffile

    stack, _ = nuclei_stack()
    tifffile.imwrite(tmp_path / "cells.tif", stack, photometric="minisblack")
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "cells.zarr"))
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_model(demo_model)
    calls.clear()
    viewer.open(str(tmp_path / "cells.tif"), plugin="napari")
    qtbot.waitUntil(lambda: w.bridge.image_layer is not None, timeout=10000)
    assert w.session.embeddings_store.path == tmp_path / "cells.zarr"
    qtbot.waitUntil(lambda: w.ready, timeout=20000)
    qtbot.waitUntil(lambda: not w.scheduler.busy, timeout=20000)
    assert calls == []
