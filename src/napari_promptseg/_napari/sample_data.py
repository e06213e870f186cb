"""npe2 sample data: a generated fluorescence image (works offline, nothing to download)."""

from __future__ import annotations

__all__ = ["nuclei_sample"]


def nuclei_sample():
    """A 512 x 640 uint16 image of nuclei-like blobs (layer data tuples for napari)."""
    from ..sample import nuclei_image

    image, _ = nuclei_image()
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image")]
