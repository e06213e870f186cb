"""Random-weight checkpoints for the benchmarks (real weights cannot be downloaded everywhere):
seed 0, saved to a new temporary folder, loaded by both sides of a comparison."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def random_vit_b() -> Path:
    """A SAM ViT-B ``state_dict`` checkpoint of random weights (seed 0)."""
    from napari_promptseg.models.sam.model import build_sam

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp()) / "sam_vit_b_random.pth"
    torch.save(build_sam("vit_b").state_dict(), path)
    return path


def random_sam2(arch: str) -> Path:
    """A SAM 2 checkpoint (``{"model": state_dict}``, as Meta's) of random weights (seed 0) for
    ``arch`` (:data:`napari_promptseg.models.sam2.model.SAM2_ARCHS`)."""
    from napari_promptseg.models.sam2.model import build_sam2_network

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp()) / f"{arch}_random.pt"
    torch.save({"model": build_sam2_network(arch).state_dict()}, path)
    return path


def load_random_sam2(arch: str, checkpoint: Path):
    """Our model of ``arch`` on ``checkpoint`` (the Hiera-T registry spec with that architecture)."""
    import dataclasses

    import napari_promptseg as ps
    from napari_promptseg.models.registry import get_spec

    spec = dataclasses.replace(get_spec("sam2.1_hiera_tiny"), arch=arch)
    return ps.load_model(spec, checkpoint=checkpoint, device="cpu")
