"""The on-disk embedding cache: float16 mask parity, read time and entry size.

    python benchmarks/bench_disk_cache.py             # writes its section of docs/benchmarks.md
    python benchmarks/bench_disk_cache.py --no-write

Parity: features stored as float16 (through ``DiskCache`` put/get) against the float32 features
the encoder made, on the packaged ``promptseg_demo`` model and a tiny random-weight SAM, for every
object of generated nuclei images (``napari_promptseg.sample.nuclei_image``): one positive point
at the object's interior-most pixel (3 masks, and 1 mask) and the tight box (1 mask). Each mask's
IoU with its float32 twin must be >= 0.99 for float16 to be the default storage.
Timing: ``DiskCache.get`` of a vit_b-sized 1024 x 1024 entry (features ``(1, 256, 64, 64)``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import napari_promptseg as ps  # noqa: E402
from _report import machine, write_section  # noqa: E402
from napari_promptseg.core.results import Embedding  # noqa: E402
from napari_promptseg.sample import nuclei_image  # noqa: E402
from napari_promptseg.training.sampling import interior_point, tight_box  # noqa: E402

SEEDS = (0, 1, 2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def tiny_random_sam(folder: Path):
    """A randomly initialised vit_tiny SAM (seed 0), loaded through the real loading code."""
    import hashlib

    from napari_promptseg.models.registry import ModelSpec
    from napari_promptseg.models.sam.model import build_sam

    torch.manual_seed(0)
    path = folder / "sam_tiny.pth"
    torch.save(build_sam("vit_tiny").eval().state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = ModelSpec("sam_tiny_test", "sam", "vit_tiny", "http://127.0.0.1:9/x.pth",
                     "sha256:" + digest, 0.5, "0.1M", "tiny random SAM", "test")
    return ps.load_model(spec, checkpoint=path, device="cpu")


def prompts(labels: np.ndarray):
    """(name, kwargs) for every object: a point (3 masks, 1 mask) and the tight box."""
    for i in range(1, int(labels.max()) + 1):
        gt = labels == i
        if not gt.any():
            continue
        pt = [interior_point(gt)]
        yield f"{i}:point3", dict(points=pt, multimask=True)
        yield f"{i}:point1", dict(points=pt, multimask=False)
        yield f"{i}:box", dict(box=tight_box(gt), multimask=False)


def parity(model, folder: Path, dtype: str = "float16", seeds=SEEDS) -> np.ndarray:
    """IoU of every mask decoded from ``dtype``-stored features with its float32 twin."""
    disk = ps.DiskCache(folder / f"{model.name}-{dtype}", dtype=dtype)
    ious = []
    for seed in seeds:
        img, labels = nuclei_image(seed=seed)
        ref = model.embed(img)
        key = f"{seed:08x}"
        disk.put(key, ref)
        stored = disk.get(key, device=model.device, model=model)
        for _name, kw in prompts(labels):
            a, b = model.predict(ref, **kw).masks, model.predict(stored, **kw).masks
            ious.extend(iou(x, y) for x, y in zip(a, b, strict=True))
    return np.array(ious)


def read_time(folder: Path, dtype: str, repeats: int = 10) -> tuple[float, int]:
    """(median seconds of ``get``, bytes on disk) for a vit_b-sized entry."""
    disk = ps.DiskCache(folder / f"vit_b-{dtype}", dtype=dtype)
    feats = {"image_embed": torch.randn(1, 256, 64, 64) * 0.2}
    emb = Embedding("vit_b", "sha256:0", "rgb8-v1", (1024, 1024), (1024, 1024), feats)
    key = "0123456789abcdef"
    disk.put(key, emb)
    disk.get(key)  # warm the imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        disk.get(key)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), disk.size_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = ["| model | masks | min IoU | 1st percentile | median | masks < 0.99 |",
                 "|---|---:|---:|---:|---:|---:|"]
        for model in (ps.load_model("promptseg_demo", device="cpu"), tiny_random_sam(folder)):
            ious = parity(model, folder)
            lines.append(f"| `{model.name}` | {len(ious)} | {ious.min():.4f} | "
                         f"{np.percentile(ious, 1):.4f} | {np.median(ious):.4f} | {(ious < 0.99).sum()} |")
        timing = ["| storage | `get` median of 10 | entry on disk |", "|---|---:|---:|"]
        for dtype in ("float16", "float32"):
            t, size = read_time(folder, dtype)
            timing.append(f"| {dtype} | {t * 1e3:.1f} ms | {size / 1e6:.2f} MB |")
    body = (
        "## On-disk embedding cache (`DiskCache`)\n\n"
        f"`python benchmarks/bench_disk_cache.py` — {machine()}.\n\n"
        "Mask parity of float16 storage: every object of the nuclei sample images (seeds "
        f"{', '.join(map(str, SEEDS))}, 512 x 640), a point at its interior-most pixel (3 masks and 1 "
        "mask) and its tight box; IoU of each mask decoded from float16-stored features with the "
        "one from the encoder's float32 features.\n\n" + "\n".join(lines) + "\n\n"
        "Reading a vit_b-sized entry (1024 x 1024 image, features `(1, 256, 64, 64)`, "
        "uncompressed zarr, checksum verified) from a warm file system:\n\n" + "\n".join(timing) + "\n"
    )
    print(body)
    if not a.no_write:
        write_section("disk-cache", body)


if __name__ == "__main__":
    main()
