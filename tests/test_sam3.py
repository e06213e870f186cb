"""SAM 3 without building it: the registry entry, the gated download's errors, the device context,
and ``ps.find``'s own logic (thresholds, order, labels, boxes) on a stand-in concept model.
Parity with Meta's ``Sam3Processor`` on the full model: tests/test_sam3_parity.py (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.core.results import Embedding
from napari_promptseg.models.registry import ModelSpec
from napari_promptseg.models.weights import WeightsError, hf_location

from .component_model import ComponentModel, mask_piece


def test_sam3_is_in_the_registry_on_the_hugging_face_hub():
    spec = ps.models.get_spec("sam3")
    assert spec.family == "sam3" and spec.arch == "sam3" and spec.filename == "sam3.pt"
    assert hf_location(spec) == ("facebook/sam3", "main", "sam3.pt")
    assert hf_location(ps.models.get_spec("vit_b")) is None
    assert "gated" in spec.description.lower()


def _hub_error(cls, status: int):
    import httpx

    request = httpx.Request("GET", "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt")
    response = httpx.Response(status, request=request)
    return cls("Access to model facebook/sam3 is restricted.", response=response)


@pytest.fixture
def hub(monkeypatch):
    """hf_hub_download replaced: records its calls and raises / returns what the test sets."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls, outcome = [], {}

    def fake(**kwargs):
        calls.append(kwargs)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["path"]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.delenv("PROMPTSEG_OFFLINE", raising=False)
    return calls, outcome


def test_gated_checkpoint_says_how_to_get_access(hub):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    calls, outcome = hub
    outcome["error"] = _hub_error(GatedRepoError, 403)
    with pytest.raises(WeightsError, match=r"request access at https://huggingface.co/facebook/sam3 "
                                           r"and log in with `hf auth login`.*checkpoint="):
        ps.load_model("sam3", device="cpu")
    assert calls == [{"repo_id": "facebook/sam3", "filename": "sam3.pt", "revision": "main",
                      "local_files_only": False}]
    outcome["error"] = _hub_error(RepositoryNotFoundError, 401)  # no token at all
    with pytest.raises(WeightsError, match="not logged in.*hf auth login"):
        ps.load_model("sam3", device="cpu")


def test_offline_reads_the_hub_cache_only(hub, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls, outcome = hub
    monkeypatch.setenv("PROMPTSEG_OFFLINE", "1")
    outcome["error"] = LocalEntryNotFoundError("not cached")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache and PROMPTSEG_OFFLINE is set"):
        ps.load_model("sam3", device="cpu")
    assert calls[-1]["local_files_only"] is True


def test_a_downloaded_file_that_is_not_sam3_is_refused(hub, tmp_path):
    calls, outcome = hub
    path = tmp_path / "sam3.pt"
    torch.save({"model": {"image_encoder.patch_embed.proj.weight": torch.zeros(1)}}, path)
    outcome["path"] = str(path)
    with pytest.raises(WeightsError, match="not a SAM 3 checkpoint"):
        ps.load_model("sam3", device="cpu")


def test_a_local_sam3_checkpoint_is_recognised_by_its_layout():
    from napari_promptseg.models.checkpoint import spec_for_state

    state = {"detector.backbone.x": torch.zeros(1), "tracker.y": torch.zeros(1)}
    assert spec_for_state(state).name == "sam3"


def test_device_context_redirects_cuda_tensors_and_is_scoped():
    from napari_promptseg.models.sam3.device import on_device

    with on_device("cpu"):
        t = torch.zeros(2, device="cuda")
        assert t.device.type == "cpu"
        assert t.pin_memory() is t
    if not torch.cuda.is_available():  # outside the context torch is untouched
        with pytest.raises((RuntimeError, AssertionError)):
            torch.zeros(2, device="cuda")


def test_the_bpe_vocabulary_is_found_without_a_download():
    pytest.importorskip("open_clip")
    from napari_promptseg.models.sam3.device import bpe_vocabulary

    path = bpe_vocabulary()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.stat().st_size > 1_000_000


# --- ps.find's own logic, on a stand-in model ---------------------------------------------------

class ConceptStub(ComponentModel):
    """Two fixed detections (scores 0.9 and 0.3, a disc and a square) and one at 0.6 overlapping the
    disc; records what detect() received."""

    supports_concepts = True

    def __init__(self):
        super().__init__()
        self.spec = ModelSpec("concepts", "test", "concepts", "", "", 0, "0", "test", "none")
        self.seen = []

    def detect(self, emb, text, boxes, labels):
        self.seen.append((text, boxes, labels))
        scores = np.array([0.3, 0.9, 0.6], np.float32)
        pred = np.array([[0, 0, 9, 9], [10, 10, 30, 30], [15, 15, 35, 35]], np.float32)
        return scores, pred, torch.arange(3)

    def mask_pieces(self, idx, size):
        h, w = size
        rr, cc = np.mgrid[:h, :w]
        shapes = [(rr < 10) & (cc < 10), (rr - 20) ** 2 + (cc - 20) ** 2 < 100,
                  (rr >= 15) & (rr < 35) & (cc >= 15) & (cc < 35)]
        return [mask_piece(shapes[int(i)]) for i in idx]


def test_find_keeps_objects_above_the_threshold_by_decreasing_score():
    model, img = ConceptStub(), np.zeros((40, 50), np.uint16)
    found = ps.find(model, img, text=" nucleus ", exemplars=[[30, 40, 20, 10]], negative=[[1, 2, 5, 6]])
    assert [o.score for o in found.objects] == pytest.approx([0.9, 0.6])
    assert found.objects[0].box == (10, 10, 30, 30)
    text, boxes, labels = model.seen[-1]
    assert text == "nucleus"
    np.testing.assert_array_equal(boxes, [[20, 10, 30, 40], [1, 2, 5, 6]])  # corners sorted
    np.testing.assert_array_equal(labels, [True, False])
    lab = found.labels
    assert lab.dtype == np.int32 and lab.shape == (40, 50)
    assert lab[20, 20] == 1 and lab[33, 33] == 2 and lab[5, 5] == 0  # the better one keeps overlaps
    assert len(ps.find(model, img, text="x", threshold=0.0)) == 3
    assert len(ps.find(model, img, text="x", threshold=0.95)) == 0
    assert ps.find(model, img, text="x", threshold=0.95).labels.max() == 0


def test_find_takes_an_embedding_and_checks_its_arguments():
    model, img = ConceptStub(), np.zeros((40, 50), np.uint8)
    emb = model.embed(img)
    assert isinstance(emb, Embedding) and len(ps.find(model, emb, exemplars=[2, 2, 8, 8])) == 2
    assert model.seen[-1][0] is None
    with pytest.raises(ValueError, match="nothing to find"):
        ps.find(model, emb)
    with pytest.raises(ValueError, match="text is empty"):
        ps.find(model, emb, text="  ")
    with pytest.raises(ValueError, match=r"exemplars must be boxes .*shape \(N, 4\)"):
        ps.find(model, emb, exemplars=[[1, 2, 3]])
    with pytest.raises(ValueError, match=r"negative\[0\]: box .* lies entirely outside"):
        ps.find(model, emb, text="x", negative=[[100, 100, 120, 120]])
    with pytest.raises(ValueError, match="threshold must be in"):
        ps.find(model, emb, text="x", threshold=1.5)
    with pytest.raises(TypeError, match="cannot find concepts.*sam3"):
        ps.find(ComponentModel(), img, text="x")
    with pytest.raises(ValueError, match=r"must be \(H, W\) gray .* got shape \(2, 40, 50\); for a stack"):
        ps.find(model, np.stack([img, img]), text="x", exemplars=[[1, 2, 5, 6]])


@pytest.mark.slow
def test_sam3_loads_and_finds_with_triton_hidden_beside_napari():
    """Beside napari's OpenGL the triton guard hides triton; sam3 imports it at load (a training
    kernel): it must still load, find and predict, and triton stays hidden for torch after."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None  # what guard_triton does beside Mesa's LLVM
import numpy as np
import napari_promptseg as ps
from napari_promptseg.models.registry import ModelSpec
from napari_promptseg.models.sam3.model import Sam3Model, build_sam3_network
spec = ModelSpec("sam3_tiny_test", "sam3", "sam3_tiny_336", "", "", 0, "40M", "test", "none")
net = build_sam3_network(arch="sam3_tiny_336")
model = Sam3Model(spec, net, "tiny", "cpu", resolution=336)
img = np.random.default_rng(0).integers(0, 4000, (60, 80)).astype(np.uint16)
emb = model.embed(img)
assert len(ps.find(model, emb, text="cell", threshold=0.0)) > 0
assert model.predict(emb, points=[[30, 40]], labels=[1]).masks.shape[-2:] == (60, 80)
assert sys.modules["triton"] is None  # hidden again for torch
print("LOADED")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "LOADED" in out.stdout, out.stderr[-2000:]
