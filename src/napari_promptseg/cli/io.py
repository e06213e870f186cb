"""Reading images for the command line: tif / ome-tif, png / jpg, npy, zarr (lazily where possible)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")


class UsageError(Exception):
    """A user error: reported as one line, exit code 2."""


def read_image(path: str | Path):
    """The array in ``path``: a memory map or a zarr array when the format allows (planes are
    read when used), else a numpy array."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder")
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
                raise UsageError(f"{p}: a zarr group without arrays")
            return arrays[0][1]  # a multiscale group: its first level ("0")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's input
        raise UsageError(f"{p}: cannot be read as {suffix[1:]} ({type(e).__name__}: {e})") from None
    raise UsageError(f"{p}: unknown image format {suffix!r}; use one of {', '.join(SUFFIXES)}")
