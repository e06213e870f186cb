"""Prompted segmentation: prompt dicts -> one mask per object, on a 2D image or on planes of a stack.

A *prompt dict* is ``{"points": [[row, col], ...], "labels": [1, 0, ...], "box": [row0, col0,
row1, col1]}`` (any of the keys; labels default to all 1), in the plane's ``(row, col)`` pixels:
what ``ps.propagate``, ``ps.segment`` and the ``promptseg`` command line read.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from napari_promptseg.core.image import check_limits
from napari_promptseg.core.results import Embedding

__all__ = ["PROMPT_KEYS", "EmptyMaskError", "check_prompt_dict", "object_prompts", "decode_prompt",
           "decode_prompt_window", "segment"]

PROMPT_KEYS = ("points", "labels", "box")
Region = tuple[int, int, int, int]


class EmptyMaskError(ValueError):
    """A valid prompt whose best mask is empty (it is not on an object)."""


def check_prompt_dict(d, where: str) -> Mapping:
    """``d`` if it is a prompt dict; TypeError / ValueError naming ``where`` otherwise."""
    if not isinstance(d, Mapping):
        raise TypeError(f"{where}: a prompt must be a dict with 'points', 'labels', 'box', got {d!r}")
    unknown = set(d) - set(PROMPT_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown prompt keys {sorted(unknown)}; use 'points', 'labels', 'box'")
    return d


def object_prompts(p, where: str) -> list[tuple[int, Mapping]]:
    """``[(object id, prompt dict), ...]`` sorted by id from a list of prompt dicts (ids 1, 2, ...
    by position) or ``{object id: prompt dict}``; ValueError for an id that is not a positive int."""
    items = sorted(p.items() if isinstance(p, Mapping) else enumerate(p, 1), key=lambda t: t[0])
    out = []
    for oid, d in items:
        if not isinstance(oid, (int, np.integer)) or isinstance(oid, bool) or oid < 1:
            raise ValueError(f"object ids must be positive integers, got {oid!r} on {where}")
        out.append((int(oid), check_prompt_dict(d, f"{where}, object {oid}")))
    return out


def _predict_prompt(model, emb, d: Mapping, where: str):
    check_prompt_dict(d, where)
    points, labels, box = d.get("points"), d.get("labels"), d.get("box")
    n_points = 0 if points is None else len(np.asarray(points, np.float64).reshape(-1, 2))
    try:
        return model.predict(emb, points=points, labels=labels, box=box,
                             multimask=n_points == 1 and box is None)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def decode_prompt(model, emb: Embedding, d: Mapping, where: str) -> np.ndarray:
    """The ``(H, W)`` bool mask of prompt dict ``d`` on ``emb``: the best-scoring mask (of three
    candidates for a single point, else one). ValueError naming ``where`` for a bad prompt or an
    empty mask."""
    pred = _predict_prompt(model, emb, d, where)
    mask = np.array(pred.mask(pred.best), bool)
    if not mask.any():
        raise EmptyMaskError(f"{where}: the prompt gave an empty mask; move it onto the object")
    return mask


def decode_prompt_window(model, emb, d: Mapping, where: str) -> tuple[Region, np.ndarray]:
    """:func:`decode_prompt` without a whole-image mask where the model decoded in a window (a
    :class:`~napari_promptseg.embed.tiles.TiledEmbedding`): ``(region, mask)`` with ``region``
    ``(row0, col0, row1, col1)`` (exclusive ends) and ``mask`` that region's ``(h, w)`` bool
    pixels; for a plain embedding the region is the whole image."""
    pred = _predict_prompt(model, emb, d, where)
    region = getattr(pred, "region", None)
    if region is not None and hasattr(pred, "window_mask"):
        mask = np.array(pred.window_mask(pred.best), bool)
    else:
        mask = np.array(pred.mask(pred.best), bool)
        region = (0, 0, *mask.shape)
    if not mask.any():
        raise EmptyMaskError(f"{where}: the prompt gave an empty mask; move it onto the object")
    return tuple(int(v) for v in region), mask


def _is_stack(shape: tuple[int, ...]) -> tuple[bool, bool]:
    """``(stack, rgb)`` of an image of ``shape``: ``(H, W)``, ``(H, W, 3|4)``, ``(N, H, W)`` or
    ``(N, H, W, 3|4)``."""
    if len(shape) == 2:
        return False, False
    if len(shape) == 3:
        return (False, True) if shape[-1] in (3, 4) else (True, False)
    if len(shape) == 4 and shape[-1] in (3, 4):
        return True, True
    raise ValueError(f"image must be (H, W), (H, W, 3|4), (N, H, W) or (N, H, W, 3|4), got shape {shape}")


def segment(model, image, prompts, *, axis: int = 0, contrast_limits: tuple[float, float] | None = None,
            embeddings=None, skip_empty: bool = False, out=None) -> np.ndarray:
    """One mask per prompted object: int32 labels shaped like ``image`` without its colour axis.

    model: a loaded model or a registry name. image: ``(H, W)`` or ``(H, W, 3|4)``, or a stack
    ``(N, H, W[, 3|4])`` whose planes lie across ``axis`` (0..2). prompts: for a 2D image a list
    of prompt dicts (object ids 1, 2, ... by position) or ``{object id: prompt dict}``; for a
    stack ``{plane index: that}``. An object keeps the pixels no lower id took on its plane.
    Intensities: ``contrast_limits`` or the image's (a stack's: one window for all planes).
    A huge 2D image is tiled (only the tiles the prompts need are read and embedded). embeddings:
    an embeddings store made for this image, model and axis (its planes are read, not encoded).
    skip_empty: a prompt whose mask is empty leaves its object out instead of raising.

    out: write the labels there instead of a new array: a writable integer array-like shaped like
    ``image`` without its colour axis (zarr, numpy, ``np.memmap``, a napari Labels layer's data;
    not dask), as :func:`~napari_promptseg.propagate`'s ``out``. Only the prompted planes are read
    and written, one ``(H, W)`` plane at a time; on a tiled image only the windows the objects were
    decoded in. The objects' pixels get their ids, every other pixel keeps ``out``'s value. A
    wrong ``out`` raises ``ValueError`` / ``TypeError`` before any pixel is read. Returns ``out``
    when given.
    """
    from napari_promptseg.embed.frames import Frames
    from napari_promptseg.embed.store import EmbeddingStore, open_embeddings
    from napari_promptseg.embed.tiles import TiledEmbedding, embed_tiles, wants_tiles
    from napari_promptseg.io import LabelPlanes, check_labels_out
    from napari_promptseg.models import as_model

    model = as_model(model)
    arr = image if hasattr(image, "shape") and hasattr(image, "ndim") else np.asarray(image)
    stack, rgb = _is_stack(tuple(arr.shape))
    if stack:
        frames = Frames(model, arr, axis, contrast_limits=contrast_limits, embeddings=embeddings)
        if not isinstance(prompts, Mapping):
            raise ValueError("prompts of a stack must be {plane index: prompt dicts}")
        per_plane = {}
        for k, p in prompts.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -frames.n <= k < frames.n:
                raise ValueError(f"plane {k!r} is outside the image's {frames.n} planes (axis {frames.axis})")
            per_plane[int(k) % frames.n] = p
        shape, plane_axis = frames.spatial, frames.axis
        embedding_of = frames.embedding
    else:
        store = None
        if embeddings is not None:
            store = embeddings if isinstance(embeddings, EmbeddingStore) else open_embeddings(embeddings)
            store.check(model, tuple(arr.shape), 0)
        window = store.window if store is not None else (
            None if contrast_limits is None else check_limits(contrast_limits))
        per_plane = {0: prompts}
        shape, plane_axis = tuple(int(s) for s in arr.shape[:2]), None

        def embedding_of(_k: int):
            emb = store.embedding_for((), model, np.asarray(arr)) if store is not None else None
            if emb is not None:
                return emb
            if wants_tiles(model, arr.shape[:2]):  # reads only the windows the prompts need
                return embed_tiles(model, arr, window)
            return model.embed(np.asarray(arr), contrast_limits=window)

    where = {k: f"plane {k}" if stack else "the image" for k in per_plane}
    items = {k: object_prompts(per_plane[k], where[k]) for k in sorted(per_plane)}
    if out is None:
        labels = np.zeros(shape, np.int32)
    else:
        top = max((oid for its in items.values() for oid, _ in its), default=0)
        labels = check_labels_out(out, shape, max_id=top)
    planes = LabelPlanes(labels, plane_axis)
    for k, its in items.items():
        if not its:
            continue
        emb = embedding_of(k)
        if isinstance(emb, TiledEmbedding):
            _paste_windows(model, emb, its, labels, skip_empty)
            continue
        plane = planes.read(k)
        taken = np.zeros(plane.shape, bool)
        for oid, d in its:
            try:
                m = decode_prompt(model, emb, d, f"{where[k]}, object {oid}" if stack else f"object {oid}")
            except EmptyMaskError:
                if skip_empty:
                    continue
                raise
            m &= ~taken
            taken |= m
            plane[m] = oid
        planes.write(k, plane)
    return labels


def _paste_windows(model, tiled, items, labels, skip_empty: bool) -> None:
    """Decode each object of a tiled 2D image in its window and write that window of ``labels``
    only (never a whole-image mask); a lower id keeps the pixels it took."""
    done: list[tuple[Region, np.ndarray]] = []
    for oid, d in items:
        try:
            region, m = decode_prompt_window(model, tiled, d, f"object {oid}")
        except EmptyMaskError:
            if skip_empty:
                continue
            raise
        r0, c0, r1, c1 = region
        for (q0, p0, q1, p1), qm in done:
            a0, b0, a1, b1 = max(r0, q0), max(c0, p0), min(r1, q1), min(c1, p1)
            if a0 < a1 and b0 < b1:
                m[a0 - r0:a1 - r0, b0 - c0:b1 - c0] &= ~qm[a0 - q0:a1 - q0, b0 - p0:b1 - p0]
        done.append((region, m))
        if m.any():
            win = np.array(labels[r0:r1, c0:c1])
            win[m] = oid
            labels[r0:r1, c0:c1] = win
