"""Bounded memory on big data (issue 28): ``out=`` labels written plane by plane (propagate,
segment), the command line's zarr outputs, tiles pasted window by window and block by block.

Lazy arrays here refuse reads or writes larger than a plane (or a few tiles); memory bounds are
tracemalloc peaks (numpy and zarr buffers; the model's tensors are not counted), checked against
the size of the whole labels array the old code allocated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr
import zarr.storage

import napari_promptseg as ps
from napari_promptseg.cli.main import main
from tests.component_model import ComponentModel


class PlaneOnly:
    """A zarr-like array (no ``__array__``) that serves and takes at most ``limit`` elements per
    access and records every access."""

    def __init__(self, arr: np.ndarray, limit: int) -> None:
        self.arr, self.limit = arr, limit
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.reads: list = []
        self.writes: list = []

    def _check(self, key, what):
        n = np.size(self.arr[key])
        if n > self.limit:
            raise AssertionError(f"{what} of {np.shape(self.arr[key])}: more than {self.limit} elements")

    def __getitem__(self, key):
        self._check(key, "a read")
        self.reads.append(key)
        return np.array(self.arr[key])

    def __setitem__(self, key, value):
        self._check(key, "a write")
        self.writes.append(key)
        self.arr[key] = value

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def moving_stack(n=12, shape=(60, 80)) -> tuple[np.ndarray, dict]:
    """uint16 ``(n, H, W)``: two bright rectangles drifting 1 px per plane; seeds on plane n // 2."""
    h, w = shape
    stack = np.full((n, h, w), 1000, np.uint16)
    for k in range(n):
        stack[k, 10:30, 8 + k:30 + k] = 30000
        stack[k, 38:55, 60 - k:75 - k] = 30000
    seed = np.zeros(shape, np.int32)
    seed[stack[n // 2] > 20000] = 1
    seed[:, 45:][stack[n // 2][:, 45:] > 20000] = 2
    return stack, {n // 2: seed}


def test_propagate_into_zarr_and_memmap_equals_the_in_memory_result(tmp_path):
    model = ComponentModel()
    stack, prompts = moving_stack()
    ref = ps.propagate(model, stack, prompts)
    assert set(np.unique(ref)) == {0, 1, 2} and (ref > 0).any(axis=(1, 2)).all()
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=ref.shape, dtype=np.int32,
                          chunks=(1, 60, 80), fill_value=0)
    assert ps.propagate(model, stack, prompts, out=z) is z
    np.testing.assert_array_equal(z[:], ref)
    # planes across the last axis, into a memory map on disk
    side = np.moveaxis(stack, 0, 2)
    mm = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint16, shape=side.shape)
    got = ps.propagate(model, side, prompts, axis=2, out=mm)
    assert got is mm
    np.testing.assert_array_equal(np.moveaxis(np.asarray(mm), 2, 0), ref)


def test_propagate_reads_and_writes_one_plane_at_a_time_and_only_the_planes_it_reaches():
    model = ComponentModel()
    stack, prompts = moving_stack()
    ref = ps.propagate(model, stack, prompts, options=ps.PromptPropagation(max_slices=3))
    plane = stack.shape[1] * stack.shape[2]
    lazy = PlaneOnly(stack, plane)
    out = PlaneOnly(np.zeros(stack.shape, np.int32), plane)
    assert ps.propagate(model, lazy, prompts, options=ps.PromptPropagation(max_slices=3), out=out) is out
    np.testing.assert_array_equal(out.arr, ref)
    # the seed plane 6 and 3 planes each way, each written once; no other plane touched
    assert sorted(key[0] for key in out.writes) == list(range(3, 10))
    assert sorted(key[0] for key in out.reads) == list(range(3, 10))


def _counting_stack():
    stack, prompts = moving_stack()
    return PlaneOnly(stack, stack.shape[1] * stack.shape[2]), prompts


def _dask_zeros(shape):
    import dask.array as da

    return da.zeros(shape, dtype=np.int32)


@pytest.mark.parametrize("make, error, match", [
    (lambda s, p: _dask_zeros(s), TypeError, "dask array.*zarr"),
    (lambda s, p: np.zeros((s[0], s[1], s[2] + 1), np.int32), ValueError,
     r"shape \(12, 60, 81\).*\(12, 60, 80\)"),
    (lambda s, p: np.zeros(s, np.float32), TypeError, "integer dtype"),
    (lambda s, p: np.zeros(s, np.int32), None, None),  # a good one is accepted
    (lambda s, p: _read_only(np.zeros(s, np.int32)), ValueError, "read-only"),
    (lambda s, p: _read_only_memmap(s, p), ValueError, "read-only.*r\\+"),
    (lambda s, p: _read_only_zarr(s, p), ValueError, "read-only"),
    (lambda s, p: np.zeros(s, np.uint8), ValueError, "uint8.*object id 300"),
    (lambda s, p: [[0]], TypeError, "writable array"),
])
def test_propagate_refuses_a_bad_out_before_reading_any_pixel(tmp_path, make, error, match):
    model = ComponentModel()
    lazy, prompts = _counting_stack()
    seeds = {6: np.where(prompts[6] == 2, 300, prompts[6])}  # ids 1 and 300
    out = make(lazy.shape, tmp_path)
    if error is None:
        ps.propagate(model, lazy, seeds, out=out)
        assert set(np.unique(out)) == {0, 1, 300}
        return
    with pytest.raises(error, match=match):
        ps.propagate(model, lazy, seeds, out=out)
    assert lazy.reads == [] and model.embed_calls == 0


def _read_only(a):
    a.setflags(write=False)
    return a


def _read_only_memmap(shape, tmp):
    np.lib.format.open_memmap(tmp / "l.npy", mode="w+", dtype=np.int32, shape=shape).flush()
    return np.load(tmp / "l.npy", mmap_mode="r")


def _read_only_zarr(shape, tmp):
    zarr.open_array(tmp / "l.zarr", mode="w", shape=shape, dtype=np.int32)
    return zarr.open_array(tmp / "l.zarr", mode="r")


def test_segment_writes_only_the_prompted_planes_of_out():
    model = ComponentModel()
    stack, _ = moving_stack()
    prompts = {2: [{"box": [8, 8, 32, 34]}], 9: {3: {"points": [[45, 55]]}}}
    ref = ps.segment(model, stack, prompts)
    plane = stack.shape[1] * stack.shape[2]
    out = PlaneOnly(np.zeros(stack.shape, np.int32), plane)
    assert ps.segment(model, PlaneOnly(stack, plane), prompts, out=out) is out
    np.testing.assert_array_equal(out.arr, ref)
    assert sorted(key[0] for key in out.writes) == [2, 9]


def _slide(size: int, step: int = 96, side: int = 24) -> np.ndarray:
    """uint8 ``(size, size)``: bright squares of ``side`` px every ``step`` px."""
    img = np.full((size, size), 20, np.uint8)
    for r in range(step // 2, size - side, step):
        for c in range(step // 3, size - side, step):
            img[r:r + side, c:c + side] = 220
    return img


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_segment_on_a_huge_lazy_slide_writes_windows_of_out_not_the_slide():
    """A 3000 x 3000 slide (tiled): the objects are decoded in their tiles and pasted into a zarr
    ``out`` window by window: neither a whole-slide mask nor whole-slide labels are made."""
    model = ComponentModel()
    img = _slide(3000)
    boxes = [[r - 2, c - 2, r + 25, c + 25] for r, c in [(48, 32), (1488, 1472), (2928, 2912)]]
    prompts = [{"box": b} for b in boxes] + [{"points": [[1500, 1484]]}]  # id 4: the same square as 2
    ref = ps.segment(model, img, prompts, contrast_limits=(0, 255))
    assert sorted(np.unique(ref)) == [0, 1, 2, 3] and (ref == 2).sum() == 24 * 24
    lazy = PlaneOnly(img, 4 * 64 * 64)  # a few of the ComponentModel's 64 px tiles at most
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=img.shape, dtype=np.int32,
                          chunks=(256, 256), fill_value=0)
    got, peak = _peak(lambda: ps.segment(model, lazy, prompts, contrast_limits=(0, 255), out=z))
    assert got is z
    np.testing.assert_array_equal(z[:], ref)
    assert peak < img.size // 4, f"peak {peak / 1e6:.1f} MB; the slide's bool mask is {img.size / 1e6:.0f} MB"


def _tile_centres_slide(size: int) -> np.ndarray:
    """uint8 ``(size, size)``: a bright 24 px square at the centre of every 256 px tile."""
    from napari_promptseg.embed.tiles import TileGrid

    img = np.full((size, size), 20, np.uint8)
    for t in TileGrid((size, size), 256, 32).tiles:
        r, c = t.box[0] + 128, t.box[1] + 128
        img[r - 12:r + 12, c - 12:c + 12] = 220
    return img


@pytest.mark.slow
def test_tiled_segment_everything_paints_out_block_by_block():
    """Segment everything on a lazy slide in 256 px tiles (read one at a time) into a zarr ``out``
    painted block by block: the labels equal the in-memory ones, and memory stays below half the
    whole-slide int32 labels the old code made (the model's own working set is most of it)."""
    from napari_promptseg.embed.cache import EmbeddingCache

    model = ComponentModel()
    img = _tile_centres_slide(1024)
    kw = dict(points_per_side=1, stability_score_thresh=0.5)

    def tiled(image):
        return ps.embed_tiles(model, image, (0, 255), tile=256, cache=EmbeddingCache(2))

    ref = ps.segment_everything(model, tiled(img), **kw)
    assert len(ref.objects) == 25 and ref.labels.max() == 25
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=img.shape, dtype=np.int32,
                          chunks=(256, 256), fill_value=0)
    got, peak = _peak(lambda: ps.segment_everything(model, tiled(PlaneOnly(img, 256 * 256)), out=z, **kw))
    assert got.labels is z and len(got.objects) == 25
    np.testing.assert_array_equal(z[:], ref.labels)
    assert peak < 2 * img.size, f"peak {peak / 1e6:.1f} MB; the int32 labels are {4 * img.size / 1e6:.0f} MB"


def test_segment_everything_refuses_a_bad_out_before_any_tile():
    model = ComponentModel()
    lazy = PlaneOnly(_tile_centres_slide(1024), 256 * 256)
    tiled = ps.embed_tiles(model, lazy, (0, 255), tile=256)
    for out, error, match in [(np.zeros((1024, 1000), np.int32), ValueError, r"shape \(1024, 1000\)"),
                              (np.zeros((1024, 1024), bool), TypeError, "integer dtype"),
                              (_dask_zeros((1024, 1024)), TypeError, "dask")]:
        with pytest.raises(error, match=match):
            ps.segment_everything(model, tiled, out=out)
    assert lazy.reads == [] and model.embed_calls == 0


# ---- the command line -----------------------------------------------------------------------
def _cli_stack(tmp_path, n=60, size=384):
    """A uint8 (n, size, size) .npy stack of bright squares (one drifting 1 px per plane), and a
    prompt file for the drifting one."""
    import json

    stack = np.full((n, size, size), 20, np.uint8)
    for k in range(n):
        stack[k, 100:180, 60 + k:140 + k] = 220
        stack[k, 250:320, 250:330] = 220
    np.save(tmp_path / "stack.npy", stack)
    box = [98, 58 + n // 2, 182, 142 + n // 2]
    (tmp_path / "p.json").write_text(json.dumps({str(n // 2): [{"box": box}]}))
    return stack


@pytest.fixture
def components(monkeypatch):
    import napari_promptseg.cli.commands as commands

    model = ComponentModel()
    monkeypatch.setattr(commands, "load_model", lambda args: model)
    return model


@pytest.mark.slow
def test_cli_propagate_writes_zarr_plane_by_plane(tmp_path, components, capsys):
    stack = _cli_stack(tmp_path)
    volume = stack.size * 4  # the int32 labels the old code allocated (35 MB; its peak was twice that)
    args = ["propagate", str(tmp_path / "stack.npy"), "--model", "components", "--prompts",
            str(tmp_path / "p.json"), "--method", "prompt"]
    assert main([*args, "--out", str(tmp_path / "l.tif")]) == 0  # a tif is built in memory
    rc, peak = _peak(lambda: main([*args, "--out", str(tmp_path / "l.zarr")]))
    assert rc == 0, capsys.readouterr().err
    assert peak < volume // 2, f"peak {peak / 1e6:.1f} MB; the labels are {volume / 1e6:.0f} MB"
    import tifffile

    got = np.asarray(zarr.open_array(tmp_path / "l.zarr", mode="r"))
    np.testing.assert_array_equal(got, tifffile.imread(tmp_path / "l.tif"))
    assert got.dtype == np.int32 and set(np.unique(got)) == {0, 1}
    filled = int((got == 1).any(axis=(1, 2)).sum())  # where the stop rules end it is theirs to say
    assert filled >= 5 and f"1 object(s) on {filled} of 60 planes" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.slow
def test_cli_everything_on_a_stack_writes_zarr_plane_by_plane(tmp_path, components, monkeypatch, capsys):
    from scipy import ndimage

    from napari_promptseg.segmentation.generator import Everything

    stack = _cli_stack(tmp_path)
    volume = stack.size * 4

    def fake(model, image, **kw):  # the generator's own memory is not what this test measures
        return Everything(ndimage.label(np.asarray(image) > 127)[0].astype(np.int32), [])

    monkeypatch.setattr(ps, "segment_everything", fake)
    args = ["everything", str(tmp_path / "stack.npy"), "--model", "components", "--out"]
    assert main([*args, str(tmp_path / "t"), "--format", "tif"]) == 0
    rc, peak = _peak(lambda: main([*args, str(tmp_path / "z"), "--format", "zarr"]))
    assert rc == 0, capsys.readouterr().err
    assert peak < volume // 3, f"peak {peak / 1e6:.1f} MB; the labels are {volume / 1e6:.0f} MB"
    import tifffile

    got = np.asarray(zarr.open_array(tmp_path / "z" / "stack_labels.zarr", mode="r"))
    np.testing.assert_array_equal(got, tifffile.imread(tmp_path / "t" / "stack_labels.tif"))
    assert set(np.unique(got)) == {0, 1, 2}  # two objects linked through the planes


def test_cli_everything_hands_a_huge_2d_zarr_to_the_tiles_with_a_zarr_out(tmp_path, components, monkeypatch):
    img = _slide(2048)
    zarr.open_array(tmp_path / "slide.zarr", mode="w", shape=img.shape, dtype=img.dtype,
                    chunks=(512, 512))[:] = img
    seen = {}

    def fake(model, image, *, out=None, **kw):
        seen.update(image=image, out=out)
        out[:1024, :1024] = 7
        from napari_promptseg.segmentation.generator import Everything

        return Everything(out, [None] * 7)

    monkeypatch.setattr(ps, "segment_everything", fake)
    assert main(["everything", str(tmp_path / "slide.zarr"), "--model", "components", "--out",
                 str(tmp_path / "o"), "--format", "zarr"]) == 0
    assert isinstance(seen["image"], zarr.Array) and isinstance(seen["out"], zarr.Array)  # never read whole
    got = zarr.open_array(tmp_path / "o" / "slide_labels.zarr", mode="r")
    assert got.shape == img.shape and got[0, 0] == 7 and got[2000, 2000] == 0
