"""The incremental video / stack loop of SAM 2's ``SAM2VideoPredictor``, for every model family.

Meta's loop is ``init_state`` -> ``add_new_points_or_box`` / ``add_new_mask`` on any frame ->
``propagate_in_video`` -> a correction on some frame -> propagate again. :class:`Tracker` is that
loop over any array (numpy, zarr, dask; frames embedded once, through the caches or a store):

    tracker = ps.Tracker(model, video)                         # (T, H, W[, 3]); axis= for z-stacks
    tracker.add_prompt(0, obj=1, points=[[40, 60]])            # -> (H, W) bool mask on frame 0
    for res in tracker.propagate(): ...                         # one SliceResult per frame
    tracker.add_prompt(17, obj=1, points=[[52, 80], [50, 70]], labels=[1, 0])   # a correction
    for res in tracker.propagate(start=17): ...                 # re-tracked from the correction
    labels = tracker.labels()                                   # (T, H, W) int32

With :class:`~napari_promptseg.MemoryTracking` (SAM 2) it is Meta's predictor step for step
(:class:`~napari_promptseg.MemoryTracker`); with :class:`~napari_promptseg.PromptPropagation`
(any model) each prompted frame's mask is a seed of the prompt method, which runs again from all
seeds on every :meth:`Tracker.propagate` (between two prompted frames of an object the fronts
meet in the middle, so a correction changes the frames up to halfway to the next prompt).
Coordinates are ``(row, col)`` frame pixels; masks ``(H, W)`` bool.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_promptseg.core.results import SliceResult
from napari_promptseg.propagation.options import MemoryTracking, Options, check_frame_object, check_options
from napari_promptseg.propagation.prompt_method import PromptPropagator
from napari_promptseg.propagation.seeds import check_seeds
from napari_promptseg.propagation.stops import axis_spacing
from napari_promptseg.segmentation.prompted import decode_prompt

__all__ = ["Tracker"]


class Tracker:
    """Track objects prompted on any frames of ``stack`` (see the module docstring).

    model: a loaded model or a registry name; stack: ``(N, H, W)`` or ``(N, H, W, 3|4)``, frames
    across ``axis``; options: :class:`~napari_promptseg.MemoryTracking` or
    :class:`~napari_promptseg.PromptPropagation` (None: memory for SAM 2 models, else prompts).
    contrast_limits, embeddings, disk, scale: as :func:`~napari_promptseg.propagate`; cache: the
    frames' in-memory embeddings (default: up to 64 frames kept, so propagating again after a
    correction embeds nothing).
    """

    def __init__(self, model, stack, axis: int = 0, options: Options | None = None, *,
                 contrast_limits=None, embeddings=None, cache=None, disk=None, scale=None) -> None:
        from napari_promptseg.embed.cache import EmbeddingCache
        from napari_promptseg.embed.frames import Frames
        from napari_promptseg.models import as_model

        self.model = as_model(model)
        self.options = check_options(self.model, options)
        self.frames = Frames(self.model, stack, axis, contrast_limits=contrast_limits,
                             embeddings=embeddings, cache=cache, disk=disk)
        self.spacing = axis_spacing(scale, self.frames.axis)  # the planes' distance, pixel widths
        if cache is None:
            self.frames.cache = EmbeddingCache(min(self.frames.n, 64))
        #: the latest mask of each object on each frame: ``{frame: {object id: (H, W) bool}}``
        self.masks: dict[int, dict[int, np.ndarray]] = {}
        self._seeds: dict[int, dict[int, np.ndarray]] = {}  # prompted frames (the prompt method)
        self._absent: dict[int, set[int]] = {}
        self._memory = None
        if isinstance(self.options, MemoryTracking):
            from napari_promptseg.propagation.memory import MemoryTracker

            self._memory = MemoryTracker(self.model, self.frames.embedding, self.frames.n,
                                         self.frames.plane_shape, keep_all=True)

    @property
    def n_frames(self) -> int:
        return self.frames.n

    @property
    def object_ids(self) -> list[int]:
        """The prompted objects, sorted."""
        if self._memory is not None:
            return sorted(self._memory.object_ids)
        return sorted({o for objs in self._seeds.values() for o in objs} | set(self._absent))

    def add_prompt(self, frame: int, obj: int, points=None, labels=None, box=None) -> np.ndarray:
        """Prompt object ``obj`` on ``frame`` with points ``(N, 2)`` (row, col), labels ``(N,)``
        (1 object, 0 background; default all 1) and/or a box ``(row0, col0, row1, col1)``; it
        replaces the object's earlier prompt there. Returns the object's ``(H, W)`` bool mask."""
        k, o = check_frame_object(frame, obj, self.n_frames)
        if self._memory is not None:
            m = self._memory.add_points(k, o, points, labels, box)
        else:
            given = (("points", points), ("labels", labels), ("box", box))
            d = {name: v for name, v in given if v is not None}
            m = decode_prompt(self.model, self.frames.embedding(k), d, f"frame {k}, object {o}")
        return self._prompted(k, o, m)

    def add_mask(self, frame: int, obj: int, mask) -> np.ndarray:
        """Prompt object ``obj`` on ``frame`` with an ``(H, W)`` bool mask (e.g. painted labels).
        An empty mask says the object is not on that frame: tracking stops there. Returns the
        mask kept (SAM 2: the mask as its memory holds it)."""
        k, o = check_frame_object(frame, obj, self.n_frames)
        m = np.asarray(mask, bool)
        if m.shape != self.frames.plane_shape:
            raise ValueError(f"mask of shape {m.shape} does not match the frames {self.frames.plane_shape}")
        if self._memory is not None:
            m = self._memory.add_mask(k, o, m)
        elif not m.any():
            self._absent.setdefault(o, set()).add(k)
            self._seeds.get(k, {}).pop(o, None)
            self.masks.get(k, {}).pop(o, None)
            return m
        return self._prompted(k, o, m)

    def _prompted(self, k: int, o: int, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, bool)
        if self._memory is None:
            self._absent.get(o, set()).discard(k)
            self._seeds.setdefault(k, {})[o] = m
        self.masks.setdefault(k, {})[o] = m
        return m

    def propagate(self, start: int | None = None) -> Iterator[SliceResult]:
        """Track every object; yield one :class:`~napari_promptseg.SliceResult` per frame and keep
        its masks in :attr:`masks`. start (memory tracking): None tracks from the earliest prompted
        frame forward, then backward; a prompted frame: both ways from it; a corrected frame: from
        it in the direction it was tracked (Meta's semantics). The prompt method runs again from
        every prompted frame. Bad arguments raise here, before anything is computed."""
        if self._memory is not None:
            steps = self._memory.propagate_iter(start, max_frames=self.options.max_slices,
                                                stop_after=self.options.stop_after)
            return self._keep(steps)
        if start is not None:
            check_frame_object(start, 1, self.n_frames)
        if not any(self._seeds.values()):
            raise ValueError("no prompts: add_prompt or add_mask on some frame first")
        seeds, shape = check_seeds({k: v for k, v in self._seeds.items() if v}, self.n_frames)
        run = PromptPropagator(self.model, self.frames.embedding, self.n_frames, seeds, shape,
                               self.options, {o: sorted(ks) for o, ks in self._absent.items()},
                               self.frames.plane, self.spacing)
        self.masks = {k: dict(objs) for k, objs in seeds.items()}  # a run replaces the last one
        return self._keep(run.run())

    def _keep(self, steps: Iterator[SliceResult]) -> Iterator[SliceResult]:
        """Yield ``steps``, keeping their masks: SAM 2 tracks every object on each frame it visits
        (its result replaces the frame's), the prompt method some objects per pass (added)."""
        for res in steps:
            masks = {o: np.asarray(m, bool) for o, m in res.masks.items()}
            if self._memory is not None:
                self.masks[res.index] = masks
            else:
                self.masks.setdefault(res.index, {}).update(masks)
            yield res

    def labels(self) -> np.ndarray:
        """The latest masks as an int32 labels array shaped like the stack without its channel
        axis (each pixel to the lowest id that has it)."""
        out = np.zeros(self.frames.spatial, np.int32)
        view = self.frames.labels_view(out)
        for k, objs in self.masks.items():
            for o, m in sorted(objs.items()):
                view[k][m & (view[k] == 0)] = o
        return out
