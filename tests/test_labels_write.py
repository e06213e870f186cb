"""Plane-wise commits into numpy, zarr, dask and multiscale labels; exact and safe undo/redo."""

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_promptseg.labels.history import LabelsHistory
from napari_promptseg.labels.write import (
    lazy_labels,
    level0,
    max_label,
    read_plane,
    write_objects,
)


def box(shape, r0, r1, c0, c1, key=1):
    k = np.zeros(shape, np.int32)
    k[r0:r1, c0:c1] = key
    return k


def test_numpy_2d_ids_preserve_and_overwrite():
    labels = np.zeros((8, 8), np.int32)
    labels[:2] = 5
    keys = box((8, 8), 1, 4, 0, 8, key=3) + box((8, 8), 6, 8, 0, 2, key=9)
    c = write_objects(labels, {(): keys})
    assert c.ids == (6, 7) and c.mapping == {3: 6, 9: 7}
    assert (labels[:2] == 5).all() and (labels[2:4] == 6).all() and (labels[6:, :2] == 7).all()
    assert labels.sum() == 5 * 16 + 6 * 16 + 7 * 4  # nothing else touched
    c2 = write_objects(labels, {(): box((8, 8), 1, 3, 0, 8)}, overwrite=True)
    assert c2.ids == (8,) and (labels[1:3] == 8).all() and (labels[0] == 5).all()
    # every pixel already taken and no overwrite: no ids, nothing written
    before = labels.copy()
    c3 = write_objects(labels, {(): box((8, 8), 0, 1, 0, 8)})
    assert c3.ids == () and c3.edits == () and (labels == before).all()


def test_numpy_3d_one_key_across_planes_is_one_id():
    labels = np.zeros((5, 6, 6), np.uint16)
    labels[0, 0, 0] = 4
    keys = box((6, 6), 2, 4, 2, 4, key=1)
    c = write_objects(labels, {(1,): keys, (2,): keys, (3,): keys * 2})
    assert c.ids == (5, 6) and c.mapping == {1: 5, 2: 6}
    assert (labels[1:3, 2:4, 2:4] == 5).all() and (labels[3, 2:4, 2:4] == 6).all()
    assert labels[4].sum() == 0 and labels[0].sum() == 4
    assert sorted(e.plane for e in c.edits) == [(1,), (2,), (3,)]
    assert max_label(labels) == 6 and max_label(labels, planes=[(1,), (4,)]) == 5
    c2 = write_objects(labels, {(4,): keys, (0,): keys}, first_id=20)
    assert c2.ids == (20,) and labels[4, 2, 2] == 20 and labels[0, 2, 2] == 20


def test_4d_planes_and_read_plane():
    labels = np.zeros((2, 3, 4, 4), np.int32)
    c = write_objects(labels, {(1, 2): box((4, 4), 0, 2, 0, 2)})
    assert c.edits[0].plane == (1, 2) and read_plane(labels, (1, 2))[0, 0] == 1
    assert labels.sum() == 4


def test_undo_redo_exact():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 10, 12)).astype(np.int32)
    start = labels.copy()
    h, snaps = LabelsHistory(), []
    for k in range(3):
        keys = rng.integers(0, 3, (10, 12))
        h.record(write_objects(labels, {(k,): keys, (2,): keys}, overwrite=bool(k % 2)))
        snaps.append(labels.copy())
    c, why = h.undo(labels)
    assert c is not None and why is None
    np.testing.assert_array_equal(labels, snaps[1])
    h.undo(labels)
    h.undo(labels)
    np.testing.assert_array_equal(labels, start)
    assert h.undo(labels) == (None, "nothing to undo.") and not h.can_undo
    h.redo(labels)
    h.redo(labels)
    np.testing.assert_array_equal(labels, snaps[1])
    h.record(write_objects(labels, {(0,): np.ones((10, 12), int)}, overwrite=True))
    assert not h.can_redo and h.redo(labels)[0] is None
    h.record(write_objects(labels, {(0,): np.zeros((10, 12), int)}))  # empty commit: ignored
    assert h.can_undo and len(h._done) == 3
    h.clear()
    assert not h.can_undo and not h.can_redo


def test_zarr_on_disk_same_object_and_only_touched_chunks(tmp_path):
    path = tmp_path / "labels.zarr"
    z = zarr.create_array(store=str(path), shape=(6, 16, 16), chunks=(1, 16, 16), dtype=np.uint32)
    z[0] = 3  # an existing object on plane 0

    def chunk_files():
        return sorted(p.relative_to(path / "c").as_posix() for p in (path / "c").rglob("*") if p.is_file())

    assert chunk_files() == ["0/0/0"]
    plane0 = path / "c" / "0" / "0" / "0"
    stamp = plane0.stat().st_mtime_ns
    layer_data = z
    h = LabelsHistory()
    h.record(write_objects(layer_data, {(2,): box((16, 16), 4, 8, 4, 8), (4,): box((16, 16), 0, 2, 0, 2)}))
    assert layer_data is z
    assert chunk_files() == ["0/0/0", "2/0/0", "4/0/0"] and plane0.stat().st_mtime_ns == stamp
    disk = zarr.open_array(str(path), mode="r")
    assert (disk[2, 4:8, 4:8] == 4).all() and (disk[4, :2, :2] == 4).all() and disk[3].max() == 0
    assert disk[2].sum() == 4 * 16
    h.undo(z)
    assert zarr.open_array(str(path), mode="r")[:].max() == 3 and chunk_files() == ["0/0/0"]


def test_zarr_read_only_is_a_clear_type_error(tmp_path):
    zarr.create_array(store=str(tmp_path / "l.zarr"), shape=(2, 4, 4), chunks=(1, 4, 4), dtype="i4")
    ro = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")
    with pytest.raises(TypeError, match="cannot be written in place"):
        write_objects(ro, {(0,): np.ones((4, 4), int)})


def test_dask_setitem_same_object():
    d = da.zeros((4, 8, 8), dtype=np.int32, chunks=(1, 8, 8))
    d0 = d
    h = LabelsHistory()
    c = write_objects(d, {(1,): box((8, 8), 2, 4, 2, 4), (3,): box((8, 8), 0, 1, 0, 8)})
    h.record(c)
    assert d is d0 and c.ids == (1,)
    v = d.compute()
    assert (v[1, 2:4, 2:4] == 1).all() and (v[3, 0] == 1).all() and v.sum() == 12
    assert h.undo(d)[0] is c and d is d0 and d.compute().sum() == 0
    h.redo(d)
    assert d.compute().sum() == 12


def test_multiscale_levels_updated_and_undone():
    ms = [np.zeros((4, 64, 64), np.int32), np.zeros((4, 32, 32), np.int32)]
    h = LabelsHistory()
    h.record(write_objects(ms, {(2,): box((64, 64), 10, 20, 30, 41)}))
    assert level0(ms) is ms[0] and (ms[0][2, 10:20, 30:41] == 1).all()
    np.testing.assert_array_equal(ms[1][2], ms[0][2][::2, ::2])
    assert ms[1][2].sum() == 5 * 6 and ms[1][[0, 1, 3]].sum() == 0
    assert max_label(ms) == 1
    h.undo(ms)
    assert ms[0].sum() == 0 and ms[1].sum() == 0
    h.redo(ms)
    np.testing.assert_array_equal(ms[1][2], ms[0][2][::2, ::2])


def test_multiscale_with_downsampled_leading_axis():
    ms = (np.zeros((4, 8, 8), np.int32), np.zeros((2, 4, 4), np.int32))
    write_objects(ms, {(2,): np.ones((8, 8), int), (1,): np.ones((8, 8), int)})
    assert (ms[1][1] == 1).all() and ms[1][0].sum() == 0  # plane 1 has no level-1 plane


def test_brush_edit_blocks_undo_and_redo():
    labels = np.zeros((3, 8, 8), np.int32)
    h = LabelsHistory()
    h.record(write_objects(labels, {(1,): box((8, 8), 2, 5, 2, 5)}))
    labels[1][3, 3] = 99  # a brush stroke over the committed object
    snap = labels.copy()
    c, why = h.undo(labels)
    assert c is None and "changed at the committed pixels" in why and "plane(s) 1" in why and "Ctrl-Z" in why
    np.testing.assert_array_equal(labels, snap)
    assert h.can_undo
    labels[1][3, 3] = 1  # the brush edit undone: undo works again
    assert h.undo(labels)[0] is not None and labels.sum() == 0
    labels[1][2, 2] = 7  # painted where the commit would write again: redo refuses
    c, why = h.redo(labels)
    assert c is None and "plane(s) 1" in why and labels.sum() == 7 and h.can_redo


def test_brush_on_zarr_plane_blocks_undo():
    z = lazy_labels((3, 8, 8), np.int32)
    h = LabelsHistory()
    h.record(write_objects(z, {(0,): box((8, 8), 0, 4, 0, 4)}))
    plane = z[0]
    plane[0, 0] = 0  # the eraser, writing the plane back
    z[0] = plane
    assert h._done[-1].changed_since(z) == [(0,)]
    c, why = h.undo(z)
    assert c is None and why.startswith("the labels changed") and z[0].sum() == 15


def test_lazy_labels_allocates_nothing_until_written():
    z = lazy_labels((6, 32, 32))
    assert z.dtype == np.uint32 and z.chunks == (1, 32, 32) and z.nchunks_initialized == 0
    assert not [k for k in z.store._store_dict if k.startswith("c/")]
    assert max_label(z) == 0
    write_objects(z, {(3,): box((32, 32), 1, 3, 1, 3, key=5)})
    assert [k for k in z.store._store_dict if k.startswith("c/")] == ["c/3/0/0"]
    assert z.nchunks_initialized == 1 and max_label(z) == 1 and max_label(z, planes=[(2,)]) == 0
    assert lazy_labels((16, 16)).chunks == (16, 16)


def test_errors_are_clear():
    with pytest.raises(OverflowError, match=r"uint8 cannot hold id 256.*wider integer type \(e.g. int32\)"):
        write_objects(np.full((3, 3), 255, np.uint8), {(): np.ones((3, 3), int)}, overwrite=True)
    full = np.full((3, 3), 254, np.uint8)  # 255 still fits
    assert write_objects(full, {(): np.ones((3, 3), int)}, overwrite=True).ids == (255,)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 3\)"):
        write_objects(np.zeros((2, 3, 3), np.int32), {(0,): np.ones((4, 3), int)})
    with pytest.raises(ValueError, match="plane index"):
        write_objects(np.zeros((2, 3, 3), np.int32), {(5,): np.ones((3, 3), int)})
    with pytest.raises(TypeError, match="integer dtype"):
        write_objects(np.zeros((3, 3)), {(): np.ones((3, 3), int)})
    ro = np.zeros((3, 3), np.int32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="cannot be written in place.*zarr array.*new labels layer"):
        write_objects(ro, {(): np.ones((3, 3), int)})
