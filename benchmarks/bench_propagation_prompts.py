"""Which prompt carries a mask from one slice to the next? Measured on synthetic volumes.

    python benchmarks/bench_propagation_prompts.py     # prints; writes its section of docs/benchmarks.md
    python benchmarks/bench_propagation_prompts.py --no-write --volumes 1

Synthetic fluorescence z-stacks (uint16, 160 x 160 slices, z-step 2.5x the pixel size): blurred
ellipsoids with Poisson (shot) and Gaussian (read) noise on a dark, unevenly lit background, like
the nuclei ``promptseg_demo`` was trained on. Three kinds of volume:

- ``drifting``: 5 separate ellipsoids that drift sideways and change size through z;
- ``touching``: 3 pairs of ellipsoids that touch (the truth is split where their outlines meet);
- ``dim``: 5 ellipsoids of 0.25-1x brightness and varied z extent, so objects end mid-stack.

Each object is seeded with its true mask on its largest slice and propagated both ways through the
public API (``ps.propagate``, default thresholds) with the trained ``promptseg_demo`` model, once
per prompt strategy. Per object: the 3D IoU with the truth; "missed" counts slices where the truth
has >= 20 px but the result nothing (stopped early), "extra" slices where the result has pixels but
the truth nothing (did not stop).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import napari_promptseg as ps  # noqa: E402
from _report import machine, write_section  # noqa: E402
from napari_promptseg.embeddings import EmbeddingCache  # noqa: E402
from napari_promptseg.propagate import PROMPT_STRATEGIES  # noqa: E402

KINDS = ("drifting", "touching", "dim")
REFERENCE = "(reference: true box on every slice)"


def _objects(kind: str, rng: np.random.Generator, n_z: int, size: int) -> list[dict]:
    objs = []
    if kind == "touching":
        for _ in range(3):
            for _try in range(100):
                r, c = rng.uniform(30, size - 30, 2)
                if all(np.hypot(r - o["r"], c - o["c"]) > 55 for o in objs[::2]):
                    break
            rad = rng.uniform(9, 13)
            ang = rng.uniform(0, np.pi)
            z = rng.uniform(0.4, 0.6) * n_z
            for sign in (-1, 1):  # centres 1.7 radii apart: the two outlines overlap
                objs.append(dict(r=r + sign * 0.85 * rad * np.sin(ang), c=c + sign * 0.85 * rad * np.cos(ang),
                                 z=z + sign * rng.uniform(0, 2), a=rad, b=rad * rng.uniform(0.8, 1.1),
                                 rz=rng.uniform(0.3, 0.4) * n_z, dr=0.0, dc=0.0, bright=rng.uniform(0.7, 1)))
        return objs
    for _ in range(5):
        for _try in range(100):
            r, c = rng.uniform(25, size - 25, 2)
            if all(np.hypot(r - o["r"], c - o["c"]) > 40 for o in objs):
                break
        objs.append(dict(
            r=r, c=c, z=rng.uniform(0.35, 0.65) * n_z, a=rng.uniform(8, 15), b=rng.uniform(7, 12),
            rz=rng.uniform(0.25, 0.45) * n_z if kind == "dim" else rng.uniform(0.4, 0.5) * n_z,
            dr=rng.uniform(-1.2, 1.2) if kind == "drifting" else rng.uniform(-0.2, 0.2),
            dc=rng.uniform(-1.2, 1.2) if kind == "drifting" else rng.uniform(-0.2, 0.2),
            bright=rng.uniform(0.25, 1.0) if kind == "dim" else rng.uniform(0.7, 1.0),
        ))
    return objs


def volume(kind: str, seed: int, n_z: int = 24, size: int = 160):
    """``(image uint16 (Z, H, W), truth int32 (Z, H, W))``."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    objs = _objects(kind, rng, n_z, size)
    rr, cc = np.mgrid[:size, :size].astype(np.float32)
    u = np.full((len(objs), n_z, size, size), np.inf, np.float32)
    for i, o in enumerate(objs):
        theta = rng.uniform(0, np.pi)
        for z in range(n_z):
            dz = (z - o["z"]) / o["rz"]
            if abs(dz) >= 1:
                continue
            scale = np.sqrt(1 - dz * dz)  # ellipsoid cross-section
            r0, c0 = o["r"] + o["dr"] * (z - o["z"]), o["c"] + o["dc"] * (z - o["z"])
            grow = 1 + 0.01 * (z - o["z"])  # slightly asymmetric in z
            dr, dc = rr - r0, cc - c0
            p = (dr * np.cos(theta) + dc * np.sin(theta)) / (o["a"] * scale * grow)
            q = (-dr * np.sin(theta) + dc * np.cos(theta)) / (o["b"] * scale * grow)
            u[i, z] = np.sqrt(p * p + q * q)
    best = np.argmin(u, axis=0)
    inside = np.min(u, axis=0) < 1
    truth = np.where(inside, best + 1, 0).astype(np.int32)
    bright = np.array([0.0] + [o["bright"] for o in objs], np.float32)
    signal = bright[truth] * 3000
    # texture, blur (more across z: anisotropic PSF), uneven background, noise
    signal *= 1 + 0.15 * ndi.gaussian_filter(rng.standard_normal(signal.shape).astype(np.float32), 1.5)
    signal = ndi.gaussian_filter(signal, (0.6, 1.5, 1.5))
    bg = 200 + 150 * ndi.gaussian_filter(rng.standard_normal((1, size, size)).astype(np.float32), 30) * 10
    photons = rng.poisson(np.clip(signal + bg, 0, None) / 4.0) * 4.0
    img = photons + rng.normal(0, 40, photons.shape)
    return np.clip(img, 0, 65535).astype(np.uint16), truth


def seeds_of(truth: np.ndarray) -> dict[int, np.ndarray]:
    """Each object's true mask on its largest slice, as labels images per slice."""
    prompts: dict[int, np.ndarray] = {}
    for i in range(1, int(truth.max()) + 1):
        areas = (truth == i).sum((1, 2))
        k = int(np.argmax(areas))
        prompts.setdefault(k, np.zeros(truth.shape[1:], np.int32))[truth[k] == i] = i
    return prompts


def score(result: np.ndarray, truth: np.ndarray) -> list[dict]:
    rows = []
    for i in range(1, int(truth.max()) + 1):
        t, r = truth == i, result == i
        tz, rz = t.sum((1, 2)), r.sum((1, 2))
        rows.append({
            "iou": (t & r).sum() / max((t | r).sum(), 1),
            "missed": int(((tz >= 20) & (rz == 0)).sum()),
            "extra": int(((tz == 0) & (rz > 0)).sum()),
        })
    return rows


def true_box_labels(model, img: np.ndarray, truth: np.ndarray, cache) -> np.ndarray:
    """No propagation: each object's tight true box on each of its slices (one mask)."""
    from napari_promptseg.embeddings import embed_cached
    from napari_promptseg.image import intensity_window
    from napari_promptseg.propagate import _bbox

    window, out = intensity_window(img), np.zeros_like(truth)
    for k in range(len(img)):
        ids = [i for i in np.unique(truth[k]) if i]
        if ids:
            emb = embed_cached(model, img[k], window, cache)
            for i in ids:
                m = model.predict(emb, box=_bbox(truth[k] == i), multimask=False).masks[0]
                out[k][m & (out[k] == 0)] = i
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=3, help="volumes per kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--strategies", nargs="*", default=list(PROMPT_STRATEGIES))
    p.add_argument("--min-score", type=float, default=None, help="default: ps.propagate's")
    p.add_argument("--min-overlap", type=float, default=None, help="default: ps.propagate's")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = ps.load_model("promptseg_demo", device="cpu")
    res: dict[tuple[str, str], list[dict]] = {}
    given = (("min_score", a.min_score), ("min_overlap", a.min_overlap))
    thresholds = {k: v for k, v in given if v is not None}
    defaults = {**ps.propagate.__kwdefaults__, **thresholds}
    t0 = time.perf_counter()
    for kind in KINDS:
        for v in range(a.volumes):
            img, truth = volume(kind, seed=1000 * KINDS.index(kind) + v)
            cache = EmbeddingCache(max_items=img.shape[0])  # embed each slice once for all strategies
            prompts = seeds_of(truth)
            for s in a.strategies:
                out = ps.propagate(model, img, prompts, cache=cache, prompt=s, **thresholds)
                res.setdefault((s, kind), []).extend(score(out, truth))
            ref = true_box_labels(model, img, truth, cache)
            res.setdefault((REFERENCE, kind), []).extend(score(ref, truth))
            print(f"{kind} volume {v}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    head = "| prompt | " + " | ".join(f"{k} IoU | {k} missed / extra" for k in KINDS) + " | mean IoU |"
    lines = [head, "|---|" + "---:|---:|" * len(KINDS) + "---:|"]
    for s in [*a.strategies, REFERENCE]:
        cells, ious = [], []
        for k in KINDS:
            rows = res[(s, k)]
            iou = float(np.mean([r["iou"] for r in rows]))
            ious.append(iou)
            cells.append(f"{iou:.3f} | {sum(r['missed'] for r in rows)} / {sum(r['extra'] for r in rows)}")
        name = s if s == REFERENCE else f"`{s}`"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(ious):.3f} |")
    n_obj = {k: len(res[(a.strategies[0], k)]) for k in KINDS}
    body = (
        "## Propagation prompts (bench_propagation_prompts.py)\n\n"
        f"`python benchmarks/bench_propagation_prompts.py` — {machine()}; `promptseg_demo`, "
        f"{a.volumes} synthetic 24 x 160 x 160 uint16 volumes per kind "
        f"({', '.join(f'{k}: {n} objects' for k, n in n_obj.items())}), each object seeded with its "
        "true mask on its largest slice, `ps.propagate` with the default thresholds "
        f"(min_score {defaults['min_score']}, min_overlap "
        f"{defaults['min_overlap']}, min_area {defaults['min_area']}). "
        f"Last row: no propagation, the true tight box on every slice where the object exists "
        "(an upper bound for box prompts). "
        "IoU: mean 3D IoU per object; missed: slices where the truth has >= 20 px and the result "
        "nothing; extra: slices with a result where the truth has nothing (summed over objects). "
        f"{time.perf_counter() - t0:.0f} s in all.\n\n" + "\n".join(lines) + "\n"
    )
    print(body)
    if not a.no_write:
        write_section("propagation-prompts", body)


if __name__ == "__main__":
    main()
