"""Training: synthetic data, prompt sampling, losses, the loop (loss falls, resume), export."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_promptseg.training.sampling import (
    corrective_click,
    interior_point,
    jittered_box,
    pick_objects,
    random_point,
    tight_box,
)
from napari_promptseg.training.synthetic import MIN_AREA, STYLES, synthetic_image


# -- synthetic data -------------------------------------------------------------------------
def test_generator_is_deterministic():
    a_img, a_lab = synthetic_image(123)
    b_img, b_lab = synthetic_image(123)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = synthetic_image(124)
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("style", STYLES)
def test_generator_labels_are_consistent(style):
    for seed in range(3):
        img, lab = synthetic_image(seed, (200, 256), style=style)
        assert img.shape == lab.shape == (200, 256)
        assert img.dtype == np.float32 and np.isfinite(img).all()
        assert lab.dtype == np.int32 and lab.min() == 0
        n = int(lab.max())
        assert n >= 1
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        assert (counts[1:] >= MIN_AREA).all()  # ids 1..n without gaps, none tiny
        for i in range(1, n + 1):
            assert ndi.label(lab == i)[1] == 1  # one connected piece each
        # objects are brighter than the background on average (it is a fluorescence image)
        assert img[lab > 0].mean() > img[lab == 0].mean()


def test_generator_rejects_unknown_style():
    with pytest.raises(ValueError, match="unknown style"):
        synthetic_image(0, style="nope")


# -- prompt sampling ------------------------------------------------------------------------
def test_prompt_sampling_stays_inside_objects():
    rng = np.random.default_rng(0)
    _, lab = synthetic_image(7)
    ids = pick_objects(lab, 10, rng)
    assert 0 < len(ids) <= 10 and len(set(ids)) == len(ids)
    for i in ids:
        m = lab == i
        for _ in range(5):
            r, c = random_point(m, rng).astype(int)
            assert m[r, c]
        r, c = interior_point(m).astype(int)
        assert m[r, c]
        box = jittered_box(m, rng)
        assert box[0] <= box[2] and box[1] <= box[3]
        assert (box >= 0).all() and box[2] < m.shape[0] and box[3] < m.shape[1]
        r0, c0, r1, c1 = tight_box(m).astype(int)
        rows, cols = np.nonzero(m)
        assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max(), cols.max())


def test_corrective_clicks_land_in_the_error_region():
    rng = np.random.default_rng(1)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    missed = gt.copy()
    missed[25:40] = False  # prediction misses the lower half: positive click there
    for _ in range(10):
        (r, c), label = corrective_click(gt, missed, rng)
        assert label == 1 and gt[int(r), int(c)] and not missed[int(r), int(c)]
    spilled = gt.copy()
    spilled[40:60, 10:40] = True  # prediction spills below: negative click there
    for _ in range(10):
        (r, c), label = corrective_click(gt, spilled, rng)
        assert label == 0 and spilled[int(r), int(c)] and not gt[int(r), int(c)]
    (r, c), label = corrective_click(gt, gt, rng)  # no error: a positive point inside
    assert label == 1 and gt[int(r), int(c)]


# -- losses ---------------------------------------------------------------------------------
def test_sam_loss_takes_the_min_loss_mask_and_learns_iou():
    import torch

    from napari_promptseg.training.losses import sam_loss

    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:24, 8:24] = 1
    good = target * 20 - 10  # logits: +10 inside, -10 outside
    bad = -good
    logits = torch.cat([bad, good, torch.zeros_like(good)], dim=1)  # (1, 3, 32, 32)
    loss, best, ious = sam_loss(logits, torch.tensor([[0.5, 1.0, 0.0]]), target)
    assert best.tolist() == [1] and ious.tolist() == [1.0]
    # mask part ~0 (the perfect mask is chosen); IoU part: ((0.5 - 0)^2 + 0 + 0) / 3
    assert loss.item() == pytest.approx(0.25 / 3, abs=2e-3)


# -- the loop -------------------------------------------------------------------------------
def _tiny_cfg(**kw):
    from napari_promptseg.training.loop import TrainConfig

    base = dict(arch="vit_tiny", steps=24, images_per_step=1, objects_per_image=6, corrective_iters=1,
                lr=2e-3, warmup_steps=2, autocast=False, eval_every_s=1e9, checkpoint_every_s=1e9)
    base.update(kw)
    return TrainConfig(**base)


def _steps(gen):
    return [ev for ev in gen if ev["kind"] == "step"]


@pytest.mark.slow
def test_short_training_run_decreases_the_loss():
    import torch

    from napari_promptseg.training.loop import train

    torch.manual_seed(0)
    losses = [ev["loss"] for ev in _steps(train(_tiny_cfg(), eval_items=[]))]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


@pytest.mark.slow
def test_resume_continues_with_the_same_losses(tmp_path):
    from napari_promptseg.training.loop import CHECKPOINT_NAME, load_training_checkpoint, train

    cfg = _tiny_cfg(steps=6, checkpoint_every_s=0.0)  # a checkpoint after every step
    full = [ev["loss"] for ev in _steps(train(cfg, out_dir=tmp_path / "a", eval_items=[]))]

    gen = train(cfg, out_dir=tmp_path / "b", eval_items=[])
    for ev in gen:  # interrupt after the checkpoint of step 3
        if ev["kind"] == "checkpoint" and ev["step"] == 3:
            break
    gen.close()
    ck = load_training_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert ck["step"] == 3 and set(ck) >= {"model", "optimizer", "config", "torch_rng", "elapsed_s"}

    events = list(train(cfg, out_dir=tmp_path / "b", eval_items=[]))
    assert events[0]["kind"] == "resumed" and events[0]["step"] == 3
    resumed = [ev for ev in events if ev["kind"] == "step"]
    assert [ev["step"] for ev in resumed] == [4, 5, 6]
    np.testing.assert_allclose([ev["loss"] for ev in resumed], full[3:], rtol=1e-4)


def test_key_projections_start_equal_to_queries():
    import torch

    from napari_promptseg.training.loop import new_sam

    sam = new_sam("vit_tiny")
    tr = sam.mask_decoder.transformer
    for layer in tr.layers:
        for a in (layer.cross_attn_token_to_image, layer.cross_attn_image_to_token):
            assert torch.equal(a.k_proj.weight, a.q_proj.weight)
    assert torch.equal(tr.final_attn_token_to_image.k_proj.bias, tr.final_attn_token_to_image.q_proj.bias)


def test_lr_warms_up_then_decays_by_steps_or_time():
    from napari_promptseg.training.loop import TrainConfig, lr_factor

    cfg = TrainConfig(steps=1000, warmup_steps=100, final_lr_fraction=0.05, max_hours=1.0)
    assert lr_factor(cfg, 0, 0) == pytest.approx(0.01)
    assert lr_factor(cfg, 99, 0) == pytest.approx(1.0)
    assert lr_factor(cfg, 550, 0) == pytest.approx(1 - 0.95 * 0.5)
    assert lr_factor(cfg, 200, 1800) == pytest.approx(1 - 0.95 * 0.5)  # time is the binding limit
    assert lr_factor(cfg, 5000, 0) == pytest.approx(0.05)


def test_export_writes_a_half_precision_state_dict_that_loads(tmp_path):
    import torch

    import napari_promptseg as ps
    from napari_promptseg.models.registry import ModelSpec
    from napari_promptseg.training.export import export_weights
    from napari_promptseg.training.loop import train

    cfg = _tiny_cfg(steps=1)
    list(train(cfg, out_dir=tmp_path, eval_items=[]))
    out = export_weights(tmp_path / "checkpoint.pt", tmp_path / "w.pt")
    state = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    spec = ModelSpec("t", "sam", "vit_tiny", "http://127.0.0.1:9/t.pt", "sha256:0", 0.1, "0.1M", "t", "t")
    model = ps.load_model(spec, checkpoint=out, device="cpu")
    img, _ = synthetic_image(0)
    assert model.predict(model.embed(img), points=[[100, 100]]).masks.shape == (3, 256, 256)


def test_files_are_paired_by_name_not_by_sort_order(tmp_path):
    from napari_promptseg.training.finetune import pair_files

    ims = [tmp_path / f"a{i}.tif" for i in (1, 2, 10)]
    labs = [tmp_path / f"a{i}_labels.tif" for i in (10, 1, 2)]
    pairs = pair_files(ims, labs)
    assert [(i.stem, lab.stem) for i, lab in pairs] == [("a1", "a1_labels"), ("a2", "a2_labels"),
                                                         ("a10", "a10_labels")]
    other = [tmp_path / "img" / f"{i}.png" for i in (1, 2)]
    masks = [tmp_path / "mask" / f"{i}.png" for i in (2, 1)]
    assert [(i.stem, m.stem) for i, m in pair_files(other, masks)] == [("1", "1"), ("2", "2")]
    with pytest.raises(ValueError, match="cannot pair"):
        pair_files([tmp_path / "x1.tif", tmp_path / "x2.tif"], [tmp_path / "y1.tif", tmp_path / "z7.tif"])
    with pytest.raises(ValueError, match="label file"):
        pair_files(ims, labs[:2])


def test_label_ids_of_any_range_are_renumbered():
    from napari_promptseg.training.finetune import prepare_planes

    img = np.zeros((64, 64), np.uint16)
    lab = np.zeros((64, 64), np.uint64)
    lab[5:20, 5:20] = 2**32 + 5
    lab[30:50, 30:50] = 5  # would collide with the first id after a plain int32 cast
    (_, out), = prepare_planes(img, lab)
    assert out.dtype == np.int32 and sorted(np.unique(out)) == [0, 1, 2]
    assert out[10, 10] != out[40, 40]


def test_validation_holds_out_whole_images_or_a_block_of_slices():
    from napari_promptseg.training.finetune import _holdout

    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    val = _holdout(groups, 0.2, seed=0)
    held = {groups[i] for i in val}
    assert all(groups[i] not in held for i in set(range(10)) - val)  # no image on both sides
    assert _holdout([0] * 10, 0.2, 0) == {8, 9}  # one stack: a contiguous block of slices
    assert _holdout([0], 0.5, 0) == set() and _holdout([0, 1], 0.0, 0) == set()


def test_rgb_label_pictures_and_tiny_objects_are_clear_errors():
    import napari_promptseg as ps
    from napari_promptseg.training.finetune import prepare_planes

    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="single-channel"):
        prepare_planes(img, np.zeros((64, 64, 3), np.int32))
    big = np.zeros((2048, 2048), np.uint16)
    lab = np.zeros((2048, 2048), np.int32)
    lab[100:104, 100:104] = 1  # 4 px: 0.5 px at the demo model's 256-px input
    with pytest.raises(ValueError, match="crop or tile"):
        ps.finetune("promptseg_demo", big, lab, steps=1, device="cpu")
    with pytest.raises(ValueError, match="val_fraction"):
        ps.finetune("promptseg_demo", big, lab, steps=1, val_fraction=1.5)


def test_cli_reports_errors_on_stderr(tmp_path, capsys):
    from napari_promptseg.training.finetune import main

    out = str(tmp_path / "o.pt")
    rc = main(["--images", str(tmp_path / "missing"), "--labels", str(tmp_path), "--out", out])
    assert rc == 2 and "neither a file nor a folder" in capsys.readouterr().err
