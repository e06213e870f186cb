"""Segment everything tile by tile (a :class:`~napari_promptseg.embed.tiles.TiledEmbedding`).

Each tile runs Meta's generator step for one crop: its point grid (``points_per_side`` per
tile), the IoU and stability filters and box NMS. A mask near an inner tile edge (Meta's crop
edge test, 20 px) is set aside as a *piece*: a smaller object is found whole in a neighbouring
tile (tiles overlap by ``2 * halo``); pieces of a larger object, found in several tiles, are
joined where they agree in the tiles' common area. Whole masks of all tiles then go through one
box NMS (``crop_nms_thresh``), as Meta's crops do, and a mask seen whole by two tiles is kept
once (mask IoU > 0.5, the better score); joined pieces are kept where no whole mask
already covers them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_promptseg.segmentation.generator import (
    Candidates,
    EverythingStep,
    cleanup,
    decode_batch,
    nms,
    point_grids,
    to_result,
)

__all__ = ["tiled_everything_iter"]

JOIN_AGREEMENT = 0.5  # pieces are one object when they agree this much in the tiles' common area
SAME_OBJECT = 0.5  # two masks above this mask IoU are one object (kept once)


def tiled_everything_iter(model, tiled, p: dict) -> Iterator[EverythingStep]:
    """The :func:`~napari_promptseg.segment_everything_iter` steps for ``tiled`` (one per batch)."""
    if int(p["crop_n_layers"]) > 0:
        raise ValueError("crop_n_layers > 0 is not available with tiles: tiles already keep the "
                         "model's pixel scale; use crop_n_layers=0 (or tiles=False)")
    grid, shape = tiled.grid, tiled.shape
    frac = point_grids(p)[0]
    per = int(p["points_per_batch"])
    batches = -(-len(frac) // per)
    total, done = batches * len(grid), 0
    whole, pieces = Candidates(), Candidates()
    for t in grid.tiles:
        emb = tiled.embedding_of(t.box)
        r0, c0, r1, c1 = t.box
        pts = frac * [r1 - r0, c1 - c0]
        here, edge = Candidates(), Candidates()
        for s in range(0, len(pts), per):
            here.extend(decode_batch(model, emb, pts[s:s + per], t.box, t.index, shape, p, edge=edge))
            done += 1
            yield EverythingStep(done, total)
        whole.extend(here.take(nms(np.asarray(here.box).reshape(-1, 4), here.score, p["box_nms_thresh"])))
        pieces.extend(edge.take(nms(np.asarray(edge.box).reshape(-1, 4), edge.score, p["box_nms_thresh"])))
    if len(grid) > 1 and whole.score:
        whole = whole.take(nms(np.asarray(whole.box).reshape(-1, 4), whole.score, p["crop_nms_thresh"]))
        whole = whole.take(_across_tiles(whole))
    joined = _join(pieces, [t.box for t in grid.tiles])
    found = whole
    for k in range(len(joined.score)):
        if not _covered(joined, k, found):
            found.extend(joined.take([k]))
    found = cleanup(model, found, shape, p)
    yield EverythingStep(done, total, to_result(found, [t.box for t in grid.tiles], shape))


def _overlap(a, b):
    """Inclusive box intersection of two inclusive boxes, or None."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    return None if r0 > r1 or c0 > c1 else (r0, c0, r1, c1)


def _crop(box, piece, region):
    """``piece`` (covering inclusive ``box``) inside inclusive ``region``."""
    r0, c0, r1, c1 = region
    return piece[r0 - box[0]:r1 - box[0] + 1, c0 - box[1]:c1 - box[1] + 1]


def _join(c: Candidates, tiles) -> Candidates:
    """Union-find of pieces from different tiles that agree (IoU >= JOIN_AGREEMENT) in the area
    both tiles see; groups of one piece are dropped (a cut mask, as Meta drops them)."""
    n = len(c.score)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if c.crop[i] == c.crop[j]:
                continue
            ti, tj = tiles[c.crop[i]], tiles[c.crop[j]]
            common = _overlap((ti[0], ti[1], ti[2] - 1, ti[3] - 1), (tj[0], tj[1], tj[2] - 1, tj[3] - 1))
            area = common and _overlap(common, _overlap(c.box[i], c.box[j]) or (1, 1, 0, 0))
            if not area:
                continue
            a, b = _crop(c.box[i], c.piece[i], area), _crop(c.box[j], c.piece[j], area)
            ua = (_crop(c.box[i], c.piece[i], common).sum() + _crop(c.box[j], c.piece[j], common).sum()
                  - (a & b).sum())
            if ua and (a & b).sum() / ua >= JOIN_AGREEMENT:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    out = Candidates()
    for members in groups.values():
        if len({c.crop[i] for i in members}) < 2:
            continue
        boxes = np.asarray([c.box[i] for i in members])
        box = np.array([*boxes[:, :2].min(0), *boxes[:, 2:].max(0)])
        piece = np.zeros((box[2] - box[0] + 1, box[3] - box[1] + 1), bool)
        for i in members:
            b = c.box[i]
            piece[b[0] - box[0]:b[2] - box[0] + 1, b[1] - box[1]:b[3] - box[1] + 1] |= c.piece[i]
        best = max(members, key=lambda i: c.score[i])
        out.score.append(c.score[best])
        out.stability.append(min(c.stability[i] for i in members))
        out.box.append(box)
        out.point.append(c.point[best])
        out.piece.append(piece)
        out.crop.append(c.crop[best])
    return out


def _mask_iou(a_box, a, b_box, b) -> float:
    ov = _overlap(a_box, b_box)
    if ov is None:
        return 0.0
    inter = int((_crop(a_box, a, ov) & _crop(b_box, b, ov)).sum())
    return inter / (int(a.sum()) + int(b.sum()) - inter)


def _across_tiles(c: Candidates) -> list[int]:
    """Indices kept when a mask is dropped for a better-scored one of another tile with mask IoU
    > 0.5 (the same object seen whole by two overlapping tiles; box NMS misses small or thin
    ones), in the input order."""
    kept: list[int] = []
    for i in sorted(range(len(c.score)), key=lambda i: -c.score[i]):
        if not any(c.crop[j] != c.crop[i]
                   and _mask_iou(c.box[i], c.piece[i], c.box[j], c.piece[j]) > SAME_OBJECT for j in kept):
            kept.append(i)
    return sorted(kept)


def _covered(c: Candidates, k: int, found: Candidates) -> bool:
    """Whether joined object ``k`` overlaps a found mask by IoU > :data:`SAME_OBJECT`."""
    return any(_mask_iou(c.box[k], c.piece[k], b_box, b) > SAME_OBJECT
               for b_box, b in zip(found.box, found.piece))
