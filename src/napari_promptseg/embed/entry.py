"""The on-disk format of one embedding (an *entry*), shared by the disk cache and embeddings stores.

An entry is a zarr v3 group: one uncompressed chunk per feature array, the metadata in its
attributes (format, version, key, model, checkpoint, preprocessing, sizes, per-array dtype,
shape and an xxh3 checksum of the stored bytes, so a truncated, missing or garbled chunk — zarr
reads a missing chunk as zeros — is detected). Floating-point features are stored as float16 by
default. zarr (and torch, for torch features) are imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_promptseg.core.results import Embedding

__all__ = ["FORMAT_VERSION", "DEFAULT_DTYPE", "EntryError", "read_entry", "write_entry", "resource_error",
           "machine_error", "explain_error"]

#: bump when the layout or the meaning of the stored arrays changes: older entries are then
#: reported and recomputed
FORMAT_VERSION = 1
#: storage dtype of floating-point features; float16 halves the size and passes the mask parity
#: test (tests/test_disk_cache.py::test_float16_storage_keeps_masks)
DEFAULT_DTYPE = "float16"
_FORMAT = "napari-promptseg embedding"
_F16_MAX = float(np.finfo(np.float16).max)


class EntryError(Exception):
    """An entry that is not usable: another format or version, another key or model, a bad checksum."""


def resource_error(err: BaseException) -> bool:
    """Whether ``err`` is the machine's, not the entry's: out of memory on the host or the device
    (torch's out-of-memory errors are RuntimeErrors that say so). Such an entry is valid: it is
    kept, and the error goes to the caller."""
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def machine_error(err: BaseException) -> bool:
    """Whether reading an entry failed for a reason of the machine, not of the entry: an OSError
    other than a missing file (no permission, an I/O error, too many open files). Such an entry
    may be valid: it is kept."""
    return isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, NotADirectoryError))


def explain_error(err: BaseException) -> str:
    """``err`` in words for a status line: what happened, and for out-of-memory errors what to do
    (a bare ``MemoryError()`` says nothing by itself)."""
    text = str(err).strip()
    said = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if resource_error(err):
        return (f"out of memory ({said}); free memory (close other programs or viewers) or use a "
                "smaller model, smaller images (crop or bin them) or another device, then try again")
    return text or said


def _digest(arr: np.ndarray) -> str:
    import xxhash

    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(arr).data)


def read_entry(path: Path, key: str | None, device: Any = "cpu", model=None,
               original_size: tuple[int, int] | None = None) -> Embedding:
    """The embedding in the entry folder ``path`` (checked: format, ``key`` unless None, ``model``
    unless None, the image's ``original_size`` unless None, every checksum); raises
    ``EntryError`` (or zarr's or the file system's errors) when it is unusable."""
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
    meta = group.attrs.asdict()
    if meta.get("format") != _FORMAT:
        raise EntryError("not a napari-promptseg embedding")
    if meta.get("version") != FORMAT_VERSION:
        raise EntryError(f"format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    if key is not None and meta.get("key") != key:
        raise EntryError(f"it was stored under key {meta.get('key')!r}")
    if model is not None:
        mine = (model.name, model.checkpoint_id, model.preprocessing)
        theirs = (meta.get("model"), meta.get("checkpoint_id"), meta.get("preprocessing"))
        if mine != theirs:
            raise EntryError(f"made by {theirs}, not by the requesting model {mine}")
    try:
        sizes = {name: tuple(int(v) for v in meta[name]) for name in ("original_size", "input_size")}
        names = {name: str(meta[name]) for name in ("model", "checkpoint_id", "preprocessing")}
        features = [(str(f["name"]), str(f["array"]), list(f["shape"]), str(f["stored_dtype"]),
                     str(f["xxh3"]), f) for f in meta["features"]]
    except KeyError as e:
        raise EntryError(f"its metadata lacks {e.args[0]!r} (damaged, or written by another "
                         "program)") from None
    except (TypeError, ValueError) as e:
        raise EntryError(f"its metadata is damaged ({type(e).__name__}: {e})") from None
    if original_size is not None and sizes["original_size"] != tuple(original_size):
        raise EntryError(f"it is the embedding of an image of {sizes['original_size']} pixels, "
                         f"not {tuple(original_size)}")
    feats = {}
    for name, array, shape, stored_dtype, digest, f in features:
        arr = group[array][...]
        if list(arr.shape) != shape or str(arr.dtype) != stored_dtype:
            raise EntryError(f"feature {name!r} has shape {arr.shape} {arr.dtype}, "
                             f"expected {tuple(shape)} {stored_dtype}")
        if _digest(arr) != digest:
            raise EntryError(f"feature {name!r} fails its checksum (truncated or garbled chunk)")
        try:
            feats[name] = _restore(arr, f, device)
        except (KeyError, AttributeError, TypeError) as e:
            raise EntryError(f"the metadata of feature {name!r} is damaged "
                             f"({type(e).__name__}: {e})") from None
    return Embedding(
        model=names["model"],
        checkpoint_id=names["checkpoint_id"],
        preprocessing=names["preprocessing"],
        original_size=sizes["original_size"],
        input_size=sizes["input_size"],
        features=feats,
    )


def _restore(arr: np.ndarray, f: dict, device):
    if f["kind"] == "numpy":
        return arr.astype(f["dtype"], copy=False)
    import torch

    dtype = getattr(torch, f["dtype"])
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=dtype)


def write_entry(tmp: Path, key: str, emb: Embedding, dtype: str = DEFAULT_DTYPE, **attrs) -> None:
    """Write ``emb`` as an entry folder at ``tmp`` (a zarr v3 group; floating-point features
    stored as ``dtype``); ``attrs`` are added to its metadata. Callers rename it into place."""
    import zarr
    from zarr.storage import LocalStore

    arrays, feats = {}, []
    for i, (name, value) in enumerate(emb.features.items()):
        arr, kind, restore = _to_numpy(value)
        stored = arr
        if (dtype == "float16" and arr.dtype.kind == "f" and arr.dtype.itemsize > 2
                and (arr.size == 0 or float(np.abs(arr).max()) <= _F16_MAX)):
            stored = arr.astype(np.float16)  # out of range or NaN: kept as it is
        arrays[f"f{i}"] = stored
        feats.append({"name": str(name), "array": f"f{i}", "kind": kind, "dtype": restore,
                      "shape": list(stored.shape), "stored_dtype": str(stored.dtype),
                      "xxh3": _digest(stored)})
    meta = {
        "format": _FORMAT, "version": FORMAT_VERSION, "key": key,
        "model": emb.model, "checkpoint_id": emb.checkpoint_id,
        "preprocessing": emb.preprocessing,
        "original_size": [int(v) for v in emb.original_size],
        "input_size": [int(v) for v in emb.input_size],
        "features": feats, **attrs,
    }
    group = zarr.create_group(store=LocalStore(tmp), zarr_format=3, attributes=meta)
    for name, stored in arrays.items():
        a = group.create_array(
            name, shape=stored.shape, dtype=stored.dtype,
            chunks=tuple(max(1, s) for s in stored.shape), compressors=None, fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        a[...] = stored


def _to_numpy(value) -> tuple[np.ndarray, str, str]:
    """(array, "torch" | "numpy", dtype name to restore)."""
    if hasattr(value, "detach"):  # a torch tensor
        dtype = str(value.dtype).removeprefix("torch.")
        t = value.detach().cpu()
        if dtype == "bfloat16":  # numpy has no bfloat16
            t = t.float()
        return t.numpy(), "torch", dtype
    arr = np.asarray(value)
    return arr, "numpy", str(arr.dtype)
