"""SAM 2: napari-promptseg versus Meta's ``sam2`` predictors, same random weights, same process.

    python benchmarks/bench_sam2.py          # full run: tiny config, 1024 input
    python benchmarks/bench_sam2.py --arch sam2.1_hiera_t_256 --sizes 256 512 --frames 4 \\
        --mem-frames 20 --track-frames 2 --repeats 3     # quick check (~2 min)

Prints markdown rows for docs/benchmarks.md (``--write`` also stores them in its section).
- predict (one point, multimask, medians of alternating calls after warm-up): ours + best mask
  (what the GUI shows; masks are lazy) and ours + all 3 masks vs ``SAM2ImagePredictor.predict``.
- tracking one object from a point on frame 0: ``SAM2VideoPredictor`` (init_state +
  add_new_points_or_box + propagate_in_video, which encodes every frame) vs our ``MemoryTracker``
  with all embeddings precomputed (not timed) and cold (encoded on demand). Meta's predictor gets
  the numpy frames through its ``load_video_frames`` hook, in one float32 tensor as its JPEG loader.
- peak RSS increase of a fresh process per side holding ``--mem-frames`` frames and tracking the
  first ``--track-frames`` (Meta's init_state converts all frames to float32 up front).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import napari_promptseg as ps  # noqa: E402
from _report import machine, write_section  # noqa: E402
from _weights import random_sam2  # noqa: E402
from napari_promptseg.models.sam2.model import SAM2_ARCHS  # noqa: E402


def frame(size: int, k: int = 0, seed: int = 0) -> np.ndarray:
    """RGB uint8 frame k: 32-pixel random blocks drifting 4 px per frame, and a bright moving disk."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 130, (size // 32 + 2, size // 32 + 2, 3)).astype(np.uint8)
    img = np.roll(np.kron(small, np.ones((32, 32, 1), np.uint8)), 4 * k, axis=1)[:size, :size].copy()
    yy, xx = np.ogrid[:size, :size]
    cy, cx = point(size, k)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (0.1 * size) ** 2] = (230, 200, 60)
    return img


def point(size: int, k: int = 0) -> list[float]:
    """(row, col) of the disk's centre on frame k: the prompt."""
    return [0.45 * size, (0.5 + 0.2 * np.sin(k / 10)) * size]


def video(n: int, size: int) -> np.ndarray:
    return np.stack([frame(size, k) for k in range(n)])


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def _t(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def iou(a, b) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def load_ours(arch: str, ckpt: Path):
    if arch == "sam2.1_hiera_t":
        return ps.load_model("sam2.1_hiera_tiny", checkpoint=ckpt, device="cpu")
    from napari_promptseg.models.registry import ModelSpec

    spec = ModelSpec("sam2_bench", "sam2", arch, "http://127.0.0.1:9/x.pt", "sha256:0", 156, "38.9M",
                     "bench", "bench")
    return ps.load_model(spec, checkpoint=ckpt, device="cpu")


def official_image(arch: str, ckpt: Path):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    a = SAM2_ARCHS[arch]
    p = SAM2ImagePredictor(build_sam2(a.config, str(ckpt), device="cpu",
                                      hydra_overrides_extra=list(a.overrides)))
    s = p.model.image_size
    p._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]  # hard-coded for 1024
    return p


def official_video(arch: str, ckpt: Path):
    """Meta's SAM2VideoPredictor fed numpy frames through its ``load_video_frames`` hook."""
    import sam2.sam2_video_predictor as svp
    from sam2.build_sam import build_sam2_video_predictor
    from sam2.utils.transforms import SAM2Transforms

    def load_video_frames(video_path, image_size, offload_video_to_cpu, async_loading_frames=False,
                          compute_device=None, **kw):
        tf = SAM2Transforms(image_size, 0.0)
        images = torch.zeros(len(video_path), 3, image_size, image_size)  # as Meta's JPEG loader
        for i, f in enumerate(video_path):
            images[i] = tf(f)
        return images, video_path.shape[1], video_path.shape[2]

    svp.load_video_frames = load_video_frames
    a = SAM2_ARCHS[arch]
    return build_sam2_video_predictor(a.config, str(ckpt), device="cpu",
                                      hydra_overrides_extra=list(a.overrides))


def track_official(net, frames: np.ndarray, n: int, start: int = 0):
    """Prompt frame ``start``; forward (and, from a later frame, then reverse, as Meta's demo)."""
    t = time.perf_counter()
    state = net.init_state(frames)
    r, c = point(frames.shape[1], start)
    net.add_new_points_or_box(state, start, 1, points=np.array([[c, r]], np.float32),
                              labels=np.array([1], np.int32))
    masks = {}
    for reverse in (False, True) if start else (False,):
        for k, _, m in net.propagate_in_video(state, max_frame_num_to_track=n - 1, reverse=reverse):
            masks.setdefault(k, (m[0, 0] > 0).numpy())
    return time.perf_counter() - t, masks


def track_ours(model, frames: np.ndarray, n: int, embedding_of=None, start: int = 0):
    """Cold (embedding_of None: each frame encoded on demand) or with ``embedding_of`` given."""
    from napari_promptseg.embed.cache import EmbeddingCache, embed_cached
    from napari_promptseg.propagation.memory import MemoryTracker
    from napari_promptseg.propagation.seeds import parse_prompts, seed_tracker

    t = time.perf_counter()
    if embedding_of is None:
        cache = EmbeddingCache(2)  # as ps.propagate with ps.MemoryTracking()

        def embedding_of(k):
            return embed_cached(model, frames[k], None, cache)

    hw = frames.shape[1:3]
    tr = MemoryTracker(model, embedding_of, len(frames), hw)
    seed_tracker(tr, parse_prompts({start: {1: {"points": [point(hw[0], start)]}}}, len(frames), hw))
    masks = {}
    for r in tr.propagate_iter(max_frames=n - 1):
        masks.setdefault(r.index, r.masks.get(1, np.zeros(hw, bool)))
    return time.perf_counter() - t, masks


def mem_child(args) -> None:
    """In a fresh process: hold the frames, load one side, reset the peak, track; print the peak."""
    frames = video(args.mem_frames, args.frame_size)
    official = args.mem_child == "official"
    side = official_video(args.arch, args.ckpt) if official else load_ours(args.arch, args.ckpt)
    status = lambda: {ln.split(":")[0]: int(ln.split()[1]) for ln in open("/proc/self/status")  # noqa: E731
                      if ln.startswith("Vm")}
    base = status()["VmRSS"]
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    (track_official if official else track_ours)(side, frames, args.track_frames)
    print("PEAK", base, status()["VmHWM"])


def peak_increase(which: str, args, ckpt: Path) -> tuple[float, float]:
    """(peak RSS increase, process peak) in GB of a fresh process tracking on one side."""
    cmd = [sys.executable, __file__, "--mem-child", which, "--ckpt", str(ckpt), "--arch", args.arch,
           "--mem-frames", str(args.mem_frames), "--track-frames", str(args.track_frames),
           "--frame-size", str(args.frame_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    base, hwm = int(out[-2]), int(out[-1])
    return (hwm - base) / 2**20, hwm / 2**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="sam2.1_hiera_t", choices=sorted(SAM2_ARCHS))
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="predict image sides")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--frames", type=int, default=20, help="frames tracked in the timing")
    p.add_argument("--track-repeats", type=int, default=1)
    p.add_argument("--bidir-frames", type=int, default=10,
                   help="frames of the cold run prompted on the middle frame (forward, then reverse)")
    p.add_argument("--frame-size", type=int, default=1024)
    p.add_argument("--mem-frames", type=int, default=200, help="frames in the video of the memory run")
    p.add_argument("--track-frames", type=int, default=5, help="frames tracked in the memory run")
    p.add_argument("--write", action="store_true", help="also write the section of docs/benchmarks.md")
    p.add_argument("--mem-child", choices=["ours", "official"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mem_child:
        return mem_child(args)

    ckpt = random_sam2(args.arch)
    ours, off = load_ours(args.arch, ckpt), official_image(args.arch, ckpt)
    print(f"{args.arch}, input {ours.image_size}², {torch.get_num_threads()} threads", flush=True)

    warm = frame(256)  # process-wide warm-up (thread pools, first decoder call) before any timing
    _ = ours.predict(ours.embed(warm), points=[point(256)]).masks
    off.set_image(warm)
    off.predict(point_coords=np.array([point(256)[::-1]]), point_labels=np.array([1]))
    rows = []
    for size in args.sizes:
        img = frame(size)
        emb = ours.embed(img)
        off.set_image(img)
        rc = point(size)
        xy, lab = np.array([rc[::-1]]), np.array([1])

        def best(emb=emb, rc=rc):
            pred = ours.predict(emb, points=[rc], labels=[1], multimask=True)
            return pred.mask(pred.best)

        def every(emb=emb, rc=rc):
            return ours.predict(emb, points=[rc], labels=[1], multimask=True).masks

        def official(xy=xy, lab=lab):
            return off.predict(point_coords=xy, point_labels=lab, multimask_output=True)

        first = timed(best)
        for _ in range(3):
            every(), official()
        tb, ta, to = [], [], []
        for _ in range(args.repeats):
            tb.append(timed(best))
            ta.append(timed(every))
            to.append(timed(official))
        min_iou = min(iou(a, b > 0.5) for a, b in zip(every(), official()[0]))
        row = (size, *(statistics.median(t) for t in (tb, ta, to)), first, min_iou)
        rows.append(row)
        print(f"predict {size}²: ours+best {_t(row[1])}, ours+3 masks {_t(row[2])}, official {_t(row[3])}, "
              f"first call {_t(first)}, min IoU {min_iou:.4f}", flush=True)

    net = official_video(args.arch, ckpt)
    frames = video(args.frames, args.frame_size)
    embs = {k: ours.embed(frames[k]) for k in range(args.frames)}  # the cached case (not timed)
    track_official(net, frames[:2], 2), track_ours(ours, frames[:2], 2, embs.__getitem__)  # warm-up
    t_off, t_hot, t_cold = [], [], []
    for _ in range(args.track_repeats):
        t, m_off = track_official(net, frames, args.frames)
        t_off.append(t)
        t, m_hot = track_ours(ours, frames, args.frames, embs.__getitem__)
        t_hot.append(t)
        t_cold.append(track_ours(ours, frames, args.frames)[0])
    t_off, t_hot, t_cold = (statistics.median(t) / args.frames for t in (t_off, t_hot, t_cold))
    track_iou = min(iou(m_hot[k], m_off[k]) for k in m_off)
    print(f"tracking per frame: official {_t(t_off)}, ours cached {_t(t_hot)}, ours cold {_t(t_cold)}, "
          f"min IoU {track_iou:.4f}", flush=True)
    nb = args.bidir_frames
    mid = nb // 2
    tb_off, mb_off = track_official(net, frames[:nb], nb, start=mid)
    tb_ours, mb_ours = track_ours(ours, frames[:nb], nb, start=mid)
    tb_off, tb_ours = tb_off / nb, tb_ours / nb
    bidir_iou = min(iou(mb_ours[k], mb_off[k]) for k in mb_off)
    print(f"prompt on frame {mid} of {nb}, both ways, cold, per frame: official {_t(tb_off)}, "
          f"ours {_t(tb_ours)}, min IoU {bidir_iou:.4f}", flush=True)

    mem_off, hwm_off = peak_increase("official", args, ckpt)
    mem_ours, hwm_ours = peak_increase("ours", args, ckpt)
    print(f"peak RSS increase: official {mem_off:.2f} GB, ours {mem_ours:.2f} GB", flush=True)

    n, k, s = args.frames, args.track_frames, args.frame_size
    lines = [
        "## SAM 2 versus Meta's sam2 (bench_sam2.py)",
        "",
        f"`{' '.join(['python benchmarks/bench_sam2.py', *(sys.argv[1:] if argv is None else argv)])}`"
        f" on {machine()}; {args.arch} (input {ours.image_size}²), random weights, CPU, float32; "
        "ours and Meta's predictors in one process.",
        "",
        f"predict: one positive point, multimask, median of {args.repeats} alternating calls; first call = "
        "our first predict + best mask on a new embedding (it caches the prompt-independent decoder work).",
        "",
        "| image | ours predict + best mask | ours predict + 3 masks | `SAM2ImagePredictor.predict` "
        "| ours/official (best) | ours/official (3 masks) | our first call | min mask IoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {sz}² | {_t(b)} | {_t(a)} | {_t(o)} | {b / o:.2f} | {a / o:.2f} | {_t(f)} | {m:.4f} |"
              for sz, b, a, o, f, m in rows]
    lines += [
        "",
        f"Tracking one object from a point on frame 0 through {n} frames of {s}² RGB uint8 "
        f"(per frame = total / {n}, median of {args.track_repeats}; min mask IoU ours cached vs "
        f"official {track_iou:.4f}):",
        "",
        "| | per frame | ours/official |",
        "|---|---|---|",
        f"| `SAM2VideoPredictor` (init_state + add_new_points_or_box + propagate_in_video; "
        f"encodes every frame) | {_t(t_off)} | 1.00 |",
        f"| ours, `MemoryTracker`, embeddings cached | {_t(t_hot)} | {t_hot / t_off:.2f} |",
        f"| ours, `MemoryTracker`, cold (encodes each frame) | {_t(t_cold)} | {t_cold / t_off:.2f} |",
        "",
        f"Prompt on frame {mid} of {nb}, tracked forward then in reverse, nothing cached (per frame = "
        f"total / {nb}; min mask IoU {bidir_iou:.4f}; Meta's predictor encodes frame 0 twice (its "
        "warm-up) and each other frame once, as ours):",
        "",
        "| | per frame | ours/official |",
        "|---|---|---|",
        f"| `SAM2VideoPredictor`, forward then reverse | {_t(tb_off)} | 1.00 |",
        f"| ours, `MemoryTracker`, cold | {_t(tb_ours)} | {tb_ours / tb_off:.2f} |",
        "",
        f"Peak RSS increase of a fresh process holding {args.mem_frames} frames of {s}² RGB uint8 "
        f"({args.mem_frames * s * s * 3 / 2**30:.2f} GB numpy) and tracking the first {k} of them "
        "(ours cold; Meta's init_state converts every frame to a float32 model input first):",
        "",
        "| | `SAM2VideoPredictor` | ours | ours/official |",
        "|---|---|---|---|",
        f"| peak RSS increase (GB) | {mem_off:.2f} | {mem_ours:.2f} | {mem_ours / max(mem_off, 1e-9):.2f} |",
        f"| process peak RSS (GB) | {hwm_off:.2f} | {hwm_ours:.2f} | {hwm_ours / hwm_off:.2f} |",
    ]
    if args.write:
        write_section("bench_sam2", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
