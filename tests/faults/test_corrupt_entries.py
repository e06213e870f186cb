"""Corrupt and mismatched entries of the embedding cache and of embeddings stores: a truncated
file, another model, another shape, damaged metadata (a missing field). The cache says so,
recomputes and keeps every valid entry; a store's error names the store and says what to do, the
session embeds the plane with the model instead and never deletes anything of the store."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.embed.cache import CacheWarning, DiskCache, embed_cached, embedding_key
from napari_promptseg.embed.entry import write_entry
from napari_promptseg.embed.store import StoreError
from napari_promptseg.session import AnnotationSession
from tests.component_model import ComponentModel, blob_image
from tests.test_session_risks import two_bars_stack


def _edit_attrs(group: Path, drop=(), **changes) -> None:
    meta = json.loads((group / "zarr.json").read_text())
    meta["attributes"].update(changes)
    for name in drop:
        del meta["attributes"][name]
    (group / "zarr.json").write_text(json.dumps(meta))


def _chunk(entry: Path) -> Path:
    (chunk,) = (entry / "f0").glob("c*")
    return chunk


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _other_size(entry: Path) -> None:
    """The entry is rewritten, whole and consistent, with the embedding of an image of another
    size (a copied or mislabelled entry): only its size tells."""
    model = ComponentModel()
    key = json.loads((entry / "zarr.json").read_text())["attributes"]["key"]
    shutil.rmtree(entry)
    write_entry(entry, key, model.embed(blob_image((90, 100))[0]))


CACHE_FAULTS = {
    "truncated file": (lambda e: _truncate(_chunk(e)), "unusable"),
    "another model": (lambda e: _edit_attrs(e, model="vit_h", checkpoint_id="0123456789ab"),
                      "not by the requesting model"),
    "another shape": (_other_size, r"an image of \(90, 100\) pixels, not \(120, 160\)"),
    "metadata without a field": (lambda e: _edit_attrs(e, drop=["features"]), "metadata lacks 'features'"),
    "feature metadata without a field": (lambda e: _edit_attrs(e, features=[
        {k: v for k, v in f.items() if k != "xxh3"}
        for f in json.loads((e / "zarr.json").read_text())["attributes"]["features"]]),
        "metadata lacks 'xxh3'"),
}


@pytest.fixture
def disk(tmp_path):
    """A cache with a valid entry of another image (never to be deleted)."""
    d = DiskCache(tmp_path / "embeddings")
    embed_cached(ComponentModel(), blob_image((50, 70))[0], disk=d)
    d.valid = {p.name for p in d.root.iterdir()}
    return d


def keeps_valid_entries(d: DiskCache) -> bool:
    model = ComponentModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        return all(d.get(k, model=model) is not None for k in d.valid)


@pytest.mark.parametrize("fault", CACHE_FAULTS, ids=list(CACHE_FAULTS))
def test_a_corrupt_cache_entry_is_said_recomputed_and_the_valid_ones_kept(disk, fault):
    damage, said = CACHE_FAULTS[fault]
    img, truth = blob_image()
    model = ComponentModel()
    good = embed_cached(model, img, disk=disk)
    key = embedding_key(model, to_rgb_uint8(img), model.input_zoom(img.shape))
    damage(disk.root / key)
    with pytest.warns(CacheWarning, match=f"{said}.*recomputed") as seen:
        s = AnnotationSession(model, img, disk=disk, autosave=False)  # opens the image again
    assert len(seen) == 1 and str(disk.root / key) in str(seen[0].message)
    assert model.embed_calls == 2  # recomputed
    np.testing.assert_array_equal(s.stack.cached(()).features["components"], good.features["components"])
    s.add_point((25, 30))
    np.testing.assert_array_equal(s.preview_plane() > 0, truth == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert DiskCache(disk.root).get(key, model=model) is not None  # healed: a whole entry again
    assert keeps_valid_entries(disk)


def test_the_cache_never_deletes_an_entry_it_could_not_read_for_the_machines_reasons(disk, monkeypatch):
    model = ComponentModel()
    img = blob_image()[0]
    embed_cached(model, img, disk=disk)
    disk.valid |= {p.name for p in disk.root.iterdir()}
    import zarr.storage._local as local

    for err in (PermissionError(errno.EACCES, "Permission denied"),
                OSError(errno.EMFILE, "Too many open files"),
                MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        monkeypatch.setattr(local, "_get", lambda *a, err=err, **k: (_ for _ in ()).throw(err))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                embed_cached(ComponentModel(), img, disk=disk)
        except (MemoryError, RuntimeError):
            pass  # out of memory reaches the caller
        monkeypatch.undo()
        assert keeps_valid_entries(disk), f"a valid entry was deleted after {err!r}"


# ------------------------------------------------------------------------------- stores
def planes_stack(n=4):
    stack = two_bars_stack(n)
    for z in range(n):
        stack[z, 52:54, 4 * z + 4:4 * z + 6] = stack.max()  # each plane its own pixels
    return stack


@pytest.fixture
def store(tmp_path):
    stack = planes_stack()
    path = tmp_path / "stack.zarr"
    list(ps.embed_store_iter(ComponentModel(), stack, path))
    return stack, path


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def statuses(s):
    s.said = []
    s.events.status.connect(s.said.append)
    return s


STORE_PLANE_FAULTS = {
    "truncated file": (lambda plane: _truncate(_chunk(plane)), r"is damaged .*delete .*promptseg embed"),
    "metadata without a field": (lambda plane: _edit_attrs(plane, drop=["features"]),
                                 r"metadata lacks 'features'.*delete .*promptseg embed"),
}


@pytest.mark.parametrize("fault", STORE_PLANE_FAULTS, ids=list(STORE_PLANE_FAULTS))
def test_a_damaged_store_plane_names_the_store_and_is_embedded_instead(store, fault):
    stack, path = store
    damage, said = STORE_PLANE_FAULTS[fault]
    damage(path / "planes" / "2")
    before = snapshot(path)
    with pytest.raises(StoreError, match=said) as err:
        ps.open_embeddings(path)[2]
    assert str(path) in str(err.value) and "plane 2" in str(err.value)
    model = ComponentModel()
    s = statuses(AnnotationSession(model, None, autosave=False))
    s.set_image(stack, embeddings=path)
    s.set_plane((2,))
    assert s.ready and model.embed_calls == 1  # plane 2 embedded with the model, the others read
    assert any("damaged" in t and "plane 2 was embedded with the model instead" in t for t in s.said), s.said
    s.add_point((15, 40))
    assert (s.preview_plane() == 1).sum() == 10 * 60
    assert snapshot(path) == before  # nothing of the store deleted or changed


def test_a_store_plane_the_machine_cannot_read_is_not_called_damaged(store, monkeypatch):
    import zarr.storage._local as local

    stack, path = store
    monkeypatch.setattr(local, "_get", lambda p, *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))))
    with pytest.raises(StoreError, match=r"could not be read .*permissions") as err:
        ps.open_embeddings(path)[1]
    assert "damaged" not in str(err.value) and "delete" not in str(err.value)


def _keep(path, stack):
    pass


STORE_FAULTS = {  # (damage the store, the model to use, what the error says)
    "another model": (_keep, lambda: _other_model(),
                      r"made with model 'components'.*load that model or embed again"),
    "another shape": (_keep, None, r"shape \(4, 60, 80\), not \(4, 60, 81\).*promptseg embed"),
    "metadata without a field": (lambda path, stack: _edit_attrs(path, drop=["lead_shape"]), None,
                                 r"lacks 'lead_shape'.*embed it again"),
    "damaged metadata": (lambda path, stack: _edit_attrs(path, shape="abc"), None,
                         r"damaged.*embed it again"),
}


def _other_model():
    m = ComponentModel()
    m.checkpoint_id = "components-v2"
    return m


@pytest.mark.parametrize("fault", STORE_FAULTS, ids=list(STORE_FAULTS))
def test_a_store_that_does_not_fit_is_refused_with_what_to_do(store, fault):
    stack, path = store
    damage, make_model, said = STORE_FAULTS[fault]
    damage(path, stack)
    if fault == "another shape":
        stack = np.pad(stack, ((0, 0), (0, 0), (0, 1)))
    model = make_model() if make_model else ComponentModel()
    before = snapshot(path)
    s = statuses(AnnotationSession(model, stack, autosave=False))
    assert s.use_embeddings(path) is False
    assert str(path) in s.said[-1] and re.search(said, s.said[-1]), s.said[-1]
    assert s.embeddings_store is None and s.ready  # embedded by the model, nothing else changed
    with pytest.raises(StoreError, match=said):
        ps.propagate(model, stack, {0: [{"points": [[15, 40]], "labels": [1]}]}, embeddings=path)
    assert snapshot(path) == before
