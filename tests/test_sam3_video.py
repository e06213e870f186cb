"""SAM 3's video model (``ps.track_concept``) against Meta's video predictor on identical random
weights.

A module fixture builds the test-only ``sam3_tiny_336`` image model with random weights, saves
them in Meta's checkpoint format (``{"model": {"detector.*", "tracker.*"}}``) and loads ours from
that file with ``ps.load_model``. Meta's side is Meta's own ``build_sam3_video_model`` loading the
same file (``strict=True``) with only the sizes swapped for the tiny parts (its ViT, text
encoder and tracker builders return those of ``sam3_tiny_336``), run the way
``Sam3VideoPredictor`` runs it: ``start_session`` on a folder of PNG frames (lossless, so the
frames are the uint8 frames we give from memory), ``add_prompt(text=...)`` on frame 0,
``propagate_in_video(propagation_direction="both")``. Both run inside ``on_device("cpu",
video=True)`` (Meta's video code hard-codes CUDA and bfloat16 casts, and its CPU connected
components fail on zero masks). Our labels must hold Meta's instances on every
frame (mask IoU >= 0.99) with one id per Meta object id.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import napari_promptseg as ps
from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.models.registry import ModelSpec

pytest.importorskip("sam3")
pytest.importorskip("open_clip")

TINY = ModelSpec("sam3_tiny_test", "sam3", "sam3_tiny_336", "", "", 0, "40M", "test", "none")
T, H, W = 4, 96, 128


def _video_gray16():
    """Four uint16 frames of bright nuclei drifting on a noisy background."""
    rng = np.random.default_rng(5)
    rr, cc = np.mgrid[:H, :W]
    out = []
    for t in range(T):
        img = rng.normal(1000, 40, (H, W))
        for r, c in ((30, 30), (60, 90), (70, 40)):
            img += 3000 * (((rr - r - 2 * t) ** 2 + (cc - c - 3 * t) ** 2) < 12 ** 2)
        out.append(img)
    return np.clip(out, 0, 65535).astype(np.uint16)


def _video_rgb():
    rng = np.random.default_rng(6)
    out = rng.integers(0, 50, (T, H, W, 3)).astype(np.uint8)
    for t in range(T):
        out[t, 20 + 2 * t:50 + 2 * t, 15 + 3 * t:45 + 3 * t] = (210, 40, 40)
        out[t, 55:85, 70 + 2 * t:105 + 2 * t] = (40, 200, 60)
    return out


def detectable(net):
    """Random weights that detect: scores above Meta's new-instance threshold (0.7); Meta's init
    gives scores near 0.3 that no frame would ever turn into an instance."""
    with torch.no_grad():
        scoring = net.dot_prod_scoring
        for p in scoring.parameters():
            p.mul_(3.0)
        scoring.hs_proj.bias.add_(0.5)
        scoring.prompt_proj.bias.add_(0.5)
        net.transformer.decoder.presence_token_head.layers[-1].bias.add_(5.0)


def _checkpoint(net, path):
    from napari_promptseg.models.sam3.tracker import meta_state

    torch.save({"model": meta_state(net)}, path)


def _meta_video_model(path, monkeypatch):
    """Meta's ``build_sam3_video_model`` loading ``path``, its parts swapped for the tiny ones."""
    import sam3.model_builder as mb

    from napari_promptseg.models.sam3.device import bpe_vocabulary, on_device
    from napari_promptseg.models.sam3.model import build_sam3_network
    from napari_promptseg.models.sam3.tracker import tiny_interactive_predictor

    parts = build_sam3_network("cpu", TINY.arch)  # fresh Meta modules of the tiny sizes

    def tracker(apply_temporal_disambiguation, with_backbone=False, compile_mode=None):
        trk = tiny_interactive_predictor(336).model
        trk.use_memory_selection = apply_temporal_disambiguation  # as build_tracker sets it
        return trk

    monkeypatch.setattr(mb, "_create_vision_backbone", lambda **kw: parts.backbone.vision_backbone)
    monkeypatch.setattr(mb, "_create_text_encoder", lambda bpe: parts.backbone.language_backbone)
    monkeypatch.setattr(mb, "build_tracker", tracker)
    with on_device("cpu", video=True):
        meta = mb.build_sam3_video_model(checkpoint_path=str(path), load_from_HF=False,
                                         bpe_path=str(bpe_vocabulary()), device="cpu")
    meta.image_size = 336  # the builder's 1008 is the full model's input
    return meta.eval()


def _meta_run(meta, frames_rgb, folder, text, frame=0):
    """Meta's predictor on PNG frames: {frame: {obj_id: mask}}."""
    from PIL import Image
    from sam3.model.sam3_video_predictor import Sam3VideoPredictor

    from napari_promptseg.models.sam3.device import on_device

    folder.mkdir()
    for k, rgb in enumerate(frames_rgb):
        Image.fromarray(rgb).save(folder / f"{k:05d}.png")
    predictor = object.__new__(Sam3VideoPredictor)  # its __init__ builds a model on CUDA
    predictor.model, predictor.async_loading_frames, predictor.video_loader_type = meta, False, "cv2"
    # its log lines query the GPU (torch.cuda.get_device_properties): CPU only here
    predictor._get_torch_and_gpu_properties = predictor._get_session_stats = lambda: "cpu"
    result = {}
    with on_device("cpu", video=True), torch.inference_mode():
        sid = predictor.start_session(str(folder))["session_id"]
        predictor.add_prompt(sid, frame_idx=frame, text=text)
        for res in predictor.propagate_in_video(sid, "both", None, None):
            out = res["outputs"]
            result[res["frame_index"]] = dict(zip(out["out_obj_ids"].tolist(),
                                                  out["out_binary_masks"], strict=True))
        predictor.close_session(sid)
    return result


@pytest.fixture(scope="module")
def tiny_ours(tmp_path_factory):
    """Our tiny model loaded from a Meta-format checkpoint of random weights, and that file."""
    from napari_promptseg.models.sam3.model import build_sam3_network

    torch.manual_seed(0)
    net = build_sam3_network("cpu", TINY.arch)
    detectable(net)
    path = tmp_path_factory.mktemp("sam3_video") / "tiny.pt"
    _checkpoint(net, path)
    del net
    gc.collect()
    return ps.load_model(TINY, checkpoint=path, device="cpu"), path


@pytest.fixture(scope="module")
def tiny_pair(tiny_ours):
    """(ours, Meta's video model from the same checkpoint)."""
    mp = pytest.MonkeyPatch()
    try:
        return tiny_ours[0], _meta_video_model(tiny_ours[1], mp)
    finally:
        mp.undo()


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.slow  # ~22 s a case on 2 idle cores (both sides), minutes on busy ones
@pytest.mark.parametrize("kind, frame", [("gray16", 0), ("rgb", 1)])  # rgb: backward too
def test_track_concept_equals_meta_video_predictor(tiny_pair, kind, frame, tmp_path):
    ours, meta = tiny_pair
    video = _video_gray16() if kind == "gray16" else _video_rgb()
    window = ps.core.image.stack_window(video, video.ndim == 4, (0,)) if kind == "gray16" else None
    frames_rgb = [to_rgb_uint8(f, window) for f in video]
    ref = _meta_run(meta, frames_rgb, tmp_path / "frames", "cell", frame)
    done = []
    out = np.zeros((T, H, W), np.int32) if kind == "rgb" else None
    labels = ps.track_concept(ours, video, text="cell", frame=frame, out=out,
                              progress=lambda d, n: done.append((d, n)))
    assert labels.shape == (T, H, W) and labels.dtype == np.int32
    assert out is None or labels is out
    assert done[-1] == (T, T) and len(done) == T
    assert sorted(ref) == list(range(T))
    ours_sd, meta_sd = ours._video_net.state_dict(), meta.state_dict()  # the same network, weights
    assert ours_sd.keys() == meta_sd.keys()
    assert all(torch.equal(ours_sd[k], meta_sd[k]) for k in meta_sd)
    assert sum(len(r) for r in ref.values()) > 0, "Meta found nothing: the test would be empty"
    for k in range(T):
        ids = set(np.unique(labels[k]).tolist()) - {0}
        assert ids == {obj + 1 for obj, m in ref[k].items() if m.any()}, k
        for obj, mask in ref[k].items():
            assert _iou(labels[k] == obj + 1, mask) >= 0.99, (k, obj)


def test_track_concept_argument_errors(tiny_ours):
    ours = tiny_ours[0]
    video = _video_rgb()
    with pytest.raises(ValueError, match="video must be .T, H, W. gray"):
        ps.track_concept(ours, video[0, ..., 0], text="cell")
    with pytest.raises(ValueError, match="nothing to track: give text"):
        ps.track_concept(ours, video)
    with pytest.raises(ValueError, match=r"frame must be a frame index in -4\.\.3"):
        ps.track_concept(ours, video, text="cell", frame=4)
    with pytest.raises(ValueError, match="exemplars must be boxes"):
        ps.track_concept(ours, video, exemplars=[1, 2, 3])
    with pytest.raises(ValueError, match="text must be a non-empty noun phrase"):
        ps.track_concept(ours, video, text="  ")
    with pytest.raises(ValueError, match="takes one box on the prompted frame"):
        ps.track_concept(ours, video, exemplars=[[10, 10, 40, 40]], negative=[[50, 50, 80, 80]])
    with pytest.raises(TypeError, match="cannot find concepts"):
        from .component_model import ComponentModel

        ps.track_concept(ComponentModel(), video, text="cell")


def test_track_concept_needs_the_tracker_weights(tiny_ours):
    folder = tiny_ours[1].parent
    state = torch.load(tiny_ours[1], weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("detector.")
                          and ".sam2_convs." not in k}}, folder / "detector_only.pt")
    model = ps.load_model(TINY, checkpoint=folder / "detector_only.pt", device="cpu")
    with pytest.raises(ValueError, match="lacks SAM 3's tracker weights"):
        ps.track_concept(model, _video_rgb(), text="cell")
    from napari_promptseg.session import AnnotationSession

    s = AnnotationSession(model, _video_rgb(), rgb=True, autosave=False)  # the dock's Find says it
    statuses = []
    s.events.status.connect(statuses.append)
    with pytest.raises(ValueError, match="lacks SAM 3's tracker weights"):
        s.find("cell", scope="track")
    assert "'every plane along the axis'" in statuses[-1] and not s.finding


@pytest.mark.slow  # Meta's video model: ~30 s on 2 cores
def test_the_session_tracks_a_concept_through_a_video(tiny_ours, monkeypatch):
    """Find with scope 'track': SAM 3's video model from the displayed frame, equal to
    ps.track_concept on the same frames and window; the slider hides tracks scoring below it
    without running the model; one box at most."""
    from napari_promptseg.session import AnnotationSession

    model = tiny_ours[0]
    video = _video_gray16()
    s = AnnotationSession(model, video, autosave=False)
    s.set_plane((1,))
    statuses, written = [], []
    s.events.status.connect(statuses.append)
    s.events.found.connect(lambda arr, planes: written.extend(planes))
    out = s.find("cell", scope="track", threshold=0.5)
    want = ps.track_concept(model, video, text="cell", frame=1, contrast_limits=s.stack.window)
    np.testing.assert_array_equal(np.asarray(out), want)
    assert sorted(set(written)) == [(k,) for k in range(T)]
    run = s.found
    assert run.video == 0.5 and set(run.tracks) == set(np.unique(want).tolist()) - {0} != set()
    assert "tracked 'cell'" in statuses[-1] and f"{len(run.tracks)} tracked" in statuses[-1]
    calls = []
    monkeypatch.setattr(model._video_net, "propagate_in_video", lambda *a, **k: calls.append(a))
    best = max(run.tracks.values())
    s.set_find_threshold(min(1.0, best + 1e-6))  # above every track: all hidden
    assert not np.asarray(out).any() and not calls
    s.set_find_threshold(0.3)  # below the run's threshold: all shown, and it says so
    np.testing.assert_array_equal(np.asarray(out), want)
    assert "none below 0.50 were detected: Find again" in statuses[-1]
    with pytest.raises(ValueError, match="takes one box"):
        s.find(exemplars=[[10, 10, 40, 40], [50, 50, 80, 80]], scope="track")
    assert "one box" in statuses[-1]
