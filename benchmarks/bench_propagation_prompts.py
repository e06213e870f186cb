"""Which prompt carries a mask from one slice to the next? Measured on synthetic volumes.

    python benchmarks/bench_propagation_prompts.py     # prints; writes its section of docs/benchmarks.md
    python benchmarks/bench_propagation_prompts.py --no-write --volumes 1 --seed-at early

Synthetic fluorescence z-stacks (uint16, 160 x 160 slices, z-step 2.5x the pixel size): blurred
ellipsoids with Poisson (shot) and Gaussian (read) noise on a dark, unevenly lit background, like
the nuclei ``promptseg_demo`` was trained on. Three kinds of volume:

- ``drifting``: 5 separate ellipsoids that drift sideways and change size through z;
- ``touching``: 3 pairs of ellipsoids that touch (the truth is split where their outlines meet);
- ``dim``: 5 ellipsoids of 0.25-1x brightness and varied z extent, so objects end mid-stack.

Each object is seeded with its true mask on one slice (``--seed-at``): ``largest``, its largest
slice (it only shrinks away from the seed), or ``early``, the slice at 20 % of its z extent from
one end (from the lower end for odd ids, the upper end for even ids), so that it must grow towards
its largest slice and shrink towards the near end; ``both`` runs both. It is propagated both ways
through the public API (``ps.propagate``, default thresholds) with the trained ``promptseg_demo``
model, once per prompt strategy and, for the strategies with a box, per box margin
(``--margins``, the ``box_margin`` of ``ps.propagate``). Per object: the 3D IoU with the truth;
"missed" counts slices where the truth has >= 20 px but the result nothing (stopped early), "extra"
slices where the result has pixels but the truth nothing (did not stop); for early seeds also the
3D IoU over the slices on the side where the object grows ("grow IoU").
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
from napari_promptseg.embed.cache import EmbeddingCache  # noqa: E402
from napari_promptseg.propagation.options import PROMPT_STRATEGIES  # noqa: E402

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


EARLY = 0.2  # the early seed: this fraction of the object's z extent from one end


def seed_slices(truth: np.ndarray, at: str, early: float = EARLY) -> dict[int, int]:
    """Object id -> its seed slice: the largest, or the early one (see the module docstring)."""
    out = {}
    for i in range(1, int(truth.max()) + 1):
        areas = (truth == i).sum((1, 2))
        if at == "largest":
            out[i] = int(np.argmax(areas))
        else:
            z = np.flatnonzero(areas >= 20)  # where the object is visible enough to annotate
            off = round(early * (z[-1] - z[0]))
            out[i] = int(z[0] + off if i % 2 else z[-1] - off)
    return out


def seeds_of(truth: np.ndarray, at: str = "largest", early: float = EARLY) -> dict[int, np.ndarray]:
    """Each object's true mask on its seed slice, as labels images per slice."""
    prompts: dict[int, np.ndarray] = {}
    for i, k in seed_slices(truth, at, early).items():
        prompts.setdefault(k, np.zeros(truth.shape[1:], np.int32))[truth[k] == i] = i
    return prompts


def score(result: np.ndarray, truth: np.ndarray, seeds: dict[int, int] | None = None) -> list[dict]:
    """Per object: 3D IoU, missed and extra slices; with ``seeds`` (id -> seed slice) also the 3D
    IoU over the slices beyond the seed on the side of the object's largest slice."""
    rows = []
    for i in range(1, int(truth.max()) + 1):
        t, r = truth == i, result == i
        tz, rz = t.sum((1, 2)), r.sum((1, 2))
        row = {
            "iou": (t & r).sum() / max((t | r).sum(), 1),
            "missed": int(((tz >= 20) & (rz == 0)).sum()),
            "extra": int(((tz == 0) & (rz > 0)).sum()),
        }
        if seeds is not None:
            s, big = seeds[i], int(np.argmax(tz))
            side = slice(s + 1, None) if big > s else slice(0, s)
            row["grow"] = (t[side] & r[side]).sum() / max((t[side] | r[side]).sum(), 1)
        rows.append(row)
    return rows


def true_box_labels(model, img: np.ndarray, truth: np.ndarray, cache, margin: float = 0.0) -> np.ndarray:
    """No propagation: each object's true box (grown by ``margin`` as in propagation) on each of
    its slices (one mask)."""
    from napari_promptseg.core.geometry import prompt_box
    from napari_promptseg.core.image import intensity_window
    from napari_promptseg.embed.cache import embed_cached

    window, out = intensity_window(img), np.zeros_like(truth)
    for k in range(len(img)):
        ids = [i for i in np.unique(truth[k]) if i]
        if ids:
            emb = embed_cached(model, img[k], window, cache)
            for i in ids:
                m = model.predict(emb, box=prompt_box(truth[k] == i, margin), multimask=False).masks[0]
                out[k][m & (out[k] == 0)] = i
    return out


def configs(strategies: list[str], margins: list[float]) -> list[tuple[str, float | None]]:
    """(strategy, box margin) pairs: every margin for the strategies with a box, None otherwise."""
    return [(s, m) for s in strategies for m in (margins if "box" in s else [None])]


def label(s: str, m: float | None) -> str:
    if s == REFERENCE:
        return f"(reference: true box{'' if not m else f' + margin {m:g}'} on every slice)"
    return f"`{s}`" + ("" if m is None else f", margin {m:g}")


def table(res, keys, at: str) -> list[str]:
    grow = at == "early"
    head = "| prompt | " + " | ".join(f"{k} IoU | {k} missed / extra" for k in KINDS) + " | mean IoU |"
    head += " grow IoU |" if grow else ""
    lines = [head, "|---|" + "---:|---:|" * len(KINDS) + "---:|" + ("---:|" if grow else "")]
    for key in keys:
        cells, ious = [], []
        for k in KINDS:
            rows = res[(at, *key, k)]
            iou = float(np.mean([r["iou"] for r in rows]))
            ious.append(iou)
            cells.append(f"{iou:.3f} | {sum(r['missed'] for r in rows)} / {sum(r['extra'] for r in rows)}")
        line = f"| {label(*key)} | " + " | ".join(cells) + f" | {np.mean(ious):.3f} |"
        if grow:
            line += f" {np.mean([r['grow'] for k in KINDS for r in res[(at, *key, k)]]):.3f} |"
        lines.append(line)
    return lines


def mean_iou(res, at: str, key) -> float:
    """Mean over the kinds of the mean 3D IoU per object (as in the tables)."""
    return float(np.mean([np.mean([r["iou"] for r in res[(at, *key, k)]]) for k in KINDS]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=3, help="volumes per kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--strategies", nargs="*", default=list(PROMPT_STRATEGIES))
    p.add_argument("--margins", nargs="*", type=float, default=[0.0, 0.05, 0.1, 0.2],
                   help="box_margin values for the strategies with a box")
    p.add_argument("--seed-at", choices=("largest", "early", "both"), default="both")
    p.add_argument("--early", type=float, default=EARLY, help="early seed: fraction of the z extent")
    p.add_argument("--min-score", type=float, default=None, help="default: ps.propagate's")
    p.add_argument("--min-overlap", type=float, default=None, help="default: ps.propagate's")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = ps.load_model("promptseg_demo", device="cpu")
    positions = ("largest", "early") if a.seed_at == "both" else (a.seed_at,)
    keys = configs(a.strategies, a.margins)
    refs = [(REFERENCE, m) for m in a.margins]
    res: dict[tuple, list[dict]] = {}
    given = (("min_score", a.min_score), ("min_overlap", a.min_overlap))
    thresholds = {k: v for k, v in given if v is not None}
    defaults = {**vars(ps.PromptPropagation()), **thresholds}
    t0 = time.perf_counter()
    for kind in KINDS:
        for v in range(a.volumes):
            img, truth = volume(kind, seed=1000 * KINDS.index(kind) + v)
            cache = EmbeddingCache(max_items=img.shape[0])  # embed each slice once for all runs
            for at in positions:
                prompts, where = seeds_of(truth, at, a.early), seed_slices(truth, at, a.early)
                for s, m in keys:
                    kw = {} if m is None else {"box_margin": m}
                    opts = ps.PromptPropagation(strategy=s, **kw, **thresholds)
                    out = ps.propagate(model, img, prompts, options=opts, cache=cache)
                    res.setdefault((at, s, m, kind), []).extend(score(out, truth, where))
            for ref in refs:
                lab = true_box_labels(model, img, truth, cache, ref[1])
                for at in positions:
                    where = seed_slices(truth, at, a.early)
                    res.setdefault((at, *ref, kind), []).extend(score(lab, truth, where))
            print(f"{kind} volume {v}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    n_obj = {k: len(res[(positions[0], *keys[0], k)]) for k in KINDS}
    what = {
        "largest": "seeded on its largest slice (it only shrinks away from the seed)",
        "early": (f"seeded on the slice {a.early:.0%} of its z extent from one end (it grows towards "
                  "its largest slice, shrinks towards the near end); grow IoU: 3D IoU over the "
                  "slices on the growing side of the seed"),
    }
    parts = []
    for at in positions:
        text = "\n".join(table(res, keys + refs, at))
        parts.append(f"**Seed on the {at} slice**: each object {what[at]}.\n\n{text}")
    if len(positions) == 2:
        lines = ["| prompt | seed largest | seed early | mean of both |", "|---|---:|---:|---:|"]
        for key in keys:
            ious = [mean_iou(res, at, key) for at in positions]
            lines.append(f"| {label(*key)} | {ious[0]:.3f} | {ious[1]:.3f} | {np.mean(ious):.3f} |")
        parts.append("**Summary** (mean IoU):\n\n" + "\n".join(lines))
    body = (
        "## Propagation prompts (bench_propagation_prompts.py)\n\n"
        f"`python benchmarks/bench_propagation_prompts.py` — {machine()}; `promptseg_demo`, "
        f"{a.volumes} synthetic 24 x 160 x 160 uint16 volumes per kind "
        f"({', '.join(f'{k}: {n} objects' for k, n in n_obj.items())}), each object seeded with its "
        "true mask on one slice, `ps.propagate` with the default thresholds "
        f"(min_score {defaults['min_score']}, min_overlap "
        f"{defaults['min_overlap']}, min_area {defaults['min_area']}); \"margin\": `box_margin`, each "
        "side of the previous mask's box moved out by margin x the box's side + 2 px (0: the tight "
        "box). Reference rows: no propagation, the true box on every slice where the object exists "
        "(an upper bound for box prompts). "
        "IoU: mean 3D IoU per object; missed: slices where the truth has >= 20 px and the result "
        "nothing; extra: slices with a result where the truth has nothing (summed over objects). "
        f"{time.perf_counter() - t0:.0f} s in all.\n\n" + "\n\n".join(parts) + "\n"
    )
    print(body)
    if not a.no_write:
        write_section("propagation-prompts", body)


if __name__ == "__main__":
    main()
