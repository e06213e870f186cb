"""Train the packaged demo model on generated images (CPU or GPU).

The shipped weights were made with (see docs/model_card_promptseg_demo.md)::

    python -m napari_promptseg.training.train_demo --out RUN_DIR --seed 0 --steps 7000 --hours 2.5
    python -m napari_promptseg.training.export RUN_DIR/checkpoint.pt

Re-running the same command resumes from ``RUN_DIR/checkpoint.pt``. A log line every
``--log-every`` steps; held-out one-click and box IoU every ``--eval-minutes``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared CPU (a laptop, a CI runner, a
    # 2-core box running tests beside training) spinning made steps up to 10x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt is written (and resumed) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=7000, help="total optimiser steps (sets the LR schedule)")
    p.add_argument("--hours", type=float, default=None,
                   help="training time budget in hours (resumed parts included); the LR decays by then")
    p.add_argument("--arch", default="promptseg_demo")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--images-per-step", type=int, default=2)
    p.add_argument("--objects-per-image", type=int, default=12)
    p.add_argument("--corrective-iters", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-autocast", action="store_true", help="float32 encoder instead of bfloat16")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--no-resume", action="store_true")
    a = p.parse_args(argv)

    import torch

    from napari_promptseg.training.loop import TrainConfig, train

    torch.set_num_threads(a.threads)
    cfg = TrainConfig(
        arch=a.arch, steps=a.steps, images_per_step=a.images_per_step,
        objects_per_image=a.objects_per_image, corrective_iters=a.corrective_iters, lr=a.lr,
        seed=a.seed, autocast=not a.no_autocast, device=a.device, max_hours=a.hours,
        checkpoint_every_s=a.checkpoint_minutes * 60, eval_every_s=a.eval_minutes * 60,
        extra={"argv": list(sys.argv[1:] if argv is None else argv)},
    )
    print(f"config: {cfg}", flush=True)
    t0, losses, prompts, images, ious = time.monotonic(), [], 0, 0, []
    for ev in train(cfg, out_dir=a.out, resume=not a.no_resume):
        kind = ev["kind"]
        if kind == "step":
            losses.append(ev["loss"])
            ious.append(ev["final_iou"])
            prompts += ev["prompts"]
            images += ev["images"]
            if ev["step"] % a.log_every == 0:
                dt = time.monotonic() - t0
                print(
                    f"step {ev['step']:6d}  loss {sum(losses) / len(losses):.4f}  "
                    f"train-iou {sum(ious) / len(ious):.3f}  lr {ev['lr']:.2e}  "
                    f"{prompts / dt:.1f} prompts/s  {images / dt:.2f} images/s  "
                    f"elapsed {ev['elapsed_s'] / 60:.1f} min",
                    flush=True,
                )
                t0, losses, prompts, images, ious = time.monotonic(), [], 0, 0, []
        elif kind == "eval":
            print(
                f"EVAL step {ev['step']}: one-click IoU {ev['one_click_iou']:.3f}  "
                f"box IoU {ev['box_iou']:.3f}  (n={ev['n']}, elapsed {ev['elapsed_s'] / 60:.1f} min)",
                flush=True,
            )
        else:
            print(f"{kind}: {ev}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
