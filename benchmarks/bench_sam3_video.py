"""SAM 3's video model: napari-promptseg's ``ps.track_concept`` versus Meta's video predictor, the
same random weights, on the CPU, in one run.

    python benchmarks/bench_sam3_video.py                       # full model, 20 x 512 x 512
    python benchmarks/bench_sam3_video.py --arch sam3_tiny_336  # the test architecture (minutes)
    python benchmarks/bench_sam3_video.py --frames 4 --size 256

A video of generated nuclei drifting (uint8 gray), a text prompt on frame 0, propagation forward
(Meta's ``propagation_direction="both"`` has nothing to do backward from frame 0). Each side runs in
a fresh process (its peak RSS is its own):
- ours: ``ps.load_model`` from the checkpoint, ``ps.track_concept`` on the array in memory;
- Meta: ``build_sam3_video_model`` loading the checkpoint, ``Sam3VideoPredictor``'s
  ``start_session`` on the frames written as PNG files (Meta reads a folder or an MP4; writing
  them is not timed), ``add_prompt(text=)``, ``propagate_in_video``. Meta's code runs inside our
  ``on_device("cpu", video=True)`` (it cannot run on a CPU otherwise: hard-coded CUDA, bfloat16
  casts for a CUDA autocast, connected components that fail on zero masks); for
  ``sam3_tiny_336`` its builders return the tiny parts.
The detector's scoring and presence weights are raised as in the tests, so random weights detect.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine  # noqa: E402

TEXT = "nucleus"


def video(frames: int, size: int) -> np.ndarray:
    """``(frames, size, size)`` uint8: bright blurred nuclei drifting on a noisy background."""
    rng = np.random.default_rng(0)
    n = max(4, size * size // 6000)
    centers = rng.uniform(0.1 * size, 0.9 * size, (n, 2))
    drift = rng.normal(0, size / 200, (n, 2))
    radius = rng.uniform(size / 40, size / 20, n)
    rr, cc = np.mgrid[:size, :size]
    out = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        img = rng.normal(30, 6, (size, size))
        for (r, c), (dr, dc), rad in zip(centers, drift, radius, strict=True):
            d2 = (rr - r - t * dr) ** 2 + (cc - c - t * dc) ** 2
            img += 160 * np.exp(-d2 / (2 * (rad * 0.6) ** 2))
        out[t] = np.clip(img, 0, 255)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def spec(arch: str):
    import napari_promptseg as ps
    from napari_promptseg.models.registry import ModelSpec

    if arch == "sam3":
        return ps.models.get_spec("sam3")
    return ModelSpec("sam3_tiny_test", "sam3", arch, "", "", 0, "40M", "test", "none")


def run_ours(ckpt: str, arch: str, frames: int, size: int) -> dict:
    import napari_promptseg as ps

    t = time.perf_counter()
    model = ps.load_model(spec(arch), checkpoint=ckpt, device="cpu")
    res = {"load": time.perf_counter() - t}
    vid = video(frames, size)
    t = time.perf_counter()
    labels = ps.track_concept(model, vid, text=TEXT)
    res["total"] = time.perf_counter() - t
    res["instances"] = int(np.count_nonzero(np.unique(labels)))
    res["per_frame_ids"] = [int(np.count_nonzero(np.unique(p))) for p in labels]
    res["rss"] = peak_rss_gb()
    return res


def meta_model(ckpt: str, arch: str):
    import sam3.model_builder as mb

    from napari_promptseg.models.sam3.device import bpe_vocabulary, on_device

    if arch != "sam3":  # Meta's builder with the tiny parts (as tests/test_sam3_video.py)
        from napari_promptseg.models.sam3.model import SAM3_ARCHS, build_sam3_network
        from napari_promptseg.models.sam3.tracker import tiny_interactive_predictor

        side = SAM3_ARCHS[arch][0]
        parts = build_sam3_network("cpu", arch)

        def tracker(apply_temporal_disambiguation, with_backbone=False, compile_mode=None):
            trk = tiny_interactive_predictor(side).model
            trk.use_memory_selection = apply_temporal_disambiguation
            return trk

        mb._create_vision_backbone = lambda **kw: parts.backbone.vision_backbone
        mb._create_text_encoder = lambda bpe: parts.backbone.language_backbone
        mb.build_tracker = tracker
    with on_device("cpu", video=True):
        net = mb.build_sam3_video_model(checkpoint_path=ckpt, load_from_HF=False,
                                        bpe_path=str(bpe_vocabulary()), device="cpu")
    if arch != "sam3":
        net.image_size = side
    return net.eval()


def run_meta(ckpt: str, arch: str, frames: int, size: int) -> dict:
    import torch
    from PIL import Image

    from napari_promptseg.models.sam3.device import import_sam3, on_device
    import_sam3()
    from sam3.model.sam3_video_predictor import Sam3VideoPredictor

    t = time.perf_counter()
    net = meta_model(ckpt, arch)
    res = {"load": time.perf_counter() - t}
    vid = video(frames, size)
    with tempfile.TemporaryDirectory() as folder:
        for k, img in enumerate(vid):
            Image.fromarray(img).convert("RGB").save(Path(folder) / f"{k:05d}.png")
        predictor = object.__new__(Sam3VideoPredictor)  # its __init__ builds on CUDA
        predictor.model, predictor.async_loading_frames, predictor.video_loader_type = net, False, "cv2"
        # its log lines query the GPU (torch.cuda.get_device_properties): CPU only here
        predictor._get_torch_and_gpu_properties = predictor._get_session_stats = lambda: "cpu"
        ids: dict[int, set] = {}
        with on_device("cpu", video=True), torch.inference_mode():
            t = time.perf_counter()
            sid = predictor.start_session(folder)["session_id"]
            predictor.add_prompt(sid, frame_idx=0, text=TEXT)
            for out in predictor.propagate_in_video(sid, "both", None, None):
                o = out["outputs"]
                ids[out["frame_index"]] = {i for i, m in zip(o["out_obj_ids"].tolist(),
                                                            o["out_binary_masks"], strict=True) if m.any()}
            res["total"] = time.perf_counter() - t
    res["instances"] = len(set().union(*ids.values())) if ids else 0
    res["per_frame_ids"] = [len(ids.get(k, ())) for k in range(frames)]
    res["rss"] = peak_rss_gb()
    return res


def query_logits(model, emb) -> np.ndarray:
    """The detector's ``(200,)`` query logits for the text prompt (before the presence score)."""
    import torch

    from napari_promptseg.models.sam3.device import on_device

    net = model.net
    with torch.no_grad(), on_device("cpu"):
        backbone_out = model._backbone_out(emb)
        backbone_out.update(model.encode_text(TEXT))
        out = net.forward_grounding(backbone_out=backbone_out, find_input=model._find_stage(),
                                    geometric_prompt=net._get_dummy_prompt(), find_target=None)
    return out["pred_logits"][0, :, 0].double().numpy()


def make_checkpoint(path: Path, arch: str, detections: int, size: int) -> None:
    """Random weights with the detector's scores raised as in the tests; with ``detections`` > 0
    they are then shifted so that about that many queries pass Meta's new-instance threshold (0.7)
    on frame 0: one dimension of the dot-product scoring becomes a constant (weights 0, biases 1 and
    ``shift / scale``), which adds ``shift`` to every query's logit. Raised alone, random weights
    let all 200 queries pass, and Meta's per-frame mask NMS over 200 masks dominates the time."""
    import torch

    from napari_promptseg.models.sam3.model import build_sam3_network
    from napari_promptseg.models.sam3.tracker import meta_state

    torch.manual_seed(0)
    net = build_sam3_network("cpu", arch)
    with torch.no_grad():  # scores above Meta's new-instance threshold (0.7), as in the tests
        scoring = net.dot_prod_scoring
        for p in scoring.parameters():
            p.mul_(3.0)
        if detections <= 0:  # every logit clamped high (12)
            scoring.hs_proj.bias.add_(0.5)
            scoring.prompt_proj.bias.add_(0.5)
        net.transformer.decoder.presence_token_head.layers[-1].bias.add_(5.0 if detections <= 0 else 20.0)
    if detections > 0:
        from napari_promptseg.models.sam3.model import SAM3_ARCHS, Sam3Model

        model = Sam3Model(spec(arch), net, "calibration", torch.device("cpu"), SAM3_ARCHS[arch][0])
        with torch.no_grad():  # dimension 0 becomes the constant term
            scoring.hs_proj.weight[0] = 0.0
            scoring.prompt_proj.weight[0] = 0.0
            scoring.prompt_proj.bias[0] = 1.0
            scoring.hs_proj.bias[0] = 0.0
        emb = model.embed(video(1, size)[0])
        logits = query_logits(model, emb)
        ranked = np.sort(logits)[::-1]
        k = min(detections, len(logits)) - 1
        # new logits a * L + c: the k-th best at logit(0.75), the median 3 below it
        a = 3.0 / max(ranked[k] - np.median(logits), 1e-3)
        c = float(np.log(3.0) - a * ranked[k])
        with torch.no_grad():
            scoring.hs_proj.weight.mul_(a)
            scoring.hs_proj.bias.mul_(a)
            scoring.hs_proj.bias[0] = c / scoring.scale
        after = model.detect(emb, TEXT)[0]
        print(f"calibrated: {int((after > 0.7).sum())} of {len(after)} queries above 0.7 on frame 0 "
              f"(logits x {a:.2f} + {c:.2f})", flush=True)
    torch.save({"model": meta_state(net)}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sam3", choices=["sam3", "sam3_tiny_336"])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--detections", type=int, default=8,
                    help="about this many instances on frame 0 (0: every query passes)")
    ap.add_argument("--side", choices=["ours", "meta"], help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        run = run_ours if args.side == "ours" else run_meta
        out = run(args.checkpoint, args.arch, args.frames, args.size)
        print("RESULT " + json.dumps(out), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "sam3_random.pt"
        make_checkpoint(ckpt, args.arch, args.detections, args.size)
        res = {}
        for side in ("meta", "ours"):
            cmd = [sys.executable, __file__, "--side", side, "--checkpoint", str(ckpt), "--arch",
                   args.arch, "--frames", str(args.frames), "--size", str(args.size)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            res[side] = json.loads(line[len("RESULT "):])
    m, o = res["meta"], res["ours"]
    n = args.frames
    model = "full-size SAM 3 (840 M parameters)" if args.arch == "sam3" else f"`{args.arch}` (test size)"
    body = [
        "## SAM 3 videos (`ps.track_concept` vs Meta's video predictor)",
        "",
        f"{model}, random weights, CPU ({machine()}); a {n} x {args.size} x {args.size} video, "
        f"text prompt on frame 0; each side in its own process. `python benchmarks/bench_sam3_video.py "
        f"--arch {args.arch} --frames {n} --size {args.size}`",
        "",
        "| | Meta video predictor | ours | ours / Meta |",
        "|---|---|---|---|",
        f"| total (s) | {m['total']:.1f} | {o['total']:.1f} | {o['total'] / m['total']:.2f}x |",
        f"| per frame (s) | {m['total'] / n:.2f} | {o['total'] / n:.2f} | |",
        f"| peak RSS (GB) | {m['rss']:.2f} | {o['rss']:.2f} | |",
        f"| load (build + checkpoint, s) | {m['load']:.1f} | {o['load']:.1f} | |",
        f"| instances tracked | {m['instances']} | {o['instances']} | |",
    ]
    print("\n".join(body))
    print(f"\nids per frame: Meta {m['per_frame_ids']}, ours {o['per_frame_ids']}")


if __name__ == "__main__":
    main()
