"""SAM 2: parity with Meta's ``SAM2ImagePredictor`` and ``SAM2VideoPredictor`` on identical random
weights (the tiny config on a 256-pixel input), and the tracker's caches.

Our (row, col) prompts are converted to SAM 2's (x, y) by hand here, independently of the code
under test. Meta's video predictor only reads JPEG folders or MP4 files: it is fed the same frames
from memory by replacing ``sam2.sam2_video_predictor.load_video_frames`` (the official hook for
in-memory frames), preprocessed with ``SAM2Transforms`` as ``SAM2ImagePredictor`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached
from napari_promptseg.propagation.memory import MemoryTracker
from napari_promptseg.propagation.seeds import parse_prompts, seed_tracker

from .conftest import SAM2_CONFIG, SAM2_TEST_OVERRIDES, blobs_image, mask_iou, moving_blobs

S = 256  # the test model's input side


@pytest.fixture(scope="module")
def official_image(sam2_ckpt):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    net = build_sam2(SAM2_CONFIG, str(sam2_ckpt), device="cpu", hydra_overrides_extra=SAM2_TEST_OVERRIDES)
    pred = SAM2ImagePredictor(net)
    pred._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]  # hard-coded for 1024
    return pred


def _official_kwargs(kw):
    out = {}
    if "points" in kw:
        pts = np.asarray(kw["points"], float)
        out["point_coords"] = pts[:, ::-1].copy()
        out["point_labels"] = np.asarray(kw.get("labels", [1] * len(pts)))
    if "box" in kw:
        r0, c0, r1, c1 = kw["box"]
        out["box"] = np.array([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)])
    if "mask_input" in kw:
        out["mask_input"] = np.asarray(kw["mask_input"]).reshape(1, *np.shape(kw["mask_input"])[-2:])
    return out


@pytest.mark.parametrize("image", ["rgb_300x520", "gray_410x230"])
def test_image_predict_equals_official(sam2_model, official_image, image):
    rgb = image.startswith("rgb")
    img = blobs_image((300, 520), seed=1) if rgb else blobs_image((410, 230), seed=2)[..., 1]
    h, w = img.shape[:2]
    emb = sam2_model.embed(img)
    official_image.set_image(img if img.ndim == 3 else np.repeat(img[..., None], 3, -1))
    torch.testing.assert_close(emb.features["fpn2"] + sam2_model.net.no_mem_embed.reshape(1, -1, 1, 1),
                               official_image._features["image_embed"], rtol=0, atol=0)
    prompts = [
        dict(points=[[0.4 * h, 0.3 * w]]),
        dict(points=[[0.4 * h, 0.3 * w], [0.6 * h, 0.5 * w], [0.2 * h, 0.8 * w]], labels=[1, 0, 0]),
        dict(box=[0.7 * h, 0.6 * w, 0.2 * h, 0.1 * w]),
        dict(box=[0.2 * h, 0.1 * w, 0.7 * h, 0.6 * w], points=[[0.5 * h, 0.4 * w]], labels=[0]),
    ]
    first = sam2_model.predict(emb, points=[[0.5 * h, 0.5 * w]])
    prompts += [dict(points=[[0.5 * h, 0.5 * w]], mask_input=first.logits[first.best]),
                dict(mask_input=first.logits[first.best][None])]
    for kw in prompts:
        for multimask in (True, False):
            ours = sam2_model.predict(emb, multimask=multimask, **kw)
            m, s, lg = official_image.predict(multimask_output=multimask, **_official_kwargs(kw))
            assert ours.masks.shape == m.shape
            for a, b in zip(ours.masks, m):
                assert mask_iou(a, b.astype(bool)) >= 0.999
            np.testing.assert_allclose(ours.scores, s, atol=1e-4)
            np.testing.assert_allclose(ours.logits, lg, atol=1e-4)


def test_disk_cached_embedding_predicts_the_same(sam2_model, tmp_path):
    img = blobs_image((200, 260), seed=5)
    disk = ps.DiskCache(tmp_path / "emb")
    fresh = embed_cached(sam2_model, img, disk=disk)
    again = embed_cached(sam2_model, img, disk=disk)  # from disk (float16)
    assert again is not fresh and set(again.features) == {"fpn0", "fpn1", "fpn2"}
    a = sam2_model.predict(fresh, points=[[100, 120]])
    b = sam2_model.predict(again, points=[[100, 120]])
    assert mask_iou(a.masks[a.best], b.masks[a.best]) >= 0.98


# ---- video -------------------------------------------------------------------------------------
FRAMES = moving_blobs(6)
T, H, W = FRAMES.shape[:3]
PROMPT_FRAME = 3
P1 = [[0.4 * H + 6, 0.3 * W + 15]]  # (row, col) inside the first blob on frame 3
BOX2 = [0.65 * H, 0.67 * W - 9, 0.85 * H, 0.83 * W - 9]


@pytest.fixture()
def official_video(sam2_ckpt, monkeypatch):
    import sam2.sam2_video_predictor as svp
    from sam2.build_sam import build_sam2_video_predictor
    from sam2.utils.transforms import SAM2Transforms

    tf = SAM2Transforms(S, 0.0)

    def load_video_frames(video_path, image_size, offload_video_to_cpu, async_loading_frames=False,
                          compute_device=None, **kw):
        return torch.stack([tf(f) for f in video_path]), H, W

    monkeypatch.setattr(svp, "load_video_frames", load_video_frames)
    # the one option our network sets beyond Meta's builder: corrections are conditioning frames
    net = build_sam2_video_predictor(
        SAM2_CONFIG, str(sam2_ckpt), device="cpu",
        hydra_overrides_extra=[*SAM2_TEST_OVERRIDES, "++model.add_all_frames_to_correct_as_cond=true"])
    state = net.init_state(FRAMES)
    net.add_new_points_or_box(state, PROMPT_FRAME, 1, points=np.array(P1)[:, ::-1].astype(np.float32),
                              labels=np.array([1], np.int32))
    r0, c0, r1, c1 = BOX2
    net.add_new_points_or_box(state, PROMPT_FRAME, 2, box=np.array([c0, r0, c1, r1], np.float32))
    return net, state


def _run_official(net, state, **kw):
    out = {}
    for reverse in ([kw.pop("reverse")] if "reverse" in kw else (False, True)):
        for k, ids, masks in net.propagate_in_video(state, reverse=reverse, **kw):
            out[(k, -1 if reverse else 1)] = {o: (masks[i, 0] > 0).numpy() for i, o in enumerate(ids)}
    return out


def _tracker(model, counter=None):
    cache = EmbeddingCache(2)

    def embedding_of(k):
        if counter is not None:
            counter.append(k)
        return embed_cached(model, FRAMES[k], None, cache)

    tr = MemoryTracker(model, embedding_of, T, (H, W))
    seed_tracker(tr, parse_prompts({PROMPT_FRAME: {1: {"points": P1}, 2: {"box": BOX2}}}, T, (H, W)))
    return tr


def _same(ours, theirs, tr, net, state):
    assert set(ours) == set(theirs)
    for key, objs in theirs.items():
        for oid, m in objs.items():
            mine = ours[key].get(oid, np.zeros((H, W), bool))
            assert mask_iou(mine, m) >= 0.999, (key, oid)
    # and the memory bank itself: the same low-res logits and object pointers on every frame
    for i in range(2):
        a, b = tr.state["output_dict_per_obj"][i], state["output_dict_per_obj"][i]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            assert set(a[kind]) == set(b[kind])
            for k in a[kind]:
                torch.testing.assert_close(a[kind][k]["pred_masks"], b[kind][k]["pred_masks"])
                torch.testing.assert_close(a[kind][k]["obj_ptr"], b[kind][k]["obj_ptr"])
                assert a[kind][k]["maskmem_features"].dtype == torch.bfloat16  # Meta's memory dtype


@pytest.mark.slow
def test_tracking_equals_official_forward_then_reverse(sam2_model, official_video):
    net, state = official_video
    theirs = _run_official(net, state)
    tr = _tracker(sam2_model)
    ours = {(r.index, r.direction): r.masks for r in tr.propagate_iter(non_overlap=False)}
    assert sorted(ours) == sorted(theirs)  # frames 3..5 forward, then 3..0 in reverse (on the CPU)
    assert any(m.any() for objs in theirs.values() for m in objs.values())
    _same(ours, theirs, tr, net, state)


@pytest.mark.slow
def test_correction_retracks_from_that_frame_as_official(sam2_model, official_video):
    net, state = official_video
    _run_official(net, state)
    tr = _tracker(sam2_model)
    list(tr.propagate_iter(non_overlap=False))
    fix = [[0.5 * H, 0.5 * W]]
    net.add_new_points_or_box(state, 4, 1, points=np.array(fix)[:, ::-1].astype(np.float32),
                              labels=np.array([0], np.int32), clear_old_points=True)
    before = {(r.index, r.direction): r.masks for r in _tracker(sam2_model).propagate_iter(non_overlap=False)}
    got = tr.add_points(4, 1, fix, [0])
    assert got.shape == (H, W)
    theirs = _run_official(net, state, start_frame_idx=4, reverse=False)
    ours = {(r.index, r.direction): r.masks for r in tr.propagate_iter(start=4, non_overlap=False)}
    assert sorted(ours) == [(4, 1), (5, 1)]  # forward from the corrected frame only
    _same(ours, theirs, tr, net, state)
    # the correction is kept (a conditioning frame, not re-predicted without its points)
    assert 4 in tr.state["output_dict_per_obj"][0]["cond_frame_outputs"]
    np.testing.assert_array_equal(ours[(4, 1)].get(1, np.zeros((H, W), bool)), got)
    assert not np.array_equal(got, before[(4, 1)].get(1, np.zeros((H, W), bool)))  # it changed


def test_each_frame_is_embedded_once(sam2_model):
    calls = []
    orig = sam2_model.net.forward_image
    sam2_model.net.forward_image = lambda x: (calls.append(1), orig(x))[1]
    try:
        fetched = []
        tr = _tracker(sam2_model, fetched)
        results = list(tr.propagate_iter())
    finally:
        del sam2_model.net.forward_image
    assert len(results) == 3 + 4
    assert len(calls) == T  # Meta's predictor encodes 7 times here (frame 0 twice: its warm-up)
    assert sorted(set(fetched)) == list(range(T))


@pytest.mark.slow
def test_propagate_memory_api(sam2_model):
    video = FRAMES
    labels = ps.propagate(sam2_model, video, {PROMPT_FRAME: [{"points": P1}, {"box": BOX2}]}, axis=0)
    assert labels.shape == (T, H, W) and labels.dtype == np.int32
    tr = _tracker(sam2_model)
    ref = {}
    for r in tr.propagate_iter():
        for o, m in r.masks.items():
            ref.setdefault(r.index, {})[o] = m
    for k in range(T):
        if k == PROMPT_FRAME:
            continue
        for o, m in ref.get(k, {}).items():
            assert mask_iou(labels[k] == o, m) >= 0.999
    # a labels image as the prompt works too, and gray stacks on another axis
    gray = np.moveaxis(FRAMES[..., 0], 0, 2)  # (H, W, T)
    seed = (labels[PROMPT_FRAME] > 0).astype(np.uint8)
    if seed.any():
        out = ps.propagate(sam2_model, gray, {PROMPT_FRAME: seed}, axis=2,
                           options=ps.MemoryTracking(max_slices=1))
        assert out.shape == gray.shape
        np.testing.assert_array_equal(out[:, :, PROMPT_FRAME] == 1, seed == 1)
        assert not out[:, :, 0].any() and not out[:, :, 5].any()  # max_slices=1: frames 2..4 only


def test_stop_after_frames_without_the_object(sam2_model, monkeypatch):
    tr = _tracker(sam2_model)
    run = tr.net._run_single_frame_inference

    def absent_from_frame_5(**kw):  # object 1 "leaves" the video on frame 5
        out, pred = run(**kw)
        if kw["frame_idx"] >= 4 and kw["output_dict"] is tr.state["output_dict_per_obj"][0]:
            out["object_score_logits"] = torch.full_like(out["object_score_logits"], -5.0)
        return out, pred

    monkeypatch.setattr(tr.net, "_run_single_frame_inference", absent_from_frame_5)
    res = {(r.index, r.direction): r for r in tr.propagate_iter(stop_after=1)}
    assert res[(4, 1)].stopped == {1: "absent"}
    assert 1 not in res[(5, 1)].masks and 1 not in res[(5, 1)].scores
    assert 2 in res[(5, 1)].scores  # the other object goes on
    assert 1 in res[(2, -1)].scores  # and object 1 tracks again in the other direction


def test_a_stopped_object_tracks_again_from_its_next_prompted_frame(sam2_model, monkeypatch):
    cache = EmbeddingCache(2)
    tr = MemoryTracker(sam2_model, lambda k: embed_cached(sam2_model, FRAMES[k], None, cache), T, (H, W))
    tr.add_points(0, 1, [[0.4 * H, 0.3 * W]])
    tr.add_points(4, 1, [[0.4 * H + 8, 0.3 * W + 20]])
    run = tr.net._run_single_frame_inference

    def absent_on_1_to_3(**kw):
        out, pred = run(**kw)
        if 1 <= kw["frame_idx"] <= 3:
            out["object_score_logits"] = torch.full_like(out["object_score_logits"], -5.0)
        return out, pred

    monkeypatch.setattr(tr.net, "_run_single_frame_inference", absent_on_1_to_3)
    res = {r.index: r for r in tr.propagate_iter(stop_after=1)}  # forward from 0 only
    assert res[1].stopped == {1: "absent"} and 1 not in res[2].scores and 1 not in res[3].scores
    assert 1 in res[4].scores and 1 in res[5].scores  # prompted on 4: tracked on to 5


@pytest.mark.slow
def test_long_videos_keep_a_bounded_memory_bank_with_the_same_masks(sam2_model):
    frames = moving_blobs(40, seed=3)
    embs = {k: sam2_model.embed(frames[k]) for k in range(40)}
    out = []
    for keep_all in (True, False):
        tr = MemoryTracker(sam2_model, embs.__getitem__, 40, frames.shape[1:3], keep_all=keep_all)
        tr.add_points(20, 1, [[0.4 * 120 + 40, 0.3 * 180 + 100]])
        sizes = []
        masks = {}
        for r in tr.propagate_iter():
            masks[(r.index, r.direction)] = r.masks.get(1)
            sizes.append(len(tr.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]))
        out.append((masks, max(sizes)))
    (full, n_full), (pruned, n_pruned) = out
    assert full.keys() == pruned.keys()
    for key in full:
        assert (full[key] is None) == (pruned[key] is None)
        if full[key] is not None:
            np.testing.assert_array_equal(full[key], pruned[key])
    assert n_full == 39 and n_pruned <= 2 * tr._window() + 2


def test_absent_slices_are_told_to_the_tracker(sam2_model):
    labels = ps.propagate(sam2_model, FRAMES, {PROMPT_FRAME: [{"points": P1}]}, absent={1: [5]})
    assert not (labels[5] == 1).any()
    with pytest.raises(ValueError, match="stop_after must be an integer"):
        ps.MemoryTracking(stop_after=0)
    with pytest.raises(ValueError, match="max_slices must be an integer"):
        ps.MemoryTracking(max_slices=-1)
    tr = _tracker(sam2_model)
    with pytest.raises(ValueError, match="start frame -1 is out of range"):
        tr.propagate_iter(start=-1)


def test_memory_method_needs_a_sam2_model(tiny_model):
    with pytest.raises(ValueError, match="needs a SAM 2 model"):
        ps.propagate(tiny_model, FRAMES, {0: [{"points": P1}]}, options=ps.MemoryTracking())
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="needs a SAM 2 model"):
        ps.propagate(tiny_model, FRAMES, {0: [{"points": P1}]}, method="memory")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="method must be one of"):
        ps.propagate(tiny_model, FRAMES, {0: [{"points": P1}]}, method="tracking")


def test_bad_tracker_prompts(sam2_model):
    tr = MemoryTracker(sam2_model, lambda k: sam2_model.embed(FRAMES[k]), T, (H, W))
    with pytest.raises(ValueError, match="no prompts"):
        next(tr.propagate_iter())
    with pytest.raises(ValueError, match="out of range"):
        tr.add_points(T, 1, P1)
    with pytest.raises(ValueError, match="does not match the frames"):
        tr.add_mask(0, 1, np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="unknown prompt keys"):
        seed_tracker(tr, parse_prompts({0: [{"point": P1}]}, T, (H, W)))


def test_sam1_checkpoint_in_a_sam2_model_is_refused(sam2_spec, tiny_ckpt):
    from napari_promptseg.models.weights import WeightsError

    with pytest.raises(WeightsError, match="SAM 1 checkpoint"):
        ps.load_model(sam2_spec, checkpoint=tiny_ckpt, device="cpu")


def test_registry_has_the_official_sam2_checkpoints():
    names = {m.name: m for m in ps.list_models()}
    for n in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"):
        spec = names[n]
        assert spec.family == "sam2" and spec.known_hash.startswith("sha256:")
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/092824/")


@pytest.mark.slow
def test_zarr_frames_are_read_one_at_a_time_and_give_the_same_labels(sam2_model):
    import zarr

    prompts = {PROMPT_FRAME: [{"points": P1}]}
    ref = ps.propagate(sam2_model, FRAMES, prompts)
    z = zarr.array(FRAMES, chunks=(1, H, W, 3))
    np.testing.assert_array_equal(ps.propagate(sam2_model, z, prompts), ref)


def test_session_tracks_one_line_of_a_t_x_z_stack_with_memory(sam2_model):
    from napari_promptseg.session import AnnotationSession

    tz = np.stack([FRAMES[..., 0], FRAMES[..., 1][:, ::-1]], axis=1)  # (T, Z, H, W) gray
    s = AnnotationSession(sam2_model, tz, autosave=False)
    assert s.propagation_method == "memory"
    s.set_plane((PROMPT_FRAME, 1))
    s.add_point(tuple(P1[0]))
    assert s.propagate(axis=0)  # along t, for z = 1 only
    prev = np.asarray(s.preview[...])
    assert prev.shape == tz.shape
    assert not prev[:, 0].any()  # the other z is untouched
    assert all(prev[k, 1].any() for k in range(T))  # every t of z = 1, both directions
    s.configure(method="prompt")
    assert s.propagation_method == "prompt"


def test_sam2_embedding_and_tracking_stop_in_a_cancelled_scope(sam2_model):
    from napari_promptseg.core.cancel import Cancelled, cancel_scope

    with cancel_scope(lambda: True):
        with pytest.raises(Cancelled):
            sam2_model.embed(FRAMES[0])  # the Hiera trunk checks between its blocks
    tr = _tracker(sam2_model)
    it = tr.propagate_iter()
    next(it)
    it.close()  # cancel = stop iterating: nothing runs after the last frame taken
    done = tr.stats.tracked
    assert done <= 1 and not any(4 in d for d in tr.state["frames_tracked_per_obj"].values())
