"""Finetune a SAM-family model on the user's own labelled images, with the demo model's loop.

>>> import napari_promptseg as ps
>>> res = ps.finetune("promptseg_demo", images, labels, steps=300, out="my_model.pt")
>>> res.before, res.after            # held-out one-click / box IoU
>>> model = ps.load_model("promptseg_demo", checkpoint="my_model.pt")

Images are 2D ``(H, W)`` / ``(H, W, 3|4)`` or stacks ``(Z, H, W)`` / ``(Z, H, W, 3|4)``, given
one array or a list; labels are integer instance ids with the same ``(Z,) H, W`` shape. Each
image (each stack as a whole) gets one intensity window, as at inference. Training samples are the
whole plane resized like at inference, or random crops (40-100 % of the short side) resized to
the model input, with flips and 90-degree rotations. A fraction of the planes is held out for
validation; IoUs are measured at the model's input resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_promptseg.core.image import intensity_window, to_rgb_uint8

__all__ = [
    "finetune", "finetune_iter", "FinetuneResult", "LabelledSource", "prepare_planes", "read_array", "main",
    "MIN_SIDE",
]

MIN_SIDE = 32


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: ``before``/``after`` are held-out IoUs
    (``{"one_click_iou", "box_iou", "n"}``); ``checkpoint`` the saved file (or None)."""

    model: str
    checkpoint: Path | None
    before: dict
    after: dict
    steps: int
    n_train: int
    n_val: int
    validation_is_training: bool = False
    history: list[dict] = field(default_factory=list)


# -- input checking -------------------------------------------------------------------------
def _as_list(x, what: str) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"{what}: got an empty list")
        return [np.asarray(v) for v in x]
    return [np.asarray(x)]


def prepare_planes(images, labels) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_prepare` without the group indices."""
    return _prepare(images, labels)[0]


def _renumber(pl: np.ndarray) -> np.ndarray:
    """Instance ids as consecutive int32 (0 stays background): safe for any integer dtype/range."""
    u, inv = np.unique(pl, return_inverse=True)
    inv = inv.reshape(pl.shape)
    return (inv if u[0] == 0 else inv + 1).astype(np.int32)


def _prepare(images, labels) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Check images and labels and split them into 2D planes: ``[(rgb (H, W, 3) uint8,
    labels (H, W) int32)]``. Raises ``ValueError`` with a clear message for mismatching shapes,
    non-integer or empty labels and too-small images. Also returns, per plane, the index of the
    image it comes from (validation holds out whole images, not neighbouring slices)."""
    ims, labs = _as_list(images, "images"), _as_list(labels, "labels")
    if len(ims) != len(labs):
        raise ValueError(
            f"got {len(ims)} images but {len(labs)} label images; give one label image per image"
        )
    planes, groups = [], []
    for i, (im, lab) in enumerate(zip(ims, labs, strict=True)):
        name = f"image {i}" if len(ims) > 1 else "the image"
        if lab.ndim == 3 and lab.shape[-1] in (3, 4) and im.shape[:2] == lab.shape[:2]:
            raise ValueError(
                f"labels of {name} look like an RGB(A) picture (shape {lab.shape}); save the instance "
                "ids as a single-channel integer image (0 = background, 1, 2, ... = objects)"
            )
        if lab.dtype.kind not in "iu":
            hint = ""
            if lab.dtype.kind == "f":
                hint = " (use labels.astype(np.int32) if they hold whole numbers)"
            raise ValueError(
                f"labels of {name} must be integer instance ids (0 = background, 1, 2, ... = objects), "
                f"got dtype {lab.dtype}{hint}"
            )
        if lab.ndim not in (2, 3):
            raise ValueError(
                f"labels of {name} must be 2D (H, W) or a stack (Z, H, W), got shape {lab.shape}"
            )
        channels = im.ndim == lab.ndim + 1 and im.shape[-1] in (1, 3, 4)
        spatial = im.shape[:-1] if channels else im.shape
        if spatial != lab.shape:
            raise ValueError(
                f"labels of {name} have shape {lab.shape} but the image has shape {im.shape}; "
                "labels must cover the image pixel for pixel (channels last, if any, excepted)"
            )
        if min(lab.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"{name} is too small ({lab.shape[-2]} x {lab.shape[-1]} pixels); finetuning needs at "
                f"least {MIN_SIDE} x {MIN_SIDE}"
            )
        if lab.min() < 0:
            raise ValueError(f"labels of {name} contain negative values; use 0 for background")
        if not lab.any():
            raise ValueError(f"labels of {name} are empty (all 0): nothing to learn from; label some objects")
        stack = lab.ndim == 3
        window = intensity_window(im) if stack and im.dtype != np.uint8 else None
        for z in range(lab.shape[0]) if stack else [None]:
            pl = lab[z] if stack else lab
            if not pl.any():  # empty slices of a stack are skipped
                continue
            pim = im[z] if stack else im
            planes.append((to_rgb_uint8(pim, window), _renumber(pl)))
            groups.append(i)
    return planes, groups


# -- data -----------------------------------------------------------------------------------
def _resize_nearest(lab: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = lab.shape
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(np.intp)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(np.intp)
    return lab[rows[:, None], cols[None, :]]


def _to_model_input(rgb: np.ndarray, lab: np.ndarray, size: int):
    """Resize like inference (``ResizeLongestSide``): longest side -> ``size``."""
    from napari_promptseg.models.triton_guard import guard_triton

    guard_triton()  # finetuning may run inside napari: see triton_guard
    from segment_anything.utils.transforms import ResizeLongestSide

    t = ResizeLongestSide(size)
    out = t.apply_image(rgb)
    return out, _resize_nearest(lab, out.shape[:2])


class LabelledSource:
    """Training samples from user planes; ``sample(rng)`` -> ``(rgb, labels)`` at model input size."""

    def __init__(self, planes: Sequence[tuple[np.ndarray, np.ndarray]], size: int):
        self.planes = list(planes)
        self.size = size

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rgb, lab = self.planes[int(rng.integers(len(self.planes)))]
        if rng.random() < 0.5:
            h, w = lab.shape
            for _ in range(10):  # a crop with some object in it (else the whole plane)
                side = int(min(h, w) * rng.uniform(0.4, 1.0))
                r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = lab[r : r + side, c : c + side]
                if np.count_nonzero(crop) >= 20:
                    rgb, lab = rgb[r : r + side, c : c + side], crop
                    break
        k = int(rng.integers(4))
        rgb, lab = np.rot90(rgb, k), np.rot90(lab, k)
        if rng.random() < 0.5:
            rgb, lab = rgb[:, ::-1], lab[:, ::-1]
        return _to_model_input(np.ascontiguousarray(rgb), np.ascontiguousarray(lab), self.size)


def _holdout(groups: list[int], fraction: float, seed: int) -> set[int]:
    """Plane indices held out for validation: whole images when there are several (neighbouring
    slices of one stack are nearly the same picture), else the last contiguous block of slices."""
    n = len(groups)
    if n < 2 or fraction <= 0:
        return set()
    want = min(n - 1, max(1, round(n * fraction)))
    images = sorted(set(groups))
    if len(images) > 1:
        out: set[int] = set()
        for g in np.random.default_rng(seed).permutation(images):
            members = {i for i, gi in enumerate(groups) if gi == g}
            if len(out) + len(members) > n - 1:
                continue
            out |= members
            if len(out) >= want:
                break
        return out
    return set(range(n - want, n))


def _any_object(planes, size: int) -> bool:
    from napari_promptseg.training.sampling import pick_objects

    return any(len(pick_objects(_to_model_input(r, lab, size)[1], 1, np.random.default_rng(0)))
               for r, lab in planes)


def _val_items(planes, size: int, objects: int, seed: int):
    from napari_promptseg.training.sampling import pick_objects

    items = []
    for i, (rgb, lab) in enumerate(planes):
        r, lab_s = _to_model_input(rgb, lab, size)
        ids = pick_objects(lab_s, objects, np.random.default_rng([seed, i]))
        items.append((r, lab_s, ids))
    return items


# -- finetuning -----------------------------------------------------------------------------
def _base_sam(model, checkpoint, device):
    """(spec, trainable ``Sam``) from a registry name, a ModelSpec or a loaded SAM model."""
    from napari_promptseg.models import ModelSpec, get_spec, load_model
    from napari_promptseg.models.sam.model import SamModel, build_sam

    if isinstance(model, (str, ModelSpec)):
        spec = model if isinstance(model, ModelSpec) else get_spec(model)
        if spec.family != "sam":
            raise ValueError(f"finetuning supports SAM-family models; {spec.name!r} is {spec.family!r}")
        loaded = load_model(spec, checkpoint=checkpoint, device="cpu")
    elif isinstance(model, SamModel):
        spec, loaded = model.spec, model
    else:
        raise TypeError(
            f"model must be a registry name, a ModelSpec or a SAM model, got {type(model).__name__}"
        )
    sam = build_sam(spec.arch)
    sam.load_state_dict({k: v.detach().cpu() for k, v in loaded.sam.state_dict().items()})
    return spec, sam


def finetune_iter(
    model,
    images,
    labels,
    steps: int = 300,
    out: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    val_fraction: float = 0.2,
    lr: float = 1e-4,
    freeze_encoder: bool = False,
    objects_per_image: int = 8,
    device: str = "auto",
    seed: int = 0,
) -> Iterator[dict]:
    """:func:`finetune` as a generator of progress dicts (``kind`` = ``"eval"``, ``"step"``);
    the last one has ``kind="done"`` and ``result`` (a :class:`FinetuneResult`)."""
    import torch

    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.training.loop import TrainConfig, evaluate, train

    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    planes, groups = _prepare(images, labels)
    val_idx = _holdout(groups, val_fraction, seed)
    val = [pl for i, pl in enumerate(planes) if i in val_idx]
    trn = [pl for i, pl in enumerate(planes) if i not in val_idx]
    same = not val
    if same:
        val = trn  # one plane: validation on the training data (reported as such)
    dev = resolve_device(device)
    spec, sam = _base_sam(model, checkpoint, dev)
    size = int(sam.image_encoder.img_size)
    val_items = _val_items(val, size, 16, seed)
    if not any(len(ids) for _, _, ids in val_items) or not _any_object(trn, size):
        raise ValueError(
            f"no labelled object is still at least 10 pixels large once the image is resized to the "
            f"model's {size}-pixel input; crop or tile your images (objects should span >= 10 px at "
            f"that scale) or finetune a model with a larger input such as vit_b"
        )
    sam.to(dev)
    before = evaluate(sam, val_items, dev)
    yield {"kind": "eval", "step": 0, **before}
    cfg = TrainConfig(
        arch=spec.arch, steps=steps, images_per_step=1, objects_per_image=objects_per_image,
        corrective_iters=1, lr=lr, warmup_steps=max(1, min(50, steps // 10)), seed=seed,
        autocast=dev.type == "cuda", device=str(dev), eval_every_s=float("inf"),
        freeze_encoder=freeze_encoder,
    )
    yield from train(cfg, LabelledSource(trn, size), out_dir=None, sam=sam, eval_items=[])
    after = evaluate(sam, val_items, dev)
    yield {"kind": "eval", "step": steps, **after}
    path = None
    if out is not None:
        path = Path(out).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
        meta = {"base_model": spec.name, "steps": steps, "val_before": before, "val_after": after}
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": state, "finetune": meta}, tmp)
        tmp.replace(path)
    n_val = 0 if same else len(val)
    result = FinetuneResult(spec.name, path, before, after, steps, len(trn), n_val, same)
    yield {"kind": "done", "result": result}


def finetune(
    model,
    images,
    labels,
    steps: int = 300,
    out: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    val_fraction: float = 0.2,
    lr: float = 1e-4,
    freeze_encoder: bool = False,
    objects_per_image: int = 8,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Finetune ``model`` (registry name such as ``"vit_b"`` or ``"promptseg_demo"``, a
    :class:`ModelSpec`, or a loaded SAM model) on ``images`` and their instance ``labels``.

    steps: optimiser steps (one image, up to ``objects_per_image`` objects, 2 prompts each).
    out: where to save the finetuned weights (load them with
    ``ps.load_model(name, checkpoint=out)``). checkpoint: start from this file instead of the
    registry weights. val_fraction: planes held out for validation (none with a single plane:
    then validation uses the training plane, ``validation_is_training=True``). freeze_encoder:
    train only the prompt encoder and mask decoder (much faster for large models on a CPU).
    progress: called with each progress dict. Returns a :class:`FinetuneResult`.
    """
    result = None
    for ev in finetune_iter(
        model, images, labels, steps, out, checkpoint=checkpoint, val_fraction=val_fraction, lr=lr,
        freeze_encoder=freeze_encoder, objects_per_image=objects_per_image, device=device, seed=seed,
    ):
        if progress is not None:
            progress(ev)
        if ev["kind"] == "done":
            result = ev["result"]
    return result


# -- command line ---------------------------------------------------------------------------
_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


def _files(specs: Sequence[str], what: str) -> list[Path]:
    out: list[Path] = []
    for s in specs:
        p = Path(s).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in _EXTS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{what}: {p} is neither a file nor a folder")
    if not out:
        raise FileNotFoundError(f"{what}: no {'/'.join(_EXTS)} files in {', '.join(specs)}")
    return out


def _natural(p: Path) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]


def _keys(paths: list[Path]) -> list[str]:
    """File stems without the prefix and suffix that all of them share."""
    import os

    stems = [p.stem for p in paths]
    if len(stems) < 2:
        return stems
    pre = len(os.path.commonprefix(stems))
    suf = len(os.path.commonprefix([s[::-1] for s in stems]))
    return [s[pre : len(s) - suf] if len(s) > pre + suf else s for s in stems]


def pair_files(images: list[Path], labels: list[Path]) -> list[tuple[Path, Path]]:
    """Pair image and label files by name: equal stems, or stems equal once the prefix/suffix
    shared by each list is removed (``img_3.tif`` <-> ``img_3_masks.tif``, ``a/3.tif`` <->
    ``b/3.png``). Raises ``ValueError`` naming the files that have no partner."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image files but {len(labels)} label files; give one label file "
                         "per image")
    images, labels = sorted(images, key=_natural), sorted(labels, key=_natural)
    if len(images) == 1:
        return [(images[0], labels[0])]
    for ki, kl in ((_keys(images), _keys(labels)), ([p.stem for p in images], [p.stem for p in labels])):
        if len(set(ki)) == len(ki) and set(ki) == set(kl):
            by_key = dict(zip(kl, labels, strict=True))
            return [(im, by_key[k]) for im, k in zip(images, ki, strict=True)]
    raise ValueError(
        "cannot pair image and label files by name: " + ", ".join(p.name for p in images)
        + " vs " + ", ".join(p.name for p in labels) + "; name them alike (cell_01.tif, cell_01_labels.tif)"
    )


def read_array(path: str | Path) -> np.ndarray:
    """A tif/png/jpg (scikit-image) or npy (numpy) file as an array."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        return np.load(p, allow_pickle=False)
    from skimage.io import imread

    return np.asarray(imread(p))


def main(argv: list[str] | None = None) -> int:
    """``napari-promptseg-finetune``: finetune on labelled image files, save a checkpoint."""
    import argparse

    p = argparse.ArgumentParser(
        prog="napari-promptseg-finetune",
        description="Finetune a SAM-family model on your labelled images (tif, png, npy; 2D or stacks). "
        "Image and label files are paired by name (e.g. cell_01.tif <-> cell_01_labels.tif).",
    )
    p.add_argument("--model", default="promptseg_demo", help="registry name, e.g. promptseg_demo or vit_b")
    p.add_argument("--checkpoint", default=None, help="start from this weights file, not the registry's")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--labels", nargs="+", required=True, help="label files or folders (integer instance ids)")
    p.add_argument("--out", required=True, help="where to save the finetuned weights (.pt)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only (fast on a CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)

    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import sys

    from napari_promptseg.models.weights import WeightsError

    try:
        pairs = pair_files(_files(a.images, "--images"), _files(a.labels, "--labels"))
        for i, lab in pairs:
            print(f"  {i.name}  <->  {lab.name}")
        ims, labs = [i for i, _ in pairs], [lab for _, lab in pairs]
        images = [read_array(f) for f in ims]
        labels = [read_array(f) for f in labs]

        def show(ev: dict) -> None:
            if ev["kind"] == "eval":
                print(f"step {ev['step']}: validation one-click IoU {ev['one_click_iou']:.3f}, "
                      f"box IoU {ev['box_iou']:.3f} ({ev['n']} objects)", flush=True)
            elif ev["kind"] == "step" and (ev["step"] % 25 == 0 or ev["step"] == a.steps):
                print(f"step {ev['step']}/{a.steps}: loss {ev['loss']:.4f}", flush=True)

        res = finetune(
            a.model, images, labels, a.steps, a.out, checkpoint=a.checkpoint, val_fraction=a.val_fraction,
            lr=a.lr, freeze_encoder=a.freeze_encoder, device=a.device, seed=a.seed, progress=show,
        )
    except (ValueError, OSError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = " (validation on the training images: no plane was held out)" if res.validation_is_training else ""
    print(f"saved {res.checkpoint}; validation one-click IoU {res.before['one_click_iou']:.3f} -> "
          f"{res.after['one_click_iou']:.3f}, box IoU {res.before['box_iou']:.3f} -> "
          f"{res.after['box_iou']:.3f}{note}")
    print(f"load it with: ps.load_model({a.model!r}, checkpoint={str(res.checkpoint)!r})")
    return 0
