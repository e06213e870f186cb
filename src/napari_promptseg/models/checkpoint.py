"""Reading checkpoint files safely (``torch.load(weights_only=True)``, state-dict unwrapping) and
telling which registry model a local checkpoint file is (:func:`registry_name_for`,
:func:`load_checkpoint`: the file is read once)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from napari_promptseg.models.registry import BACKENDS, REGISTRY, ModelSpec
from napari_promptseg.models.weights import WeightsError

__all__ = ["read_state_dict", "fingerprint", "spec_for_state", "registry_name_for", "build_model",
           "load_checkpoint"]

_WRAPPERS = ("model_state", "state_dict", "model")
_PREFIXES = ("module.", "sam.", "model.")
_ENCODER_KEYS = ("image_encoder.patch_embed.proj.weight", "image_encoder.trunk.patch_embed.proj.weight")


def fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """Cheap content id of a (possibly multi-GB) file: sha256 of its size and three 1 MiB samples.

    Used in embedding cache keys for local checkpoints; registry models use their known hash.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as f:
        for offset in (0, max(0, size // 2 - chunk // 2), max(0, size - chunk)):
            f.seek(offset)
            h.update(f.read(chunk))
    return "fp:" + h.hexdigest()[:32]


def _unwrap(obj, path: Path) -> dict:
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    keys = list(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
            keys = list(obj)
    return obj


def read_state_dict(path: str | Path) -> dict:
    """Load a checkpoint file and return its plain ``{name: tensor}`` state dict.

    Accepts a bare state dict or one wrapped under ``model_state`` / ``state_dict`` / ``model``
    (micro-sam and trainer checkpoints), with ``module.`` / ``sam.`` / ``model.`` key prefixes.
    Only tensors and plain containers are unpickled (``weights_only=True``).
    """
    import pickle

    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{p} contains pickled objects other than weights, which are refused for safety "
            f"({str(err).splitlines()[0]}). If you trust the file, re-save its state dict with "
            "torch.save(model.state_dict(), path)."
        ) from err
    except Exception as err:  # torch raises many types for a non-checkpoint file
        raise WeightsError(
            f"could not read checkpoint {p}: {err.__class__.__name__}: {err}. Is it a PyTorch "
            "checkpoint, completely downloaded?"
        ) from err
    return _unwrap(obj, p)


def spec_for_state(state: dict, path: str | Path = "the checkpoint") -> ModelSpec:
    """The first registry entry whose architecture fits ``state`` (read from ``path``): SAM by
    its encoder width, SAM 2 by its Hiera width and depth, SAM 3 by Meta's ``detector.*`` layout.
    :class:`WeightsError` naming ``path`` and the known models when none does."""
    from napari_promptseg.models.sam.model import arch_of
    from napari_promptseg.models.sam2.model import sam2_arch_of

    sam3 = any(k.startswith("detector.") for k in state)  # no sam3 import: it is an optional extra
    arch = "sam3" if sam3 else (sam2_arch_of(state) or arch_of(state))
    spec = next((s for s in REGISTRY.values() if arch is not None and s.arch == arch), None)
    if spec is not None:
        return spec
    if arch is not None:
        found = f"its architecture {arch!r} is not that of a registry model"
    elif any(k in state for k in _ENCODER_KEYS):
        found = "its image encoder has a size no known architecture has"
    else:
        found = ("it is not a SAM or SAM 2 checkpoint (no image_encoder.*patch_embed.proj.weight) nor a "
                 "SAM 3 one (no detector.*)")
    known = ", ".join(f"{s.name} ({s.arch})" for s in REGISTRY.values())
    raise WeightsError(f"no known model fits checkpoint {path}: {found}. Known models: {known}")


def registry_name_for(path: str | Path) -> str:
    """The name of the registry entry whose architecture fits the checkpoint file ``path`` (the
    first of several, e.g. ``vit_b`` for micro-sam's ViT-B); :class:`WeightsError` when none
    does. Reads the whole file: to load it too, use :func:`load_checkpoint` (one read)."""
    return spec_for_state(read_state_dict(path), path).name


def build_model(spec: ModelSpec, state: dict, checkpoint_id: str, device):
    """The loaded model of ``spec``'s family from ``state`` on ``device`` (a resolved device)."""
    import importlib

    module, func = BACKENDS[spec.family].split(":")
    return getattr(importlib.import_module(module), func)(spec, state, checkpoint_id, device)


def load_checkpoint(path: str | Path, device: str = "auto"):
    """Load the local checkpoint file ``path`` as the registry model whose architecture it fits
    (:func:`spec_for_state`), reading the file once; ``device`` as in ``load_model``."""
    from napari_promptseg.core.devices import resolve_device

    dev = resolve_device(device)  # fail fast, before reading gigabytes
    p = Path(path).expanduser()
    state = read_state_dict(p)
    return build_model(spec_for_state(state, p), state, fingerprint(p), dev)
