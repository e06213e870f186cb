"""Embeddings stores: every plane into one zarr folder, resumable, refused for other pixels/models."""

import shutil

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.embed.store import StoreError
from napari_promptseg.sample import nuclei_image


def _stack(seed=0, n=4):
    img, lab = nuclei_image((96, 112), n=6, seed=seed)
    shifts = [np.roll(img, k, axis=1) for k in range(n)]
    return np.stack(shifts), lab


def test_store_holds_every_plane_with_its_metadata(demo_model, tmp_path, calls):
    stack, _ = _stack()
    progress = list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr"))
    assert progress[-1] == (4, 4) and len(calls) == 4
    store = ps.open_embeddings(tmp_path / "s.zarr")
    assert len(store) == 4 and store.complete and sorted(store) == [0, 1, 2, 3]
    assert store.model == "promptseg_demo" and store.shape == (4, 96, 112) and store.axis == 0
    assert store.window == ps.core.image.stack_window(stack)
    direct = demo_model.embed(stack[2], contrast_limits=store.window)
    for name, value in direct.features.items():
        np.testing.assert_allclose(store[2].features[name].numpy(), value.numpy(), rtol=0.01, atol=0.01)
    with pytest.raises(KeyError):
        store[4]


def test_an_interrupted_run_is_valid_and_a_rerun_computes_only_the_missing_planes(
        demo_model, tmp_path, calls):
    stack, _ = _stack()
    it = ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr")
    next(it), next(it)
    it.close()  # interrupted after two planes
    store = ps.open_embeddings(tmp_path / "s.zarr")
    assert len(store) == 2 and not store.complete and 2 not in store
    shutil.rmtree(tmp_path / "s.zarr" / "planes" / "0")  # a lost plane too
    calls.clear()
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr"))
    assert len(calls) == 3 and ps.open_embeddings(tmp_path / "s.zarr").complete


def test_propagate_uses_the_store_and_gives_the_same_labels(demo_model, tmp_path, calls):
    stack, lab = _stack()
    r, c = np.argwhere(lab == 1).mean(axis=0).round().astype(int)
    prompts = {1: [{"points": [[r, c + 1]]}]}
    without = ps.propagate(demo_model, stack, prompts)
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr"))
    calls.clear()
    with_store = ps.propagate(demo_model, stack, prompts, embeddings=tmp_path / "s.zarr")
    assert calls == []  # every plane came from the store
    assert (with_store == 1).sum() > 0
    inter = ((with_store == 1) & (without == 1)).sum()
    assert inter / ((with_store == 1) | (without == 1)).sum() > 0.98


def test_a_store_for_other_pixels_or_another_model_is_refused(demo_model, tiny_model, tmp_path):
    stack, lab = _stack()
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr"))
    prompts = {1: lab}
    other, _ = _stack(seed=3)
    with pytest.raises(StoreError, match="other pixels"):
        ps.propagate(demo_model, other, prompts, embeddings=tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="shape"):
        ps.propagate(demo_model, stack[:3], prompts, embeddings=tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="axis"):
        ps.propagate(demo_model, stack, {1: lab[:, :4]}, axis=2, embeddings=tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="model"):
        ps.propagate(tiny_model, stack, prompts, embeddings=tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="not an embeddings store"):
        ps.open_embeddings(tmp_path)
    with pytest.raises(StoreError, match="axis 3 does not exist"):
        list(ps.embed_store_iter(demo_model, stack, tmp_path / "t.zarr", axis=3))


def test_planes_across_another_axis_and_a_t_by_z_stack(demo_model, tmp_path):
    stack, _ = _stack()
    yzx = np.moveaxis(stack, 0, 2)  # (H, W, N): planes across axis 2
    list(ps.embed_store_iter(demo_model, yzx, tmp_path / "a.zarr", axis=2))
    a = ps.open_embeddings(tmp_path / "a.zarr")
    assert a.complete and a.lead_shape == (4,) and a.plane_shape == (96, 112)
    tz = stack.reshape(2, 2, 96, 112)
    list(ps.embed_store_iter(demo_model, tz, tmp_path / "b.zarr"))
    b = ps.open_embeddings(tmp_path / "b.zarr")
    assert sorted(b) == [(0, 0), (0, 1), (1, 0), (1, 1)] and b[(1, 0)].original_size == (96, 112)
