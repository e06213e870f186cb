"""Procedural fluorescence-microscopy-like images with instance labels (numpy + scipy only).

Each image is a random mix of what nuclei and cell stains look like under a widefield or
confocal microscope: nuclei of varied size (8-40 px across) and shape (ellipses with a wobbly
outline), touching clusters split along watershed-like boundaries, dim objects next to bright
ones, ring (membrane-stained) cells whose interior is dark, nucleoli/chromatin texture,
unlabelled debris, optical blur, uneven illumination, and Poisson (shot) plus Gaussian (read)
noise. Everything is drawn from one seed, so ``synthetic_image(seed)`` is reproducible.

Labels are int32, 0 = background, objects numbered 1..n without gaps; every object has at
least ``MIN_AREA`` pixels and is one connected piece (ties between touching objects go to the
one whose outline is nearest, like a watershed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_image", "MIN_AREA", "STYLES"]

MIN_AREA = 20
STYLES = ("sparse", "dense", "clusters", "rings", "mixed")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ~``scale`` pixels."""
    from scipy import ndimage as ndi

    h, w = shape
    sh, sw = max(2, int(np.ceil(h / scale)) + 2), max(2, int(np.ceil(w / scale)) + 2)
    coarse = rng.standard_normal((sh, sw)).astype(np.float32)
    field = ndi.zoom(coarse, (h / (sh - 1) * 1.0001, w / (sw - 1) * 1.0001), order=3)[:h, :w]
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def _object_field(rng, r0: float, c0: float, radius: float, shape: tuple[int, int]):
    """Normalised radial distance ``u`` (< 1 inside) of one wobbly ellipse, in its bounding box."""
    h, w = shape
    aspect = rng.uniform(1.0, 1.8) if rng.random() < 0.8 else rng.uniform(1.8, 2.6)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    theta = rng.uniform(0, np.pi)
    ext = int(np.ceil(a * 1.3)) + 2
    rs, re_ = max(0, int(r0) - ext), min(h, int(r0) + ext + 1)
    cs, ce = max(0, int(c0) - ext), min(w, int(c0) + ext + 1)
    if rs >= re_ or cs >= ce:
        return None
    rr, cc = np.mgrid[rs:re_, cs:ce].astype(np.float32)
    dr, dc = rr - r0, cc - c0
    u1 = (dr * np.cos(theta) + dc * np.sin(theta)) / a
    v1 = (-dr * np.sin(theta) + dc * np.cos(theta)) / b
    rho = np.sqrt(u1 * u1 + v1 * v1)
    phi = np.arctan2(v1, u1)
    wobble = np.ones_like(rho)
    for k in (2, 3, 4, 5):  # low-order harmonics: bean, pear and lobed shapes
        wobble += rng.normal(0, 0.06 if k > 2 else 0.1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return (slice(rs, re_), slice(cs, ce)), rho / np.clip(wobble, 0.6, 1.4)


def _place(rng, n: int, shape, radius_range, cluster_frac: float):
    """Centres and radii; a fraction is placed touching an earlier object (clusters)."""
    h, w = shape
    objs: list[tuple[float, float, float]] = []
    for _ in range(n * 4):
        if len(objs) >= n:
            break
        r = float(np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]))))
        if objs and rng.random() < cluster_frac:
            pr, pc, prad = objs[rng.integers(len(objs))]
            ang = rng.uniform(0, 2 * np.pi)
            d = (prad + r) * rng.uniform(0.75, 1.0)
            cr, cc = pr + d * np.sin(ang), pc + d * np.cos(ang)
        else:
            cr, cc = rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w
        if not (-r * 0.5 < cr < h + r * 0.5 and -r * 0.5 < cc < w + r * 0.5):
            continue
        # Not too deep inside another object: centres at least 0.7 x (sum of radii) apart.
        if all((cr - o[0]) ** 2 + (cc - o[1]) ** 2 > (0.7 * (r + o[2])) ** 2 for o in objs):
            objs.append((cr, cc, r))
    return objs


def _clean_labels(best_id: np.ndarray) -> np.ndarray:
    """Keep each id's largest connected piece if it has >= MIN_AREA pixels; renumber 1..n."""
    from scipy import ndimage as ndi

    out = np.zeros(best_id.shape, np.int32)
    slices = ndi.find_objects(best_id)
    n = 0
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        m = best_id[sl] == i
        lab, k = ndi.label(m)
        if k > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (np.argmax(sizes) + 1)
        if m.sum() < MIN_AREA:
            continue
        n += 1
        out[sl][m] = n
    return out


def synthetic_image(
    seed: int, shape: tuple[int, int] = (256, 256), style: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its labels: ``(H, W)`` float32 photon counts (~10..5000) and int32 labels.

    ``style`` (default: drawn from the seed) is one of :data:`STYLES`. The image is what a
    camera records; pass it through ``image.to_rgb_uint8`` like any user image.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    style = style or STYLES[int(rng.integers(len(STYLES)))]
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    area = h * w / 65536.0
    small, large = 4.0, 20.0
    lo_r, hi_r = (small, large)
    if rng.random() < 0.5:  # one dominant scale per image, as in a real acquisition
        mid = float(np.exp(rng.uniform(np.log(5.0), np.log(16.0))))
        lo_r, hi_r = max(small, mid / 1.4), min(large, mid * 1.4)
    if style == "sparse":
        n, cluster = int(rng.integers(3, 14) * area), 0.1
    elif style == "dense":
        n, cluster = int(rng.integers(25, 70) * area), 0.3
    elif style == "clusters":
        n, cluster = int(rng.integers(12, 40) * area), 0.75
    elif style == "rings":
        n, cluster = int(rng.integers(6, 25) * area), 0.5
        lo_r, hi_r = max(lo_r, 8.0), max(hi_r, 12.0)
    else:
        n, cluster = int(rng.integers(10, 45) * area), 0.4
    mean_r = np.sqrt(lo_r * hi_r)
    n = max(1, min(n, int(0.55 * h * w / (np.pi * mean_r**2)) + 1))

    objs = _place(rng, n, shape, (lo_r, hi_r), cluster)
    best_u = np.full(shape, 1.0, np.float32)
    best_id = np.zeros(shape, np.int32)
    fields = []
    for i, (cr, cc, r) in enumerate(objs, start=1):
        got = _object_field(rng, cr, cc, r, shape)
        if got is None:
            fields.append(None)
            continue
        sl, u = got
        fields.append((sl, u))
        closer = u < best_u[sl]
        best_u[sl][closer] = u[closer]
        best_id[sl][closer] = i
    labels = _clean_labels(best_id)

    # Signal: per object brightness, texture, ring stain; dim objects are common.
    signal = np.zeros(shape, np.float32)
    texture = _smooth_noise(rng, shape, rng.uniform(2.0, 5.0))
    ring_frac = {"rings": 0.9, "mixed": 0.25}.get(style, 0.0)
    base = rng.uniform(300, 2000)
    for i, f in enumerate(fields, start=1):
        if f is None:
            continue
        sl, u = f
        own = best_id[sl] == i
        if not own.any():
            continue
        bright = base * (rng.uniform(0.12, 0.35) if rng.random() < 0.2 else rng.uniform(0.5, 1.6))
        uu = np.clip(u, 0, 1)
        if rng.random() < ring_frac:  # membrane stain: bright rim, faint interior
            width = rng.uniform(0.12, 0.3)
            prof = np.exp(-(((1 - uu) / width) ** 2)) + rng.uniform(0.05, 0.25)
        else:  # nucleus: flat-ish top, soft edge, chromatin texture
            prof = 1.0 - rng.uniform(0.0, 0.4) * uu**2
            prof = prof * (1 + rng.uniform(0.05, 0.35) * texture[sl])
            if rng.random() < 0.3:  # nucleoli: dark spots
                prof = prof * (1 - 0.4 * (_smooth_noise(rng, u.shape, 3.0) > 1.2))
        signal[sl][own] = np.maximum(bright * prof[own], 0)

    # Debris: small unlabelled specks and a few out-of-focus blobs.
    for _ in range(int(rng.integers(0, 12) * area)):
        r, c = rng.integers(0, h), rng.integers(0, w)
        rad = rng.uniform(0.7, 2.5)
        rs, cs = slice(max(0, r - 4), min(h, r + 5)), slice(max(0, c - 4), min(w, c + 5))
        rr, cc = np.mgrid[rs, cs]
        signal[rs, cs] += base * rng.uniform(0.3, 2.0) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / rad**2)

    signal = ndi.gaussian_filter(signal, rng.uniform(0.4, 2.0))
    if rng.random() < 0.3:  # out-of-focus haze
        signal += ndi.gaussian_filter(signal, 8.0) * rng.uniform(0.1, 0.5)
    rr, cc = np.mgrid[:h, :w].astype(np.float32)
    g = rng.normal(0, 0.25, 2)
    illum = 1 + g[0] * (rr / h - 0.5) + g[1] * (cc / w - 0.5) + 0.15 * _smooth_noise(rng, shape, 80.0)
    illum = np.clip(illum, 0.4, 1.6)
    background = rng.uniform(20, 400) * (1 + rng.uniform(0, 0.3) * _smooth_noise(rng, shape, 30.0))
    photons = rng.uniform(0.2, 2.0)  # low values: strong shot noise
    expected = np.clip((signal + np.maximum(background, 0)) * illum, 0, None) * photons
    img = rng.poisson(expected).astype(np.float32) / photons
    img += rng.normal(0, rng.uniform(2, 25), shape).astype(np.float32)
    return img, labels
