"""Reading images and writing labels, for the command line and distributed workers: tif / ome-tif,
png / jpg, npy, zarr (lazily where possible)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["InputError", "SUFFIXES", "guess_rgb", "read_image", "check_labels_path", "write_labels"]

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
