"""Device selection: ``"auto"`` picks cuda, then mps, then cpu."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device=None):
    """Return an indexed ``torch.device`` (``cuda:0``, not ``cuda``: it compares equal to a
    tensor's ``.device``); raise ``ValueError`` for an unknown or unavailable device."""
    import torch

    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps", 0)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        if dev.index is None:  # tensors report "cuda:0": compare equal to them
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
        dev = torch.device("mps", 0)
    elif dev.type != "cpu":
        raise ValueError(f"device type {dev.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev
