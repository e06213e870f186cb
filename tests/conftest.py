"""Shared fixtures: random-weight SAM checkpoints (tiny and vit_b) and an isolated cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_promptseg.models.triton_guard import guard_triton


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache or the network by accident."""
    monkeypatch.setenv("PROMPTSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PROMPTSEG_OFFLINE", raising=False)


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def random_sam_checkpoint(arch: str, path, seed: int = 0):
    """Save a randomly initialised SAM state dict (the official ``torch.save(state_dict)`` form)."""
    import torch

    from napari_promptseg.models.sam.model import build_sam

    torch.manual_seed(seed)
    sam = build_sam(arch).eval()
    torch.save(sam.state_dict(), path)
    return sam


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "sam_tiny.pth"
    random_sam_checkpoint("vit_tiny", path)
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_ckpt):
    from napari_promptseg.models.registry import ModelSpec

    return ModelSpec(
        name="sam_tiny_test", family="sam", arch="vit_tiny",
        url="http://127.0.0.1:9/sam_tiny_test.pth",
        known_hash="sha256:" + sha256_of(tiny_ckpt), size_mb=0.5, params="0.1M",
        description="tiny random SAM for tests", licence="test",
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_spec, tiny_ckpt):
    import napari_promptseg as ps

    return ps.load_model(tiny_spec, checkpoint=tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def tiny_official(tiny_ckpt):
    """Meta's predictor on its own, untouched copy of the tiny weights."""
    import torch
    guard_triton()  # napari tests may have loaded Mesa's LLVM already
    from segment_anything import SamPredictor

    from napari_promptseg.models.sam.model import build_sam

    sam = build_sam("vit_tiny").eval()
    sam.load_state_dict(torch.load(tiny_ckpt, weights_only=True))
    return SamPredictor(sam)


def blobs_image(shape=(700, 1300), seed=0, n=12) -> np.ndarray:
    """A deterministic uint8 RGB image of bright ellipses on a textured background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float32) + rng.normal(30, 8, (h, w, 1))
    for _ in range(n):
        r, c = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(0.04, 0.15) * h, rng.uniform(0.04, 0.15) * w
        inside = ((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 < 1
        img[inside] += rng.uniform(60, 200, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo model on the CPU (real weights, in the package)."""
    import napari_promptseg as ps

    return ps.load_model("promptseg_demo", device="cpu")


@pytest.fixture
def calls(demo_model, monkeypatch):
    """The image sizes the shipped model encodes (one entry per encoder call)."""
    seen = []
    orig = demo_model._embed_rgb

    def spy(rgb, *args):
        seen.append(rgb.shape[:2])
        return orig(rgb, *args)

    monkeypatch.setattr(demo_model, "_embed_rgb", spy)
    return seen


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---- SAM 2: the tiny config (hiera-t) on a 256-pixel input, random weights ----------------------
SAM2_TEST_ARCH = "sam2.1_hiera_t_256"
SAM2_TEST_OVERRIDES = ["++model.image_size=256"]
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="session")
def sam2_ckpt(tmp_path_factory):
    """Meta's checkpoint form ``{"model": state_dict}`` of a randomly initialised SAM 2.1 tiny."""
    import torch

    from napari_promptseg.models.sam2.model import build_sam2_network

    torch.manual_seed(0)
    net = build_sam2_network(SAM2_TEST_ARCH)
    path = tmp_path_factory.mktemp("weights") / "sam2_tiny_256.pt"
    torch.save({"model": net.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def sam2_spec(sam2_ckpt):
    from napari_promptseg.models.registry import ModelSpec

    return ModelSpec(
        name="sam2_tiny_test", family="sam2", arch=SAM2_TEST_ARCH,
        url="http://127.0.0.1:9/sam2_tiny_test.pt", known_hash="sha256:" + sha256_of(sam2_ckpt),
        size_mb=156, params="38.9M", description="SAM 2.1 tiny, 256 px, random weights", licence="test",
    )


@pytest.fixture(scope="session")
def sam2_model(sam2_spec, sam2_ckpt):
    import napari_promptseg as ps

    return ps.load_model(sam2_spec, checkpoint=sam2_ckpt, device="cpu")


def moving_blobs(t=6, h=120, w=180, seed=0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames: two bright ellipses moving across a noisy background."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    frames = np.full((t, h, w, 3), 30, np.int32)
    for k in range(t):
        a = ((rr - 0.4 * h - 2 * k) / (0.15 * h)) ** 2 + ((cc - 0.3 * w - 5 * k) / (0.12 * w)) ** 2
        b = ((rr - 0.75 * h) / (0.1 * h)) ** 2 + ((cc - 0.75 * w + 3 * k) / (0.08 * w)) ** 2
        frames[k][a < 1] = 200
        frames[k][b < 1] = 140
    frames += rng.integers(0, 25, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)
