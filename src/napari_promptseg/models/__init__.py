"""Model zoo: registry, weights, and one backend module per family."""

from __future__ import annotations

import threading
from pathlib import Path

from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import REGISTRY, ModelSpec, get_spec, list_models

__all__ = ["ModelSpec", "PromptableModel", "REGISTRY", "list_models", "get_spec", "load_model", "as_model"]


def load_model(
    name: str | ModelSpec,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    progress=True,
) -> PromptableModel:
    """Load a promptable model by registry name (or :class:`ModelSpec`).

    checkpoint: None downloads the official weights into the cache (once) and verifies their
    hash; a path loads that file with no network access. device: ``"auto"`` (cuda > mps > cpu),
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``. progress: see
    :func:`~napari_promptseg.models.weights.fetch_weights`.
    """
    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models.checkpoint import build_model, fingerprint, read_state_dict
    from napari_promptseg.models.weights import fetch_weights

    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    dev = resolve_device(device)  # fail fast, before any download
    if checkpoint is None:
        path = fetch_weights(spec, progress=progress)
        checkpoint_id = spec.known_hash
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        checkpoint_id = fingerprint(path)
    return build_model(spec, read_state_dict(path), checkpoint_id, dev)


_BY_NAME: dict[str, PromptableModel] = {}  # registry models loaded by as_model, by name
_LOCK = threading.Lock()


def as_model(model) -> PromptableModel:
    """``model`` itself when it is loaded; a registry name or :class:`ModelSpec` is loaded with
    :func:`load_model` (cached weights, or a download) once per process and kept for the next
    call. TypeError for anything else."""
    if isinstance(model, (str, ModelSpec)):
        spec = model if isinstance(model, ModelSpec) else get_spec(model)
        with _LOCK:
            if spec.name not in _BY_NAME:
                _BY_NAME[spec.name] = load_model(spec)
            return _BY_NAME[spec.name]
    if isinstance(model, PromptableModel) or (hasattr(model, "embed") and hasattr(model, "predict")):
        return model
    raise TypeError(f"model must be a loaded model (ps.load_model) or a registry name such as 'vit_b', "
                    f"got {type(model).__name__}")
