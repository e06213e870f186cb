"""The embedding cache folder full, read-only or removed while a session runs: embedding still
works (from memory), the user is told once what happened and what to do (a CacheWarning in a
script, the status line in a session), nothing crashes, and no valid entry is deleted."""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from napari_promptseg.embed.cache import CacheWarning, DiskCache, embed_cached
from napari_promptseg.session import AnnotationSession
from tests.component_model import ComponentModel, blob_image
from tests.test_session_risks import two_bars_stack

FAULTS = {  # what a write into the cache folder raises
    "full": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
             r"is full .*Free some space.*PROMPTSEG_CACHE_DIR"),
    "read-only": (OSError(errno.EROFS, os.strerror(errno.EROFS)), r"not writable.*PROMPTSEG_CACHE_DIR"),
    "no permission": (PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
                      r"not writable.*Make it writable"),
}


@pytest.fixture
def disk(tmp_path):
    """A cache holding one valid entry of another image (it must survive every fault)."""
    d = DiskCache(tmp_path / "embeddings")
    other = blob_image((50, 70))[0]
    embed_cached(ComponentModel(), other, disk=d)
    (key,) = [p.name for p in d.root.iterdir()]
    d.valid_key = key
    return d


def assert_valid_entry_kept(d: DiskCache) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        emb = d.get(d.valid_key, model=ComponentModel())
    assert emb is not None, "a valid cache entry was deleted"


def fail_writes(monkeypatch, err):
    """Every file zarr writes raises ``err`` (the disk is full, the folder read-only)."""
    import zarr.storage._local as local

    def refuse(path, *args, **kwargs):
        raise type(err)(err.errno, err.strerror, str(path))

    monkeypatch.setattr(local, "_put", refuse)


def session_on(d, n=3, **kw):
    model = ComponentModel()
    s = AnnotationSession(model, None, disk=d, autosave=False, **kw)
    s.said = []
    s.events.status.connect(s.said.append)
    stack = two_bars_stack(n)
    for z in range(n):  # planes differ (a speck each): each one is embedded
        stack[z, 52:54, 4 * z + 4:4 * z + 6] = stack.max()
    s.set_image(stack)
    return s, model


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_cache_that_cannot_be_written_is_said_once_and_embedding_goes_on(disk, monkeypatch, fault):
    err, said = FAULTS[fault]
    fail_writes(monkeypatch, err)
    with pytest.warns(CacheWarning) as seen:
        s, model = session_on(disk)
        for z in (1, 2, 0, 1):
            s.set_plane((z,))
    assert len(seen) == 1, [str(w.message) for w in seen]  # told once
    assert [m for m in s.said if "embedding cache" in m] == [str(seen[0].message)]
    assert re.search(said, str(seen[0].message)), str(seen[0].message)
    assert "in memory" in str(seen[0].message)
    assert model.embed_calls == 3  # each plane once: planes seen again come from memory
    s.add_point((15, 40))
    assert (s.preview_plane() == 1).sum() == 10 * 60  # prompts work
    assert s.commit() and np.asarray(s.target[1, 15, 40]) == 1
    assert not [p for p in disk.root.iterdir() if p.name.startswith(".")]  # nothing half-written left
    assert_valid_entry_kept(disk)


def test_a_really_read_only_folder(disk):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: the monkeypatched faults above stand for it")
    disk.root.chmod(0o555)
    try:
        with pytest.warns(CacheWarning, match="not writable"):
            emb = embed_cached(ComponentModel(), blob_image()[0], disk=disk)
        assert emb is not None
        assert_valid_entry_kept(disk)
    finally:
        disk.root.chmod(0o755)


def test_the_cache_folder_removed_between_two_embeddings_is_made_again(disk):
    s, model = session_on(disk)
    shutil.rmtree(disk.root)  # the user (or a cleaner) removes the whole cache folder
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # nothing failed: nothing to say
        s.set_plane((1,))
    assert model.embed_calls == 2 and s.ready
    assert len([p for p in disk.root.iterdir() if not p.name.startswith(".")]) == 1  # plane 1 cached again


def test_the_cache_folder_removed_during_a_write(disk, monkeypatch):
    """The folder goes while an entry is being written: that entry is lost (said once), the
    embedding is used from memory, the next write makes the folder again."""
    write = DiskCache._write
    removed = []

    def write_then_lose_folder(self, tmp, key, emb):
        write(self, tmp, key, emb)
        if not removed:
            removed.append(key)
            shutil.rmtree(self.root)

    monkeypatch.setattr(DiskCache, "_write", write_then_lose_folder)
    with pytest.warns(CacheWarning, match="removed while in use") as seen:
        s, model = session_on(disk)
    assert len(seen) == 1 and any("removed while in use" in m for m in s.said)
    assert s.ready and model.embed_calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        s.set_plane((1,))
    assert model.embed_calls == 2 and s.ready
    assert removed[0] not in disk and len(os.listdir(disk.root)) == 1  # made again for plane 1


def test_a_cache_entry_the_machine_cannot_read_is_kept(disk, monkeypatch):
    """A read that fails for the machine's reason (no permission, an I/O error) is a miss that
    says so once; the entry is not taken for corrupt and deleted."""
    import zarr.storage._local as local

    def unreadable(path, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    model = ComponentModel()
    img = blob_image((50, 70))[0]  # the image of the valid entry
    monkeypatch.setattr(local, "_get", unreadable)
    with pytest.warns(CacheWarning, match="could not be read.*kept.*permissions") as seen:
        a = embed_cached(model, img, disk=disk)
        b = embed_cached(model, img, disk=disk)
    assert len(seen) == 1 and a is not None and b is not None and model.embed_calls == 2
    assert disk.take_problems() == [str(seen[0].message)] and disk.take_problems() == []
    monkeypatch.undo()
    assert_valid_entry_kept(disk)


def test_out_of_memory_while_reading_a_cache_entry_reaches_the_caller_and_keeps_it(disk, monkeypatch):
    import zarr.storage._local as local

    model = ComponentModel()
    monkeypatch.setattr(local, "_get", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        embed_cached(model, blob_image((50, 70))[0], disk=disk)
    assert model.embed_calls == 0
    monkeypatch.undo()
    assert_valid_entry_kept(disk)

