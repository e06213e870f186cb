"""Memory on big data: peak resident memory over the loaded model, zarr in and zarr out.

    python benchmarks/bench_memory.py                  # both cases at full size; writes its section
    python benchmarks/bench_memory.py --planes 60 --size 1024 --slide 4096 --no-write   # smaller
    python benchmarks/bench_memory.py --slide 4096 8192 --reuse   # two slides, extrapolated to 16k

Two cases, each in its own process (so one cannot inherit the other's memory), with the shipped
``promptseg_demo`` model on the CPU:

- ``propagate``: one nucleus, prompted by a box on the middle plane, propagated both ways through a
  ``planes x size x size`` uint16 zarr stack (a field of generated nuclei drifting by 1 px every
  few planes, fresh noise on every plane; the mask stop rules only, so the object runs through
  every plane: the most planes written, the worst case) into a zarr ``out=``; the intensity
  window comes from the stack (sampled planes).
- ``everything``: ``ps.segment_everything`` on a ``slide x slide`` uint16 zarr slide (1024² fields
  of generated nuclei), tiled at the model's scale, into a zarr ``out=``.

Memory: a thread samples the process's resident set size (``/proc/self/statm``) every 5 ms; the
figure is its peak during the case minus the resident size after the model was loaded and run
once on a 256² image (torch's own buffers at the model's input size count as the model). The
inputs are generated once into ``--data`` (reused by later runs) by the parent process; results
are kept there too (``--reuse`` takes them instead of measuring again). When the slide (or the
stack) is smaller than the issue's size, the section extrapolates the two largest runs linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402

MB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every ``every`` s)."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


# ---- inputs ---------------------------------------------------------------------------------------
def make_stack(path: Path, planes: int, size: int) -> dict:
    """A uint16 zarr stack written plane by plane; returns the prompt (a box on the middle plane)."""
    import zarr

    from napari_promptseg.sample import nuclei_image

    base, labels = nuclei_image((size, size), n=max(40, int(300 * size * size / 1024 ** 2)), seed=1)
    ids, counts = np.unique(labels[size // 3:2 * size // 3, size // 3:2 * size // 3], return_counts=True)
    oid = int(ids[1:][np.argmax(counts[1:])])  # the biggest nucleus near the centre
    z = zarr.open_array(path, mode="w", shape=(planes, size, size), dtype=np.uint16,
                        chunks=(1, min(size, 1024), min(size, 1024)))
    rng = np.random.default_rng(0)
    mid = planes // 2
    for k in range(planes):
        shift = (k // 4, k // 6)  # a slow drift
        plane = np.roll(base, shift, axis=(0, 1)).astype(np.float32)
        plane += rng.normal(0, 25, plane.shape).astype(np.float32)
        z[k] = np.clip(plane, 0, 65535).astype(np.uint16)
        if k == mid:
            rows, cols = np.nonzero(np.roll(labels == oid, shift, axis=(0, 1)))
            box = [int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())]
    return {"prompts": {str(mid): [{"box": box}]}}


def make_slide(path: Path, size: int) -> dict:
    """A uint16 zarr slide written 1024² block by block from four generated fields plus noise."""
    import zarr

    from napari_promptseg.sample import nuclei_image

    side = min(size, 1024)
    fields = [nuclei_image((side, side), n=max(10, int(300 * side * side / 1024 ** 2)), seed=s)[0]
              for s in range(4)]
    z = zarr.open_array(path, mode="w", shape=(size, size), dtype=np.uint16, chunks=(side, side))
    rng = np.random.default_rng(0)
    for i in range(0, size, side):
        for j in range(0, size, side):
            f = fields[(i // side + 2 * (j // side)) % 4][: size - i, : size - j].astype(np.float32)
            f += rng.normal(0, 25, f.shape).astype(np.float32)
            z[i:i + side, j:j + side] = np.clip(f, 0, 65535).astype(np.uint16)
    return {}


def ensure(data: Path, name: str, params: dict, make) -> dict:
    """The input ``name`` in ``data`` made with ``params`` (made again when they differ)."""
    meta = data / f"{name}.json"
    if meta.exists():
        saved = json.loads(meta.read_text())
        if saved["params"] == params and (data / f"{name}.zarr").exists():
            return saved
    t = time.perf_counter()
    print(f"making {name} {params} in {data} ...", flush=True)
    extra = make(data / f"{name}.zarr", **params)
    saved = {"params": params, **extra}
    meta.write_text(json.dumps(saved))
    print(f"  made in {time.perf_counter() - t:.0f} s", flush=True)
    return saved


# ---- one case, in this process ------------------------------------------------------------------
def _mask_rules_only():
    """The prompt method with the mask stop rules only (score, area, overlap), so the object runs
    through every plane of the generated stack (the most planes written: the worst case)."""
    import dataclasses

    import napari_promptseg as ps

    if "stops" in {f.name for f in dataclasses.fields(ps.PromptPropagation)}:
        return ps.PromptPropagation(stops=("score", "area", "overlap"))
    return ps.PromptPropagation()


def run_case(args) -> dict:
    import torch
    import zarr

    import napari_promptseg as ps

    model = ps.load_model("promptseg_demo", device="cpu")
    warm = np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8)
    model.predict(model.embed(warm), points=[[128, 128]])
    base = rss()
    data = Path(args.data)
    result: dict = {"case": args.case, "model_rss_mb": base / MB, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        if args.case == "propagate":
            name = args.name or "stack"
            meta = json.loads((data / f"{name}.json").read_text())
            stack = zarr.open_array(data / f"{name}.zarr", mode="r")
            out = zarr.open_array(Path(tmp) / "labels.zarr", mode="w", shape=stack.shape, dtype=np.int32,
                                  chunks=(1, *stack.chunks[1:]), fill_value=0) if not args.in_memory else None
            prompts = {int(k): v for k, v in meta["prompts"].items()}
            done = []
            t = time.perf_counter()
            with PeakRSS() as peak:
                labels = ps.propagate(model, stack, prompts, options=_mask_rules_only(), out=out,
                                      progress=lambda d, n: done.append(d))
            wall = time.perf_counter() - t
            filled = sum(bool(np.asarray(labels[k]).any()) for k in range(stack.shape[0]))
            result.update(shape=list(stack.shape), planes_done=done[-1] if done else 0, planes_filled=filled,
                          seconds=wall, per_plane_s=wall / max(1, done[-1] if done else 1))
        else:
            slide = zarr.open_array(data / f"{args.name or 'slide'}.zarr", mode="r")
            out = zarr.open_array(Path(tmp) / "labels.zarr", mode="w", shape=slide.shape, dtype=np.int32,
                                  chunks=slide.chunks, fill_value=0) if not args.in_memory else None
            tiled = ps.embed_tiles(model, slide)
            steps = 0
            t = time.perf_counter()
            with PeakRSS() as peak:
                for step in ps.segment_everything_iter(model, tiled, out=out,
                                                       points_per_side=args.points_per_side):
                    steps += 1
                    if step.result is not None:
                        found = step.result
            wall = time.perf_counter() - t
            result.update(shape=list(slide.shape), tiles=len(tiled.grid), objects=len(found.objects),
                          seconds=wall, per_tile_s=wall / len(tiled.grid),
                          points_per_side=args.points_per_side)
    import resource

    result.update(peak_rss_mb=peak.peak / MB, over_model_mb=(peak.peak - base) / MB,
                  maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  out="in memory" if args.in_memory else "zarr")
    return result


def in_subprocess(case: str, name: str, args, in_memory: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--name", name, "--data", str(args.data),
           "--points-per-side", str(args.points_per_side)] + (["--in-memory"] if in_memory else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


TARGETS = {"propagate": ((300, 2048, 2048), 512), "everything": ((16384, 16384), 1024)}


def _extrapolated(rows: list[dict], case: str) -> str | None:
    """A line extrapolating the two largest zarr-out runs of ``case`` linearly in voxels to the
    target size, when no run reached it."""
    runs = sorted((r for r in rows if r["case"] == case and r["out"] == "zarr"),
                  key=lambda r: np.prod(r["shape"]))
    target, budget = TARGETS[case]
    if not runs or np.prod(runs[-1]["shape"]) >= np.prod(target):
        return None
    size = " x ".join(str(v) for v in target)
    if len(runs) < 2:
        return (f"- {case}: not run at {size}; measured up to "
                f"{' x '.join(str(v) for v in runs[-1]['shape'])} only.")
    a, b = runs[-2], runs[-1]
    va, vb, vt = (float(np.prod(r)) for r in (a["shape"], b["shape"], target))
    slope = (b["over_model_mb"] - a["over_model_mb"]) / (vb - va)
    est = b["over_model_mb"] + slope * (vt - vb)
    unit = "tile" if case == "everything" else "plane"
    per = b[f"per_{unit}_s"]
    count = b["tiles"] * vt / vb if case == "everything" else target[0]
    return (f"- {case} at {size} (not run: about {count * per / 3600:.1f} h here at {per:.2f} s per {unit}): "
            f"a straight line through the two largest runs ({slope * 1e6:.2f} MB per million pixels) gives "
            f"about {est:.0f} MB over the model (target {budget} MB).")


def section(rows: list[dict], args) -> str:
    sizes = (f"--planes {' '.join(str(v) for v in args.planes)} --size {args.size} "
             f"--slide {' '.join(str(v) for v in args.slide)}")
    lines = [
        "## Memory on big data (bench_memory.py)",
        "",
        f"`python benchmarks/bench_memory.py {sizes} --points-per-side {args.points_per_side}` — "
        f"{machine()}. `promptseg_demo` on the CPU; each case in its own process; peak resident memory "
        "(sampled every 5 ms) minus the resident memory after the model was loaded and run once on a "
        "256² image. Inputs: generated nuclei, uint16 zarr (1024² chunks). Targets (issue 28): "
        "propagation through 300 x 2048² into a zarr `out=` <= 0.5 GB over the model; segment "
        "everything on a 16k x 16k slide, tiled, <= 1 GB over the model. Times are on a shared 2-core "
        "machine (other jobs ran beside): read them as rough.",
        "",
        "| case | input (uint16 zarr) | labels | peak over the model (MB) | time | per plane / tile (s) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        shape = " x ".join(str(v) for v in r["shape"])
        if r["case"] == "propagate":
            what = f"propagate 1 object ({r['planes_filled']} planes filled)"
            per = r["per_plane_s"]
        else:
            what = (f"segment everything, {r['tiles']} tiles, {r['objects']} objects, "
                    f"{r['points_per_side']}² points per tile")
            per = r["per_tile_s"]
        lines.append(f"| {what} | {shape} | {r['out']} | {r['over_model_mb']:.0f} "
                     f"| {r['seconds'] / 60:.1f} min | {per:.2f} |")
    notes = [n for n in (_extrapolated(rows, c) for c in TARGETS) if n]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def _measure(case: str, name: str, args, in_memory: bool, cache: Path) -> dict:
    """One run in a child process, or its earlier result from ``cache`` with ``--reuse``."""
    key = {"case": case, "name": name, "in_memory": in_memory}
    if case == "everything":
        key["pps"] = args.points_per_side
    old = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    if args.reuse:
        for entry in old:
            if entry["key"] == key:
                print(f"reusing {key}", flush=True)
                return entry["result"]
    r = in_subprocess(case, name, args, in_memory)
    with cache.open("a") as f:
        f.write(json.dumps({"key": key, "result": r}) + "\n")
    return r


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--planes", type=int, nargs="+", default=[300],
                   help="planes of the stack; several values: one run each (default 300)")
    p.add_argument("--size", type=int, default=2048, help="side of a plane of the stack (default 2048)")
    p.add_argument("--slide", type=int, nargs="+", default=[16384],
                   help="side of the slide; several values: one run each (default 16384)")
    p.add_argument("--points-per-side", type=int, default=16,
                   help="segment everything's grid per tile (default 16; the model's default is 32)")
    p.add_argument("--only", choices=("propagate", "everything"), default=None)
    p.add_argument("--in-memory", action="store_true",
                   help="also run each case without out= (labels in memory)")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "promptseg_bench_memory"),
                   help="where the generated inputs (and the results, for --reuse) are kept")
    p.add_argument("--reuse", action="store_true", help="reuse the results of earlier runs in --data")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--case", choices=("propagate", "everything"), help=argparse.SUPPRESS)
    p.add_argument("--name", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:  # a child: one measurement, one JSON line
        print(json.dumps(run_case(args)))
        return
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    cases = [args.only] if args.only else ["propagate", "everything"]
    inputs = []
    for case in cases:
        if case == "propagate":
            for n in args.planes:
                name = f"stack_{n}x{args.size}"
                ensure(data, name, {"planes": n, "size": args.size}, make_stack)
                inputs.append((case, name))
        else:
            for side in args.slide:
                ensure(data, f"slide_{side}", {"size": side}, make_slide)
                inputs.append((case, f"slide_{side}"))
    rows = []
    for case, name in inputs:
        for in_memory in ([False, True] if args.in_memory else [False]):
            r = _measure(case, name, args, in_memory, data / "results.jsonl")
            print(json.dumps(r), flush=True)
            rows.append(r)
    text = section(rows, args)
    print(text)
    if not args.no_write:
        write_section("bench_memory", text)


if __name__ == "__main__":
    main()
