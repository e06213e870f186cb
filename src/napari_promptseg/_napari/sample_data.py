"""npe2 sample data: a generated fluorescence image (works offline, nothing to download)."""

from __future__ import annotations

__all__ = ["nuclei_sample", "nuclei_stack_sample", "nuclei_timelapse_sample"]


def nuclei_sample():
    """A 512 x 640 uint16 image of nuclei-like blobs (layer data tuples for napari)."""
    from napari_promptseg.sample import nuclei_image

    image, _ = nuclei_image()
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image")]


def nuclei_stack_sample():
    """A 32 x 160 x 192 uint16 fluorescence z-stack of nuclei as a microscope records it: planes 2
    pixel widths apart (scale (2, 1, 1)), a point-spread function longer along z, out-of-focus
    haze, shot noise, bright and dim nuclei, some above others
    (:func:`napari_promptseg.training.fluorescence3d.sample_stack`)."""
    from napari_promptseg.training.fluorescence3d import sample_stack

    image, _, scale = sample_stack()
    return [(image, {"name": "nuclei stack", "colormap": "gray", "scale": scale}, "image")]


def nuclei_timelapse_sample():
    """A 24 x 256 x 320 uint16 time-lapse of drifting nuclei (axis 0 is time)."""
    from napari_promptseg.sample import nuclei_timelapse

    image, _ = nuclei_timelapse()
    return [(image, {"name": "nuclei timelapse", "colormap": "gray"}, "image")]
