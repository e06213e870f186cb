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
recomputed by the caller. An entry that cannot be read for a reason of the machine (permissions,
an I/O error, too many open files; out of memory is raised) is kept: it is a miss this time.
A cache that cannot be written (a full disk, a read-only or removed folder) costs only speed: the
embedding stays in memory and :meth:`DiskCache.write_failed` says once per kind of problem what
happened and what to do (:meth:`DiskCache.take_problems` hands those lines to a status line).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.entry import (
    DEFAULT_DTYPE,
    EntryError,
    machine_error,
    read_entry,
    resource_error,
    write_entry,
)

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
        self._said: set[str] = set()  # kinds of problem said already (each is said once)
        self._problems: list[str] = []  # said, not yet taken by a view (take_problems)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}, max_bytes={self.max_bytes}, dtype={self.dtype!r})"

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"not a cache key (lower-case hex digits): {key!r}")
        return self.root / key

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_dir()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str, device: Any = "cpu", model=None,
            original_size: tuple[int, int] | None = None) -> Embedding | None:
        """The embedding stored under ``key`` with tensors on ``device``, or None.

        model: when given, an entry made by another model, checkpoint or preprocessing is never
        returned; original_size: when given, neither is an entry of an image of another size.
        An unreadable or inconsistent entry is reported (:class:`CacheWarning`), deleted, and
        None is returned; an entry evicted meanwhile is simply a miss. An entry the machine
        cannot read now (permissions, I/O) is kept: reported once, None is returned. Out of
        memory is raised (the entry is kept).
        """
        path = self._path(key)
        error = None
        for _ in range(2):  # a second try: the entry may have been replaced while we read it
            if not path.is_dir():
                return None
            try:
                emb = read_entry(path, key, device, model, original_size)
            except Exception as e:  # noqa: BLE001 - a cache never fails its caller, but for memory
                if resource_error(e):
                    raise  # a valid entry that did not fit in memory: kept
                if machine_error(e):  # the machine's problem, not the entry's: kept, a miss
                    message = self._problem("read", e)
                    if message:
                        warnings.warn(message, CacheWarning, stacklevel=2)
                    return None
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
        the least recently used entries beyond ``max_bytes`` (never this one). Raises OSError
        when the cache cannot be written (nothing is left behind; :meth:`write_failed` words it)."""
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

    # -- problems ----------------------------------------------------------------------------------

    def write_failed(self, err: OSError) -> str | None:
        """A :meth:`put` failed with ``err``: what happened and what to do, the first time this
        kind of problem (full, not writable, other) shows; None after (it was said)."""
        return self._problem("write", err)

    def take_problems(self) -> list[str]:
        """The problems said since the last call (each kind once), for a status line."""
        with self._lock:
            out, self._problems = self._problems, []
        return out

    def _problem(self, doing: str, err: OSError) -> str | None:
        kind = f"{doing}:{_problem_kind(err)}"
        with self._lock:
            if kind in self._said:
                return None
            self._said.add(kind)
            message = _problem_text(doing, _problem_kind(err), self.root, err)
            self._problems.append(message)
        return message

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


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_OFF = "PROMPTSEG_EMBED_CACHE_GB=0 turns the disk cache off"


def _problem_kind(err: OSError) -> str:
    if err.errno in _FULL:
        return "full"
    if err.errno in _DENIED or isinstance(err, PermissionError):
        return "denied"
    if isinstance(err, FileNotFoundError):
        return "gone"
    return "other"


def _problem_text(doing: str, kind: str, root: Path, err: OSError) -> str:
    """One line for the user: what happened to the cache at ``root``, what it costs, what to do."""
    why = f"{type(err).__name__}: {err}"
    if doing == "read":
        return (f"a cached embedding in {root} could not be read ({why}): it is kept and the embedding "
                "is computed instead; check the folder's permissions and the disk.")
    lost = "embeddings are kept in memory only (opening this image again embeds it again)"
    if kind == "full":
        return (f"the disk of the embedding cache {root} is full ({why}): {lost}. Free some space, or "
                f"set PROMPTSEG_CACHE_DIR to a folder on another disk ({_OFF}).")
    if kind == "denied":
        return (f"the embedding cache folder {root} is not writable ({why}): {lost}. Make it writable, "
                f"or set PROMPTSEG_CACHE_DIR to a writable folder ({_OFF}).")
    if kind == "gone":
        return (f"the embedding cache folder {root} was removed while in use ({why}): {lost} for this "
                "embedding; the folder is made again at the next one.")
    return (f"the embedding cache {root} could not be written ({why}): {lost}. Check the folder, or set "
            f"PROMPTSEG_CACHE_DIR to another one ({_OFF}).")
