"""On-disk embedding cache: one zarr group per key, atomic writes, least-recently-used by bytes.

Layout: ``<root>/<key>/`` is a zarr v3 group (one uncompressed chunk per feature array, the
metadata in its attributes). A writer fills ``<root>/.tmp-<key>-<random>/`` and renames it into
place, so a reader sees a whole entry or none; if another writer got there first, the second copy
is dropped. Deleting (eviction, ``clear``, a corrupt entry) renames the entry to
``<root>/.trash-<random>/`` first, so a reader never sees half of a deleted entry either. The
group directory's modification time is the recency: ``get`` touches it, eviction removes the
oldest first.

Entries are in :mod:`napari_promptseg.embed.entry`'s format (checksummed arrays): a truncated,
missing or garbled chunk is detected, reported with a :class:`CacheWarning`, deleted and
recomputed by the caller.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.entry import DEFAULT_DTYPE, EntryError, read_entry, resource_error, write_entry

__all__ = ["DiskCache", "CacheWarning", "default_max_bytes"]

DEFAULT_GB = 10.0
_KEY = re.compile(r"[0-9a-f]{8,128}")
_STALE_S = 3600.0  # temporary folders older than this were left by a crashed writer


class CacheWarning(UserWarning):
    """A cached embedding could not be read or written; it is (re)computed instead."""


def default_max_bytes() -> int:
    """The size bound: ``$PROMPTSEG_EMBED_CACHE_GB`` gigabytes (default 10)."""
    env = os.environ.get("PROMPTSEG_EMBED_CACHE_GB", "").strip()
    if env:
        try:
            gb = float(env)
            if not gb >= 0:  # also refuses nan
                raise ValueError
            return int(gb * 1e9)
        except ValueError:
            warnings.warn(
                f"PROMPTSEG_EMBED_CACHE_GB={env!r} is not a number of gigabytes >= 0; "
                f"using {DEFAULT_GB:g}", CacheWarning, stacklevel=3,
            )
    return int(DEFAULT_GB * 1e9)


def _tree_bytes(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        total += _tree_bytes(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:  # removed meanwhile
                    pass
    except OSError:
        pass
    return total


class DiskCache:
    """Embeddings on disk, shared by threads and processes (two napari viewers, a script).

    root: folder of the cache (default ``cache_dir() / "embeddings"``, i.e. under
    ``$PROMPTSEG_CACHE_DIR`` when set); max_bytes: size bound, least recently used entries are
    evicted after each :meth:`put` (default ``$PROMPTSEG_EMBED_CACHE_GB`` GB, else 10 GB);
    dtype: ``"float16"`` or ``"float32"``, how floating-point features are stored (they are
    returned in their original dtype). Keys come from :func:`~napari_promptseg.embed.cache.embedding_key`.
    """

    def __init__(
        self, root: str | Path | None = None, max_bytes: int | None = None, dtype: str = DEFAULT_DTYPE
    ) -> None:
        if root is None:
            from napari_promptseg.models.weights import cache_dir

            root = cache_dir() / "embeddings"
        self.root = Path(root).expanduser()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', not {dtype!r}")
        self.dtype = dtype
        self._sizes: dict[str, int] = {}  # entries never change once written: sizes are remembered

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}, max_bytes={self.max_bytes}, dtype={self.dtype!r})"

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"not a cache key (lower-case hex digits): {key!r}")
        return self.root / key

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_dir()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str, device: Any = "cpu", model=None) -> Embedding | None:
        """The embedding stored under ``key`` with tensors on ``device``, or None.

        model: when given, an entry made by another model, checkpoint or preprocessing is never
        returned. An unreadable or inconsistent entry is reported (:class:`CacheWarning`),
        deleted, and None is returned; an entry evicted meanwhile is simply a miss.
        """
        path = self._path(key)
        error = None
        for _ in range(2):  # a second try: the entry may have been replaced while we read it
            if not path.is_dir():
                return None
            try:
                emb = read_entry(path, key, device, model)
            except Exception as e:  # noqa: BLE001 - a cache never fails its caller, but for memory
                if resource_error(e):
                    raise  # a valid entry that did not fit in memory: kept
                error = e
                continue
            try:
                os.utime(path)  # recency for the LRU
            except OSError:
                pass
            return emb
        if not path.is_dir():
            return None  # evicted by another thread or process while we read it
        why = str(error) if isinstance(error, EntryError) else f"{type(error).__name__}: {error}"
        warnings.warn(
            f"the cached embedding {path} is unusable ({why}); deleting it, the embedding is "
            "recomputed", CacheWarning, stacklevel=2,
        )
        self._discard(path)
        return None

    # -- writing ---------------------------------------------------------------------------------

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key`` (atomically; an existing entry is kept), then evict
        the least recently used entries beyond ``max_bytes`` (never this one)."""
        path = self._path(key)
        if not path.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex}"
            try:
                self._write(tmp, key, embedding)
                try:
                    os.rename(tmp, path)
                except OSError as e:
                    # another writer won the race (its entry may even be evicted by now): keep
                    # theirs, drop ours (finally)
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not path.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a rename
        try:
            os.utime(path)
        except OSError:
            pass
        self.evict(keep=key)

    def _write(self, tmp: Path, key: str, emb: Embedding) -> None:
        write_entry(tmp, key, emb, self.dtype)

    # -- size, eviction --------------------------------------------------------------------------

    def _scan(self) -> tuple[list[tuple[float, int, str, str]], int]:
        """(entries as (mtime, bytes, key, path), bytes of everything under the root); removes
        temporary folders that crashed writers left behind."""
        entries, total, now, sizes = [], 0, time.time(), {}
        try:
            it = list(os.scandir(self.root))
        except OSError:
            return [], 0
        for e in it:
            try:
                if not e.is_dir(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
                    continue
                mtime = e.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if e.name.startswith((".tmp-", ".trash-")):
                if now - mtime > _STALE_S:
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    total += _tree_bytes(e.path)
                continue
            size = sizes[e.name] = self._sizes.get(e.name) or _tree_bytes(e.path)
            total += size
            if _KEY.fullmatch(e.name):
                entries.append((mtime, size, e.name, e.path))
        self._sizes = sizes
        return entries, total

    def size_bytes(self) -> int:
        """Bytes of all files under the root."""
        return self._scan()[1]

    def evict(self, max_bytes: int | None = None, keep: str | None = None) -> int:
        """Delete least recently used entries until the cache holds at most ``max_bytes``
        (default ``self.max_bytes``); ``keep`` is never deleted. Returns the bytes left."""
        bound = self.max_bytes if max_bytes is None else int(max_bytes)
        entries, total = self._scan()
        for _mtime, size, key, path in sorted(entries):
            if total <= bound:
                break
            if key != keep:
                self._discard(Path(path))
                total -= size
        return total

    def clear(self) -> None:
        """Delete every entry."""
        for _mtime, _size, _key, path in self._scan()[0]:
            self._discard(Path(path))

    def _discard(self, path: Path) -> None:
        """Remove an entry: renamed away first (atomic), so readers never see half of it."""
        self._sizes.pop(path.name, None)
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(path, trash)
        except OSError:  # gone already, or in use (Windows): leave it
            return
        shutil.rmtree(trash, ignore_errors=True)
