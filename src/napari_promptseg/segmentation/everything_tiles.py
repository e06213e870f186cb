"""Segment everything tile by tile (a :class:`~napari_promptseg.embed.tiles.TiledEmbedding`).

Each tile runs Meta's generator step for one crop: its point grid (``points_per_side`` per
tile), the IoU and stability filters and box NMS. A mask near an inner tile edge (Meta's crop
edge test, 20 px) is set aside as a *piece*: a smaller object is found whole in a neighbouring
tile (tiles overlap by ``2 * halo``); pieces of a larger object, found in several tiles, are
joined where they agree in the tiles' common area. Whole masks of all tiles then go through one
box NMS (``crop_nms_thresh``), as Meta's crops do, and a mask seen whole by two tiles is kept
once (mask IoU > 0.5, the better score); joined pieces are kept where no whole mask
already covers them. Masks are compared only with those whose boxes are near (a grid of boxes),
so a slide of thousands of tiles costs time in proportion to its objects.

Memory: tiles are read one at a time (``TiledEmbedding``); a candidate keeps only its bounding-box
piece of the mask; with ``out=`` the labels are painted block by block into that array
(:func:`labels_result`), never as a whole-slide array.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from napari_promptseg.segmentation.generator import (
    Candidates,
    Everything,
    EverythingStep,
    MaskRecord,
    cleanup,
    decode_batch,
    nms,
    point_grids,
    to_result,
)

__all__ = ["tiled_everything_iter", "labels_result", "merge_tiles", "paint_labels", "paint_pieces"]

JOIN_AGREEMENT = 0.5  # pieces are one object when they agree this much in the tiles' common area
SAME_OBJECT = 0.5  # two masks above this mask IoU are one object (kept once)


def tiled_everything_iter(model, tiled, p: dict, out=None) -> Iterator[EverythingStep]:
    """The :func:`~napari_promptseg.segment_everything_iter` steps for ``tiled`` (one per batch);
    out: a checked ``(H, W)`` labels array to paint the result into (None: a new array)."""
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
    found = cleanup(model, merge_tiles(whole, pieces, grid), shape, p)
    yield EverythingStep(done, total, labels_result(found, [t.box for t in grid.tiles], shape, out))


def merge_tiles(whole: Candidates, pieces: Candidates, grid, joined_point=None) -> Candidates:
    """The objects of a tiled search: ``whole`` masks (a mask seen whole by two tiles kept once,
    :func:`_across_tiles`), then the ``pieces`` cut by inner tile edges joined across tiles
    (:func:`_join`) where no whole mask already covers them; ``grid`` a
    :class:`~napari_promptseg.embed.tiles.TileGrid`. joined_point(box): the ``point`` of a joined
    object from its inclusive box (default: its best piece's)."""
    if len(grid) > 1 and whole.score:
        whole = whole.take(_across_tiles(whole, grid.tile))
    joined = _join(pieces, [t.box for t in grid.tiles], grid.tile)
    if joined_point is not None:
        joined.point = [joined_point(b) for b in joined.box]
    found = whole
    near = _BoxGrid(grid.tile)
    for i, b in enumerate(found.box):
        near.add(i, b)
    for k in range(len(joined.score)):
        if not _covered(joined, k, found, near):
            near.add(len(found.score), joined.box[k])
            found.extend(joined.take([k]))
    return found


class _BoxGrid:
    """Inclusive boxes ``(row0, col0, row1, col1)`` bucketed in cells of ``cell`` pixels: the
    boxes that may overlap a box, without comparing it with every other."""

    def __init__(self, cell: int) -> None:
        self.cell = max(1, int(cell))
        self.cells: dict[tuple[int, int], list[int]] = {}

    def _keys(self, b):
        c = self.cell
        return [(i, j) for i in range(int(b[0]) // c, int(b[2]) // c + 1)
                for j in range(int(b[1]) // c, int(b[3]) // c + 1)]

    def add(self, i: int, box) -> None:
        for key in self._keys(box):
            self.cells.setdefault(key, []).append(i)

    def near(self, box) -> set[int]:
        out: set[int] = set()
        for key in self._keys(box):
            out.update(self.cells.get(key, ()))
        return out


def _records(c: Candidates, crops: Sequence, shape) -> list[MaskRecord]:
    """:func:`~napari_promptseg.segmentation.generator.to_result`'s objects, without its labels."""
    return [MaskRecord(score=s, stability=st, box=tuple(int(v) for v in b), point=pt, area=int(pc.sum()),
                       crop_box=tuple(int(v) for v in crops[ci]), piece=pc, shape=tuple(shape))
            for s, st, b, pt, pc, ci in zip(c.score, c.stability, c.box, c.point, c.piece, c.crop)]


def _block(out) -> tuple[int, int]:
    """Rows and columns painted at a time: the array's chunks (at least 256 pixels a side), else
    1024."""
    chunks = getattr(out, "chunks", None)
    if isinstance(chunks, tuple) and len(chunks) == 2 and all(isinstance(v, (int, np.integer))
                                                              for v in chunks):
        return tuple(int(v) * max(1, -(-256 // int(v))) for v in chunks)
    return (1024, 1024)


def paint_labels(objects: Sequence[MaskRecord], out) -> None:
    """Write the labels of ``objects`` into the ``(H, W)`` integer array-like ``out`` (object ``i``
    is id ``i + 1``, where masks overlap the smaller object wins, as :attr:`Everything.labels`)
    with :func:`paint_pieces`."""
    order = sorted(range(len(objects)), key=lambda i: -objects[i].area)  # smaller ones last: they win
    paint_pieces([objects[i].box for i in order], [objects[i].piece for i in order],
                 [i + 1 for i in order], out)


def paint_pieces(boxes: Sequence, pieces: Sequence[np.ndarray], ids: Sequence[int], out) -> None:
    """Paint each ``pieces[k]`` (the bool mask inside inclusive ``boxes[k]`` ``(row0, col0, row1,
    col1)``) as ``ids[k]`` into the ``(H, W)`` integer array-like ``out``, later ones over earlier
    ones, one block at a time (:func:`_block`): every block is written once, whole; nothing of
    ``out`` is read and no whole-image array is made."""
    H, W = (int(v) for v in out.shape)
    bh, bw = _block(out)
    buckets: dict[tuple[int, int], list[int]] = {}
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        if r1 < r0 or c1 < c0:  # an empty mask
            continue
        for bi in range(int(r0) // bh, int(r1) // bh + 1):
            for bj in range(int(c0) // bw, int(c1) // bw + 1):
                buckets.setdefault((bi, bj), []).append(k)
    dtype = np.dtype(out.dtype)
    for R0 in range(0, H, bh):
        for C0 in range(0, W, bw):
            R1, C1 = min(R0 + bh, H), min(C0 + bw, W)
            buf = np.zeros((R1 - R0, C1 - C0), dtype)
            for k in buckets.get((R0 // bh, C0 // bw), ()):
                r0, c0, r1, c1 = (int(v) for v in boxes[k])
                a0, b0, a1, b1 = max(r0, R0), max(c0, C0), min(r1 + 1, R1), min(c1 + 1, C1)
                buf[a0 - R0:a1 - R0, b0 - C0:b1 - C0][pieces[k][a0 - r0:a1 - r0, b0 - c0:b1 - c0]] = ids[k]
            out[R0:R1, C0:C1] = buf


def labels_result(c: Candidates, crops: Sequence, shape, out=None) -> Everything:
    """The :class:`Everything` of the kept candidates ``c``: labels in a new ``(H, W)`` int32 array
    (``out`` None), or painted block by block into ``out`` (checked by the caller) which then is
    :attr:`Everything.labels`. ValueError, before anything is written, when ``out``'s dtype cannot
    hold the number of objects."""
    if out is None:
        return to_result(c, crops, shape)
    objects = _records(c, crops, shape)
    dtype = np.dtype(out.dtype)
    if len(objects) > np.iinfo(dtype).max:
        raise ValueError(f"out= has dtype {dtype}, which cannot hold the {len(objects)} objects found: "
                         "pass an int32 or uint32 array")
    paint_labels(objects, out)
    return Everything(out, objects)


def _overlap(a, b):
    """Inclusive box intersection of two inclusive boxes, or None."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    return None if r0 > r1 or c0 > c1 else (r0, c0, r1, c1)


def _crop(box, piece, region):
    """``piece`` (covering inclusive ``box``) inside inclusive ``region`` (clipped to ``box``: a
    region starting before the box must not wrap around as a negative index)."""
    r0, c0 = max(region[0] - box[0], 0), max(region[1] - box[1], 0)
    return piece[r0:max(region[2] - box[0] + 1, 0), c0:max(region[3] - box[1] + 1, 0)]


def _join(c: Candidates, tiles, cell: int = 256) -> Candidates:
    """Union-find of pieces from different tiles that agree (IoU >= JOIN_AGREEMENT) in the area
    both tiles see; groups of one piece are dropped (a cut mask, as Meta drops them)."""
    n = len(c.score)
    parent = list(range(n))
    near = _BoxGrid(cell)
    for i in range(n):
        near.add(i, c.box[i])

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in sorted(j for j in near.near(c.box[i]) if j > i):  # others' boxes do not overlap
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


def _across_tiles(c: Candidates, cell: int = 256) -> list[int]:
    """Indices kept when a mask is dropped for a better-scored one of another tile with mask IoU
    > 0.5 (the same object seen whole by two overlapping tiles; box NMS misses small or thin
    ones), in the input order."""
    kept: list[int] = []
    near = _BoxGrid(cell)
    for i in sorted(range(len(c.score)), key=lambda i: -c.score[i]):
        if not any(c.crop[j] != c.crop[i]
                   and _mask_iou(c.box[i], c.piece[i], c.box[j], c.piece[j]) > SAME_OBJECT
                   for j in sorted(near.near(c.box[i]))):
            kept.append(i)
            near.add(i, c.box[i])
    return sorted(kept)


def _covered(c: Candidates, k: int, found: Candidates, near: _BoxGrid) -> bool:
    """Whether joined object ``k`` overlaps a found mask (``near``: their boxes) by IoU >
    :data:`SAME_OBJECT`."""
    return any(_mask_iou(c.box[k], c.piece[k], found.box[j], found.piece[j]) > SAME_OBJECT
               for j in sorted(near.near(c.box[k])))
