"""napari displays and paints a lazy (in-memory zarr) labels array without allocating other planes."""

import numpy as np

from napari_promptseg.labels.write import lazy_labels, write_objects
from tests._napari.test_widget import click


def chunk_keys(z):
    return sorted(k for k in z.store._store_dict if k.startswith("c/"))


def test_napari_paints_lazy_labels_plane_by_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    z = lazy_labels((5, 64, 64))
    layer = viewer.add_labels(z)
    assert layer.data is z and chunk_keys(z) == []
    viewer.dims.set_point(0, 2)
    layer.brush_size = 5
    layer.paint((2, 10, 10), 7)  # Labels.paint(coord, new_label, refresh=True)
    assert layer.data is z
    assert (z[2, 8:13, 10] == 7).all() and (z[2, 10, 8:13] == 7).all() and z[2, 0, 0] == 0
    assert chunk_keys(z) == ["c/2/0/0"]  # the other planes are still unallocated
    assert (layer._slice.image.raw[8:13, 10] == 7).all()  # the displayed slice follows
    # a real click in paint mode goes through the same path
    layer.mode = "paint"
    layer.selected_label = 3
    click(layer, (2, 40, 40))
    assert z[2, 40, 40] == 3 and chunk_keys(z) == ["c/2/0/0"]
    # napari's own undo restores the zarr plane
    layer.undo()
    assert z[2, 40, 40] == 0 and z[2, 10, 10] == 7
    # a commit by labels_io shows after a refresh, and only its plane gets a chunk
    write_objects(z, {(4,): np.pad(np.ones((4, 4), int), ((0, 60), (0, 60)))})
    viewer.dims.set_point(0, 4)
    layer.refresh()
    assert chunk_keys(z) == ["c/2/0/0", "c/4/0/0"] and z[4, 0, 0] == 8
    assert layer._slice.image.raw[0, 0] == 8
