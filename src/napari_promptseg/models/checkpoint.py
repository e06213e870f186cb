"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` and state-dict unwrapping."""

from __future__ import annotations

import hashlib
from pathlib import Path

from napari_promptseg.models.weights import WeightsError

__all__ = ["read_state_dict", "fingerprint"]

_WRAPPERS = ("model_state", "state_dict", "model")
_PREFIXES = ("module.", "sam.", "model.")


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
