"""Does propagation stop where a nucleus ends? Measured on realistic fluorescence z-stacks.

    python benchmarks/bench_propagation_3d.py          # prints; writes its section of docs/benchmarks.md
    python benchmarks/bench_propagation_3d.py --no-write --volumes 2 --configs old default

Volumes from :func:`napari_promptseg.training.fluorescence3d.fluorescence_stack` (31 x 64 x 64 uint16,
planes 2 pixel widths apart, a PSF 2.5x longer along z than across, out-of-focus haze, shot and
read noise, bright and dim nuclei packed so that some sit above others). One click per nucleus: a
positive point at the interior-most pixel of its ground truth on one plane, all nuclei of a volume
prompted together, then ``ps.propagate`` with the shipped ``promptseg_demo`` model and the default
options, except the stop rules (``PromptPropagation(stops=...)``), which each configuration names.
Two seed planes: ``middle`` (the middle of the nucleus' z range) and ``end`` (the plane 20 % of its
z range from one end: the lower end for odd ids, the upper end for even ids; the other end when
that one is cut by the stack's first or last plane).

Per nucleus: the 3D IoU with the truth; "false" slices: slices with a mask where the truth has
none; "missed" slices: slices where the truth has >= 20 px and the result nothing; both in % of
the truth's slices (summed over the nuclei).
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
from napari_promptseg.propagation.options import OLD_STOPS, STOP_RULES  # noqa: E402
from napari_promptseg.training.fluorescence3d import fluorescence_stack  # noqa: E402

SHAPE = (31, 64, 64)
EARLY = 0.2
MIN_PX = 20  # a truth slice with fewer pixels is not counted as missed


def _stops(name: str) -> tuple[str, ...] | None:
    """A configuration's stop rules: ``old``, ``default``, ``old+rule+rule``, ``default-rule``."""
    if name == "default":
        return None
    if name == "old":
        return OLD_STOPS
    if name.startswith("default-"):
        return tuple(r for r in STOP_RULES if r != name.split("-", 1)[1])
    parts = name.split("+")
    base = list(OLD_STOPS) if parts[0] == "old" else []
    return tuple(dict.fromkeys(base + [p for p in parts if p != "old"]))


def seed_planes(truth: np.ndarray, at: str) -> dict[int, int]:
    """Nucleus id -> its seed plane (see the module docstring)."""
    from scipy import ndimage as ndi

    n = truth.shape[0]
    out = {}
    for i, sl in enumerate(ndi.find_objects(truth), start=1):
        if sl is None:
            continue
        areas = (truth[sl] == i).sum((1, 2))
        z = sl[0].start + np.flatnonzero(areas >= MIN_PX)
        if len(z) == 0:
            continue
        z0, z1 = int(z[0]), int(z[-1])
        if at == "middle":
            out[i] = (z0 + z1) // 2
            continue
        off = round(EARLY * (z1 - z0))
        low = i % 2 == 1
        if low and sl[0].start == 0 and sl[0].stop < n:
            low = False
        elif not low and sl[0].stop == n and sl[0].start > 0:
            low = True
        out[i] = z0 + off if low else z1 - off
    return out


def clicks(truth: np.ndarray, planes: dict[int, int]) -> dict[int, dict[int, dict]]:
    """``{plane: {id: {"points": [[row, col]]}}}``: the interior-most pixel of each nucleus."""
    from scipy import ndimage as ndi

    out: dict[int, dict[int, dict]] = {}
    for i, k in planes.items():
        d = ndi.distance_transform_edt(np.pad(truth[k] == i, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        out.setdefault(k, {})[i] = {"points": [[int(r), int(c)]]}
    return out


def score(result: np.ndarray, truth: np.ndarray, ids) -> list[dict]:
    rows = []
    for i in ids:
        t, r = truth == i, result == i
        tz, rz = t.sum((1, 2)), r.sum((1, 2))
        rows.append({
            "iou": float((t & r).sum() / max((t | r).sum(), 1)),
            "slices": int((tz > 0).sum()),
            "false": int(((tz == 0) & (rz > 0)).sum()),
            "missed": int(((tz >= MIN_PX) & (rz == 0)).sum()),
        })
    return rows


def summary(rows: list[dict]) -> tuple[float, float, float]:
    n = max(sum(r["slices"] for r in rows), 1)
    return (float(np.mean([r["iou"] for r in rows])), 100 * sum(r["false"] for r in rows) / n,
            100 * sum(r["missed"] for r in rows) / n)


def run(model, configs: list[str], volumes: int, positions, first_seed: int = 0, shape=SHAPE,
        verbose: bool = True, alone: bool = False) -> tuple[dict, dict]:
    """Per (position, configuration) the rows of :func:`score`; ``alone``: one nucleus prompted
    per run (the others unprompted), as in issue 29, instead of all together."""
    res: dict[tuple[str, str], list[dict]] = {}
    info = {"nuclei": 0}
    t0 = time.perf_counter()
    for v in range(volumes):
        img, truth, scale = fluorescence_stack(shape, seed=first_seed + v)
        cache = EmbeddingCache(max_items=img.shape[0])
        for at in positions:
            planes = seed_planes(truth, at)
            prompts = clicks(truth, planes)
            if at == positions[0]:
                info["nuclei"] += len(planes)
            for name in configs:
                opts = ps.PromptPropagation(stops=_stops(name))
                runs = [({k: {i: p}}, [i]) for k, objs in prompts.items() for i, p in objs.items()] if alone \
                    else [(prompts, sorted(planes))]
                for given, ids in runs:
                    out = ps.propagate(model, img, given, options=opts, cache=cache, scale=scale)
                    res.setdefault((at, name), []).extend(score(out, truth, ids))
        if verbose:
            print(f"volume {v}: {len(planes)} nuclei, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    info["seconds"] = time.perf_counter() - t0
    return res, info


def table(res, configs, positions) -> list[str]:
    cols = " | ".join(f"{at}: IoU | {at}: false % | {at}: missed %" for at in positions)
    head = f"| stop rules | {cols} |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(positions)]
    for name in configs:
        cells = []
        for at in positions:
            iou, false, missed = summary(res[(at, name)])
            cells.append(f"{iou:.3f} | {false:.1f} | {missed:.1f}")
        label = "`" + ", ".join(_stops(name) or ps.PromptPropagation().stops) + "`"
        lines.append(f"| {name}: {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=6)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", nargs="*", default=[
        "old", "old+contrast", "old+extent", "old+neighbour", "default-contrast", "default-extent",
        "default-neighbour", "default"],
        help="old, default, old+RULE+..., default-RULE (rules: " + ", ".join(STOP_RULES) + ")")
    p.add_argument("--seed-at", choices=("middle", "end", "both"), default="both")
    p.add_argument("--held-out", type=int, default=6,
                   help="then old and default on this many more volumes (the rules were tuned on the first)")
    p.add_argument("--alone", type=int, default=3,
                   help="then old and default on this many volumes, one nucleus prompted per run")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = ps.load_model("promptseg_demo", device="cpu")
    positions = ("middle", "end") if a.seed_at == "both" else (a.seed_at,)
    res, info = run(model, a.configs, a.volumes, positions, a.first_seed)
    seeds = f"seeds {a.first_seed}-{a.first_seed + a.volumes - 1}"
    tables = f"**Each rule** ({seeds}, {info['nuclei']} nuclei):\n\n"
    tables += "\n".join(table(res, a.configs, positions))
    seconds = info["seconds"]
    if a.held_out:
        first = a.first_seed + a.volumes
        held, more = run(model, ["old", "default"], a.held_out, positions, first)
        seconds += more["seconds"]
        tables += (f"\n\n**Held out** (seeds {first}-{first + a.held_out - 1}, {more['nuclei']} nuclei; the "
                   "rules' constants were chosen on the volumes above):\n\n"
                   + "\n".join(table(held, ["old", "default"], positions)))
    if a.alone:
        lone, more = run(model, ["old", "default"], a.alone, positions, a.first_seed, alone=True)
        seconds += more["seconds"]
        last = a.first_seed + a.alone - 1
        tables += (f"\n\n**One nucleus prompted at a time** (seeds {a.first_seed}-{last}, {more['nuclei']} "
                   "nuclei, each in its own run, its neighbours unprompted):\n\n"
                   + "\n".join(table(lone, ["old", "default"], positions)))
    body = (
        "## Propagation on realistic z-stacks (bench_propagation_3d.py)\n\n"
        f"`python benchmarks/bench_propagation_3d.py` — {machine()}; `promptseg_demo`; volumes of "
        f"{' x '.join(map(str, SHAPE))} uint16 from `fluorescence_stack` (planes 2 pixel widths apart, "
        "`scale=(2, 1, 1)` passed to `ps.propagate`); one click per nucleus at the "
        "interior-most pixel of its truth on the seed plane, all nuclei prompted together, "
        "`ps.propagate` with the default options but the stop rules named in each row. middle: seed on "
        "the middle of the nucleus' z range; end: 20 % of its z range from one end. IoU: mean 3D IoU "
        "per nucleus; false: slices with a mask where the truth has none; missed: slices where the "
        f"truth has >= {MIN_PX} px and the result nothing; both in % of the truth's slices. "
        f"{seconds:.0f} s in all.\n\n" + tables + "\n"
    )
    print(body)
    if not a.no_write:
        write_section("propagation-3d", body)


if __name__ == "__main__":
    main()
