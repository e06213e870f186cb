"""Detect every instance of a concept on one frame of a video and track each through the others,
with one id per instance: Meta's SAM 3 video model (detect, then track), fed from memory.

What Meta's ``Sam3VideoPredictor`` does for ``start_session`` + ``add_prompt(text=...)`` +
``propagate_in_video(propagation_direction="both")``, on frames given as an array instead of a
JPEG folder or an MP4 (:mod:`napari_promptseg.models.sam3.video`): the prompted frame is detected,
new instances are tracked forward to the last frame, then backward to the first, the detector
running on every frame to add new instances and confirm or drop tracked ones (Meta's heuristics:
a 15-frame hot start, keep-alive counters, reconditioning). The frames are windowed once for the
whole video as every model's input (``contrast_limits``, default robust percentiles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["track_concept", "ConceptTracking"]


def _meta_boxes(boxes: np.ndarray, labels: np.ndarray, h: int, w: int):
    """Our ``(row0, col0, row1, col1)`` pixels -> Meta's normalised ``[x, y, w, h]`` and labels."""
    if not len(boxes):
        return None, None
    r0, c0, r1, c1 = boxes.T
    xywh = np.stack([c0 / w, r0 / h, (c1 - c0) / w, (r1 - r0) / h], 1)
    return np.clip(xywh, 0.0, 1.0).tolist(), labels.astype(int).tolist()


class ConceptTracking:
    """A checked SAM 3 video search (the arguments of :func:`track_concept`, validated when made,
    before any frame is read); iterating runs Meta's video model and yields ``(k, labels, scores)``
    per frame ``k`` in Meta's order (forward from the prompted frame, then backward): ``labels``
    ``(H, W)`` int64 (instance ``i`` of Meta is ``i + 1``), ``scores`` ``{id: probability}`` of the
    instances on that frame. Attributes: ``n`` frames, ``shape`` ``(H, W)``."""

    def __init__(self, model, video, text: str | None = None, exemplars=None, negative=None,
                 frame: int = 0, threshold: float = 0.5, *, contrast_limits=None) -> None:
        from napari_promptseg.embed.frames import Frames
        from napari_promptseg.models import as_model
        from napari_promptseg.segmentation.find import concept_boxes

        model = as_model(model)
        if not getattr(model, "supports_concepts", False) or not hasattr(model, "net"):
            raise TypeError(f"model {model.name!r} cannot find concepts; use a SAM 3 model: "
                            "ps.load_model('sam3')")
        from napari_promptseg.models.sam3.video import check_tracker

        check_tracker(model)
        arr = video if hasattr(video, "shape") and hasattr(video, "ndim") else np.asarray(video)
        if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4))):
            raise ValueError("video must be (T, H, W) gray or (T, H, W, 3|4) RGB frames, got shape "
                             f"{tuple(arr.shape)}; for one image use ps.find")
        self.frames = frames = Frames(model, arr, 0, contrast_limits=contrast_limits)
        n, (h, w) = frames.n, frames.plane_shape
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not -n <= frame < n:
            raise ValueError(f"frame must be a frame index in -{n}..{n - 1} (the video has {n} frames), "
                             f"got {frame!r}")
        boxes, labels = concept_boxes(exemplars, negative, (h, w))
        if text is None and not len(boxes):
            raise ValueError("nothing to track: give text (a noun phrase), exemplars (boxes), or both")
        if len(boxes) > 1:
            raise ValueError(f"SAM 3's video model takes one box on the prompted frame (Meta's visual "
                             f"prompt), got {len(boxes)} (exemplars and negative together); give one "
                             "exemplar box and/or a text")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError(f"text must be a non-empty noun phrase, got {text!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in 0..1, got {threshold!r}")
        self.model, self.text, self.threshold = model, text, float(threshold)
        self.n, self.shape, self.frame = n, (h, w), int(frame) % n
        self.xywh, self.box_labels = _meta_boxes(boxes, labels, h, w)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, dict[int, float]]]:
        import warnings

        import torch

        from napari_promptseg.core.image import to_rgb_uint8
        from napari_promptseg.models.sam3.device import keep_sdp_flags, on_device
        from napari_promptseg.models.sam3.video import video_network, video_state

        net = video_network(self.model)
        frames, n, (h, w) = self.frames, self.n, self.shape
        window = frames.window
        rgb = (to_rgb_uint8(frames.plane(k), window) for k in range(n))
        saved = net.score_threshold_detection
        net.score_threshold_detection = self.threshold
        try:
            with on_device(self.model.device, video=True), keep_sdp_flags(), torch.inference_mode(), \
                    warnings.catch_warnings():  # Meta's torch.autocast("cuda") warns off CUDA
                warnings.filterwarnings("ignore", message=".*CUDA is not available.*", category=UserWarning)
                state = video_state(net, rgb, n, (h, w))
                net.add_prompt(state, self.frame, text_str=self.text, boxes_xywh=self.xywh,
                               box_labels=self.box_labels)
                for reverse in (False, True):
                    if reverse and self.frame == 0:
                        break
                    for k, res in net.propagate_in_video(state, start_frame_idx=None,
                                                         max_frame_num_to_track=None, reverse=reverse):
                        scores = {int(i) + 1: float(p) for i, p in zip(res["out_obj_ids"], res["out_probs"],
                                                                        strict=True)}
                        yield int(k), _labels(res, (h, w)), scores
        finally:
            net.score_threshold_detection = saved


def track_concept(model, video, text: str | None = None, exemplars=None, negative=None,
                  frame: int = 0, threshold: float = 0.5, *, contrast_limits=None,
                  progress: Callable[[int, int], None] | None = None, out=None) -> np.ndarray:
    """Every instance of a concept, detected on ``frame`` and tracked through ``video`` (SAM 3).

    model: a loaded SAM 3 model with its tracker weights (Meta's full ``sam3.pt``) or its
    registry name (``"sam3"``); Meta's video model is built on first use around the model's own
    modules (no second copy of the weights) and kept on the model. video: ``(T, H, W)`` gray or
    ``(T, H, W, 3|4)`` RGB(A) frames, any real dtype (numpy, zarr, dask: read one frame at a time,
    each kept as the model's float16 input, as Meta's loader does: 6 MB a frame for the full
    model). text: a noun phrase; exemplars / negative: boxes ``(row0, col0, row1, col1)`` in frame
    pixels on ``frame`` (as :func:`~napari_promptseg.find`); Meta's video model takes one box (its
    visual prompt): one exemplar or one negative box, with or without text. frame: the prompted
    frame (negative counts from the end). threshold: the detector's score threshold (Meta's
    ``score_threshold_detection``, 0.5; new instances need Meta's 0.7). out: a writable integer
    array shaped ``(T, H, W)`` (zarr, numpy, a Labels layer's data); None: a new int32 array.
    progress(done, total): after each frame (forward from ``frame``, then backward; Meta holds
    back the first 15 frames' results for its hot start, so they come in a burst).

    Returns ``out`` (or the new array): 0 = background, ``k`` = the instance Meta numbers
    ``k - 1``, the same id on every frame where it is tracked. All on the model's device; the
    prompted frame's output of Meta's ``add_prompt`` is replaced by the propagation's, as Meta's
    predictor yields it.
    """
    from napari_promptseg.io import LabelPlanes, check_labels_out

    tracking = ConceptTracking(model, video, text, exemplars, negative, frame, threshold,
                               contrast_limits=contrast_limits)
    n, (h, w) = tracking.n, tracking.shape
    target = (np.zeros((n, h, w), np.int32) if out is None
              else check_labels_out(out, (n, h, w), max_id=1))
    planes = LabelPlanes(target, 0)
    for done, (k, plane, _scores) in enumerate(tracking, 1):
        if plane.max(initial=0) > np.iinfo(target.dtype).max:
            raise ValueError(f"out's dtype {target.dtype} cannot hold id {plane.max()}: "
                             "pass an int32 array")
        planes.write(k, plane)
        if progress is not None:
            progress(done, n)
    return target


def _labels(res: dict, size: tuple[int, int]) -> np.ndarray:
    """One frame of Meta's output (``out_obj_ids``, ``out_binary_masks``) as labels ``id + 1``."""
    plane = np.zeros(size, np.int64)
    for obj_id, mask in zip(res["out_obj_ids"], res["out_binary_masks"], strict=True):
        plane[mask.astype(bool) & (plane == 0)] = int(obj_id) + 1
    return plane

