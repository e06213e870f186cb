"""Turn a training checkpoint into the shipped weights file (a bare float16 state dict).

    python -m napari_promptseg.training.export /work/train_run/checkpoint.pt --update-registry

writes ``src/napari_promptseg/models/data/promptseg_demo.pt`` (~4.6 MB), checks on held-out
synthetic images that the float16 weights segment like the float32 ones, and with
``--update-registry`` writes the new hash and size into ``models/registry.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

__all__ = ["export_weights", "update_registry_hash", "main"]


def export_weights(checkpoint: str | Path, out: str | Path, half: bool = True) -> Path:
    """Write the model weights of ``checkpoint`` (training checkpoint or state dict) to ``out``
    as a bare state dict, float16 if ``half``; atomically. Returns ``out``."""
    import torch

    from napari_promptseg.models.checkpoint import read_state_dict

    state = read_state_dict(checkpoint)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out


def update_registry_hash(name: str, path: str | Path) -> str:
    """Rewrite the hash and size of registry entry ``name`` in ``models/registry.py`` to match
    ``path`` (a source checkout only). Returns the new ``sha256:...`` string."""
    digest = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    size = round(Path(path).stat().st_size / 1e6, 1)
    reg = Path(__file__).resolve().parents[1] / "models" / "registry.py"
    text = reg.read_text()
    start = text.index("ModelSpec(DEMO_MODEL" if name == "promptseg_demo" else f'ModelSpec("{name}"')
    end = text.index("package_file=", start)
    entry = text[start:end]
    entry = re.sub(r'"sha256:[0-9a-f]{64}"', f'"{digest}"', entry, count=1)
    entry = re.sub(r"\n(\s+)[0-9.]+, \"2\.3M\"", lambda m: f'\n{m.group(1)}{size}, "2.3M"', entry, count=1)
    reg.write_text(text[:start] + entry + text[end:])
    return digest


def _compare(checkpoint: Path, exported: Path) -> dict:
    """Held-out IoUs of the float32 checkpoint and of the exported weights."""
    from napari_promptseg.models.checkpoint import read_state_dict
    from napari_promptseg.models.sam.model import build_sam
    from napari_promptseg.training.loop import evaluate, held_out_set

    items = held_out_set()
    res = {}
    for label, path in (("float32", checkpoint), ("exported", exported)):
        sam = build_sam("promptseg_demo")
        sam.load_state_dict(read_state_dict(path))
        res[label] = evaluate(sam.eval(), items)
    return res


def _describe(checkpoint: Path) -> None:
    """Print what a training checkpoint says about its run (step, time, held-out history)."""
    import torch

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "step" not in ck:
        return
    print(f"training checkpoint: step {ck['step']}, {ck.get('elapsed_s', 0) / 3600:.2f} h of training")
    for h in ck.get("history", [])[-3:]:
        print(f"  held-out at step {h['step']}: one-click IoU {h['one_click_iou']:.3f}, "
              f"box IoU {h['box_iou']:.3f}")


def main(argv: list[str] | None = None) -> int:
    from napari_promptseg.models.registry import get_spec
    from napari_promptseg.models.weights import packaged_path

    p = argparse.ArgumentParser(description="Export a training checkpoint as the packaged demo weights.")
    p.add_argument("checkpoint", help="training checkpoint (e.g. RUN_DIR/checkpoint.pt)")
    p.add_argument("--out", default=None, help="output file (default: the packaged weights file)")
    p.add_argument("--float32", action="store_true", help="keep float32 (default float16, half the size)")
    p.add_argument("--update-registry", action="store_true",
                   help="write the new hash and size into models/registry.py (source checkout)")
    p.add_argument("--no-check", action="store_true", help="skip the held-out comparison")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else packaged_path(get_spec("promptseg_demo"))
    _describe(Path(a.checkpoint))
    export_weights(a.checkpoint, out, half=not a.float32)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if not a.no_check:
        for label, r in _compare(Path(a.checkpoint), out).items():
            print(f"{label:>9}: one-click IoU {r['one_click_iou']:.3f}  "
                  f"box IoU {r['box_iou']:.3f}  (n={r['n']})")
    if a.update_registry:
        print(f"registry updated: {update_registry_hash('promptseg_demo', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
