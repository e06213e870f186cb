"""Reading images and writing labels, for the command line and distributed workers: tif / ome-tif,
png / jpg, npy, zarr (lazily where possible); the ``out=`` labels arrays of the API (any writable
integer array-like, written one plane or one block at a time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["InputError", "SUFFIXES", "guess_rgb", "read_image", "check_labels_path", "write_labels",
           "check_labels_out", "LabelPlanes", "labels_output"]

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")


class InputError(ValueError):
    """An input that cannot be read or written as asked (the message says which and why)."""


def guess_rgb(shape: tuple[int, ...]) -> bool:
    """Whether an input of ``shape`` has a colour axis: a last axis of 3 or 4 after at least two
    others (``(H, W, 3)`` is an RGB image, ``(T, H, W, 3)`` an RGB video; a gray z-stack has its
    planes first, ``(Z, H, W)``)."""
    return len(shape) in (3, 4) and shape[-1] in (3, 4)


def read_image(path: str | Path):
    """The array in ``path``: a memory map or a zarr array when the format allows (planes are
    read when used), else a numpy array."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, mmap_mode="r")
        if suffix in (".tif", ".tiff"):
            import tifffile

            try:
                return tifffile.memmap(p, mode="r")  # uncompressed: planes read on demand
            except ValueError:
                return tifffile.imread(p)
        if suffix in (".png", ".jpg", ".jpeg"):
            from skimage.io import imread

            return imread(p)
        if suffix == ".zarr":
            import zarr

            node = zarr.open(p, mode="r")
            if isinstance(node, zarr.Array):
                return node
            arrays = sorted(node.arrays())
            if not arrays:
                raise InputError(f"{p}: a zarr group without arrays")
            return arrays[0][1]  # a multiscale group: its first level ("0")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's input
        raise InputError(f"{p}: cannot be read as {suffix[1:]} ({type(e).__name__}: {e})") from None
    raise InputError(f"{p}: unknown image format {suffix!r}; use one of {', '.join(SUFFIXES)}")


LABEL_SUFFIXES = (".tif", ".tiff", ".zarr")


def check_labels_path(path: str | Path, overwrite: bool = True) -> Path:
    """``path`` if labels can be written there (a .tif / .tiff file or a .zarr folder)."""
    p = Path(path)
    if p.suffix.lower() not in LABEL_SUFFIXES:
        raise InputError(f"{p}: labels are written as .tif or .zarr, not {p.suffix or 'no suffix'}")
    if not p.parent.is_dir():
        raise InputError(f"{p.parent}: no such folder for the output")
    if not overwrite and p.exists():
        raise InputError(f"{p} exists; pass --overwrite or another --out")
    return p


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write an int labels array to a .tif (zlib-compressed, ImageJ-readable) or a .zarr array
    (chunked per plane), replacing what was there; written beside and renamed into place."""
    import os
    import shutil
    import uuid

    p = Path(path)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}")
    try:
        if p.suffix.lower() == ".zarr":
            import zarr

            chunks = (1,) * (labels.ndim - 2) + tuple(min(s, 1024) for s in labels.shape[-2:])
            z = zarr.open_array(tmp, mode="w", shape=labels.shape, dtype=labels.dtype, chunks=chunks)
            z[...] = labels
            if p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        else:
            import tifffile

            tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _is_read_only(out) -> bool:
    if isinstance(out, np.ndarray):
        return not out.flags.writeable
    return bool(getattr(out, "read_only", False))


def check_labels_out(out, shape: tuple[int, ...], *, max_id: int = 0, what: str = "out"):
    """``out`` when labels of ``shape`` can be written into it in place, block by block.

    out: a writable integer array-like of exactly ``shape``: a numpy array or ``np.memmap``, a zarr
    array, a napari Labels layer's data. max_id: the largest id that will be written (checked
    against the dtype). Raises, naming what is wrong and what to pass instead: TypeError for
    something that is not such an array (a dask array: it cannot be written in place) or a
    non-integer dtype; ValueError for another shape, a read-only array or ids the dtype cannot
    hold."""
    shape = tuple(int(s) for s in shape)
    make = (f"e.g. zarr.open_array('labels.zarr', mode='w', shape={shape}, dtype='int32') or "
            f"np.lib.format.open_memmap('labels.npy', mode='w+', shape={shape}, dtype=np.int32)")
    if (type(out).__module__ or "").split(".")[0] == "dask":
        raise TypeError(f"{what}= is a dask array, which cannot be written in place: pass a writable "
                        f"array ({make}), or leave {what}= out and use the returned array")
    if not all(hasattr(out, a) for a in ("shape", "dtype", "__getitem__", "__setitem__")):
        raise TypeError(f"{what}= must be a writable array (numpy, np.memmap, zarr) of shape {shape}, "
                        f"got {type(out).__name__}; {make}")
    if tuple(int(s) for s in out.shape) != shape:
        raise ValueError(f"{what}= has shape {tuple(out.shape)} but the labels are {shape} (the image's "
                         f"shape without its channel axis): pass an array of shape {shape}")
    dtype = np.dtype(out.dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"{what}= must have an integer dtype for labels (int32 or uint32), got {dtype}")
    if _is_read_only(out):
        raise ValueError(f"{what}= ({type(out).__name__}) is read-only: open it for writing (zarr mode "
                         "'r+' or 'a', np.memmap mode 'r+' or 'w+') or pass another array")
    if max_id > np.iinfo(dtype).max:
        raise ValueError(f"{what}= has dtype {dtype}, which cannot hold object id {max_id}: pass an "
                         "int32 or uint32 array")
    return out


class LabelPlanes:
    """The planes of a labels array ``out`` across ``axis`` (None: a single 2D plane), read and
    written one ``(H, W)`` plane at a time (a zarr array or memory map never whole)."""

    def __init__(self, out, axis: int | None = 0) -> None:
        self.out, self.axis = out, axis

    def _key(self, k: int) -> tuple:
        return (...,) if self.axis is None else (slice(None),) * self.axis + (int(k),)

    def read(self, k: int) -> np.ndarray:
        """A ``(H, W)`` copy of plane ``k``."""
        return np.array(self.out[self._key(k)])

    def write(self, k: int, plane: np.ndarray) -> None:
        """Write the ``(H, W)`` ``plane`` as plane ``k``."""
        self.out[self._key(k)] = plane


def _chunks(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    """One plane across ``axis`` per chunk (tiles of 1024 pixels at most in the plane)."""
    return tuple(1 if i == axis else min(int(s), 1024) for i, s in enumerate(shape))


@contextmanager
def labels_output(path: str | Path, shape: tuple[int, ...], *, axis: int | None = 0,
                  dtype=np.int32) -> Iterator:
    """A labels array of ``shape`` to fill, saved at ``path`` when the block ends without error.

    ``.zarr``: a zarr array on disk (one plane across ``axis`` per chunk; filled with 0, chunks
    never written stay absent), made beside ``path`` and renamed into place, so memory stays
    bounded by what the caller writes at a time. ``.tif``: an array in memory (the whole labels),
    written zlib-compressed at the end (:func:`write_labels`). On an error nothing is left at
    ``path`` that was not there before."""
    import os
    import shutil
    import uuid

    p = Path(path)
    shape = tuple(int(s) for s in shape)
    if p.suffix.lower() != ".zarr":
        labels = np.zeros(shape, dtype)
        yield labels
        write_labels(p, labels)
        return
    import zarr

    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}")
    try:
        z = zarr.open_array(tmp, mode="w", shape=shape, dtype=dtype, chunks=_chunks(shape, axis),
                            fill_value=0)
        yield z
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
