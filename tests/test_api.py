"""Public API behaviour: shapes, dtypes, serialisation, devices, checkpoint errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.core.devices import resolve_device
from napari_promptseg.models.weights import WeightsError

from .conftest import blobs_image, random_sam_checkpoint


@pytest.fixture(scope="module")
def emb(tiny_model):
    return tiny_model.embed(blobs_image((120, 170), seed=5))


def test_prediction_shapes_and_types(tiny_model, emb):
    pred = tiny_model.predict(emb, points=[[60, 80]])
    assert pred.masks.shape == (3, 120, 170) and pred.masks.dtype == bool
    assert pred.scores.shape == (3,) and pred.scores.dtype == np.float32
    assert pred.logits.shape == (3, *tiny_model.low_res_shape) and pred.logits.dtype == np.float32
    assert pred.best == int(np.argmax(pred.scores))
    single = tiny_model.predict(emb, points=[[60, 80]], multimask=False)
    assert single.masks.shape == (1, 120, 170) and single.best == 0


@pytest.mark.parametrize(
    "dtype", [bool, np.uint8, np.int8, np.uint16, np.int32, np.float16, np.float32, np.float64]
)
def test_embed_accepts_every_real_dtype(tiny_model, dtype):
    img = blobs_image((64, 80), seed=6)[..., 0].astype(dtype)
    if np.dtype(dtype).kind == "f":
        img[0, 0], img[0, 1], img[1, 0] = np.nan, np.inf, -np.inf
    e = tiny_model.embed(img)
    assert e.original_size == (64, 80)
    assert torch.isfinite(e.features["image_embed"]).all()
    assert tiny_model.predict(e, box=[5, 5, 50, 60]).masks.shape == (3, 64, 80)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 40, 40)), np.zeros((0, 4)), np.ones((8, 8), complex)])
def test_embed_rejects_bad_images(tiny_model, bad):
    with pytest.raises(ValueError):
        tiny_model.embed(bad)


def test_predict_rejects_bad_prompts(tiny_model, emb):
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_model.predict(emb)
    with pytest.raises(ValueError, match="outside the image"):
        tiny_model.predict(emb, points=[[500, 10]])
    with pytest.raises(ValueError, match=r"mask_input must have shape \(64, 64\)"):
        tiny_model.predict(emb, points=[[10, 10]], mask_input=np.zeros((256, 256), np.float32))


def test_embedding_from_another_model_is_refused(tiny_model, emb):
    other = dataclasses.replace(emb, checkpoint_id="sha256:other")
    with pytest.raises(ValueError, match="embed the image again"):
        tiny_model.predict(other, points=[[10, 10]])
    with pytest.raises(TypeError, match="Embedding"):
        tiny_model.predict(np.zeros((1, 64, 64, 64)), points=[[10, 10]])


@pytest.mark.parametrize("name", ["e.npz", "embedding_without_suffix"])
def test_embedding_round_trips_through_a_file(tiny_model, emb, tmp_path, name):
    emb.save(tmp_path / name)
    back = ps.Embedding.load(tmp_path / name)
    assert (back.model, back.checkpoint_id, back.original_size, back.input_size) == (
        emb.model, emb.checkpoint_id, emb.original_size, emb.input_size)
    a = tiny_model.predict(emb, points=[[30, 40]], labels=[1])
    b = tiny_model.predict(back, points=[[30, 40]], labels=[1])
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    state = emb.to_state()
    assert all(isinstance(v, np.ndarray) for v in state["features"].values())


def test_cached_decoder_state_does_not_change_results(tiny_model):
    e = tiny_model.embed(blobs_image((90, 60), seed=7))
    first = tiny_model.predict(e, points=[[40, 30]])
    assert "sam_decoder" in e.derived
    # a mask prompt takes the uncached path; it must not disturb the cache
    refined = tiny_model.predict(e, points=[[40, 30]], mask_input=first.logits[0])
    assert not np.array_equal(refined.logits, first.logits)
    again = tiny_model.predict(e, points=[[40, 30]])
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.logits, again.logits)
    e.derived.clear()
    fresh = tiny_model.predict(e, points=[[40, 30]])
    np.testing.assert_array_equal(first.logits, fresh.logits)


def test_refinement_changes_nothing_of_the_inputs(tiny_model, emb):
    p = tiny_model.predict(emb, points=[[60, 80]])
    logits = p.logits.copy()
    tiny_model.predict(emb, points=[[60, 80]], mask_input=p.logits[p.best])
    np.testing.assert_array_equal(p.logits, logits)


def test_too_elongated_images_get_a_clear_error(tiny_model):
    # the tiny model's input is 256 px: a 2 x 1100 strip would shrink to 0 rows
    with pytest.raises(ValueError, match="too elongated"):
        tiny_model.embed(np.zeros((2, 1100), np.uint8))
    assert tiny_model.embed(np.zeros((3, 1100), np.uint8)).input_size[0] >= 1


def test_devices():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ps.load_model("vit_b", device="cuda")


def test_model_knows_its_device(tiny_model):
    assert tiny_model.device == torch.device("cpu")
    assert next(tiny_model.sam.parameters()).device == tiny_model.device


# -- checkpoint files -------------------------------------------------------------------------
def test_wrapped_and_prefixed_state_dicts_load(tiny_spec, tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, weights_only=True)
    wrapped = {"model_state": {f"sam.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    m = ps.load_model(tiny_spec, checkpoint=tmp_path / "wrapped.pt", device="cpu")
    for a, b in zip(m.sam.state_dict().values(), state.values()):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "tiny_as_vit_b.pth"
    random_sam_checkpoint("vit_tiny", path)
    with pytest.raises(WeightsError, match="does not fit model 'vit_b'.*width 32 matches 'vit_tiny'"):
        ps.load_model("vit_b", checkpoint=path, device="cpu")


def test_unreadable_and_missing_checkpoints(tiny_spec, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="could not read checkpoint"):
        ps.load_model(tiny_spec, checkpoint=junk, device="cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        ps.load_model(tiny_spec, checkpoint=tmp_path / "missing.pth", device="cpu")


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_code_is_refused(tiny_spec, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    with pytest.raises(WeightsError, match="refused for safety"):
        ps.load_model(tiny_spec, checkpoint=path, device="cpu")


def test_local_checkpoint_id_follows_the_content(tiny_spec, tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    random_sam_checkpoint("vit_tiny", a, seed=1)
    random_sam_checkpoint("vit_tiny", b, seed=2)
    ma = ps.load_model(tiny_spec, checkpoint=a, device="cpu")
    mb = ps.load_model(tiny_spec, checkpoint=b, device="cpu")
    assert ma.checkpoint_id != mb.checkpoint_id
    e = ma.embed(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="embed the image again"):
        mb.predict(e, points=[[5, 5]])


def test_masks_are_upscaled_lazily_and_equal_the_eager_ones(tiny_model):
    """``pred.mask(i)`` computes one full-resolution mask; ``pred.masks`` all; same values."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (300, 200, 3)).astype(np.uint8)
    emb = tiny_model.embed(img)
    a = tiny_model.predict(emb, points=[[150, 100]])
    b = tiny_model.predict(emb, points=[[150, 100]])
    one = a.mask(2)
    assert one.shape == (300, 200) and one.dtype == bool
    assert list(a._one) == [2]  # only the asked-for mask was computed
    np.testing.assert_array_equal(one, b.masks[2])
    np.testing.assert_array_equal(a.masks, b.masks)
