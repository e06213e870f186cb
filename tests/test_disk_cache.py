"""The on-disk embedding cache: hits, invalidation, corruption, LRU eviction, concurrency, parity."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.cache import CacheWarning, DiskCache, EmbeddingCache, embed_cached, embedding_key
from napari_promptseg.embed.entry import DEFAULT_DTYPE, FORMAT_VERSION
from tests.component_model import ComponentModel, blob_image

WINDOW = (1000, 30000)


def _entry(path: Path) -> Path:
    (entry,) = [p for p in path.iterdir() if not p.name.startswith(".")]
    return entry


def _numpy_embedding(i: int, n: int = 4096) -> Embedding:
    """A deterministic embedding whose contents say which ``i`` made it (numpy features)."""
    feats = {"a": np.full(n, i, np.float32) + np.arange(n, dtype=np.float32) / n,
             "b": np.full((3, 2), i, np.int64)}
    return Embedding("components", "components-v1", "rgb8-v1", (10 + i, 20), (5, 10), feats)


def _check_numpy_embedding(emb: Embedding, i: int) -> None:
    ref = _numpy_embedding(i)
    assert emb.original_size == ref.original_size and emb.input_size == ref.input_size
    assert emb.features["b"].dtype == np.int64 and (emb.features["b"] == i).all()
    assert emb.features["a"].dtype == np.float32
    np.testing.assert_allclose(emb.features["a"], ref.features["a"], rtol=1e-3)


def _key(i: int) -> str:
    return f"{i:032x}"


# -- hits and misses -----------------------------------------------------------------------------

def test_hit_skips_the_encoder_also_from_a_reopened_cache(tmp_path):
    img, _ = blob_image()
    model = ComponentModel()
    disk = DiskCache(tmp_path)
    a = embed_cached(model, img, WINDOW, disk=disk)
    b = embed_cached(model, img.copy(), WINDOW, disk=disk)
    assert model.embed_calls == 1
    np.testing.assert_array_equal(a.features["components"], b.features["components"])
    assert (b.original_size, b.input_size) == (a.original_size, a.input_size)
    # a new process, a new viewer: a fresh memory cache and a fresh DiskCache on the same folder
    memory = EmbeddingCache(2)
    c = embed_cached(model, img, WINDOW, cache=memory, disk=DiskCache(tmp_path))
    assert model.embed_calls == 1 and len(memory) == 1
    assert embed_cached(model, img, WINDOW, cache=memory, disk=DiskCache(tmp_path)) is c
    assert isinstance(c.features["components"], np.ndarray)  # numpy features stay numpy


def test_torch_features_come_back_on_the_models_device(tmp_path, tiny_model, monkeypatch):
    import torch

    calls = []
    embed_rgb = tiny_model._embed_rgb
    monkeypatch.setattr(tiny_model, "_embed_rgb", lambda rgb: calls.append(1) or embed_rgb(rgb))
    img, _ = blob_image((90, 120))
    a = embed_cached(tiny_model, img, WINDOW, disk=DiskCache(tmp_path))
    b = embed_cached(tiny_model, img, WINDOW, disk=DiskCache(tmp_path))
    assert len(calls) == 1
    fa, fb = a.features["image_embed"], b.features["image_embed"]
    assert isinstance(fb, torch.Tensor) and fb.dtype == torch.float32 and fb.device == fa.device
    torch.testing.assert_close(fb, fa, atol=2e-3, rtol=1e-3)  # float16 storage
    assert tiny_model.predict(b, points=[[40, 60]]).masks.shape == (3, 90, 120)


def test_miss_on_changed_pixels_window_or_model(tmp_path):
    img, _ = blob_image()
    model = ComponentModel()
    disk = DiskCache(tmp_path)
    embed_cached(model, img, WINDOW, disk=disk)
    changed = img.copy()
    changed[5, 5] += 1000
    embed_cached(model, changed, WINDOW, disk=disk)
    assert model.embed_calls == 2
    embed_cached(model, img, (0, 65535), disk=disk)  # another contrast window
    assert model.embed_calls == 3
    other = ComponentModel()
    other.checkpoint_id = "components-v2"
    embed_cached(other, img, WINDOW, disk=disk)
    assert other.embed_calls == 1
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 4


def test_an_entry_of_another_model_is_never_returned(tmp_path):
    """The key encodes the model; the stored metadata is checked as well."""
    img, _ = blob_image()
    model, other = ComponentModel(), ComponentModel()
    other.checkpoint_id = "components-v2"
    disk = DiskCache(tmp_path)
    rgb = to_rgb_uint8(img, WINDOW)
    disk.put(embedding_key(model, rgb), model.embed(rgb))
    forged = tmp_path / embedding_key(other, rgb)
    os.rename(_entry(tmp_path), forged)  # a mislabelled entry, even its key attribute
    _edit_attrs(forged, key=forged.name)
    with pytest.warns(CacheWarning, match="not by the requesting model.*recomputed"):
        embed_cached(other, img, WINDOW, disk=disk)
    assert other.embed_calls == 1
    assert embedding_key(other, rgb) in disk and embedding_key(model, rgb) not in disk


# -- corruption ----------------------------------------------------------------------------------

def _edit_attrs(entry: Path, **changes) -> None:
    meta = json.loads((entry / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (entry / "zarr.json").write_text(json.dumps(meta))


def _chunk(entry: Path) -> Path:
    (chunk,) = (entry / "f0").glob("c*")
    return chunk


CORRUPTIONS = {
    "truncated chunk": lambda e: _chunk(e).write_bytes(_chunk(e).read_bytes()[:100]),
    "deleted chunk (zarr reads zeros)": lambda e: _chunk(e).unlink(),
    "flipped bytes in a chunk": lambda e: _chunk(e).write_bytes(_chunk(e).read_bytes()[::-1]),
    "missing array": lambda e: __import__("shutil").rmtree(e / "f0"),
    "garbled metadata": lambda e: (e / "zarr.json").write_text('{"zarr_format": 3, "node_t'),
    "garbled array metadata": lambda e: (e / "f0" / "zarr.json").write_text("nonsense"),
    "wrong format version": lambda e: _edit_attrs(e, version=FORMAT_VERSION + 1),
    "metadata of another model": lambda e: _edit_attrs(e, checkpoint_id="something-else"),
    "wrong shape in metadata": lambda e: _edit_attrs(e, original_size="abc"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_corrupt_entry_is_reported_recomputed_and_healthy_again(tmp_path, corrupt):
    img, _ = blob_image()
    model = ComponentModel()
    disk = DiskCache(tmp_path)
    good = embed_cached(model, img, WINDOW, disk=disk)
    CORRUPTIONS[corrupt](_entry(tmp_path))
    with pytest.warns(CacheWarning, match="unusable.*deleting it.*recomputed"):
        again = embed_cached(model, img, WINDOW, disk=disk)
    assert model.embed_calls == 2
    np.testing.assert_array_equal(again.features["components"], good.features["components"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healed = embed_cached(model, img, WINDOW, disk=DiskCache(tmp_path))
    assert model.embed_calls == 2
    np.testing.assert_array_equal(healed.features["components"], good.features["components"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no trash left


def test_an_unwritable_cache_warns_and_still_embeds(tmp_path, monkeypatch):
    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiskCache, "_write", refuse)
    model = ComponentModel()
    with pytest.warns(CacheWarning, match="No space left"):
        emb = embed_cached(model, blob_image()[0], WINDOW, disk=DiskCache(tmp_path))
    assert emb.features["components"].max() > 0 and model.embed_calls == 1
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone


# -- storage -------------------------------------------------------------------------------------

def test_dtypes_round_trip(tmp_path):
    import torch

    feats = {
        "f32": torch.linspace(-3, 3, 1000).reshape(1, 10, 100),
        "big": torch.tensor([1e6, -2.5, 7.0]),  # beyond float16's range: stored as float32
        "bf16": torch.arange(6, dtype=torch.bfloat16),
        "i64": torch.arange(5),
        "np_f64": np.linspace(0, 1, 7),
        "np_bool": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
    }
    emb = Embedding("m", "c", "p", (3, 4), (2, 3), feats)
    for dtype, tol in (("float16", 2e-3), ("float32", 0)):
        disk = DiskCache(tmp_path / dtype, dtype=dtype)
        disk.put(_key(1), emb)
        out = disk.get(_key(1)).features
        for name, ref in feats.items():
            assert type(out[name]) is type(ref) and out[name].dtype == ref.dtype, name
            if isinstance(ref, np.ndarray):
                np.testing.assert_allclose(out[name], ref, rtol=tol, atol=tol)
            else:
                torch.testing.assert_close(out[name], ref, rtol=tol, atol=tol)
        assert torch.equal(out["big"], feats["big"])
    f16, f32 = DiskCache(tmp_path / "float16").size_bytes(), DiskCache(tmp_path / "float32").size_bytes()
    assert f16 < f32


def test_keys_are_hex_digests_only(tmp_path):
    disk = DiskCache(tmp_path)
    for bad in ("../etc", "ABCDEF0123456789", "", "xyz"):
        with pytest.raises(ValueError, match="not a cache key"):
            disk.get(bad)
    with pytest.raises(ValueError, match="dtype"):
        DiskCache(tmp_path, dtype="int8")


def test_root_and_size_bound_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTSEG_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("PROMPTSEG_EMBED_CACHE_GB", raising=False)
    disk = DiskCache()
    assert disk.root == tmp_path / "elsewhere" / "embeddings" and disk.max_bytes == 10 * 10**9
    disk.put(_key(1), _numpy_embedding(1))
    assert (tmp_path / "elsewhere" / "embeddings" / _key(1) / "zarr.json").is_file()
    monkeypatch.setenv("PROMPTSEG_EMBED_CACHE_GB", "0.5")
    assert DiskCache().max_bytes == 5 * 10**8
    monkeypatch.setenv("PROMPTSEG_EMBED_CACHE_GB", "lots")
    with pytest.warns(CacheWarning, match="PROMPTSEG_EMBED_CACHE_GB"):
        assert DiskCache().max_bytes == 10 * 10**9


# -- eviction ------------------------------------------------------------------------------------

def test_lru_eviction_by_size_keeps_the_most_recently_used(tmp_path):
    disk = DiskCache(tmp_path, max_bytes=10**9, dtype="float32")
    disk.put(_key(0), _numpy_embedding(0))
    one = disk.size_bytes()
    assert 4096 * 4 < one < 4096 * 4 + 4000
    disk.max_bytes = int(3.5 * one)  # room for three entries
    now = time.time()
    for i in (1, 2):
        disk.put(_key(i), _numpy_embedding(i))
    for i in (0, 1, 2):
        os.utime(tmp_path / _key(i), (now - 30 + i, now - 30 + i))  # put in order 0, 1, 2
    _check_numpy_embedding(disk.get(_key(0)), 0)  # 0 is now the most recently used
    disk.put(_key(3), _numpy_embedding(3))
    assert [i for i in range(4) if _key(i) in disk] == [0, 2, 3]  # 1 was the least recently used
    assert disk.size_bytes() <= disk.max_bytes
    disk.max_bytes = one // 2  # smaller than one entry: the one just written stays
    disk.put(_key(4), _numpy_embedding(4))
    assert [i for i in range(5) if _key(i) in disk] == [4]
    assert disk.evict(0) == 0 and _key(4) not in disk
    disk.put(_key(5), _numpy_embedding(5))
    disk.clear()
    assert disk.size_bytes() == 0 and disk.get(_key(5)) is None


def test_leftovers_of_a_crashed_writer_are_removed(tmp_path):
    disk = DiskCache(tmp_path)
    stale = tmp_path / f".tmp-{_key(1)}-dead"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / f".tmp-{_key(2)}-writing"  # a writer at work: left alone
    fresh.mkdir()
    disk.put(_key(3), _numpy_embedding(3))
    assert not stale.exists() and fresh.exists() and _key(1) not in disk


def test_a_writer_that_loses_the_race_keeps_the_winners_entry(tmp_path, monkeypatch):
    disk, rival = DiskCache(tmp_path), DiskCache(tmp_path)
    write = DiskCache._write

    def slow_write(self, tmp, key, emb):
        write(self, tmp, key, emb)
        if self is disk:  # the rival finishes first
            rival.put(key, _numpy_embedding(2))

    monkeypatch.setattr(DiskCache, "_write", slow_write)
    disk.put(_key(1), _numpy_embedding(1))
    _check_numpy_embedding(disk.get(_key(1)), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [_key(1)]


# -- concurrency ---------------------------------------------------------------------------------

BOUND = 30_000  # about three entries of _numpy_embedding: puts evict what others read


def hammer(root: str, seed: int, rounds: int = 60, keys: int = 6) -> list[str]:
    """Put and get shared keys in random order under a tight size bound (so entries are evicted
    while others read them). Returns the errors seen: exceptions and wrong contents."""
    errors: list[str] = []
    disk = DiskCache(root, max_bytes=BOUND)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        i = int(rng.integers(keys))
        try:
            if rng.random() < 0.5:
                disk.put(_key(i), _numpy_embedding(i))
            else:
                emb = disk.get(_key(i))
                if emb is not None:
                    _check_numpy_embedding(emb, i)
        except Exception as e:  # noqa: BLE001 - report, do not stop
            errors.append(f"{type(e).__name__}: {e}")
    return errors


def hammer_in_process(root: str, seed: int, rounds: int) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:  # this process's warnings only
        warnings.simplefilter("always")
        errors = hammer(root, seed, rounds)
    return errors + [str(w.message) for w in seen]


def test_threads_share_a_cache(tmp_path):
    results: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, hammer(str(tmp_path), s)))
               for s in range(3)]
    with warnings.catch_warnings(record=True) as seen:  # catch_warnings is process-wide
        warnings.simplefilter("always")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {0: [], 1: [], 2: []}
    assert [str(w.message) for w in seen] == []  # no CacheWarning: races are plain misses
    assert DiskCache(tmp_path).size_bytes() <= BOUND + 3 * 12_000  # each put keeps its own entry


def test_processes_share_a_cache(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(hammer_in_process, [(str(tmp_path), s, 80) for s in (10, 11)])
    assert results == [[], []]
    for i in range(6):  # what is left is whole
        emb = DiskCache(tmp_path).get(_key(i))
        if emb is not None:
            _check_numpy_embedding(emb, i)


# -- float16 parity ------------------------------------------------------------------------------

def _iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _parity_ious(model, disk, seed: int) -> list[float]:
    from napari_promptseg.sample import nuclei_image
    from napari_promptseg.training.sampling import interior_point, tight_box

    img, labels = nuclei_image(seed=seed)
    ref = model.embed(img)
    disk.put(_key(seed), ref)
    stored = disk.get(_key(seed), device=model.device, model=model)
    assert stored is not None and not stored.features["image_embed"].equal(ref.features["image_embed"])
    ious = []
    for i in range(1, int(labels.max()) + 1):
        gt = labels == i
        if not gt.any():
            continue
        for kw in (dict(points=[interior_point(gt)], multimask=True),
                   dict(points=[interior_point(gt)], multimask=False),
                   dict(box=tight_box(gt), multimask=False)):
            a, b = model.predict(ref, **kw).masks, model.predict(stored, **kw).masks
            ious.extend(_iou(x, y) for x, y in zip(a, b, strict=True))
    return ious


@pytest.mark.slow
def test_float16_storage_keeps_masks(tmp_path, tiny_model):
    """float16 is the default storage because masks decoded from float16-stored features match the
    float32 ones with IoU >= 0.99 for every mask of every prompt.

    Prompts: every object of ``nuclei_image(seed=0)`` (512 x 640, 40 nuclei): a positive point at
    its interior-most pixel (all 3 masks, and the single mask) and its tight box (1 mask), on the
    packaged ``promptseg_demo`` model and on the tiny random-weight SAM (vit_tiny, seed 0).
    Measured by ``benchmarks/bench_disk_cache.py`` on seeds 0-2 (600 masks per model):
    promptseg_demo min IoU 0.9973, median 1.0000; tiny random SAM min 0.9997, median 0.9999.
    """
    assert DEFAULT_DTYPE == "float16" and DiskCache(tmp_path).dtype == "float16"
    for model in (ps.load_model("promptseg_demo", device="cpu"), tiny_model):
        ious = np.array(_parity_ious(model, DiskCache(tmp_path / model.name), seed=0))
        assert len(ious) >= 150, model.name
        assert ious.min() >= 0.99, (model.name, ious.min())


@pytest.mark.parametrize("oom", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")])
def test_out_of_memory_while_reading_keeps_a_valid_entry_and_reaches_the_caller(tmp_path, monkeypatch, oom):
    """Running out of memory (host or device) while reading is not corruption: the entry stays and
    the error is the caller's, for the cache and for an embeddings store alike."""
    import napari_promptseg.embed.disk_cache as dc
    import napari_promptseg.embed.store as st

    img, _ = blob_image()
    model = ComponentModel()
    disk = DiskCache(tmp_path / "cache")
    key = embedding_key(model, to_rgb_uint8(img, WINDOW))
    embed_cached(model, img, WINDOW, disk=disk)
    assert key in disk

    def oom_read(*args, **kwargs):
        raise oom

    monkeypatch.setattr(dc, "read_entry", oom_read)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # no "unusable, deleting it"
        with pytest.raises(type(oom)):
            disk.get(key)
    assert key in disk
    monkeypatch.undo()
    assert disk.get(key) is not None  # still valid
    stack = np.stack([img, img])
    list(ps.embed_store_iter(model, stack, tmp_path / "s.zarr", window=WINDOW))
    store = ps.open_embeddings(tmp_path / "s.zarr")
    monkeypatch.setattr(st, "read_entry", oom_read)
    with pytest.raises(type(oom)):  # not a StoreError telling the user to delete the plane
        store[0]
    with pytest.raises(type(oom)):
        store.embedding_for(0, model, img)
