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

Stopping (per object and front): the object's mask on a slice is dropped and its front stops when
the predicted IoU score < ``min_score``, the mask's area < ``min_area`` pixels (the object
vanished), or its IoU with the object's mask on the previous slice < ``min_overlap`` (it jumped to
something else). Stopped objects are listed in :attr:`SliceResult.stopped` with the reason.

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
``prompt="box+logits"``, the default, with the tight box (``box_margin=0``) and ``min_score=0.65``.
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
The other strategies and margins stay available through ``prompt=`` and ``box_margin=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from .results import Embedding
from .slice_propagator import (
    BOX_MARGIN_PX,  # noqa: F401  (documented here, with BOX_MARGIN)
    SliceResult,
    _check_seeds,
    _Propagator,
)

__all__ = [
    "SliceResult", "propagate_iter", "propagate", "PROMPT_STRATEGIES", "DEFAULT_PROMPT", "BOX_MARGIN",
]

#: How the previous slice's mask prompts the next slice:
#: ``"box"``: its bounding box; ``"box+logits"``: the box and the previous low-res logits as
#: ``mask_input``; ``"box+point"``: the box and a positive point at the mask's most interior
#: pixel; ``"box+point+logits"``: all three; ``"point"``: the point alone (three candidate masks,
#: the best-scoring one); ``"point+logits"``: the point and the logits (one mask).
PROMPT_STRATEGIES = ("box", "box+logits", "box+point", "box+point+logits", "point", "point+logits")
DEFAULT_PROMPT = "box+logits"

#: Box prompts use the previous mask's box grown on each side by ``box_margin`` x its side plus
#: ``BOX_MARGIN_PX`` pixels (see :func:`propagate_iter`); the default is the tight box (measured:
#: every margin was worse with ``promptseg_demo``, see the module docstring).
BOX_MARGIN = 0.0

MIN_SCORE = 0.65
MIN_OVERLAP = 0.2
MIN_AREA = 10



def propagate_iter(
    model,
    embedding_of: Callable[[int], Embedding],
    n_slices: int,
    seeds: Mapping[int, Mapping[int, np.ndarray]],
    *,
    min_score: float = MIN_SCORE,
    min_overlap: float = MIN_OVERLAP,
    min_area: int = MIN_AREA,
    max_slices: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    box_margin: float = BOX_MARGIN,
    absent: Mapping[int, Iterable[int]] | None = None,
    method: str = "auto",
    stop_after: int | None = None,
) -> Iterator[SliceResult]:
    """Propagate the seed masks through ``n_slices`` slices; yield one :class:`SliceResult` per
    processed slice (see the module docstring for the order, the stopping rules and overlaps).

    method: ``"prompt"`` (the mask-to-prompt propagation described above), ``"memory"`` (SAM 2's
    memory tracking, :class:`~napari_promptseg.tracking.MemoryTracker`: the seed masks are its
    mask prompts; forward from the earliest seed, then backward; ``max_slices`` and
    ``stop_after`` apply, the score/overlap/area rules and ``prompt``/``box_margin`` do not; an
    object is dropped from the slices in ``absent``), or ``"auto"``: memory for a model with one
    (SAM 2), else prompt. stop_after (memory): an object stops after this many consecutive slices
    without it.

    model: a :class:`~napari_promptseg.PromptableModel`; embedding_of: slice index -> that slice's
    :class:`Embedding` (called once per slice and pass, lazily; cache in the caller if it is
    slow); seeds: ``{slice index: {object id: (H, W) bool mask}}`` (ids >= 1), the masks' shape
    equal to the embeddings' ``original_size``; min_score: stop an object when its predicted IoU
    falls below this; min_overlap: ... when the IoU between its masks on consecutive slices falls
    below this; min_area: ... when its mask has fewer pixels; max_slices: at most this many slices
    from each seed in each direction (None: no limit); prompt: one of :data:`PROMPT_STRATEGIES`;
    box_margin: for the prompts with a box, each side of the previous mask's bounding box moves out
    by ``box_margin`` x the box's extent along that axis plus :data:`BOX_MARGIN_PX` pixels (clipped
    to the slice), so an object that grows from slice to slice is not capped by its previous box;
    0: the tight box (the object can hardly grow); absent: ``{object id: slice indices}`` where
    the object is known not to be (e.g. a slice the user annotated without it): its fronts stop
    before those slices and never run past them.

    Input errors raise ``ValueError`` / ``TypeError`` here, before anything is computed; a seed
    whose shape differs from the embeddings' raises at the first slice.
    """
    clean, shape = _check_seeds(seeds, n_slices)
    if resolve_method(model, method) == "memory":
        return _memory_iter(model, embedding_of, int(n_slices), clean, shape, max_slices, stop_after,
                            absent)
    if prompt not in PROMPT_STRATEGIES:
        raise ValueError(f"prompt must be one of {PROMPT_STRATEGIES}, got {prompt!r}")
    if max_slices is not None and (int(max_slices) != max_slices or max_slices < 0):
        raise ValueError(f"max_slices must be a non-negative integer or None, got {max_slices!r}")
    for name, v in (("min_score", min_score), ("min_overlap", min_overlap)):
        if not 0 <= float(v) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area!r}")
    if not (math.isfinite(float(box_margin)) and float(box_margin) >= 0):
        raise ValueError(f"box_margin must be a finite number >= 0, got {box_margin!r}")
    p = _Propagator(model, embedding_of, int(n_slices), clean, shape, prompt, float(box_margin),
                    float(min_score), float(min_overlap), int(min_area),
                    None if max_slices is None else int(max_slices), absent)
    return p.run()


METHODS = ("auto", "memory", "prompt")


def resolve_method(model, method: str) -> str:
    """``"memory"`` or ``"prompt"`` for ``method`` (``"auto"``: memory when the model has one)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    has_memory = bool(getattr(model, "supports_memory", False))
    if method == "auto":
        return "memory" if has_memory else "prompt"
    if method == "memory" and not has_memory:
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} has no memory: method='memory' needs a SAM 2 "
            "model (e.g. 'sam2.1_hiera_tiny'); use method='prompt' with SAM models"
        )
    return method


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


def _memory_iter(model, embedding_of, n, seeds, shape, max_slices, stop_after, absent):
    from .tracking import MemoryTracker, check_limits

    check_limits(max_slices, stop_after, "max_slices")  # before anything is embedded
    tracker = MemoryTracker(model, embedding_of, n, shape, keep_all=False)
    for k in sorted(seeds):
        for oid, m in sorted(seeds[k].items()):
            tracker.add_mask(k, oid, m)
    away = _add_absent(tracker, absent, n)

    def run():
        for res in tracker.propagate_iter(max_frames=max_slices, stop_after=stop_after):
            for o in [o for o in res.masks if res.index in away.get(o, ())]:
                del res.masks[o]
            yield res

    return run()


def _decode_prompt(model, emb: Embedding, d, where: str) -> np.ndarray:
    if not isinstance(d, Mapping):
        raise TypeError(f"{where}: a prompt must be a dict with 'points', 'labels', 'box', got {d!r}")
    unknown = set(d) - {"points", "labels", "box"}
    if unknown:
        raise ValueError(f"{where}: unknown prompt keys {sorted(unknown)}; use 'points', 'labels', 'box'")
    points, labels, box = d.get("points"), d.get("labels"), d.get("box")
    n_points = 0 if points is None else len(np.asarray(points, np.float64).reshape(-1, 2))
    try:
        pred = model.predict(emb, points=points, labels=labels, box=box,
                             multimask=n_points == 1 and box is None)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    mask = np.array(pred.mask(pred.best), bool)
    if not mask.any():
        raise ValueError(f"{where}: the prompt gave an empty mask; move it onto the object")
    return mask


def _seed_prompts(prompts, n: int) -> dict[int, object]:
    if not isinstance(prompts, Mapping) or not prompts:
        raise ValueError(
            "prompts must be a non-empty mapping {slice index: labels image (H, W), or a list of "
            "prompt dicts, or {object id: prompt dict}}"
        )
    out = {}
    for k, v in prompts.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ValueError(f"prompt slice index must be an integer, got {k!r}")
        if not -n <= k < n:
            raise ValueError(f"prompt slice index {k} is out of range for {n} slices")
        out[int(k) % n] = v
    return out


def propagate(
    model,
    stack,
    prompts,
    axis: int = 0,
    *,
    contrast_limits: tuple[float, float] | None = None,
    cache=None,
    disk=None,
    min_score: float = MIN_SCORE,
    min_overlap: float = MIN_OVERLAP,
    min_area: int = MIN_AREA,
    max_slices: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    box_margin: float = BOX_MARGIN,
    absent: Mapping[int, Iterable[int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    method: str = "auto",
    stop_after: int | None = None,
    embeddings=None,
) -> np.ndarray:
    """Segment objects through a z-stack or a video from prompts on some of its slices / frames.

    stack: ``(N, H, W)`` gray or ``(N, H, W, 3|4)`` RGB(A), any real dtype; ``axis`` (default 0)
    is the propagation axis among the non-channel axes (z for a stack, t for a video: a video
    ``(T, H, W, 3)`` uses ``axis=0``; a ``(H, W, N)`` stack ``axis=2``; negative values count from
    the last non-channel axis). The slices are the planes across ``axis``, in their remaining
    order, with ``(row, col)`` coordinates.

    prompts: ``{slice index: p}`` where ``p`` is either an ``(H, W)`` integer labels image (each
    non-zero id is one object's seed mask), or a list of prompt dicts
    ``{"points": [[row, col], ...], "labels": [1, 0, ...], "box": [row0, col0, row1, col1]}``
    (object ids 1, 2, ... by list position: the same position on two slices is the same object),
    or ``{object id: prompt dict}``. Prompt dicts are decoded on their slice first (the
    best-scoring mask; three candidates for a single point) to give the seed masks; on one slice,
    a lower id keeps a pixel that two seeds claim.

    Intensities: ONE window for the whole stack, ``contrast_limits`` or robust percentiles of the
    stack (:func:`~napari_promptseg.stack.stack_window`, the same default as
    :func:`~napari_promptseg.stack.embed_stack_iter`, so a precomputed stack is found; uint8
    passes unchanged). Each slice is embedded lazily with
    :func:`~napari_promptseg.embeddings.embed_cached` through ``cache`` (an ``EmbeddingCache`` or
    None) and ``disk`` (a ``DiskCache`` or None); slices visited by both passes are embedded twice
    unless a cache keeps them.

    method: ``"memory"`` tracks with SAM 2's memory (:mod:`napari_promptseg.tracking`: prompt
    dicts and labels go to the tracker as SAM 2 point/box and mask prompts, as to Meta's
    ``SAM2VideoPredictor``; forward from the earliest prompted slice, then backward; masks do
    not overlap), ``"prompt"`` the mask-to-prompt propagation (SAM models), ``"auto"`` (default)
    memory for SAM 2 models, else prompt. stop_after (memory): an object stops after this many
    consecutive slices without it (None: never).

    min_score, min_overlap, min_area, max_slices, prompt, box_margin, absent: see
    :func:`propagate_iter` (with ``method="memory"`` only ``max_slices`` and ``absent`` apply).
    progress: called as ``progress(done, total)`` after each processed slice.
    embeddings: an embeddings store (:func:`~napari_promptseg.store.open_embeddings` or its path)
    made for this stack, model and ``axis``: its planes are used (its window too), missing planes
    are embedded; a store made for other pixels or another model raises
    :class:`~napari_promptseg.store.StoreError`.

    Returns an int32 labels array shaped like ``stack`` without its channel axis; the seed slices
    hold the seed masks, the other slices the propagated masks (0 = background).
    """
    from .embeddings import embed_cached
    from .image import _check_limits
    from .stack import stack_window

    arr = stack if hasattr(stack, "shape") and hasattr(stack, "ndim") else np.asarray(stack)
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        spatial = arr.shape[:3]
    elif arr.ndim == 3:
        spatial = arr.shape
    else:
        raise ValueError(
            f"stack must be (N, H, W) gray or (N, H, W, 3|4) RGB, got shape {tuple(arr.shape)}"
        )
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be one of the 3 non-channel axes (-3..2), got {axis}")
    axis %= 3
    n = spatial[axis]
    plane_shape = tuple(s for i, s in enumerate(spatial) if i != axis)
    store = None
    if embeddings is not None:
        from .store import EmbeddingStore, StoreError, open_embeddings

        store = embeddings if isinstance(embeddings, EmbeddingStore) else open_embeddings(embeddings)
        store.check(model, tuple(arr.shape), axis)
        if contrast_limits is not None and tuple(_check_limits(contrast_limits)) != store.window:
            raise StoreError(f"contrast_limits {contrast_limits} differ from the store's window "
                             f"{store.window}: leave contrast_limits out to use the store")
        window = store.window
    elif contrast_limits is not None:
        window = _check_limits(contrast_limits)
    elif np.dtype(arr.dtype) in (np.uint8, np.bool_):
        window = None  # passes unchanged
    else:
        window = stack_window(np.moveaxis(arr, axis, 0), rgb=arr.ndim == 4)

    def plane(k: int) -> np.ndarray:  # indexing reads one plane of a zarr / dask stack, not all
        return np.asarray(arr[(slice(None),) * axis + (k,)])

    def _stored(k: int) -> Embedding | None:
        return None if store is None else store.embedding_for(k, model, plane(k))

    if resolve_method(model, method) == "memory":
        from .embeddings import EmbeddingCache

        mem = EmbeddingCache(2) if cache is None else cache  # the tracker reads a frame ~3 times

        def embedding_of(k: int) -> Embedding:
            return _stored(k) or embed_cached(model, plane(k), window, mem, disk=disk)

        return _propagate_memory(model, embedding_of, n, plane_shape, spatial, axis, prompts,
                                 max_slices, stop_after, absent, progress)

    def embedding_of(k: int) -> Embedding:
        return _stored(k) or embed_cached(model, plane(k), window, cache, disk=disk)

    seeds: dict[int, dict[int, np.ndarray]] = {}
    for k, p in _seed_prompts(prompts, n).items():
        if isinstance(p, Mapping) or (
            isinstance(p, (list, tuple)) and all(isinstance(d, Mapping) for d in p)
        ):
            items = p.items() if isinstance(p, Mapping) else enumerate(p, 1)
            items = sorted(items, key=lambda t: t[0])
            if not items:
                continue
            emb = embedding_of(k)
            taken = np.zeros(plane_shape, bool)
            for oid, d in items:
                if not isinstance(oid, (int, np.integer)) or isinstance(oid, bool) or oid < 1:
                    raise ValueError(f"object ids must be positive integers, got {oid!r} on slice {k}")
                m = _decode_prompt(model, emb, d, f"slice {k}, object {oid}") & ~taken
                taken |= m
                seeds.setdefault(k, {})[int(oid)] = m
        else:
            lab = np.asarray(p)
            if lab.dtype.kind not in "iub":
                raise ValueError(f"prompts[{k}]: a labels image must be integers, got dtype {lab.dtype}")
            if lab.shape != plane_shape:
                raise ValueError(
                    f"prompts[{k}]: labels of shape {lab.shape} do not match the slices {plane_shape}"
                )
            ids = [int(i) for i in np.unique(lab) if i != 0]
            if any(i < 0 for i in ids):
                raise ValueError(f"prompts[{k}]: labels must be >= 0")
            if ids:
                seeds[k] = {i: lab == i for i in ids}
    if not seeds:
        raise ValueError("prompts hold no object on any slice")

    out = np.zeros(spatial, np.int32)
    view = np.moveaxis(out, axis, 0)
    for k, objs in seeds.items():
        for oid, m in objs.items():
            view[k][m] = oid
    for res in propagate_iter(model, embedding_of, n, seeds, min_score=min_score,
                              min_overlap=min_overlap, min_area=min_area, max_slices=max_slices,
                              prompt=prompt, box_margin=box_margin, absent=absent):
        for oid, m in res.masks.items():
            view[res.index][m] = oid
        if progress is not None:
            progress(res.done, res.total)
    return out


def _propagate_memory(model, embedding_of, n, plane_shape, spatial, axis, prompts, max_slices,
                      stop_after, absent, progress) -> np.ndarray:
    from .tracking import MemoryTracker, check_limits, seed_tracker

    check_limits(max_slices, stop_after, "max_slices")
    tracker = MemoryTracker(model, embedding_of, n, plane_shape, keep_all=False)
    seeds = seed_tracker(tracker, _seed_prompts(prompts, n))
    away = _add_absent(tracker, absent, n)
    out = np.zeros(spatial, np.int32)
    view = np.moveaxis(out, axis, 0)
    for res in tracker.propagate_iter(max_frames=max_slices, stop_after=stop_after):
        plane = np.zeros(plane_shape, np.int32)
        for oid, m in sorted(res.masks.items()):
            if res.index not in away.get(oid, ()):
                plane[m & (plane == 0)] = oid
        view[res.index] = np.where(plane > 0, plane, view[res.index])
        if progress is not None:
            progress(res.done, res.total)
    for k, objs in seeds.items():  # prompted slices hold the prompts' masks; a lower id keeps a pixel
        view[k][np.isin(view[k], list(objs))] = 0
        for oid, m in sorted(objs.items(), reverse=True):
            view[k][m] = oid
    return out
