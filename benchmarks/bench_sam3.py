"""SAM 3 concept prompts: napari-promptseg's ``ps.find`` versus Meta's ``Sam3Processor``, the same
random full-size weights (840 M parameters), on the CPU, in one run.

    python benchmarks/bench_sam3.py            # ~10 min on 2 cores; --write stores the rows

Each side runs in a fresh process (its peak RSS is its own) on one 1008 x 1008 RGB image:
- embed: ``model.embed`` vs ``Sam3Processor.set_image``;
- text: a noun phrase right after the embedding (``ps.find(model, emb, text=)`` vs
  ``set_text_prompt``);
- ten successive exemplar edits: five boxes added one by one, then the last box moved five times.
  Meta's processor adds a box with one grounding pass (``add_geometric_prompt``) but has no way to
  move or remove one: it resets the prompts and adds every box again (one pass per box, plus its
  placeholder text). ``ps.find`` runs one pass for the whole box set on the cached embedding, with
  text encodings cached per phrase.
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
from _report import machine, write_section  # noqa: E402

SIZE = 1008
ADD = [[100, 100, 220, 240], [400, 520, 540, 650], [700, 150, 820, 300], [250, 700, 380, 860],
       [820, 760, 950, 900]]
MOVES = 5


def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(20, 90, (SIZE // 24 + 1, SIZE // 24 + 1, 3)).astype(np.uint8)
    img = np.kron(small, np.ones((24, 24, 1), np.uint8))[:SIZE, :SIZE].copy()
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for r0, c0, r1, c1 in ADD:
        cy, cx, rad = (r0 + r1) / 2, (c0 + c1) / 2, min(r1 - r0, c1 - c0) / 2
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2] = (220, 200, 70)
    return img


def edits() -> list[list[list[float]]]:
    """The exemplar boxes after each of the ten edits."""
    out, boxes = [], []
    for b in ADD:
        boxes = [*boxes, b]
        out.append(boxes)
    for k in range(1, MOVES + 1):
        r0, c0, r1, c1 = ADD[-1]
        out.append([*ADD[:-1], [r0 - 4 * k, c0 - 3 * k, r1 - 4 * k, c1 - 3 * k]])
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def run_ours(ckpt: str) -> dict:
    import napari_promptseg as ps

    t = time.perf_counter()
    model = ps.load_model("sam3", checkpoint=ckpt, device="cpu")
    res = {"load": time.perf_counter() - t}
    img = image()
    t = time.perf_counter()
    emb = model.embed(img)
    res["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    ps.find(model, emb, text="yellow disc")
    res["text"] = time.perf_counter() - t
    times = []
    for boxes in edits():
        t = time.perf_counter()
        ps.find(model, emb, exemplars=boxes)
        times.append(time.perf_counter() - t)
    res["edits"] = times
    res["rss"] = peak_rss_gb()
    return res


def run_meta(ckpt: str) -> dict:
    from PIL import Image
    from sam3.model.box_ops import box_xyxy_to_cxcywh
    from sam3.model.sam3_image_processor import Sam3Processor

    from napari_promptseg.models.sam3.device import bpe_vocabulary, import_sam3, on_device

    import_sam3()
    import torch
    from sam3.model_builder import build_sam3_image_model

    def box(b):
        r0, c0, r1, c1 = b
        return (box_xyxy_to_cxcywh(torch.tensor([[c0, r0, c1, r1]], dtype=torch.float32)) / SIZE)[0].tolist()

    with on_device("cpu"):  # Meta's code creates CUDA tensors and pins memory unconditionally
        t = time.perf_counter()
        net = build_sam3_image_model(bpe_path=str(bpe_vocabulary()), device="cpu", checkpoint_path=ckpt,
                                     load_from_HF=False)
        res = {"load": time.perf_counter() - t}
        proc = Sam3Processor(net, device="cpu", confidence_threshold=0.5)
        pil = Image.fromarray(image())
        t = time.perf_counter()
        state = proc.set_image(pil)
        res["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        proc.set_text_prompt("yellow disc", state)
        res["text"] = time.perf_counter() - t
        proc.reset_all_prompts(state)
        times, previous = [], []
        for boxes in edits():
            t = time.perf_counter()
            if boxes[:-1] == previous:  # an added box: one pass
                proc.add_geometric_prompt(box(boxes[-1]), True, state)
            else:  # a moved box: no API for it, start again
                proc.reset_all_prompts(state)
                for b in boxes:
                    proc.add_geometric_prompt(box(b), True, state)
            times.append(time.perf_counter() - t)
            previous = boxes
        res["edits"] = times
    res["rss"] = peak_rss_gb()
    return res


def make_checkpoint(path: Path) -> None:
    import torch

    from napari_promptseg.models.sam3.model import build_sam3_network

    torch.manual_seed(0)
    net = build_sam3_network("cpu")
    torch.save({"model": {f"detector.{k}": v for k, v in net.state_dict().items()}}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["ours", "meta"], help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help="store the rows in docs/benchmarks.md")
    args = ap.parse_args()
    if args.side:
        out = run_ours(args.checkpoint) if args.side == "ours" else run_meta(args.checkpoint)
        print("RESULT " + json.dumps(out), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "sam3_random.pt"
        make_checkpoint(ckpt)
        res = {}
        for side in ("meta", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--side", side, "--checkpoint", str(ckpt)],
                                  capture_output=True, text=True, check=True)
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            res[side] = json.loads(line[len("RESULT "):])
    m, o = res["meta"], res["ours"]
    adds, moves = slice(0, len(ADD)), slice(len(ADD), None)
    rows = [
        ("embed one 1008² RGB image", m["embed"], o["embed"]),
        ("text prompt after the embedding", m["text"], o["text"]),
        ("10 exemplar edits, total", sum(m["edits"]), sum(o["edits"])),
        (f"  of which {len(ADD)} boxes added one by one", sum(m["edits"][adds]), sum(o["edits"][adds])),
        (f"  of which the last box moved {MOVES} times", sum(m["edits"][moves]), sum(o["edits"][moves])),
    ]
    body = [
        "## SAM 3 concept prompts (`ps.find` vs Meta's `Sam3Processor`)",
        "",
        f"Full-size SAM 3 image model, random weights, CPU ({machine()}); each side in its own "
        "process. `python benchmarks/bench_sam3.py`",
        "",
        "| step | Meta `Sam3Processor` (s) | ours (s) | ours / Meta |",
        "|---|---|---|---|",
        *[f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |" for name, a, b in rows],
        f"| peak RSS (GB) | {m['rss']:.2f} | {o['rss']:.2f} | |",
        f"| load (build + checkpoint) | {m['load']:.1f} | {o['load']:.1f} | |",
    ]
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section("sam3", text)


if __name__ == "__main__":
    main()
