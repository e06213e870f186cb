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

__all__ = ["PROMPT_KEYS", "EmptyMaskError", "check_prompt_dict", "object_prompts", "decode_prompt", "segment"]

PROMPT_KEYS = ("points", "labels", "box")


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


def decode_prompt(model, emb: Embedding, d: Mapping, where: str) -> np.ndarray:
    """The ``(H, W)`` bool mask of prompt dict ``d`` on ``emb``: the best-scoring mask (of three
    candidates for a single point, else one). ValueError naming ``where`` for a bad prompt or an
    empty mask."""
    check_prompt_dict(d, where)
    points, labels, box = d.get("points"), d.get("labels"), d.get("box")
    n_points = 0 if points is None else len(np.asarray(points, np.float64).reshape(-1, 2))
    try:
        pred = model.predict(emb, points=points, labels=labels, box=box,
                             multimask=n_points == 1 and box is None)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    mask = np.array(pred.mask(pred.best), bool)
    if not mask.any():
        raise EmptyMaskError(f"{where}: the prompt gave an empty mask; move it onto the object")
    return mask


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
            embeddings=None, skip_empty: bool = False) -> np.ndarray:
    """One mask per prompted object: int32 labels shaped like ``image`` without its colour axis.

    model: a loaded model or a registry name. image: ``(H, W)`` or ``(H, W, 3|4)``, or a stack
    ``(N, H, W[, 3|4])`` whose planes lie across ``axis`` (0..2). prompts: for a 2D image a list
    of prompt dicts (object ids 1, 2, ... by position) or ``{object id: prompt dict}``; for a
    stack ``{plane index: that}``. An object keeps the pixels no lower id took on its plane.
    Intensities: ``contrast_limits`` or the image's (a stack's: one window for all planes).
    A huge 2D image is tiled (only the tiles the prompts need are embedded). embeddings: an
    embeddings store made for this image, model and axis (its planes are read, not encoded).
    skip_empty: a prompt whose mask is empty leaves its object out instead of raising.
    """
    from napari_promptseg.embed.frames import Frames
    from napari_promptseg.embed.store import EmbeddingStore, open_embeddings
    from napari_promptseg.embed.tiles import embed_tiles, wants_tiles
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
        labels = np.zeros(frames.spatial, np.int32)
        view = frames.labels_view(labels)
        embedding_of = frames.embedding
    else:
        store = None
        if embeddings is not None:
            store = embeddings if isinstance(embeddings, EmbeddingStore) else open_embeddings(embeddings)
            store.check(model, tuple(arr.shape), 0)
        window = store.window if store is not None else (
            None if contrast_limits is None else check_limits(contrast_limits))
        per_plane = {0: prompts}
        labels = np.zeros(arr.shape[:2], np.int32)
        view = labels[None]

        def embedding_of(_k: int):
            emb = store.embedding_for((), model, np.asarray(arr)) if store is not None else None
            if emb is not None:
                return emb
            if wants_tiles(model, arr.shape[:2]):  # reads only the windows the prompts need
                return embed_tiles(model, arr, window)
            return model.embed(np.asarray(arr), contrast_limits=window)

    for k in sorted(per_plane):
        where = f"plane {k}" if stack else "the image"
        items = object_prompts(per_plane[k], where)
        if not items:
            continue
        emb = embedding_of(k)
        taken = np.zeros(view.shape[1:], bool)
        for oid, d in items:
            try:
                m = decode_prompt(model, emb, d, f"{where}, object {oid}" if stack else f"object {oid}")
            except EmptyMaskError:
                if skip_empty:
                    continue
                raise
            m &= ~taken
            taken |= m
            view[k][m] = oid
    return labels
