"""SAM 3's video model (detect, then track) on our image model's weights, fed from memory.

Meta's ``build_sam3_video_model`` builds ``Sam3VideoInferenceWithInstanceInteractivity``: a
detector (``Sam3ImageOnVideoMultiGPU``: the image model's backbone, transformer, geometry encoder,
segmentation head and scoring, with the video settings) and a tracker (``Sam3TrackerPredictor``,
``use_memory_selection=True``), loaded from Meta's checkpoint ``{"detector.*", "tracker.*"}``.
:func:`video_network` composes the same classes with the same settings around the modules of a
loaded :class:`~.model.Sam3Model` (its ``net`` holds the detector and, as
``inst_interactive_predictor.model``, the tracker), so the video model shares the image model's
weights: built on first use, no second copy of the 840 M parameters, cached on the model.

Meta's ``init_state`` reads a JPEG folder, an MP4 or a list of PIL images;
:func:`video_state` makes the same inference state from frames in memory: each ``(H, W, 3)``
uint8 frame goes through the transforms of Meta's image-folder loader (``_load_img_as_tensor``:
torchvision's ``resize`` of the PIL image to the square input, ``to_tensor``, float16, then the
mean / std normalisation in float16), so nothing is written to disk. Everything runs inside
:func:`~.device.on_device` with ``video=True`` (Meta's video code moves tensors with
``.cuda()``, casts to bfloat16 for a CUDA autocast, and its CPU connected components fail on zero
masks).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["check_tracker", "video_network", "video_state", "frame_tensor", "VIDEO_SETTINGS"]

#: Meta's ``build_sam3_video_model(apply_temporal_disambiguation=True)`` settings (the default)
VIDEO_SETTINGS = dict(
    score_threshold_detection=0.5, assoc_iou_thresh=0.1, det_nms_thresh=0.1, new_det_thresh=0.7,
    hotstart_delay=15, hotstart_unmatch_thresh=8, hotstart_dup_thresh=8,
    suppress_unmatched_only_within_hotstart=True, min_trk_keep_alive=-1, max_trk_keep_alive=30,
    init_trk_keep_alive=30, suppress_overlapping_based_on_recent_occlusion_threshold=0.7,
    suppress_det_close_to_boundary=False, fill_hole_area=16, recondition_every_nth_frame=16,
    masklet_confirmation_enable=False, decrease_trk_keep_alive_for_empty_masklets=False,
    image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), compile_model=False,
)


def check_tracker(model) -> None:
    """ValueError, saying what to do, when ``model`` (a :class:`~.model.Sam3Model`) lacks the
    tracker weights its video model needs."""
    from napari_promptseg.models.sam3.tracker import has_tracker

    if not has_tracker(model.net):
        raise ValueError(
            f"{model.name}: this checkpoint lacks SAM 3's tracker weights (tracker.* and "
            "detector.backbone.vision_backbone.sam2_convs.*), which the video model needs; use "
            "Meta's full sam3.pt, or find frame by frame with overlap links (ps.find_stack; in the "
            "dock, 'every plane along the axis')")


def video_network(model):
    """Meta's SAM 3 video model around ``model``'s modules (a :class:`~.model.Sam3Model` with its
    tracker), built once and cached on ``model``."""
    net = getattr(model, "_video_net", None)
    if net is not None:
        return net
    check_tracker(model)
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    from napari_promptseg.models.sam3.device import on_device

    image = model.net
    # the tracker as build_tracker(apply_temporal_disambiguation=True) makes it: the same weights,
    # memory selection on (a shallow copy: the image model's predictor keeps its own setting)
    tracker = copy.copy(image.inst_interactive_predictor.model)
    tracker.use_memory_selection = True
    with on_device(model.device, video=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*", category=UserWarning)
        detector = Sam3ImageOnVideoMultiGPU(  # build_sam3_video_model's detector settings
            num_feature_levels=1, backbone=image.backbone, transformer=image.transformer,
            segmentation_head=image.segmentation_head, semantic_segmentation_head=None,
            input_geometry_encoder=image.geometry_encoder, use_early_fusion=True,
            use_dot_prod_scoring=True, dot_prod_scoring=image.dot_prod_scoring,
            supervise_joint_box_scores=True)
        net = Sam3VideoInferenceWithInstanceInteractivity(
            detector=detector, tracker=tracker, image_size=model.image_size, **VIDEO_SETTINGS)
    net.eval()
    model._video_net = net
    return net


def frame_tensor(rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """One ``(H, W, 3)`` uint8 frame -> ``(3, S, S)`` float16 in [0, 1], as Meta's
    ``_load_img_as_tensor`` (PIL image, torchvision ``resize``, ``to_tensor``)."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    img = TF.resize(Image.fromarray(np.ascontiguousarray(rgb)), size=(image_size, image_size))
    return TF.to_tensor(img).to(torch.float16)


@torch.inference_mode()
def video_state(net, frames: Iterable[np.ndarray], n: int, size: tuple[int, int]) -> dict:
    """Meta's ``Sam3VideoInference.init_state`` for ``n`` uint8 RGB ``frames`` of ``size`` (H, W)
    given from memory (as its image-folder loader: the frames are normalised on the CPU, then
    ``_construct_initial_input_batch`` moves them to the model's device)."""
    s = net.image_size
    images = torch.zeros(n, 3, s, s, dtype=torch.float16)
    for k, rgb in enumerate(frames):
        images[k] = frame_tensor(rgb, s)
    mean = torch.tensor(net.image_mean, dtype=torch.float16)[:, None, None]
    std = torch.tensor(net.image_std, dtype=torch.float16)[:, None, None]
    images -= mean
    images /= std
    state = {"image_size": s, "num_frames": n, "orig_height": int(size[0]),
             "orig_width": int(size[1]), "constants": {}}
    net._construct_initial_input_batch(state, images)
    state.update(tracker_inference_states=[], tracker_metadata={}, feature_cache={},
                 cached_frame_outputs={}, action_history=[],
                 is_image_only=False)  # a folder of frames, even of one
    return state
