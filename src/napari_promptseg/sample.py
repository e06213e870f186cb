"""Synthetic sample data (numpy only): fluorescence-like nuclei, generated, so it works offline."""

from __future__ import annotations

import numpy as np

__all__ = ["nuclei_image", "nuclei_stack", "nuclei_timelapse", "STACK_SCALE"]

#: (z, y, x) voxel size of :func:`nuclei_stack` in pixel widths: planes 2 pixels apart
STACK_SCALE = (2.0, 1.0, 1.0)


def nuclei_image(shape: tuple[int, int] = (512, 640), n: int = 40, seed: int = 0):
    """A uint16 ``(H, W)`` image of blurred elliptical nuclei with noise, and its ``(H, W)`` int32
    instance labels (0 = background). Intensities sit around 100..3000, like a 12-bit camera."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[:h, :w].astype(np.float32)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    size = min(h, w)
    for i in range(1, n + 1):
        r, c = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
        a, b = rng.uniform(0.025, 0.06) * size, rng.uniform(0.025, 0.06) * size
        t = rng.uniform(0, np.pi)
        dr, dc = rr - r, cc - c
        u = (dr * np.cos(t) + dc * np.sin(t)) / a
        v = (-dr * np.sin(t) + dc * np.cos(t)) / b
        inside = (u * u + v * v < 1) & (labels == 0)
        labels[inside] = i
        signal[inside] = rng.uniform(800, 2500)
    signal = ndi.gaussian_filter(signal, 1.5)
    illum = 1.0 + 0.3 * (cc / w)  # uneven illumination
    img = rng.poisson(np.maximum(signal * illum + 100, 0)).astype(np.float32)
    img += rng.normal(0, 20, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels


def nuclei_stack(shape: tuple[int, int, int] = (32, 256, 320), n: int = 14, seed: int = 0):
    """A uint16 ``(Z, H, W)`` z-stack of blurred ellipsoidal nuclei with noise, and its int32
    instance labels. Planes are :data:`STACK_SCALE` ``[0]`` pixel widths apart (anisotropic, like
    a confocal stack): open it with ``scale=STACK_SCALE``. Nuclei start and end at different
    planes; some touch."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nz, h, w = shape
    zs = STACK_SCALE[0]
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    zz, rr, cc = np.ogrid[:nz, :h, :w]
    for i in range(1, n + 1):
        z0, r0, c0 = rng.uniform(0.25, 0.75) * nz, rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        a, b = rng.uniform(12, 22), rng.uniform(10, 18)  # in pixels (x/y)
        cz = rng.uniform(0.6, 1.0) * min(a, b)  # z semi-axis, physical (pixel widths)
        t = rng.uniform(0, np.pi)
        dz, dr, dc = (zz - z0) * zs, rr - r0, cc - c0
        u = (dr * np.cos(t) + dc * np.sin(t)) / a
        v = (-dr * np.sin(t) + dc * np.cos(t)) / b
        inside = (u * u + v * v + (dz / cz) ** 2 < 1) & (labels == 0)
        labels[inside] = i
        signal[inside] = rng.uniform(800, 2500)
    signal = ndi.gaussian_filter(signal, (0.7, 1.5, 1.5))  # the PSF is longer along z
    img = rng.poisson(np.maximum(signal + 100, 0)).astype(np.float32)
    img += rng.normal(0, 20, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels


def nuclei_timelapse(shape: tuple[int, int, int] = (24, 256, 320), n: int = 12, seed: int = 0):
    """A uint16 ``(T, H, W)`` time-lapse of nuclei that drift, turn and change shape (one leaves the
    field of view, two pass close by), with noise, and its int32 instance labels (the same id
    through time: ground truth for tracking)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nt, h, w = shape
    rr, cc = np.mgrid[:h, :w].astype(np.float32)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    cells = []
    for i in range(1, n + 1):
        r0, c0 = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        vr, vc = rng.normal(0, 1.2, 2)
        if i == 1:  # leaves through the right edge
            r0, c0, vr, vc = 0.5 * h, 0.8 * w, 0.0, 0.04 * w
        cells.append((i, r0, c0, vr, vc, rng.uniform(10, 16), rng.uniform(8, 12), rng.uniform(0, np.pi),
                      rng.normal(0, 0.05), rng.uniform(800, 2500)))
    for t in range(nt):
        for i, r0, c0, vr, vc, a, b, th, dth, level in cells:
            r, c, ang = r0 + vr * t, c0 + vc * t, th + dth * t
            wob = 1 + 0.15 * np.sin(0.4 * t + i)  # shape change
            dr, dc = rr - r, cc - c
            u = (dr * np.cos(ang) + dc * np.sin(ang)) / (a * wob)
            v = (-dr * np.sin(ang) + dc * np.cos(ang)) / (b / wob)
            inside = (u * u + v * v < 1) & (labels[t] == 0)
            labels[t][inside] = i
            signal[t][inside] = level
    signal = ndi.gaussian_filter(signal, (0, 1.5, 1.5))
    img = rng.poisson(np.maximum(signal + 100, 0)).astype(np.float32)
    img += rng.normal(0, 20, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels
