"""Find every instance of a concept in a huge 2D image, tile by tile (SAM 3 on a
:class:`~napari_promptseg.embed.tiles.TiledEmbedding`).

SAM 3 squashes any image into its 1008 x 1008 input, so on a whole slide a nucleus would shrink to
a pixel. Here every tile (the model input at the model's scale, overlapping by ``2 * halo``) is
searched on its own, as the untiled :func:`~napari_promptseg.find` searches an image:

- A text prompt is searched in every tile as it is.
- Exemplar boxes are encoded once, in the window where they lie (the tile whose core holds a box's
  centre, or a window around a box larger than that; SAM 3's geometry encoder reads the image
  inside them), and those prompt tokens then prompt every tile: "find more like this one" over the
  whole slide. On an image of one tile this is exactly the untiled search.
- A mask that reaches an inner tile edge is a *piece*: a smaller object is found whole in a
  neighbouring tile; pieces of a larger object, found in several tiles, are joined where they agree
  in the tiles' common area; a piece seen by one tile only is dropped (it is cut). Whole masks seen
  by two tiles are kept once (mask IoU > 0.5, the better score), as segment everything's tiles
  (:mod:`~napari_promptseg.segmentation.everything_tiles`, whose merging this reuses).

Memory: one tile is embedded and searched at a time; every object keeps only its extent's piece
of the mask. Coordinates: boxes ``(row0, col0, row1, col1)`` in image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from napari_promptseg.core.cancel import check_cancelled
from napari_promptseg.core.results import FoundObject
from napari_promptseg.segmentation.everything_tiles import merge_tiles
from napari_promptseg.segmentation.generator import Candidates

__all__ = ["find_tiled", "find_tiled_iter", "exemplar_prompt"]


def exemplar_prompt(model, tiled, text: str | None, boxes: np.ndarray, labels: np.ndarray):
    """SAM 3's prompt tokens of ``text`` and the ``(N, 4)`` ``boxes`` (``labels`` True = example,
    False = counter-example), each box encoded in its own window of ``tiled``
    (:meth:`~napari_promptseg.embed.tiles.TiledEmbedding.region_for`), boxes sharing a window
    together; None without boxes."""
    if not len(boxes):
        return None
    groups: dict[tuple, list[int]] = {}
    for k, b in enumerate(boxes):
        groups.setdefault(tiled.region_for(box=b), []).append(k)
    parts = []
    for region, idx in groups.items():
        r0, c0 = region[0], region[1]
        local = np.asarray(boxes, np.float64)[idx] - (r0, c0, r0, c0)
        parts.append(model.concept_prompt(tiled.embedding_of(region), text, local, labels[idx]))
    return parts[0] if len(parts) == 1 else model.join_prompts(parts)


def find_tiled(model, tiled, text: str | None, boxes: np.ndarray, labels: np.ndarray,
               threshold: float, progress: Callable[[int, int], None] | None = None) -> list[FoundObject]:
    """The objects scoring above ``threshold`` in the whole image of ``tiled``, by decreasing
    score (see the module docstring); boxes / labels checked as
    :func:`~napari_promptseg.segmentation.find.concept_boxes` returns them. progress(done, total):
    after each tile. Cancellable between tiles (:func:`~napari_promptseg.core.cancel.check_cancelled`)."""
    objects: list[FoundObject] = []
    for done, total, last in find_tiled_iter(model, tiled, text, boxes, labels, threshold):
        objects = last if last is not None else objects
        if progress is not None:
            progress(done, total)
    return objects


def find_tiled_iter(model, tiled, text: str | None, boxes: np.ndarray, labels: np.ndarray,
                    threshold: float) -> Iterator[tuple[int, int, list[FoundObject] | None]]:
    """:func:`find_tiled` as steps: ``(done, total, None)`` after each tile, then ``(total, total,
    objects)``."""
    grid, shape = tiled.grid, tiled.shape
    prompt = exemplar_prompt(model, tiled, text, boxes, labels)
    whole, pieces = Candidates(), Candidates()
    for n, t in enumerate(grid.tiles):
        check_cancelled()
        emb = tiled.embedding_of(t.box)
        if prompt is None:
            scores, pred, logits = model.detect(emb, text, None, None)
        else:
            scores, pred, logits = model.detect(emb, text, None, None, prompt=prompt)
        keep = np.flatnonzero(scores > threshold)
        r0, c0, r1, c1 = t.box
        found = model.mask_pieces(logits[keep.tolist()], (r1 - r0, c1 - c0)) if len(keep) else []
        for i, (win, piece) in zip(keep, found, strict=True):
            a0, b0, a1, b1 = (int(v) for v in win)
            if a1 <= a0 or b1 <= b0:  # an empty mask: nothing to place or join
                continue
            cut = ((a0 == 0 and r0 > 0) or (b0 == 0 and c0 > 0) or (a1 == r1 - r0 and r1 < shape[0])
                   or (b1 == c1 - c0 and c1 < shape[1]))
            dest = pieces if cut else whole
            dest.score.append(float(scores[i]))
            dest.stability.append(float(scores[i]))
            dest.box.append(np.array([r0 + a0, c0 + b0, r0 + a1 - 1, c0 + b1 - 1]))
            dest.point.append(tuple(float(v) for v in np.asarray(pred[i], np.float64) + (r0, c0, r0, c0)))
            dest.piece.append(piece)
            dest.crop.append(t.index)
        if n + 1 < len(grid):
            yield n + 1, len(grid), None
    # a joined object's box: its mask's extent (its pieces' boxes were cut by their tiles)
    kept = merge_tiles(whole, pieces, grid, lambda b: (float(b[0]), float(b[1]), float(b[2] + 1),
                                                        float(b[3] + 1)))
    order = sorted(range(len(kept.score)), key=lambda i: -kept.score[i])
    yield len(grid), len(grid), [FoundObject(score=kept.score[i], box=kept.point[i],
                        window=(int(kept.box[i][0]), int(kept.box[i][1]), int(kept.box[i][2]) + 1,
                                int(kept.box[i][3]) + 1),
                        piece=kept.piece[i], shape=shape) for i in order]
