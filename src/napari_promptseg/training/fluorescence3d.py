"""Realistic fluorescence z-stacks of nuclei with ground truth (numpy + scipy only).

What a confocal or widefield stack of stained nuclei looks like, and what sharp synthetic spheres
lack (docs/benchmarks.md, "Propagation on realistic z-stacks"):

- anisotropic voxels: planes ``z_step`` (2-4) pixel widths apart;
- a point-spread function longer along z than across: a gaussian blur whose sigma along z is
  ``psf_ratio`` (2-3) times the lateral one, in the same physical units, so a nucleus' ends
  fade over several planes;
- out-of-focus haze: a wide, faint copy of the signal, stronger along z, over the background;
- dimming with depth, Poisson (shot) noise, gaussian read noise, a camera offset; uint16;
- bright and dim nuclei with chromatin texture, packed densely: some touch their neighbours, some
  sit above or below another one along z (the ends of the two blur into each other).

:func:`fluorescence_stack` returns ``(image, labels, scale)``: the ``(Z, Y, X)`` uint16 image, its
int32 ground truth (0 = background, nuclei 1..n, each one connected piece; touching nuclei are
split where their normalised distances meet, like a watershed) and the voxel size ``(z_step, 1, 1)``
in pixel widths (napari's layer ``scale``). Everything is drawn from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["fluorescence_stack", "sample_stack", "Nucleus", "place_nuclei", "SAMPLE_SHAPE"]

#: the shape of the demo's z-stack sample (napari's ``nuclei_stack`` sample, :func:`sample_stack`)
SAMPLE_SHAPE = (32, 160, 192)


@dataclass(frozen=True)
class Nucleus:
    """One nucleus: centre ``(z, y, x)`` in physical units (pixel widths; ``z`` = plane x z_step),
    semi-axes ``a``, ``b`` (in the plane, turned by ``theta``) and ``c`` (along z), brightness."""

    z: float
    y: float
    x: float
    a: float
    b: float
    c: float
    theta: float
    bright: float


def _fits(new: Nucleus, others: list[Nucleus], min_gap: float) -> bool:
    """False when ``new``'s centre lies too deep inside another nucleus (normalised distance)."""
    for o in others:
        d = np.sqrt(((new.z - o.z) / (new.c + o.c)) ** 2 + ((new.y - o.y) / (new.a + o.a)) ** 2
                    + ((new.x - o.x) / (new.a + o.a)) ** 2)
        if d < min_gap:
            return False
    return True


def place_nuclei(rng: np.random.Generator, n: int, depth: float, h: int, w: int,
                 radius: tuple[float, float] = (6.0, 9.0), stacked: float = 0.35,
                 touching: float = 0.35, dim: float = 0.25) -> list[Nucleus]:
    """Up to ``n`` nuclei in a ``depth x h x w`` box (physical units): a fraction ``stacked`` is
    put right above or below an earlier one (touching it along z), ``touching`` beside one, the
    rest anywhere; ``dim`` of them are 4-6x dimmer than the others."""
    out: list[Nucleus] = []
    for _ in range(n * 30):
        if len(out) >= n:
            break
        r = rng.uniform(*radius)
        a, b = r * rng.uniform(1.0, 1.25), r / rng.uniform(1.0, 1.25)
        c = r * rng.uniform(0.75, 1.1)
        theta = rng.uniform(0, np.pi)
        bright = rng.uniform(0.15, 0.3) if rng.random() < dim else rng.uniform(0.6, 1.3)
        u = rng.random()
        if out and u < stacked:  # right above / below another one: touching it, or a thin gap
            o = out[int(rng.integers(len(out)))]
            sign = -1 if rng.random() < 0.5 else 1
            z = o.z + sign * (o.c + c) * rng.uniform(0.9, 1.2)
            y, x = o.y + rng.normal(0, 0.25 * r), o.x + rng.normal(0, 0.25 * r)
        elif out and u < stacked + touching:  # beside another one
            o = out[int(rng.integers(len(out)))]
            ang = rng.uniform(0, 2 * np.pi)
            d = (o.a + a) * rng.uniform(0.8, 0.95)
            z = o.z + rng.normal(0, 0.3 * c)
            y, x = o.y + d * np.sin(ang), o.x + d * np.cos(ang)
        else:
            z, y, x = rng.uniform(0.5 * c, depth - 0.5 * c), rng.uniform(0, h), rng.uniform(0, w)
        m = 0.2 * r  # the centre inside the box, at most a little of the nucleus outside it
        if not (0.6 * c <= z <= depth - 0.6 * c and m <= y <= h - m and m <= x <= w - m):
            continue
        new = Nucleus(float(z), float(y), float(x), float(a), float(b), float(c), float(theta), float(bright))
        if _fits(new, out, 0.8):
            out.append(new)
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-6)


def fluorescence_stack(shape: tuple[int, int, int] = (31, 64, 64), n: int | None = None, seed: int = 0,
                       z_step: float = 2.0, psf_xy: float = 1.0, psf_ratio: float = 3.0,
                       haze: float = 0.35, photons: float = 1.0, read_noise: float = 8.0,
                       offset: float = 100.0, radius: tuple[float, float] = (6.5, 10.0),
                       stacked: float = 0.35, dim: float = 0.25, nuclei: list[Nucleus] | None = None):
    """A ``(Z, Y, X)`` uint16 fluorescence stack of nuclei, its int32 labels and its voxel scale.

    shape: planes, rows, columns; n: nuclei to place (default: as many as fill about 15 % of the
    volume; fewer when the box is too full); z_step: plane spacing in pixel widths (2-4 is
    typical); psf_xy: the PSF's lateral gaussian sigma in pixels, ``psf_ratio`` times that along z
    (physical units: ``psf_xy * psf_ratio / z_step`` planes); haze: the out-of-focus light's share;
    photons: photo-electrons per intensity unit (lower: noisier); read_noise: its sigma in counts;
    offset: the camera's dark level; radius: nuclei radii in pixels; stacked: the share placed on
    top of another; dim: the share of dim nuclei; nuclei: these nuclei instead of random ones
    (:class:`Nucleus`, in physical units: a scene for a test). Runs in ~0.1-0.5 s for 31 x 64 x 64 to
    40 x 128 x 128.

    Returns ``(image, labels, scale)`` with ``scale = (z_step, 1.0, 1.0)``.
    """
    from scipy import ndimage as ndi

    nz, h, w = (int(s) for s in shape)
    if min(nz, h, w) < 2:
        raise ValueError(f"shape must be at least 2 x 2 x 2, got {shape}")
    if not z_step > 0 or not psf_xy > 0 or not psf_ratio > 0:
        raise ValueError("z_step, psf_xy and psf_ratio must be > 0")
    rng = np.random.default_rng(seed)
    depth = nz * z_step
    if n is None:
        r = np.mean(radius)
        n = max(1, int(0.15 * depth * h * w / (4 / 3 * np.pi * r ** 3 * 0.93)))
    if nuclei is None:
        nuclei = place_nuclei(rng, int(n), depth, h, w, radius, stacked=stacked, dim=dim)

    # ground truth: each voxel to the nucleus with the smallest normalised distance (< 1)
    best = np.full(shape, 1.0, np.float32)
    ids = np.zeros(shape, np.int32)
    zc = np.arange(nz, dtype=np.float32) * z_step  # plane centres, physical
    for i, o in enumerate(nuclei, start=1):
        z0, z1 = max(0, int((o.z - o.c) / z_step)), min(nz, int(np.ceil((o.z + o.c) / z_step)) + 1)
        ext = int(np.ceil(max(o.a, o.b))) + 1
        y0, y1 = max(0, int(o.y) - ext), min(h, int(o.y) + ext + 2)
        x0, x1 = max(0, int(o.x) - ext), min(w, int(o.x) + ext + 2)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        dz = (zc[z0:z1, None, None] - o.z) / o.c
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dy, dx = yy - o.y, xx - o.x
        p = (dy * np.cos(o.theta) + dx * np.sin(o.theta)) / o.a
        q = (-dy * np.sin(o.theta) + dx * np.cos(o.theta)) / o.b
        u = np.sqrt(dz * dz + (p * p + q * q)[None]).astype(np.float32)
        sl = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        closer = u < best[sl]
        best[sl][closer] = u[closer]
        ids[sl][closer] = i
    labels = _clean(ids)

    # signal: flat-ish nuclei with chromatin texture, brightness per nucleus
    bright = np.zeros(len(nuclei) + 1, np.float32)
    bright[1:] = [o.bright for o in nuclei]
    sig_xy = 1.5
    texture = _smooth_noise(rng, shape, (sig_xy / z_step, sig_xy, sig_xy))
    signal = bright[ids] * (1.0 - 0.25 * best ** 2) * (1.0 + 0.18 * texture)
    signal *= ids > 0
    signal = np.clip(signal, 0, None) * 2000.0
    # optics: the PSF (longer along z), out-of-focus haze, dimming with depth
    sz = psf_xy * psf_ratio / z_step
    blurred = ndi.gaussian_filter(signal, (sz, psf_xy, psf_xy), mode="nearest")
    hz = 8.0  # the out-of-focus light: a wide blur, as much longer along z as the PSF
    far = ndi.gaussian_filter(signal, (psf_ratio * hz / z_step, hz, hz), mode="nearest")
    depth_gain = np.exp(-np.arange(nz, dtype=np.float32) / nz * rng.uniform(0.1, 0.4))[:, None, None]
    background = 60.0 * (1 + 0.2 * _smooth_noise(rng, (1, h, w), (0, 20, 20)))
    expected = (blurred + haze * far) * depth_gain + np.clip(background, 0, None)
    counts = rng.poisson(np.clip(expected, 0, None) * photons).astype(np.float32) / photons
    counts += offset + rng.normal(0, read_noise, shape).astype(np.float32)
    image = np.clip(np.round(counts), 0, 65535).astype(np.uint16)
    return image, labels, (float(z_step), 1.0, 1.0)


def sample_stack():
    """The demo's z-stack sample: :func:`fluorescence_stack` of :data:`SAMPLE_SHAPE`, seed 0;
    ``(image, labels, scale)``."""
    return fluorescence_stack(SAMPLE_SHAPE, seed=0)


def _clean(ids: np.ndarray, min_voxels: int = 20) -> np.ndarray:
    """Each id's largest connected piece if it has >= ``min_voxels``; renumbered 1..n."""
    from scipy import ndimage as ndi

    out = np.zeros(ids.shape, np.int32)
    n = 0
    for i, sl in enumerate(ndi.find_objects(ids), start=1):
        if sl is None:
            continue
        m = ids[sl] == i
        lab, k = ndi.label(m)
        if k > 1:
            m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        if m.sum() < min_voxels:
            continue
        n += 1
        out[sl][m] = n
    return out
