"""The packaged demo model (offline, no downloads), the offline default, and finetuning."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.models.registry import DEMO_MODEL, get_spec
from napari_promptseg.models.weights import (
    _stamp,
    available_locally,
    default_model_name,
    fetch_weights,
    packaged_path,
    weights_path,
)
from napari_promptseg.training.sampling import interior_point, tight_box
from napari_promptseg.training.synthetic import synthetic_image

# Mean IoU of the shipped weights on the 77 objects of generated held-out images (seeds 0-2,
# 256 x 256). The shipped export (step 17068, 8.0 h of training) reaches one-click 0.78 and box
# 0.86 here, and box 0.80 on the sample image (the step-11652 export: 0.75 / 0.84 / 0.80); the
# thresholds keep a 0.1 margin below the lower of the two box figures (float differences across
# machines). When a re-export raises these numbers, raise the thresholds with them (longer training
# does not always: the step-22792 run measured no better and was not shipped; docs/benchmarks.md,
# "Demo model quality").
MIN_ONE_CLICK_IOU = 0.68
MIN_BOX_IOU = 0.69


def _iou(a, b) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


@pytest.fixture(scope="module")
def demo():
    return ps.load_model(DEMO_MODEL, device="cpu")


def test_demo_model_is_registered_and_packaged():
    spec = get_spec(DEMO_MODEL)
    assert spec.packaged and spec.family == "sam" and spec.arch == "promptseg_demo"
    path = packaged_path(spec)
    assert path.is_file() and path.suffix == ".pt"
    assert path.stat().st_size < 10e6  # a few MB
    assert abs(path.stat().st_size / 1e6 - spec.size_mb) < 0.2
    assert weights_path(spec) == path
    assert fetch_weights(spec) == path  # the registry hash matches the packaged file


def test_demo_model_loads_offline(monkeypatch):
    monkeypatch.setenv("PROMPTSEG_OFFLINE", "1")
    model = ps.load_model(DEMO_MODEL, device="cpu")
    assert model.name == DEMO_MODEL and model.low_res_shape == (128, 128)
    assert model.checkpoint_id == get_spec(DEMO_MODEL).known_hash


def test_demo_model_segments_generated_nuclei(demo):
    click, box = [], []
    for seed in range(3):
        img, labels = synthetic_image(seed)
        emb = demo.embed(img)
        for i in range(1, labels.max() + 1):
            gt = labels == i
            p = demo.predict(emb, points=[interior_point(gt)])
            click.append(_iou(p.masks[p.best], gt))
            b = demo.predict(emb, box=tight_box(gt), multimask=False)
            box.append(_iou(b.masks[0], gt))
    assert len(click) >= 20
    assert np.mean(click) > MIN_ONE_CLICK_IOU, np.mean(click)
    assert np.mean(box) > MIN_BOX_IOU, np.mean(box)


def test_demo_model_on_the_sample_image_at_its_own_resolution(demo):
    from napari_promptseg.sample import nuclei_image

    img, labels = nuclei_image()  # 512 x 640: resized to the model's 256-px input and back
    emb = demo.embed(img)
    ious = []
    for i in range(1, labels.max() + 1, 4):
        gt = labels == i
        if gt.sum() < 50:
            continue
        p = demo.predict(emb, box=tight_box(gt), multimask=False)
        ious.append(_iou(p.masks[0], gt))
    assert np.mean(ious) > MIN_BOX_IOU, np.mean(ious)


def test_default_model_is_the_demo_until_a_verified_download_is_cached():
    assert default_model_name() == DEMO_MODEL
    assert available_locally(get_spec(DEMO_MODEL))
    spec = get_spec("vit_l")
    path = weights_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not verified")
    assert not available_locally(spec) and default_model_name() == DEMO_MODEL
    path.with_name(path.name + ".verified").write_text(json.dumps(_stamp(path, spec.known_hash)))
    assert available_locally(spec) and default_model_name() == "vit_l"


# -- finetuning -----------------------------------------------------------------------------
def _inverted(seed):
    """Dark nuclei on a bright background: a look the demo model never saw in training."""
    img, labels = synthetic_image(seed, (192, 192), style="sparse")
    return (img.max() - img).astype(np.float32), labels


STEPS = 15


@pytest.mark.slow
def test_finetune_improves_iou_and_saves_a_loadable_checkpoint(tmp_path):
    images, labels = zip(*[_inverted(s) for s in (11, 12)])
    out = tmp_path / "ft.pt"
    events = []
    res = ps.finetune(DEMO_MODEL, list(images), list(labels), steps=STEPS, out=out, lr=3e-4,
                      val_fraction=0.0, objects_per_image=6, device="cpu", progress=events.append)
    assert res.checkpoint == out and out.is_file()
    assert res.validation_is_training and res.n_train == 2
    assert res.after["box_iou"] > res.before["box_iou"] + 0.05, (res.before, res.after)
    assert [e["step"] for e in events if e["kind"] == "step"][-1] == STEPS
    assert events[-1]["kind"] == "done"
    model = ps.load_model(DEMO_MODEL, checkpoint=out, device="cpu")
    img, lab = images[0], labels[0]
    gt = lab == 1
    p = model.predict(model.embed(img), box=tight_box(gt), multimask=False)
    assert p.masks.shape == (1, *img.shape)


def test_finetune_splits_stacks_and_holds_out_planes():
    from napari_promptseg.training.finetune import prepare_planes

    imgs, labs = zip(*[synthetic_image(s, (64, 80)) for s in range(4)])
    stack, lstack = np.stack(imgs), np.stack(labs)
    lstack[2] = 0  # an empty slice of a stack is skipped, not an error
    planes = prepare_planes(stack, lstack)
    assert len(planes) == 3
    assert all(p[0].shape == (64, 80, 3) and p[0].dtype == np.uint8 for p in planes)
    rgb = np.repeat(imgs[0][..., None], 3, -1)
    assert len(prepare_planes([rgb, imgs[1]], [labs[0], labs[1]])) == 2


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((64, 64)), np.ones((64, 65), np.int32), "labels of the image have shape"),
        (np.zeros((64, 64)), np.zeros((64, 64), np.int32), "empty"),
        (np.zeros((64, 64)), np.ones((64, 64), np.float32), "must be integer"),
        (np.zeros((64, 64)), np.ones((64, 64), bool), "must be integer"),
        (np.zeros((16, 64)), np.ones((16, 64), np.int32), "too small"),
        (np.zeros((64, 64)), -np.ones((64, 64), np.int32), "negative"),
        ([np.zeros((64, 64))] * 2, [np.ones((64, 64), np.int32)], "2 images but 1 label"),
        ([np.zeros((64, 64)), np.zeros((64, 64))], [np.ones((64, 64), np.int32), np.zeros((64, 64), int)],
         "labels of image 1 are empty"),
        (np.zeros((3, 64, 64)), np.zeros((3, 64, 64), np.int32), "empty"),
    ],
)
def test_finetune_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ps.finetune(DEMO_MODEL, images, labels, steps=1)


def test_finetune_cli_reads_files_and_reports(tmp_path, capsys):
    from skimage.io import imsave

    from napari_promptseg.training.finetune import main

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    for s in range(2):
        img, lab = synthetic_image(s, (96, 96))
        imsave(tmp_path / "im" / f"a{s}.tif", img.astype(np.uint16), check_contrast=False)
        np.save(tmp_path / "lab" / f"a{s}.npy", lab)
    out = tmp_path / "m.pt"
    rc = main(["--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"), "--out", str(out),
               "--steps", "2", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "a0.tif  <->  a0.npy" in text and "validation one-click IoU" in text
    np.save(tmp_path / "lab" / "a1.npy", np.zeros((96, 96), np.int32))
    rc = main(["--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"), "--out", str(out),
               "--steps", "2"])
    assert rc == 2 and "labels of image 1 are empty" in capsys.readouterr().err


def test_demo_model_equals_the_official_predictor(demo):
    """Same backend as the official checkpoints: our predict equals Meta's SamPredictor."""
    import torch
    from segment_anything import SamPredictor

    from napari_promptseg.core.image import to_rgb_uint8
    from napari_promptseg.models.checkpoint import read_state_dict
    from napari_promptseg.models.sam.model import build_sam

    sam = build_sam("promptseg_demo").eval()
    sam.load_state_dict(read_state_dict(packaged_path(get_spec(DEMO_MODEL))))
    official = SamPredictor(sam)
    img, labels = synthetic_image(5, (200, 300))  # non-square: padding and resizing
    rgb = to_rgb_uint8(img)
    official.set_image(rgb)
    emb = demo.embed(rgb)
    gt = labels == 1
    pt = interior_point(gt)
    with torch.no_grad():
        m, s, lo = official.predict(point_coords=pt[None, ::-1], point_labels=np.array([1]))
    p = demo.predict(emb, points=[pt])
    np.testing.assert_allclose(p.logits, lo, atol=1e-4)
    np.testing.assert_allclose(p.scores, s, atol=1e-5)
    assert (p.masks != m).mean() < 1e-3
