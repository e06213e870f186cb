"""Segment everything: SAM's automatic mask generator, the same masks, computed faster.

:func:`segment_everything` follows ``segment_anything.SamAutomaticMaskGenerator`` step by step
(point grid per crop, predicted-IoU filter, stability score on the upscaled logits, crop-edge
filter, box NMS per crop and across crops, small-region cleanup), with Meta's parameter names
and defaults, so on the same weights it returns the same masks. For SAM 2 models it follows
``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` instead: its defaults
(``pred_iou_thresh`` 0.8), its ``mask_threshold``, ``multimask_output`` and ``use_m2m``, its
``min_mask_region_area`` (holes and specks removed in the low-resolution logits) and its
upscaling (:mod:`napari_promptseg.automatic_sam2`). What is faster:

- prompts are decoded in batches on the cached image side of the decoder
  (:meth:`~napari_promptseg.PromptableModel.decode_points`) and the output upscaling runs only
  for prompts with a mask above ``pred_iou_thresh`` (the IoU head needs only the transformer);
- logits are never upsampled to the 1024² input: the mask (``> 0``) and the stability score's
  two thresholds (``> +offset``, ``> -offset``) come from one resize
  (:func:`~napari_promptseg.models.upscale.upscale_levels`) that skips rows and columns that
  cannot pass (a bilinear resize is a convex combination), for the masks that survived the IoU
  filter only;
- candidates keep only their bounding-box piece of the mask until NMS has chosen.

Coordinates are ours: ``(row, col)`` image pixels; ``point_grids`` hold ``(row, col)`` fractions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .automatic_sam2 import SAM2_EVERYTHING_DEFAULTS, SAM2_ONLY
from .results import Embedding

__all__ = ["MaskRecord", "Everything", "EverythingStep", "EVERYTHING_DEFAULTS", "SAM2_EVERYTHING_DEFAULTS",
           "GENERATOR_DEFAULTS", "segment_everything", "segment_everything_iter"]

#: Meta's ``SamAutomaticMaskGenerator`` defaults (``point_grids``: None = a regular grid)
EVERYTHING_DEFAULTS: dict[str, object] = {
    "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95, "stability_score_offset": 1.0, "box_nms_thresh": 0.7,
    "crop_n_layers": 0, "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1, "point_grids": None, "min_mask_region_area": 0,
}

#: defaults per :attr:`~napari_promptseg.PromptableModel.everything_generator`
GENERATOR_DEFAULTS: dict[str, dict[str, object]] = {"sam": EVERYTHING_DEFAULTS,
                                                    "sam2": SAM2_EVERYTHING_DEFAULTS}


def _is_sam2(model) -> bool:
    return getattr(model, "everything_generator", "sam") == "sam2"


@dataclass(eq=False)
class MaskRecord:
    """One object found by :func:`segment_everything`.

    score: predicted IoU; stability: SAM's stability score; box: ``(row0, col0, row1, col1)``
    inclusive pixel indices of the mask's extent; point: ``(row, col)`` of the grid point that
    prompted it; crop_box: ``(row0, col0, row1, col1)`` (end exclusive) of the crop it came from.
    :attr:`mask` is the ``(H, W)`` bool mask, built from the stored box piece on request.
    """

    score: float
    stability: float
    box: tuple[int, int, int, int]
    point: tuple[float, float]
    area: int
    crop_box: tuple[int, int, int, int]
    piece: np.ndarray = field(repr=False)  # the mask inside ``box``
    shape: tuple[int, int] = field(repr=False)

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        r0, c0, r1, c1 = self.box
        out[r0:r1 + 1, c0:c1 + 1] = self.piece
        return out


@dataclass(eq=False)
class Everything:
    """labels: ``(H, W)`` int32, 0 = background, object ``i`` of :attr:`objects` is id ``i + 1``
    (where masks overlap the smaller object wins); objects: in Meta's output order."""

    labels: np.ndarray
    objects: list[MaskRecord]


@dataclass(eq=False)
class EverythingStep:
    """Progress of :func:`segment_everything_iter`: ``done`` of ``total`` prompt batches; the last
    step carries the :class:`Everything` in ``result``."""

    done: int
    total: int
    result: Everything | None = None


def _params(params: dict, model=None) -> dict:
    """``params`` over the model's defaults (:attr:`PromptableModel.everything_defaults`, else
    Meta's), checked."""
    sam2 = _is_sam2(model)
    defaults = getattr(model, "everything_defaults", None) or GENERATOR_DEFAULTS["sam2" if sam2 else "sam"]
    unknown = sorted(set(params) - set(defaults))
    theirs = [n for n in unknown if n in SAM2_ONLY]
    if theirs:
        name = getattr(model, "name", type(model).__name__)
        raise TypeError(f"{', '.join(theirs)}: parameter(s) of Meta's SAM2AutomaticMaskGenerator, for "
                        f"SAM 2 models; model {name!r} follows SamAutomaticMaskGenerator, which has none")
    if unknown:
        raise TypeError(f"unknown segment-everything parameter(s) {', '.join(unknown)}; known: "
                        f"{', '.join(defaults)}")
    p = {**defaults, **params}
    if sam2:
        from .automatic_sam2 import check_sam2_params

        check_sam2_params(p)
    if (p["points_per_side"] is None) == (p["point_grids"] is None):
        raise ValueError("give exactly one of points_per_side and point_grids")
    for name in ("points_per_batch",):
        if int(p[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {p[name]!r}")
    if int(p["crop_n_layers"]) < 0 or int(p["min_mask_region_area"]) < 0:
        raise ValueError("crop_n_layers and min_mask_region_area must be >= 0")
    return p


def _grids(p: dict) -> list[np.ndarray]:
    """Per crop layer, ``(N, 2)`` (row, col) fractions of the crop."""
    if p["point_grids"] is not None:
        grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in p["point_grids"]]
        if len(grids) != int(p["crop_n_layers"]) + 1:
            raise ValueError(f"point_grids has {len(grids)} grids; crop_n_layers="
                             f"{p['crop_n_layers']} needs {int(p['crop_n_layers']) + 1}")
        return grids
    from segment_anything.utils.amg import build_all_layer_point_grids

    xy = build_all_layer_point_grids(int(p["points_per_side"]), int(p["crop_n_layers"]),
                                     int(p["crop_n_points_downscale_factor"]))
    return [g[:, ::-1].copy() for g in xy]


def _boxes(masks: np.ndarray) -> np.ndarray:
    """``(M, H, W)`` bool -> ``(M, 4)`` inclusive (row0, col0, row1, col1); empty: zeros (Meta)."""
    out = np.zeros((len(masks), 4), np.int64)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            out[i] = rows[0], cols[0], rows[-1], cols[-1]
    return out


def _nms(boxes_rc: np.ndarray, scores, thresh: float) -> np.ndarray:
    """torchvision's NMS as Meta calls it (XYXY float boxes, one category)."""
    import torch
    from torchvision.ops.boxes import batched_nms

    if len(boxes_rc) == 0:
        return np.zeros(0, np.int64)
    xyxy = torch.as_tensor(boxes_rc[:, [1, 0, 3, 2]], dtype=torch.float32)
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    return batched_nms(xyxy, s, torch.zeros(len(s), dtype=torch.int64), float(thresh)).numpy()


@dataclass(eq=False)
class _Candidates:
    """Masks of one crop, in crop coordinates until :meth:`uncrop`."""

    score: list = field(default_factory=list)
    stability: list = field(default_factory=list)
    box: list = field(default_factory=list)
    point: list = field(default_factory=list)
    piece: list = field(default_factory=list)
    crop: list = field(default_factory=list)  # index of the crop

    def take(self, idx) -> _Candidates:
        return _Candidates(*([getattr(self, f)[i] for i in idx] for f in
                             _FIELDS))

    def extend(self, other: _Candidates) -> None:
        for f in _FIELDS:
            getattr(self, f).extend(getattr(other, f))


_FIELDS = ("score", "stability", "box", "point", "piece", "crop")


def _batch(model, emb, pts_rc, crop, ci, shape, p, edge: _Candidates | None = None) -> _Candidates:
    """Meta's ``_process_batch`` for points ``(B, 2)`` (row, col) in the crop; masks near the
    crop's edge (not the image's) are dropped, or go to ``edge`` when given (tiles)."""
    from .models.upscale import upscale_levels

    if _is_sam2(model):
        from .automatic_sam2 import decode_sam2

        iou, keep, low = decode_sam2(model, emb, pts_rc, p)
    else:
        thr = float(p["pred_iou_thresh"])
        scores, keep, low = model.decode_points(emb, pts_rc, multimask=True,
                                                min_score=thr if thr > 0 else None)
        iou = scores[keep[:, 0], keep[:, 1]].numpy()
    out = _Candidates()
    if len(keep) == 0:
        return out
    geo = model.upscale_args(emb)
    mt = float(p.get("mask_threshold", 0.0))  # SAM: the model's mask_threshold, 0
    off = float(p["stability_score_offset"])
    st_thr = float(p["stability_score_thresh"])
    r0, c0, r1, c1 = crop
    H, W = shape
    crop_edge = np.array([r0, c0, r1, c1])
    img_edge = np.array([0, 0, H, W])
    hc, wc = geo[1]
    chunk = int(np.clip((48 << 20) // (3 * hc * wc), 1, 16))  # bounded memory: 3 bool masks each
    for s in range(0, len(keep), chunk):
        lo = low[s:s + chunk]
        # one resize, three thresholds: the mask (> mt), and the stability score's (> mt +- offset)
        masks, hi, wide = upscale_levels(lo, *geo, levels=(mt, mt + off, mt - off))
        inter = np.array([np.count_nonzero(m) for m in hi], np.int64)
        union = np.array([np.count_nonzero(m) for m in wide], np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            stab = inter / union
        ok = np.flatnonzero(stab >= st_thr) if st_thr > 0 else np.arange(len(lo))
        if ok.size == 0:
            continue
        boxes = _boxes(masks[ok])
        g = boxes + [r0, c0, r0, c0]
        # Meta's is_box_near_crop_edge: near the crop's edge but not the image's (atol 20)
        near = np.any(np.isclose(g, crop_edge, atol=20, rtol=0) & ~np.isclose(g, img_edge, atol=20, rtol=0),
                      axis=1)
        for j, i in enumerate(ok):
            b = boxes[j]
            dest = out
            if near[j]:
                if edge is None:
                    continue
                dest = edge
            dest.score.append(float(iou[s + i]))
            dest.stability.append(float(stab[i]))
            dest.box.append(g[j])
            k = int(keep[s + i, 0])
            dest.point.append((float(pts_rc[k, 0]) + r0, float(pts_rc[k, 1]) + c0))
            dest.piece.append(masks[i, b[0]:b[2] + 1, b[1]:b[3] + 1].copy())
            dest.crop.append(ci)
    return out


def _remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Meta's ``remove_small_regions`` (8-connected components, as cv2's) on a bool mask padded
    by one background pixel: the component holding the padding is the image's outside, never a
    hole."""
    from scipy import ndimage

    holes = mode == "holes"
    regions, n = ndimage.label(holes ^ mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    outside = int(regions[0, 0]) if holes else 0
    small = [i + 1 for i, s in enumerate(sizes) if s < area and i + 1 != outside]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def _small_regions(c: _Candidates, shape, area: int, nms_thresh: float) -> _Candidates:
    """Meta's ``postprocess_small_regions``: fill small holes, drop small islands, NMS that
    prefers masks that did not change (on each mask's box piece, never a full-image mask)."""
    if not c.score:
        return c
    boxes, pieces, unchanged = [], [], []
    for b, piece in zip(c.box, c.piece):
        m = np.pad(piece, 1)
        m, ch1 = _remove_small_regions(m, area, "holes")
        m, ch2 = _remove_small_regions(m, area, "islands")
        m = m[1:-1, 1:-1]
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            boxes.append([b[0] + rows[0], b[1] + cols[0], b[0] + rows[-1], b[1] + cols[-1]])
            pieces.append(m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy())
        else:  # Meta: an empty mask has the box (0, 0, 0, 0)
            boxes.append([0, 0, 0, 0])
            pieces.append(np.zeros((1, 1), bool))
        unchanged.append(float(not (ch1 or ch2)))
    boxes = np.asarray(boxes, np.int64)
    keep = _nms(boxes, unchanged, nms_thresh)
    for i in keep:
        if unchanged[i] == 0.0:
            c.box[i] = boxes[i]
            c.piece[i] = pieces[i]
    return c.take(keep)


def segment_everything_iter(model, image_or_embedding, *, contrast_limits=None, cache=None, disk=None,
                            embedding: Embedding | None = None, zoom=None, tiles="auto",
                            **params) -> Iterator[EverythingStep]:
    """:func:`segment_everything` as a generator: an :class:`EverythingStep` per prompt batch
    (cancel by not iterating further); the last one holds the result."""
    from .embeddings import embed_cached
    from .image import to_rgb_uint8
    from .tiles import TiledEmbedding, wants_tiles

    p = _params(params, model)
    if tiles not in (True, False, "auto"):
        raise ValueError(f"tiles must be True, False or 'auto', got {tiles!r}")
    if (not isinstance(image_or_embedding, (Embedding, TiledEmbedding)) and embedding is None
            and hasattr(image_or_embedding, "shape")
            and (tiles is True or (tiles == "auto" and wants_tiles(model, image_or_embedding.shape)))):
        image_or_embedding = TiledEmbedding(model, image_or_embedding, contrast_limits, cache=cache,
                                            disk=disk)
    if isinstance(image_or_embedding, TiledEmbedding):
        from .everything_tiles import tiled_everything_iter

        model._check_tiled(image_or_embedding)
        yield from tiled_everything_iter(model, image_or_embedding, p)
        return
    if isinstance(image_or_embedding, Embedding):
        emb0, rgb = image_or_embedding, None
        model._check_embedding(emb0)
        if int(p["crop_n_layers"]) > 0:
            raise ValueError("crop_n_layers > 0 embeds crops of the image: pass the image, not its embedding")
        shape = tuple(emb0.original_size)
    else:
        rgb = to_rgb_uint8(image_or_embedding, contrast_limits)
        shape, emb0 = rgb.shape[:2], embedding
        if emb0 is not None:
            model._check_embedding(emb0)
            if tuple(emb0.original_size) != tuple(shape):
                raise ValueError(f"the embedding is of a {tuple(emb0.original_size)} image, not of this "
                                 f"{tuple(shape)} one")
    grids = _grids(p)
    from segment_anything.utils.amg import generate_crop_boxes

    xywh, layers = generate_crop_boxes(shape, int(p["crop_n_layers"]), float(p["crop_overlap_ratio"]))
    crops = [(y0, x0, y1, x1) for x0, y0, x1, y1 in xywh]
    per = int(p["points_per_batch"])
    total = sum(-(-len(grids[li]) // per) for li in layers)
    done = 0
    found = _Candidates()
    for ci, (crop, li) in enumerate(zip(crops, layers)):
        r0, c0, r1, c1 = crop
        if emb0 is not None and ci == 0:
            emb = emb0
        else:
            # the whole image at the model's scale (or ``zoom``); crops fill the input, as Meta's
            emb = embed_cached(model, np.ascontiguousarray(rgb[r0:r1, c0:c1]), None, cache, disk,
                               zoom=zoom if ci == 0 else "fit")
        pts = grids[li] * [r1 - r0, c1 - c0]
        here = _Candidates()
        for s in range(0, len(pts), per):
            here.extend(_batch(model, emb, pts[s:s + per], crop, ci, shape, p))
            done += 1
            yield EverythingStep(done, total)
        keep = _nms(np.asarray(here.box).reshape(-1, 4), here.score, p["box_nms_thresh"])
        found.extend(here.take(keep))
    if len(crops) > 1 and found.score:  # prefer masks from smaller crops
        areas = [(crops[i][2] - crops[i][0]) * (crops[i][3] - crops[i][1]) for i in found.crop]
        keep = _nms(np.asarray(found.box).reshape(-1, 4), 1.0 / np.asarray(areas, np.float32),
                    p["crop_nms_thresh"])
        found = found.take(keep)
    found = _cleanup(model, found, shape, p)
    yield EverythingStep(done, total, _result(found, crops, shape))


def _cleanup(model, found: _Candidates, shape, p: dict) -> _Candidates:
    """SAM's generator: small-region cleanup of the kept masks; SAM 2's has none (its
    ``min_mask_region_area`` acted on the low-resolution logits in :func:`_batch`)."""
    if int(p["min_mask_region_area"]) > 0 and not _is_sam2(model):
        found = _small_regions(found, shape, int(p["min_mask_region_area"]), p["box_nms_thresh"])
    return found


def _result(c: _Candidates, crops: Sequence, shape) -> Everything:
    objects = [MaskRecord(score=s, stability=st, box=tuple(int(v) for v in b), point=pt,
                          area=int(pc.sum()), crop_box=tuple(int(v) for v in crops[ci]), piece=pc,
                          shape=tuple(shape))
               for s, st, b, pt, pc, ci in zip(c.score, c.stability, c.box, c.point, c.piece, c.crop)]
    labels = np.zeros(shape, np.int32)
    for i in sorted(range(len(objects)), key=lambda i: -objects[i].area):  # smaller ones last: they win
        o = objects[i]
        r0, c0, r1, c1 = o.box
        labels[r0:r1 + 1, c0:c1 + 1][o.piece] = i + 1
    return Everything(labels, objects)


def segment_everything(model, image_or_embedding, *, contrast_limits=None, cache=None, disk=None,
                       embedding: Embedding | None = None, zoom=None, tiles="auto",
                       **params) -> Everything:
    """Every object in a 2D image, as Meta's ``SamAutomaticMaskGenerator`` finds them.

    image_or_embedding: ``(H, W)`` or ``(H, W, 3|4)`` image of any real dtype (mapped to uint8 by
    ``contrast_limits``, as :meth:`~napari_promptseg.PromptableModel.embed`), or its
    :class:`Embedding` (reused; then ``crop_n_layers`` must be 0), or a
    :class:`~napari_promptseg.tiles.TiledEmbedding` (tile by tile; ``tiles="auto"`` makes one for
    an image more than :data:`~napari_promptseg.tiles.TILE_FACTOR` tiles long). params: Meta's
    names and defaults (:data:`EVERYTHING_DEFAULTS`), except where the model declares its own
    (``model.everything_defaults``: the demo model's IoU and stability thresholds);
    ``point_grids`` in (row, col) fractions. cache /
    disk: embedding caches for the crops; embedding: the image's own, when the image is given
    for its crops (``crop_n_layers > 0``). SAM 2 models follow Meta's ``SAM2AutomaticMaskGenerator``:
    its defaults (:data:`SAM2_EVERYTHING_DEFAULTS`) and its extra ``mask_threshold``,
    ``multimask_output`` and ``use_m2m`` (:mod:`~napari_promptseg.automatic_sam2`).
    Returns :class:`Everything` (``.labels``, ``.objects``).
    """
    result = None
    for step in segment_everything_iter(model, image_or_embedding, contrast_limits=contrast_limits,
                                        cache=cache, disk=disk, embedding=embedding, zoom=zoom,
                                        tiles=tiles, **params):
        result = step.result
    return result
