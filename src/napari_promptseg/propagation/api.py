"""Propagate object masks through the slices of a z-stack or the frames of a video.

Qt-free. :func:`propagate_iter` is a generator that yields one :class:`SliceResult` per processed
slice, so the same code runs synchronously (:func:`propagate`, the headless API) and inside a
napari generator worker (progress bar from ``done`` / ``total``; cancel = stop iterating or call
the generator's ``close()``: nothing is computed after the last yielded slice).

Coordinates are ``(row, col)`` in slice pixels; masks are ``(H, W)`` bool.

How it works
------------
*Seeds* are the user's annotated slices: ``{slice index: {object id: (H, W) bool mask}}``. From
every seed an object propagates both ways: the mask of slice ``k`` becomes the prompt of slice
``k + 1`` (forward) or ``k - 1`` (backward). Between two seeds of the same object the gap is filled
from both ends and the fronts meet in the middle: the forward front fills the first
``ceil(gap / 2)`` slices, the backward front the rest (and, if the forward front stopped early,
everything the forward front did not reach). Beyond the first and last seed an object propagates
to the stack's ends. ``max_slices`` limits each front.

Order: two passes over the stack. The forward pass visits slices in increasing index and decodes,
on each slice, every object whose forward front is there (one ``embedding_of(k)`` call per slice
for all of them); then the backward pass visits slices in decreasing index. A slice can therefore
be yielded twice (once per pass, for different objects) but each ``(slice, object)`` pair is
predicted and yielded at most once. Seed slices are never re-predicted for their own objects;
other objects may propagate through a seed slice, but never into the seed masks' pixels.

Stopping (per object and front, :class:`~napari_promptseg.PromptPropagation`): the object's mask
on a slice is dropped and its front stops when the predicted IoU score < ``min_score``, the
mask's area < ``min_area`` pixels (the object
vanished), or its IoU with the object's mask on the previous slice < ``min_overlap`` (it jumped to
something else); with the image planes (``ps.propagate`` passes them) also by the rules of
:mod:`~napari_promptseg.propagation.stops` that read the image: the mask's contrast, the
object's plausible extent, a prompted neighbour above or below (``stops=`` chooses the rules).
Stopped objects are listed in :attr:`SliceResult.stopped` with the reason.

Overlaps: each pixel belongs to one object, so objects never bleed into each other.

1. Pixels already owned on this slice stay with their owner: seed masks, then masks yielded by the
   forward pass (the backward pass cannot take them).
2. Among objects decoded together on a slice, a pixel that several masks claim goes to the object
   that had it on the previous slice; if none or several had it, to the object whose previous-slice
   mask is nearest (Euclidean distance), ties to the higher score, then the lower id. The
   previous-slice masks are what the propagation trusts already, so the split between touching
   objects follows their boundary as it moves; the models' low-res logits are too coarse (4 px per
   logit for SAM) to split a thin contact reliably, and this rule needs nothing model-specific.

The prompt
----------
For each object the next slice is prompted with the bounding box of the previous mask plus the
previous prediction's low-res logits as ``mask_input`` (for a seed: the seed mask encoded by
``model.mask_prompt``), one mask (``multimask=False``, SAM practice for boxes):
``strategy="box+logits"``, the default, with the tight box (``box_margin=0``) and ``min_score=0.65``.
Chosen by measurement (``benchmarks/bench_propagation_prompts.py``, tables in
``docs/benchmarks.md``) with the trained ``promptseg_demo`` model on 9 synthetic fluorescence
volumes (24 x 160 x 160 uint16; blurred ellipsoids that drift, touch, or are dim and end
mid-stack; Poisson + Gaussian noise; 48 objects, each seeded with its true mask on one slice),
at two seed positions: the object's largest slice (it only shrinks away from the seed) and the
slice 20 % of its z extent from one end (it must grow towards its largest slice). Mean 3D IoU over
both positions: point 0.868, point + logits 0.862, box + logits 0.860, box 0.846, box + point +
logits 0.823, box + point 0.808; the true box on every slice (no propagation) 0.887. Seeding early
costs box + logits 0.015 (0.852 vs 0.867), the same as a single point: the tight box does not cap
growth with this model. A single point's predicted IoUs run lower than a box's, so it depends on
``min_score``: at 0.75 it stops early everywhere (0.681 with early seeds) while box + logits holds
(0.854); point + logits holds too but is not better. Box + logits also is the prompt SAM models are
most reliable with on whole objects (a single point is ambiguous on natural images).

``box_margin`` grows each side of the box by that fraction of its side plus ``BOX_MARGIN_PX``
(2 px), clipped to the slice, so a model that keeps strictly inside a tight box can still follow a
growing object. Measured with ``promptseg_demo`` it hurts every box strategy at both seed
positions (box + logits, mean of both: 0.780 at 0.05, 0.746 at 0.1, 0.628 at 0.2), most for
touching and dim objects: the model follows a loose box closely, and in propagation the mask fills
the looser box so the next box is looser still. Hence the default 0; SAM checkpoints were not
measured (they were trained with boxes jittered by ~10 % of the side and may tolerate a margin).
The other strategies and margins stay available through ``PromptPropagation(strategy=, box_margin=)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from napari_promptseg.core.results import Embedding, SliceResult
from napari_promptseg.propagation.options import (
    METHODS,
    PROMPT_STRATEGIES,
    MemoryTracking,
    Options,
    PromptPropagation,
    check_options,
    default_options,
)
from napari_promptseg.propagation.prompt_method import PromptPropagator
from napari_promptseg.propagation.seeds import check_seeds, parse_prompts, seed_masks, seed_tracker
from napari_promptseg.propagation.stops import axis_spacing

__all__ = ["propagate_iter", "propagate", "PROMPT_STRATEGIES"]

_PROMPT_ONLY = ("min_score", "min_overlap", "min_area", "prompt", "box_margin")
_LEGACY = _PROMPT_ONLY + ("max_slices", "method", "stop_after")


def _legacy_options(model, options, legacy: dict) -> Options | None:
    """Options from the keywords of earlier releases (``method=``, ``min_score=``, ...), with a
    DeprecationWarning; ValueError for a keyword the chosen method would ignore."""
    unknown = set(legacy) - set(_LEGACY)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    if not legacy:
        return options
    if options is not None:
        raise TypeError(f"pass either options= or the old keywords {sorted(legacy)}, not both")
    warnings.warn(f"propagate's keywords {sorted(legacy)} are deprecated: pass options=ps.PromptPropagation"
                  "(...) or ps.MemoryTracking(...)", DeprecationWarning, stacklevel=3)
    method = legacy.pop("method", "auto")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = default_options(model).method
    if method == "memory":
        ignored = sorted(set(legacy) & set(_PROMPT_ONLY))
        if ignored:
            raise ValueError(f"{ignored} apply to the prompt method only, not to memory tracking")
        return check_options(model, MemoryTracking(**legacy))
    if "stop_after" in legacy:
        raise ValueError("stop_after applies to memory tracking only, not to the prompt method")
    if "prompt" in legacy:
        legacy["strategy"] = legacy.pop("prompt")
    return PromptPropagation(**legacy)


def _add_absent(tracker, absent, n: int) -> dict[int, set[int]]:
    """Tell the tracker where objects are not: an empty mask prompt per ``absent`` slice (SAM 2
    then remembers "no object" there, instead of only hiding a mask it would track on)."""
    away = {int(o): {int(b) for b in bs} for o, bs in (absent or {}).items()}
    for o, frames in sorted(away.items()):
        if o not in tracker.object_ids:
            continue
        for b in sorted(frames):
            if not 0 <= b < n:
                raise ValueError(f"absent slice {b} of object {o} is out of range for {n} slices")
            tracker.add_mask(b, o, np.zeros(tracker.frame_size, bool))
    return away


def _tracked(tracker, options: MemoryTracking, away) -> Iterator[SliceResult]:
    for res in tracker.propagate_iter(max_frames=options.max_slices, stop_after=options.stop_after):
        for o in [o for o in res.masks if res.index in away.get(o, ())]:
            del res.masks[o]
        yield res


def propagate_iter(
    model,
    embedding_of: Callable[[int], Embedding],
    n_slices: int,
    seeds: Mapping[int, Mapping[int, np.ndarray]],
    options: Options | None = None,
    *,
    absent: Mapping[int, Iterable[int]] | None = None,
    planes: Callable[[int], np.ndarray] | None = None,
    spacing: float | None = None,
    **deprecated,
) -> Iterator[SliceResult]:
    """Propagate the seed masks through ``n_slices`` slices; yield one :class:`SliceResult` per
    processed slice (see the module docstring for the order, the stopping rules and overlaps).

    model: a :class:`~napari_promptseg.PromptableModel`; embedding_of: slice index -> that slice's
    :class:`Embedding` (called once per slice and pass, lazily; cache in the caller if it is
    slow); seeds: ``{slice index: {object id: (H, W) bool mask}}`` (ids >= 1), the masks' shape
    equal to the embeddings' ``original_size``. options: :class:`~napari_promptseg.PromptPropagation`
    (the mask-to-prompt method described above) or :class:`~napari_promptseg.MemoryTracking`
    (SAM 2's memory, :class:`~napari_promptseg.MemoryTracker`: the seed masks are its mask
    prompts; forward from the earliest seed, then backward); None: the model's default (memory
    for SAM 2). absent: ``{object id: slice indices}`` where the object is known not to be (e.g. a
    slice the user annotated without it): its fronts stop before those slices and never run past
    them (memory: SAM 2 is told "no object" there). planes: slice index -> its pixels, for the
    prompt method's image stop rules (None: they do not apply); spacing: the distance between
    slices in pixel widths (None: unknown, the extent rule does not apply), see
    :mod:`~napari_promptseg.propagation.stops`.

    Input errors raise ``ValueError`` / ``TypeError`` here, before anything is computed; a seed
    whose shape differs from the embeddings' raises at the first slice. It keeps no labels array
    (memory: the current fronts' masks, not the stack's): write each slice's masks where they go,
    as :func:`propagate` does into its ``out``, plane by plane.
    """
    options = check_options(model, _legacy_options(model, options, deprecated))
    clean, shape = check_seeds(seeds, n_slices)
    n = int(n_slices)
    if isinstance(options, MemoryTracking):
        from napari_promptseg.propagation.memory import MemoryTracker

        tracker = MemoryTracker(model, embedding_of, n, shape, keep_all=False)
        for k in sorted(clean):
            for oid, m in sorted(clean[k].items()):
                tracker.add_mask(k, oid, m)
        return _tracked(tracker, options, _add_absent(tracker, absent, n))
    return PromptPropagator(model, embedding_of, n, clean, shape, options, absent, planes, spacing).run()


def propagate(
    model,
    stack,
    prompts,
    axis: int = 0,
    options: Options | None = None,
    *,
    contrast_limits: tuple[float, float] | None = None,
    cache=None,
    disk=None,
    absent: Mapping[int, Iterable[int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    embeddings=None,
    out=None,
    scale=None,
    **deprecated,
) -> np.ndarray:
    """Segment objects through a z-stack or a video from prompts on some of its slices / frames.

    model: a loaded model or a registry name. stack: ``(N, H, W)`` gray or ``(N, H, W, 3|4)``
    RGB(A), any real dtype (numpy, zarr, dask: read plane by plane); ``axis`` (default 0) is the
    propagation axis among the non-channel axes (z for a stack, t for a video: a video
    ``(T, H, W, 3)`` uses ``axis=0``; a ``(H, W, N)`` stack ``axis=2``; negative values count from
    the last non-channel axis). The slices are the planes across ``axis``, in their remaining
    order, with ``(row, col)`` coordinates.

    prompts: ``{slice index: p}`` where ``p`` is either an ``(H, W)`` integer labels image (each
    non-zero id is one object's seed mask), or a list of prompt dicts
    ``{"points": [[row, col], ...], "labels": [1, 0, ...], "box": [row0, col0, row1, col1]}``
    (object ids 1, 2, ... by list position: the same position on two slices is the same object),
    or ``{object id: prompt dict}``. With the prompt method, prompt dicts are decoded on their
    slice first (the best-scoring mask; three candidates for a single point) to give the seed
    masks; on one slice, a lower id keeps a pixel that two seeds claim. With memory tracking they
    go to SAM 2 as its point / box prompts, as to Meta's ``SAM2VideoPredictor``.

    options: :class:`~napari_promptseg.PromptPropagation` or
    :class:`~napari_promptseg.MemoryTracking` (None: memory tracking for SAM 2 models, else
    prompts); absent: see :func:`propagate_iter`. scale: the voxel size over the stack's 3
    non-channel axes (napari's layer ``scale``, e.g. ``(2, 1, 1)`` for planes 2 pixel widths
    apart; None: unknown): the prompt method's extent rule needs it.

    Intensities: ONE window for the whole stack, ``contrast_limits`` or robust percentiles of the
    stack (:func:`~napari_promptseg.core.image.stack_window`, the same default as embeddings
    stores, so a precomputed stack is found; uint8 passes unchanged). Each slice is embedded
    lazily with :func:`~napari_promptseg.embed.cache.embed_cached` through ``cache`` (an
    ``EmbeddingCache`` or None) and ``disk`` (a ``DiskCache`` or None); slices visited by both
    passes are embedded twice unless a cache keeps them.

    progress: called as ``progress(done, total)`` after each processed slice.
    embeddings: an embeddings store (:func:`~napari_promptseg.open_embeddings` or its path)
    made for this stack, model and ``axis``: its planes are used (its window too), missing planes
    are embedded; a store made for other pixels or another model raises
    :class:`~napari_promptseg.StoreError`.

    out: where to write the labels instead of a new array: a writable integer array-like shaped
    like ``stack`` without its channel axis (a zarr array, a numpy array or ``np.memmap``, a napari
    Labels layer's data; not a dask array, which cannot be written in place), dtype wide enough
    for the object ids (int32 / uint32). It is written one ``(H, W)`` plane across ``axis`` at a
    time, and only the planes the seeds and the fronts reach: each such plane is read, the objects'
    pixels are set to their ids, and it is written back; every other pixel and plane keeps what
    ``out`` held (pass a zero-filled array for the result without ``out``). So with a zarr ``out``
    memory stays bounded by a few planes however long the stack. A wrong shape or dtype, a
    read-only array or ids the dtype cannot hold raise ``ValueError`` / ``TypeError`` before any
    pixel is read.

    Returns ``out`` when given, else a new int32 labels array shaped like ``stack`` without its
    channel axis; the seed slices hold the seed masks, the other slices the propagated masks
    (0 = background).
    """
    from napari_promptseg.embed.cache import EmbeddingCache
    from napari_promptseg.embed.frames import Frames
    from napari_promptseg.io import LabelPlanes, check_labels_out
    from napari_promptseg.models import as_model

    model = as_model(model)
    options = check_options(model, _legacy_options(model, options, deprecated))
    memory = isinstance(options, MemoryTracking)
    # the tracker reads a frame ~3 times: keep the last two
    if memory and cache is None:
        cache = EmbeddingCache(2)
    frames = Frames(model, stack, axis, contrast_limits=contrast_limits, embeddings=embeddings,
                    cache=cache, disk=disk)  # reads no pixel yet
    n, plane_shape, embedding_of = frames.n, frames.plane_shape, frames.embedding
    parsed = parse_prompts(prompts, n, plane_shape)
    if out is None:
        target = np.zeros(frames.spatial, np.int32)
    else:
        top = max((oid for objs in parsed.values() for oid in objs), default=0)
        target = check_labels_out(out, frames.spatial, max_id=top)
    planes = LabelPlanes(target, frames.axis)
    if memory:
        from napari_promptseg.propagation.memory import MemoryTracker

        tracker = MemoryTracker(model, embedding_of, n, plane_shape, keep_all=False)
        seeds = seed_tracker(tracker, parsed)
        steps = _tracked(tracker, options, _add_absent(tracker, absent, n))
    else:
        seeds = seed_masks(model, embedding_of, parsed)
        for k, objs in seeds.items():
            plane = planes.read(k)
            for oid, m in objs.items():
                plane[m] = oid
            planes.write(k, plane)
        steps = propagate_iter(model, embedding_of, n, seeds, options, absent=absent, planes=frames.plane,
                               spacing=axis_spacing(scale, frames.axis))
    for res in steps:
        if res.masks:
            plane = planes.read(res.index)
            if memory:  # each pixel to one object; what an earlier pass wrote stays where none is now
                new = np.zeros(plane_shape, np.int32)
                for oid, m in sorted(res.masks.items()):
                    new[m & (new == 0)] = oid
                plane = np.where(new > 0, new, plane).astype(plane.dtype, copy=False)
            else:
                for oid, m in res.masks.items():
                    plane[m] = oid
            planes.write(res.index, plane)
        if progress is not None:
            progress(res.done, res.total)
    if memory:  # prompted slices hold the prompts' masks; a lower id keeps a pixel
        for k, objs in seeds.items():
            plane = planes.read(k)
            plane[np.isin(plane, list(objs))] = 0
            for oid, m in sorted(objs.items(), reverse=True):
                plane[m] = oid
            planes.write(k, plane)
    return target
