"""SAM 2 memory tracking of objects through the frames of a video or the slices of a stack.

Qt-free. :class:`MemoryTracker` runs Meta's own ``SAM2VideoPredictor`` code (its inference
state, ``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video``'s per-frame step,
``track_step`` with the memory encoder, memory attention and object pointers) with three
differences that change speed and memory, not results:

- Frames come from memory (numpy, dask, zarr: any array), never from JPEG/MP4 files, and stay
  in their dtype: each frame is converted to the model's input only when it is embedded.
- Each frame's image features come from ``embedding_of(k)`` (our memory and disk caches, or a
  precomputed store) instead of Meta's one-frame cache, so a frame is never encoded twice
  (Meta's cache holds the last frame only: every frame it comes back to, e.g. each frame of a
  re-tracking after a correction, is encoded again), and a frame already embedded (browsed in
  napari, precomputed on a cluster) is not encoded at all.
- Masks at the frame's resolution are upscaled in bands and thresholded without materialising
  the float logits (:func:`~napari_promptseg.models.upscale.upscale_masks`).

The memory bank's dtype is explicit: like Meta, each frame's memory features are stored in
``bfloat16`` (:data:`MEMORY_DTYPE`, half the memory of float32); the memory attention computes in
its weights' dtype (float32), the stored features being cast to it on the way in (a float32 CPU
matmul on bfloat16 inputs would raise).

Order, as Meta's predictor used forward then reverse: :meth:`MemoryTracker.propagate_iter` tracks
from the earliest prompted frame to the last frame, then from it back to frame 0. Every prompted
frame conditions every tracked frame (SAM 2 attends to all conditioning frames, before and after).
A prompt added on a frame that was already tracked is a correction: ``propagate_iter(start=k)``
re-tracks from ``k`` in the direction ``k`` was tracked.

Coordinates are ``(row, col)`` in frame pixels; masks are ``(H, W)`` bool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from napari_promptseg.core.results import Embedding, SliceResult
from napari_promptseg.propagation.options import check_count, check_frame_object

__all__ = ["MemoryTracker", "MEMORY_DTYPE", "TrackStats"]

#: dtype of the stored memory features (Meta's ``maskmem_features.to(torch.bfloat16)``)
MEMORY_DTYPE = torch.bfloat16
_NO_IMAGE = torch.empty(1, 3, 0, 0)  # Meta's feature tuple carries the image; nothing reads it


@dataclass
class TrackStats:
    """Counters of one tracker: frames whose features were fetched (``embedded``: from
    ``embedding_of``, which may hit a cache), frames decoded with memory (``tracked``)."""

    embedded: int = 0
    tracked: int = 0


class _FeatureSource:
    """Stands in for Meta's ``inference_state["cached_features"]``: ``get(k)`` returns Meta's
    ``(image, backbone_out)`` for frame ``k`` from our embeddings (the last frame is kept)."""

    def __init__(self, model, embedding_of: Callable[[int], Embedding], stats: TrackStats) -> None:
        self.model, self.embedding_of, self.stats = model, embedding_of, stats
        self.pinned: dict[int, Embedding] = {}  # prompted frames: reused by the preflight
        self._last: tuple[int, tuple] | None = None

    def embedding(self, k: int) -> Embedding:
        emb = self.pinned.get(k)
        if emb is None:
            emb = self.embedding_of(k)
            self.stats.embedded += 1
        if not isinstance(emb, Embedding) or emb.model != self.model.name:
            raise ValueError(f"frame {k}: expected an Embedding made by {self.model.name!r}")
        return emb

    def get(self, k, default=None):
        k = int(k)
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        feats = self.model.features_on_device(self.embedding(k))
        pe = self.model.net.image_encoder.neck.position_encoding
        out = {"backbone_fpn": list(feats), "vision_pos_enc": [pe(f).to(f.dtype) for f in feats]}
        value = (_NO_IMAGE.to(feats[0].device), out)
        self._last = (k, value)
        return value

    def __setitem__(self, k, v) -> None:  # Meta's cache-miss path (never taken: get never misses)
        raise RuntimeError("frame features must come from embedding_of")


def _cast_memory(module, args, kwargs):
    """Forward pre-hook of the memory attention: stored bf16 memory -> the weights' dtype."""
    dtype = module.norm.weight.dtype
    for key in ("memory", "memory_pos"):
        v = kwargs.get(key)
        if v is not None and v.dtype != dtype:
            kwargs[key] = v.to(dtype)
    return args, kwargs


def _install_memory_cast(net) -> None:
    if not getattr(net.memory_attention, "_promptseg_cast", False):
        net.memory_attention.register_forward_pre_hook(_cast_memory, with_kwargs=True)
        net.memory_attention._promptseg_cast = True


class MemoryTracker:
    """Track objects through ``n_frames`` frames of ``frame_size`` with a SAM 2 model's memory.

    model: a SAM 2 model (``model.supports_memory``); embedding_of: frame index -> that frame's
    :class:`Embedding` (cache it: it is called once per frame and pass, and twice for prompted
    frames); frame_size: ``(H, W)`` of the frames. Add prompts with :meth:`add_points` /
    :meth:`add_mask` (each returns the object's mask on that frame), then iterate
    :meth:`propagate_iter`. keep_all: keep every tracked frame's memory (as Meta does; needed to
    correct a frame later); False: drop each frame's entry once no later frame of the run can read
    it (a bounded memory bank for long videos, the same results; ``ps.propagate`` and the napari
    session, which start a new tracker per run, use it).

    Corrections are SAM 2 conditioning frames (Meta's ``add_all_frames_to_correct_as_cond``), so a
    corrected frame keeps the corrected mask and conditions every other frame.
    """

    def __init__(self, model, embedding_of: Callable[[int], Embedding], n_frames: int,
                 frame_size: tuple[int, int], keep_all: bool = True) -> None:
        if not getattr(model, "supports_memory", False):
            raise ValueError(
                f"model {model.name!r} has no memory; memory tracking needs a SAM 2 model "
                "(e.g. 'sam2.1_hiera_tiny'), or use method='prompt'"
            )
        if int(n_frames) < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
        self.model, self.net = model, model.net
        self.n_frames = int(n_frames)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.stats = TrackStats()
        self.source = _FeatureSource(model, embedding_of, self.stats)
        _install_memory_cast(self.net)
        self.keep_all = bool(keep_all)
        self._corrected: dict[int, bool] = {}  # corrected frame -> tracked in reverse
        self.state = self._init_state()

    def _init_state(self) -> dict:
        """Meta's ``init_state`` without loading a video (same keys, our feature source)."""
        from collections import OrderedDict

        dev = self.model.device
        return {
            "images": None, "num_frames": self.n_frames, "offload_video_to_cpu": False,
            "offload_state_to_cpu": False, "video_height": self.frame_size[0],
            "video_width": self.frame_size[1], "device": dev, "storage_device": dev,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": self.source,
            "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(),
            "obj_ids": [], "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    # ---- prompts -------------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        return list(self.state["obj_ids"])

    def prompted_frames(self) -> list[int]:
        """Frames holding a conditioning prompt of some object, sorted."""
        ks = {k for d in self.state["output_dict_per_obj"].values() for k in d["cond_frame_outputs"]}
        ks |= {k for d in self.state["temp_output_dict_per_obj"].values() for k in d["cond_frame_outputs"]}
        return sorted(ks)

    def _check(self, k: int, obj: int) -> tuple[int, int]:
        k, obj = check_frame_object(k, obj, self.n_frames)
        if k not in self.source.pinned:
            self.source.pinned[k] = self.source.embedding(k)
        idx = self.state["obj_id_to_idx"].get(obj)
        tracked = None if idx is None else self.state["frames_tracked_per_obj"][idx].get(k)
        if tracked is not None:  # a correction: re-tracking goes on in the direction k was tracked
            self._corrected[k] = bool(tracked["reverse"])
        return k, obj

    def _mask_of(self, obj: int, video_res_masks: torch.Tensor) -> np.ndarray:
        i = self.state["obj_ids"].index(obj)
        return (video_res_masks[i, 0] > 0).cpu().numpy()

    @torch.inference_mode()
    def add_points(self, k: int, obj: int, points=None, labels=None, box=None) -> np.ndarray:
        """Prompt object ``obj`` on frame ``k`` with points ``(N, 2)`` (row, col), labels ``(N,)``
        (1 object, 0 background; default all 1) and/or a box ``(row0, col0, row1, col1)``.
        Replaces the object's earlier prompts on that frame. Returns its ``(H, W)`` bool mask."""
        from napari_promptseg.core.prompts import make_prompt

        k, obj = self._check(k, obj)
        p = make_prompt(self.frame_size, self.model.low_res_shape, points, labels, box, None)
        pts = lab = bx = None
        if len(p.points):
            pts, lab = p.points[:, ::-1].astype(np.float32), p.labels.astype(np.int32)
        if p.box is not None:
            r0, c0, r1, c1 = p.box
            bx = np.array([c0, r0, c1, r1], np.float32)
        _, _, masks = self.net.add_new_points_or_box(
            self.state, frame_idx=k, obj_id=obj, points=pts, labels=lab, box=bx)
        return self._mask_of(obj, masks)

    @torch.inference_mode()
    def add_mask(self, k: int, obj: int, mask) -> np.ndarray:
        """Prompt object ``obj`` on frame ``k`` with an ``(H, W)`` bool mask; returns the mask
        SAM 2 keeps for it (the input mask, resized through the model's input). An empty mask says
        the object is not on frame ``k`` (SAM 2 encodes "no object" into its memory there)."""
        k, obj = self._check(k, obj)
        m = np.asarray(mask, bool)
        if m.shape != self.frame_size:
            raise ValueError(f"mask of shape {m.shape} does not match the frames {self.frame_size}")
        _, _, masks = self.net.add_new_mask(self.state, frame_idx=k, obj_id=obj, mask=m)
        return self._mask_of(obj, masks)

    # ---- tracking ------------------------------------------------------------------------
    def _directions(self, start: int | None) -> list[tuple[int, bool]]:
        prompted = self.prompted_frames()
        if not prompted:
            raise ValueError("no prompts: add points, a box or a mask on some frame first")
        if start is None:
            s = prompted[0]
            return [(s, False), (s, True)]
        if not isinstance(start, (int, np.integer)) or not 0 <= start < self.n_frames:
            raise ValueError(f"start frame {start!r} is out of range for {self.n_frames} frames")
        start = int(start)
        if start in self._corrected:  # re-track from a correction, in the direction it was tracked
            return [(start, self._corrected[start])]
        if start in prompted:
            return [(start, False), (start, True)]
        tracked = [d[start]["reverse"] for d in self.state["frames_tracked_per_obj"].values()
                   if start in d]
        return [(start, bool(tracked and tracked[0]))]

    def propagate_iter(self, start: int | None = None, max_frames: int | None = None,
                       stop_after: int | None = None, non_overlap: bool = True,
                       ) -> Iterator[SliceResult]:
        """Track every object; yield one :class:`~napari_promptseg.SliceResult` per frame.

        start: None tracks forward from the earliest prompted frame to the end, then backward
        from it to frame 0 (Meta's forward-then-reverse); a prompted frame: both ways from it; a
        frame tracked before (a correction there): from it on, in the direction it was tracked.
        max_frames: at most this many frames beyond ``start`` per direction. stop_after: an
        object stops (in this direction) after this many consecutive frames without it (its
        object score <= 0); None: never. non_overlap: each pixel goes to the object with the
        highest logit there (Meta's ``_apply_non_overlapping_constraints``); False: the
        objects' masks as the model gives them, possibly overlapping.
        ``SliceResult.scores`` hold the objects' occlusion scores (sigmoid of SAM 2's object
        score logit: > 0.5 means the object is there); ``stopped`` names objects that stop.
        Bad arguments raise here, before anything is computed.
        """
        check_count("max_frames", max_frames, 0)
        check_count("stop_after", stop_after, 1)
        passes = self._directions(start)
        plans = []
        for s, reverse in passes:
            n = self.n_frames if max_frames is None else int(max_frames)
            if reverse:
                order = range(s, max(s - n, 0) - 1, -1)
            else:
                order = range(s, min(s + n, self.n_frames - 1) + 1)
            if reverse and s == 0:
                order = range(0)
            plans.append((reverse, order))
        return self._run(plans, stop_after, non_overlap)

    @torch.inference_mode()
    def _run(self, plans, stop_after, non_overlap) -> Iterator[SliceResult]:
        total = sum(len(o) for _, o in plans)
        done = 0
        for reverse, order in plans:
            for res in self._pass(order, reverse, stop_after, non_overlap):
                done += 1
                res.done, res.total = done, total
                yield res
        self._corrected.clear()

    def _window(self) -> int:
        """How many frames back (in tracking order) a frame's memory or object pointer is read."""
        net = self.net
        return max(int(net.max_obj_ptrs_in_encoder),
                   int(net.num_maskmem) * int(net.memory_temporal_stride_for_eval)) + 1

    def _prune(self, k: int, start: int, reverse: bool) -> None:
        """``keep_all=False``: drop the entry of the frame that just left the window behind ``k``,
        unless the reverse pass (which starts at ``start``) can still read it."""
        w = self._window()
        j = k + w if reverse else k - w
        if self.keep_all or (not reverse and j <= start + w):
            return
        for d in self.state["output_dict_per_obj"].values():
            d["non_cond_frame_outputs"].pop(j, None)

    def _pass(self, order, reverse: bool, stop_after, non_overlap: bool) -> Iterator[SliceResult]:
        """Meta's ``propagate_in_video`` loop (sam2_video_predictor.py), per object, with
        ``stop_after``, pruning and our mask upscaling."""
        net, state = self.net, self.state
        net.propagate_in_video_preflight(state)
        obj_ids = list(state["obj_ids"])
        missing = {o: 0 for o in obj_ids}
        stopped: set[int] = set()
        dev = state["device"]
        start = order[0] if len(order) else 0
        for k in order:
            low, logits_obj, live, newly = [], {}, [], {}
            for i, oid in enumerate(obj_ids):
                out_dict = state["output_dict_per_obj"][i]
                if k in out_dict["cond_frame_outputs"]:
                    cur = out_dict["cond_frame_outputs"][k]
                    pred = cur["pred_masks"].to(dev, non_blocking=True)
                    stopped.discard(oid)  # prompted again here: it tracks on from this frame
                    missing[oid] = 0
                elif oid in stopped:
                    continue
                else:
                    cur, pred = net._run_single_frame_inference(
                        inference_state=state, output_dict=out_dict, frame_idx=k, batch_size=1,
                        is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                        reverse=reverse, run_mem_encoder=True)
                    out_dict["non_cond_frame_outputs"][k] = cur
                    self.stats.tracked += 1
                state["frames_tracked_per_obj"][i][k] = {"reverse": reverse}
                score = float(cur["object_score_logits"].reshape(-1)[0])
                logits_obj[oid] = score
                if stop_after is not None:
                    missing[oid] = 0 if score > 0 else missing[oid] + 1
                    if missing[oid] >= stop_after:
                        stopped.add(oid)
                        newly[oid] = "absent"
                if score <= 0 and k not in out_dict["cond_frame_outputs"]:
                    continue  # absent here (SAM 2 empties such a mask itself; no mask, no claim)
                low.append(pred)
                live.append(oid)
            masks: dict[int, np.ndarray] = {}
            if live:
                lr = torch.cat(low, dim=0)  # (K, 1, h, w)
                if non_overlap and len(live) > 1:
                    lr = net._apply_non_overlapping_constraints(lr)
                full = self._upscale(lr[:, 0])
                taken = np.zeros(self.frame_size, bool) if non_overlap and len(live) > 1 else None
                for j, oid in sorted(enumerate(live), key=lambda t: t[1]):
                    m = full[j]
                    if taken is not None:  # upscaled edges may still touch: the lower id keeps them
                        m &= ~taken
                        taken |= m
                    if m.any():
                        masks[oid] = m
            self._prune(k, start, reverse)
            yield SliceResult(
                index=int(k), masks=masks,
                scores={o: float(1 / (1 + np.exp(-np.clip(s, -50, 50)))) for o, s in logits_obj.items()},
                done=0, total=0, direction=-1 if reverse else 1, stopped=newly,
            )

    def _upscale(self, low: torch.Tensor) -> np.ndarray:
        from napari_promptseg.models.upscale import upscale_masks

        side = low.shape[-1]
        return upscale_masks(low.float(), (side, side), self.frame_size, side)
