"""Segmentation quality of the packaged demo model on held-out synthetic images.

    python benchmarks/bench_demo_quality.py                 # writes its section of docs/benchmarks.md
    python benchmarks/bench_demo_quality.py --checkpoint /work/train_run/checkpoint.pt --no-write

Through the public API (``ps.load_model`` / ``embed`` / ``predict``), on 256 x 256 images from
seeds 0.. (never used in training: training seeds start at 10**7). For every object:
one-click IoU (a positive point at the object's interior-most pixel, the highest-scoring of the
three masks) and box IoU (the tight box, one mask), reported overall, by object size (equivalent
diameter) and for objects that touch another one.
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
from napari_promptseg.training.sampling import interior_point, tight_box  # noqa: E402
from napari_promptseg.training.synthetic import synthetic_image  # noqa: E402

SIZE_BINS = [(0, 12), (12, 20), (20, 30), (30, 1000)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def touches_other(labels: np.ndarray, i: int) -> bool:
    from scipy import ndimage as ndi

    m = labels == i
    ring = ndi.binary_dilation(m, iterations=1) & ~m
    return bool(np.any(labels[ring] > 0))


def run(model, min_instances: int, first_seed: int = 0) -> list[dict]:
    rows, seed = [], first_seed
    while len(rows) < min_instances:
        img, labels = synthetic_image(seed)
        emb = model.embed(img)
        for i in range(1, int(labels.max()) + 1):
            gt = labels == i
            if not gt.any():
                continue
            p = model.predict(emb, points=[interior_point(gt)], multimask=True)
            b = model.predict(emb, box=tight_box(gt), multimask=False)
            rows.append({
                "seed": seed, "diameter": 2 * np.sqrt(gt.sum() / np.pi), "touching": touches_other(labels, i),
                "click": iou(p.masks[p.best], gt), "box": iou(b.masks[0], gt),
            })
        seed += 1
    return rows


def table(rows: list[dict]) -> str:
    def line(name, sel):
        if not sel:
            return f"| {name} | 0 | - | - |"
        c = np.mean([r["click"] for r in sel])
        b = np.mean([r["box"] for r in sel])
        return f"| {name} | {len(sel)} | {c:.3f} | {b:.3f} |"

    out = ["| objects | n | one-click IoU | box IoU |", "|---|---:|---:|---:|", line("all", rows)]
    for lo, hi in SIZE_BINS:
        name = f"diameter {lo}-{hi} px" if hi < 1000 else f"diameter >= {lo} px"
        out.append(line(name, [r for r in rows if lo <= r["diameter"] < hi]))
    out.append(line("touching another object", [r for r in rows if r["touching"]]))
    out.append(line("isolated", [r for r in rows if not r["touching"]]))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="weights file (default: the packaged ones)")
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    p.add_argument("--note", default="", help="a sentence about the weights (e.g. which training step)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = ps.load_model("promptseg_demo", checkpoint=a.checkpoint, device="cpu")
    t = time.perf_counter()
    rows = run(model, a.instances)
    dt = time.perf_counter() - t
    n_images = len({r["seed"] for r in rows})
    body = (
        "## Demo model quality (`promptseg_demo`, held-out synthetic images)\n\n"
        f"`python benchmarks/bench_demo_quality.py` — {machine()}; {len(rows)} objects in {n_images} "
        f"generated 256 x 256 images (seeds 0-{n_images - 1}, disjoint from training), through "
        "`ps.load_model` / `embed` / `predict`. One click: a positive point at the object's "
        "interior-most pixel, highest-scoring of 3 masks. Box: the tight box, one mask. Target (issue 5): "
        "one-click >= 0.85, box >= 0.90.\n\n"
        f"Weights: `{model.checkpoint_id}`{'; ' + a.note if a.note else ''}; {dt:.0f} s in all.\n\n"
        + table(rows) + "\n"
    )
    print(body)
    if not a.no_write:
        write_section("demo-quality", body)


if __name__ == "__main__":
    main()
