"""Find every instance of a concept in an image: SAM 3's promptable concept segmentation.

A concept is a short noun phrase (``text="nucleus"``), example boxes around instances
(``exemplars``), counter-example boxes (``negative``), or a phrase plus boxes. The model returns a
mask and a score for every instance it finds; :func:`find` keeps those above ``threshold``. The
image is embedded once (through the memory / disk caches when given) and every further prompt on
it reuses that embedding: refining the boxes costs one pass of SAM 3's detector heads.

Coordinates are ours: boxes ``(row0, col0, row1, col1)`` in image pixels, corners in any order.
"""

from __future__ import annotations

import numpy as np

from napari_promptseg.core.prompts import _box
from napari_promptseg.core.results import Embedding, Found, FoundObject

__all__ = ["find", "concept_boxes"]


def concept_boxes(exemplars, negative, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (N, 4), labels (N,) bool)``: validated ``(row0, col0, row1, col1)`` boxes with
    ``row0 <= row1``, ``col0 <= col1``, clipped to the image (positives first, then negatives)."""
    boxes, labels = [], []
    for name, given, label in (("exemplars", exemplars, True), ("negative", negative, False)):
        if given is None:
            continue
        arr = np.asarray(given, np.float64)
        if arr.size and arr.ndim == 1:
            arr = arr[None]
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{name} must be boxes (row0, col0, row1, col1): shape (N, 4), got {arr.shape}")
        for i, b in enumerate(arr):
            try:
                boxes.append(_box(b, shape))
            except ValueError as e:
                raise ValueError(f"{name}[{i}]: {e}") from None
            labels.append(label)
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, bool)


def find(model, image_or_embedding, text: str | None = None, exemplars=None, negative=None,
         threshold: float = 0.5, *, contrast_limits=None, cache=None, disk=None, tiles="auto",
         out=None, progress=None) -> Found:
    """Every instance of a concept in an image, by a noun phrase and/or example boxes (SAM 3).

    model: a loaded SAM 3 model or its registry name (``"sam3"``); image_or_embedding: an image
    ``(H, W)`` or ``(H, W, 3|4)`` of any real dtype (windowed as for every model:
    ``contrast_limits``, default robust percentiles) or ``model.embed(image)``'s embedding (reuse it
    for several prompts). text: a short noun phrase (``"nucleus"``, ``"mitotic cell"``); exemplars /
    negative: boxes ``(row0, col0, row1, col1)`` around instances / around things that are not
    instances, in image pixels; give a text, boxes, or both. threshold: keep objects scoring above
    it (0..1). cache / disk: an :class:`~napari_promptseg.embed.cache.EmbeddingCache` /
    :class:`~napari_promptseg.DiskCache` for the image's embedding.

    tiles: ``"auto"`` (default) searches an image longer than 4 model inputs (4032 pixels for
    SAM 3) tile by tile at the model's scale instead of squashing it into one input; True always,
    False never; a :class:`~napari_promptseg.embed.tiles.TiledEmbedding` (``ps.embed_tiles``) is
    searched by its tiles (see :mod:`~napari_promptseg.segmentation.find_tiles`: exemplar boxes
    prompt every tile, objects cut by tile edges are joined). out: a writable ``(H, W)`` integer
    array-like (zarr, numpy memmap) to paint the labels into, block by block (then
    ``found.labels`` is ``out``).
    progress(done, total): after each tile of a tiled search.

    Returns a :class:`~napari_promptseg.core.results.Found`: ``.objects`` (``mask``, ``score``,
    ``box``) by decreasing score and ``.labels`` ``(H, W)`` int32.
    """
    from napari_promptseg.embed.cache import embed_cached
    from napari_promptseg.io import check_labels_out
    from napari_promptseg.models import as_model

    model = as_model(model)
    if not getattr(model, "supports_concepts", False):
        raise TypeError(f"model {model.name!r} cannot find concepts; use a SAM 3 model: "
                        "ps.load_model('sam3')")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string (a noun phrase), got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise ValueError("text is empty: give a noun phrase, or None with exemplar boxes")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    from napari_promptseg.embed.tiles import TiledEmbedding, embed_tiles, wants_tiles

    if tiles not in ("auto", True, False):
        raise ValueError(f"tiles must be 'auto', True or False, got {tiles!r}")
    src = image_or_embedding
    if not isinstance(src, (Embedding, TiledEmbedding)) and (
            tiles is True or (tiles == "auto" and hasattr(src, "shape") and len(src.shape) >= 2
                              and wants_tiles(model, src.shape))):
        from napari_promptseg.embed.cache import EmbeddingCache

        # each tile is searched once: few embeddings in memory (a SAM 3 tile's is over 100 MB)
        keep = cache if cache is not None else EmbeddingCache(2)
        src = embed_tiles(model, src, contrast_limits, cache=keep, disk=disk)
    if isinstance(src, TiledEmbedding):
        shape = tuple(src.shape)
    elif isinstance(src, Embedding):
        shape = tuple(int(v) for v in src.original_size)
    else:
        if not hasattr(src, "shape"):
            src = np.asarray(src)
        if not (len(src.shape) == 2 or (len(src.shape) == 3 and src.shape[-1] in (3, 4))):
            raise ValueError(f"the image must be (H, W) gray or (H, W, 3|4) RGB(A), got shape "
                             f"{tuple(src.shape)}; for a stack use ps.find_stack")
        shape = tuple(int(v) for v in src.shape[:2])
    boxes, labels = concept_boxes(exemplars, negative, shape)  # bad input: before any embedding
    if text is None and not len(boxes):
        raise ValueError("nothing to find: give text (a noun phrase), exemplars (boxes), or both")
    target = None if out is None else check_labels_out(out, shape, max_id=1)
    if not isinstance(src, (Embedding, TiledEmbedding)):
        emb = embed_cached(model, src, contrast_limits, cache=cache, disk=disk)
    elif isinstance(src, Embedding):
        emb = src
    if isinstance(src, TiledEmbedding):
        from napari_promptseg.segmentation.find_tiles import find_tiled

        objects = find_tiled(model, src, text, boxes, labels, thr, progress)
    else:
        scores, pred_boxes, logits = model.detect(emb, text, boxes, labels)
        keep = np.flatnonzero(scores > thr)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        pieces = model.mask_pieces(logits[keep.tolist()], shape) if len(keep) else []
        objects = [FoundObject(score=float(scores[i]), box=tuple(float(v) for v in pred_boxes[i]),
                               window=tuple(int(v) for v in win), piece=piece, shape=shape)
                   for (win, piece), i in zip(pieces, keep, strict=True)]
    if target is not None:
        if len(objects) > np.iinfo(target.dtype).max:
            raise ValueError(f"out= has dtype {target.dtype}, which cannot hold the {len(objects)} "
                             "objects found: pass an int32 array")
        from napari_promptseg.segmentation.everything_tiles import paint_pieces

        order = range(len(objects) - 1, -1, -1)  # the better-scored object keeps the pixel
        paint_pieces([_inclusive(objects[i].window) for i in order], [objects[i].piece for i in order],
                     [i + 1 for i in order], target)
    return Found(objects=objects, shape=shape, threshold=thr, out=target)


def _inclusive(window) -> tuple[int, int, int, int]:
    r0, c0, r1, c1 = window
    return (r0, c0, r1 - 1, c1 - 1)
