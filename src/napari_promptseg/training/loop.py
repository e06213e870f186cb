"""The training loop shared by the demo model and finetuning (Qt-free; torch imported lazily).

One step encodes a few images and, since the encoder dominates the cost, decodes MANY prompts
from each embedding: up to ``objects_per_image`` objects, each with a first prompt (one point,
multimask, or a jittered box) and ``corrective_iters`` corrective clicks that reuse the previous
low-res logits as mask prompt. Images reach the network exactly as at inference: uint8 RGB from
``image.to_rgb_uint8`` (one window per image), then ``Sam.preprocess`` (SAM's mean/std, padding).

:func:`train` is a generator: it yields a dict per step (``kind="step"``), per held-out
evaluation (``kind="eval"``) and per checkpoint written (``kind="checkpoint"``), so it runs the
same in a script, a CLI or a napari worker. Checkpoints hold the model, optimiser, step, elapsed time
and RNG state, are written atomically, and ``train(..., resume=True)`` continues from the last
one. Every random choice of step ``s`` comes from ``np.random.default_rng([seed, s])``, so an
interrupted and resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.training.sampling import (
    corrective_click,
    interior_point,
    jittered_box,
    pick_objects,
    random_point,
    tight_box,
)
from napari_promptseg.training.synthetic import synthetic_image

__all__ = [
    "TrainConfig", "SyntheticSource", "train", "evaluate", "held_out_set", "init_key_projections",
    "new_sam", "load_training_checkpoint", "lr_factor", "CHECKPOINT_NAME", "HELD_OUT_SEED_LIMIT",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: synthetic seeds below this are reserved for held-out evaluation and benchmarks
HELD_OUT_SEED_LIMIT = 10_000_000


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (all plain values: saved in every checkpoint)."""

    arch: str = "promptseg_demo"
    steps: int = 10_000
    images_per_step: int = 2
    objects_per_image: int = 12
    corrective_iters: int = 1
    box_fraction: float = 0.5
    lr: float = 4e-4
    weight_decay: float = 0.05
    warmup_steps: int = 250
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    autocast: bool = True
    freeze_encoder: bool = False
    device: str = "cpu"
    max_hours: float | None = None
    checkpoint_every_s: float = 300.0
    eval_every_s: float = 600.0
    eval_images: int = 8
    eval_objects_per_image: int = 13
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- data -----------------------------------------------------------------------------------
class SyntheticSource:
    """Endless generated training images at the model's input size (see :mod:`.synthetic`).

    ``sample(rng)`` returns ``(rgb (h, w, 3) uint8, labels (h, w) int32)`` with
    ``max(h, w) == size``; a fifth of the images are non-square (so the model sees SAM's padding),
    a quarter use a random display window instead of the default percentiles (napari users set
    contrast limits by hand). Seeds are drawn at or above :data:`HELD_OUT_SEED_LIMIT`.
    """

    def __init__(self, size: int = 256):
        self.size = size

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        seed = int(rng.integers(HELD_OUT_SEED_LIMIT, 2**62))
        shape = (s, s)
        if rng.random() < 0.2:
            short = int(rng.integers(s // 2, s))
            shape = (s, short) if rng.random() < 0.5 else (short, s)
        img, labels = synthetic_image(seed, shape)
        window = None
        if rng.random() < 0.25:
            lo = float(np.percentile(img, rng.uniform(0, 5)))
            hi = float(np.percentile(img, rng.uniform(97, 100))) * rng.uniform(0.8, 1.3)
            window = (lo, max(hi, lo + 1))
        return to_rgb_uint8(img, window), labels


def held_out_set(n_images: int = 8, objects_per_image: int = 13, first_seed: int = 9_000_000):
    """Fixed evaluation data: ``[(rgb, labels, ids)]`` from held-out seeds (never trained on)."""
    out = []
    for i in range(n_images):
        img, labels = synthetic_image(first_seed + i)
        ids = pick_objects(labels, objects_per_image, np.random.default_rng(first_seed + i))
        out.append((to_rgb_uint8(img), labels, ids))
    return out


# -- model ----------------------------------------------------------------------------------
def init_key_projections(sam) -> None:
    """Set the decoder's cross-attention key projections equal to the query projections.

    With independent random keys and queries, the prompt tokens attend almost uniformly over the
    image and training can sit for minutes in an all-empty-mask state; with k = q at the start,
    similar tokens attend to each other and training leaves that state within ~100 steps.
    """
    import torch

    tr = sam.mask_decoder.transformer
    attns = [tr.final_attn_token_to_image]
    for layer in tr.layers:
        attns += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for a in attns:
            a.k_proj.weight.copy_(a.q_proj.weight)
            a.k_proj.bias.copy_(a.q_proj.bias)


def new_sam(arch: str, seed: int = 0):
    """An untrained ``Sam`` of ``arch`` (from ``SAM_ARCHS``), seeded, with :func:`init_key_projections`."""
    import torch

    from napari_promptseg.models.sam.model import build_sam

    torch.manual_seed(seed)
    sam = build_sam(arch)
    init_key_projections(sam)
    return sam


def _autocast(device, enabled: bool):
    """bfloat16 autocast (cuda, cpu); a no-op when disabled and on mps, where bfloat16 autocast is
    not available everywhere and float16 would need gradient scaling."""
    import torch

    if not enabled or device.type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _encode(sam, rgbs: Sequence[np.ndarray], device, autocast: bool):
    """Image embeddings ``(B, C, h, w)`` float32 of uint8 RGB images (max side = input size)."""
    import torch

    xs = [
        sam.preprocess(torch.as_tensor(r, device=device).permute(2, 0, 1).float()[None])
        for r in rgbs
    ]
    with _autocast(device, autocast):
        feats = sam.image_encoder(torch.cat(xs))
    return feats.float()


def _decode(sam, feats, pts, lbls, boxes, mask_in, multimask: bool):
    """Batched decode of N prompts on one embedding ``feats`` (1, C, h, w).

    pts ``(N, P, 2)`` (row, col) or None, lbls ``(N, P)``, boxes ``(N, 4)`` (row0, col0, row1,
    col1) or None, mask_in ``(N, 1, 4h, 4w)`` or None. Returns low-res logits ``(N, K, 4h, 4w)``
    and predicted IoU ``(N, K)``. (row, col) become SAM's (x, y) here.
    """
    import torch

    dev = feats.device
    points = None
    if pts is not None:
        points = (torch.as_tensor(pts[..., ::-1].copy(), dtype=torch.float, device=dev),
                  torch.as_tensor(lbls, dtype=torch.int, device=dev))
    box_t = None
    if boxes is not None:
        box_t = torch.as_tensor(boxes[:, [1, 0, 3, 2]], dtype=torch.float, device=dev)
    sparse, dense = sam.prompt_encoder(points=points, boxes=box_t, masks=mask_in)
    return sam.mask_decoder(
        image_embeddings=feats,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _upsample(low, size: int):
    import torch.nn.functional as F

    return F.interpolate(low, (size, size), mode="bilinear", align_corners=False)


# -- one step -------------------------------------------------------------------------------
def _image_loss(sam, feats, labels: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
    """Summed loss over all prompts of one image, the number of prompts, and summed final IoU."""
    import torch
    import torch.nn.functional as F

    from napari_promptseg.training.losses import sam_loss

    size = sam.image_encoder.img_size
    ids = pick_objects(labels, cfg.objects_per_image, rng)
    if len(ids) == 0:
        return None, 0, 0.0
    h, w = labels.shape
    padded = np.zeros((size, size), labels.dtype)
    padded[:h, :w] = labels
    gts = padded[None] == ids[:, None, None]  # (n, S, S) bool
    gt_t = torch.as_tensor(gts, dtype=torch.float32, device=feats.device)[:, None]
    # The loss is taken at the low-res logits' resolution against area-averaged (soft) targets:
    # 4x cheaper than at the input resolution, and the decoder is most of a step's cost.
    gt_low = None
    use_box = rng.random(len(ids)) < cfg.box_fraction
    total, n_prompts, final_iou = 0.0, 0, 0.0
    for group in (np.flatnonzero(~use_box), np.flatnonzero(use_box)):
        if len(group) == 0:
            continue
        g = gts[group]
        boxed = bool(use_box[group[0]])
        boxes = np.stack([jittered_box(m, rng) for m in g]) if boxed else None
        pts = None if boxed else np.stack([random_point(m, rng) for m in g])[:, None]
        lbls = None if boxed else np.ones((len(group), 1), np.int64)
        mask_in = None
        for it in range(1 + cfg.corrective_iters):
            multimask = it == 0 and not boxed  # one point is ambiguous: three masks
            low, iou = _decode(sam, feats, pts, lbls, boxes, mask_in, multimask)
            if gt_low is None:
                gt_low = F.interpolate(gt_t, low.shape[-2:], mode="area")
            loss, best, ious = sam_loss(low, iou, gt_low[group])
            total = total + loss * len(group)
            n_prompts += len(group)
            if it == cfg.corrective_iters:
                final_iou += float(ious.sum())
                break
            rows = torch.arange(len(group))
            mask_in = low[rows, best][:, None].detach()
            pred = (_upsample(mask_in, size)[:, 0] > 0).cpu().numpy()
            clicks = [corrective_click(g[j], pred[j], rng) for j in range(len(group))]
            new_pts = np.stack([c[0] for c in clicks])[:, None]
            new_lbl = np.array([[c[1]] for c in clicks], np.int64)
            pts = new_pts if pts is None else np.concatenate([pts, new_pts], 1)
            lbls = new_lbl if lbls is None else np.concatenate([lbls, new_lbl], 1)
    return total, n_prompts, final_iou


def lr_factor(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to ``final_lr_fraction`` at the end
    of the run: at ``steps`` steps or at ``max_hours`` of training, whichever comes first (so a
    time-limited run on a slow or shared CPU still ends with a decayed learning rate)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.max_hours:
        t = max(t, elapsed_s / (cfg.max_hours * 3600))
    return max(cfg.final_lr_fraction, 1 - (1 - cfg.final_lr_fraction) * min(1.0, t))


# -- evaluation -----------------------------------------------------------------------------
def evaluate(sam, items, device=None, autocast: bool = False) -> dict:
    """One-click IoU (interior-most point, highest-scoring of 3 masks) and box IoU (tight box,
    one mask) on ``items`` = ``[(rgb, labels, ids)]`` at the model input resolution."""
    import torch

    device = device or next(sam.parameters()).device
    was_training = sam.training
    sam.eval()
    size = sam.image_encoder.img_size
    click, box = [], []
    with torch.no_grad():
        for rgb, labels, ids in items:
            if len(ids) == 0:
                continue
            feats = _encode(sam, [rgb], device, autocast)
            h, w = labels.shape
            gts = labels[None] == np.asarray(ids)[:, None, None]
            pts = np.stack([interior_point(m) for m in gts])[:, None]
            low, iou = _decode(sam, feats, pts, np.ones((len(ids), 1)), None, None, True)
            best = iou.argmax(1)
            masks = _upsample(low, size)[torch.arange(len(ids)), best][:, :h, :w] > 0
            click += _ious(masks.cpu().numpy(), gts)
            boxes = np.stack([tight_box(m) for m in gts])
            low, _ = _decode(sam, feats, None, None, boxes, None, False)
            masks = _upsample(low, size)[:, 0, :h, :w] > 0
            box += _ious(masks.cpu().numpy(), gts)
    sam.train(was_training)
    return {"one_click_iou": float(np.mean(click)), "box_iou": float(np.mean(box)), "n": len(click)}


def _ious(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    inter = (pred & gt).reshape(len(gt), -1).sum(1)
    union = (pred | gt).reshape(len(gt), -1).sum(1)
    return list(np.where(union > 0, inter / np.maximum(union, 1), 1.0))


# -- checkpoints ----------------------------------------------------------------------------
def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_training_checkpoint(path: str | Path) -> dict:
    """A training checkpoint as a dict (model, optimizer, step, elapsed_s, config, ...)."""
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)


# -- the loop -------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    source=None,
    out_dir: str | Path | None = None,
    sam=None,
    resume: bool = True,
    eval_items=None,
) -> Iterator[dict]:
    """Train ``sam`` (default: a new ``cfg.arch`` network) on ``source`` (default: synthetic).

    Yields progress dicts (see module docstring). ``cfg.max_hours`` counts all training time of
    the run, resumed parts included. ``out_dir``: where ``checkpoint.pt`` is written
    every ``cfg.checkpoint_every_s`` seconds and at the end (None: no files). ``resume``: continue
    from ``out_dir/checkpoint.pt`` if present. ``eval_items``: held-out data for :func:`evaluate`
    (default: :func:`held_out_set`; ``[]`` disables evaluation). Stops after ``cfg.steps`` steps
    or ``cfg.max_hours``, whichever comes first; the model is left in eval mode.
    """
    import torch

    from napari_promptseg.core.devices import resolve_device

    device = resolve_device(cfg.device)
    source = source or SyntheticSource()
    sam = sam if sam is not None else new_sam(cfg.arch, cfg.seed)
    sam.to(device).train()
    if cfg.freeze_encoder:
        sam.image_encoder.requires_grad_(False)
    def decays(name: str, p) -> bool:  # matrices decay; biases, norms, positional tables do not
        return p.ndim >= 2 and "pos" not in name

    params = [(n, p) for n, p in sam.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if decays(n, p)]
    no_decay = [p for n, p in params if not decays(n, p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.999),
    )
    step, elapsed_before, history = 0, 0.0, []
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.is_file():
            ck = load_training_checkpoint(ckpt_path)
            sam.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
            step, elapsed_before = int(ck["step"]), float(ck["elapsed_s"])
            history = list(ck.get("history", []))
            yield {"kind": "resumed", "step": step, "path": str(ckpt_path)}
    if eval_items is None:
        eval_items = held_out_set(cfg.eval_images, cfg.eval_objects_per_image)

    def save() -> dict:
        _save_atomic({
            "model": sam.state_dict(), "optimizer": opt.state_dict(),
            "step": step, "elapsed_s": elapsed_before + time.monotonic() - t0,
            "torch_rng": torch.get_rng_state(), "config": asdict(cfg), "arch": cfg.arch,
            "history": history,
        }, ckpt_path)
        return {"kind": "checkpoint", "step": step, "path": str(ckpt_path)}

    def run_eval() -> dict:
        res = evaluate(sam, eval_items, device, cfg.autocast)
        res.update(kind="eval", step=step, elapsed_s=elapsed_before + time.monotonic() - t0)
        history.append(res)
        return res

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t0

    t0 = time.monotonic()
    last_ckpt = last_eval = t0
    budget = float("inf") if not cfg.max_hours else cfg.max_hours * 3600
    if eval_items and step == 0:
        yield run_eval()
    while step < cfg.steps and elapsed() < budget:
        rng = np.random.default_rng([cfg.seed, step])
        lr = cfg.lr * lr_factor(cfg, step, elapsed())
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [source.sample(rng) for _ in range(cfg.images_per_step)]
        t_step = time.monotonic()
        with torch.no_grad() if cfg.freeze_encoder else contextlib.nullcontext():
            feats = _encode(sam, [b[0] for b in batch], device, cfg.autocast)
        total, n_prompts, iou_sum = 0.0, 0, 0.0
        for b, (_, labels) in enumerate(batch):
            loss, n, iou = _image_loss(sam, feats[b : b + 1], labels, cfg, rng)
            if loss is not None:
                total, n_prompts, iou_sum = total + loss, n_prompts + n, iou_sum + iou
        if n_prompts == 0:
            step += 1
            continue
        loss = total / n_prompts
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
        opt.step()
        step += 1
        now = time.monotonic()
        n_final = n_prompts / (1 + cfg.corrective_iters)
        yield {
            "kind": "step", "step": step, "loss": float(loss.detach()), "lr": lr,
            "prompts": n_prompts, "images": len(batch), "final_iou": iou_sum / max(n_final, 1),
            "step_s": now - t_step, "elapsed_s": elapsed_before + now - t0,
        }
        if eval_items and now - last_eval >= cfg.eval_every_s:
            yield run_eval()
            last_eval = time.monotonic()
        if ckpt_path is not None and now - last_ckpt >= cfg.checkpoint_every_s:
            yield save()
            last_ckpt = time.monotonic()
    if eval_items and (not history or history[-1]["step"] != step):
        yield run_eval()
    if ckpt_path is not None:
        yield save()
    sam.eval()


def steps_for_hours(hours: float, seconds_per_step: float) -> int:
    """Number of steps that fit in ``hours`` at ``seconds_per_step`` (for planning a run)."""
    return max(1, math.floor(hours * 3600 / seconds_per_step))
