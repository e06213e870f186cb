"""The steps of Meta's automatic mask generators that every way of running them shares: the
parameters, point grids, batched decoding with the IoU and stability filters, NMS, small-region
cleanup and the result records (:mod:`napari_promptseg.segmentation.everything` runs them on an
image, :mod:`~napari_promptseg.segmentation.everything_tiles` tile by tile).

Coordinates are ours: ``(row, col)`` image pixels; ``point_grids`` hold ``(row, col)`` fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_promptseg.core.geometry import extent, mask_boxes
from napari_promptseg.models.generator_defaults import GENERATOR_DEFAULTS, SAM2_ONLY
from napari_promptseg.models.triton_guard import guard_triton

__all__ = ["MaskRecord", "Everything", "EverythingStep", "Candidates", "check_params", "point_grids",
           "nms", "batch_count", "decode_batch", "cleanup", "to_result", "follows_sam2"]


def follows_sam2(model) -> bool:
    """Whether ``model`` follows Meta's ``SAM2AutomaticMaskGenerator`` (it says so itself)."""
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


def check_params(params: dict, model=None) -> dict:
    """``params`` over the model's defaults (:attr:`PromptableModel.everything_defaults`, else
    Meta's), checked."""
    sam2 = follows_sam2(model)
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
        from napari_promptseg.segmentation.everything_sam2 import check_sam2_params

        check_sam2_params(p)
    if (p["points_per_side"] is None) == (p["point_grids"] is None):
        raise ValueError("give exactly one of points_per_side and point_grids")
    for name in ("points_per_batch",):
        if int(p[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {p[name]!r}")
    if int(p["crop_n_layers"]) < 0 or int(p["min_mask_region_area"]) < 0:
        raise ValueError("crop_n_layers and min_mask_region_area must be >= 0")
    return p


def point_grids(p: dict) -> list[np.ndarray]:
    """Per crop layer, ``(N, 2)`` (row, col) fractions of the crop."""
    if p["point_grids"] is not None:
        grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in p["point_grids"]]
        if len(grids) != int(p["crop_n_layers"]) + 1:
            raise ValueError(f"point_grids has {len(grids)} grids; crop_n_layers="
                             f"{p['crop_n_layers']} needs {int(p['crop_n_layers']) + 1}")
        return grids
    guard_triton()  # segment_anything pulls in torchvision -> triton: a crash beside napari's OpenGL
    from segment_anything.utils.amg import build_all_layer_point_grids

    xy = build_all_layer_point_grids(int(p["points_per_side"]), int(p["crop_n_layers"]),
                                     int(p["crop_n_points_downscale_factor"]))
    return [g[:, ::-1].copy() for g in xy]


def batch_count(p: dict) -> int:
    """Prompt batches of one image for checked parameters ``p`` (crops per layer: 1, 4, 16, ...,
    as Meta's ``generate_crop_boxes``): one progress bar over many planes."""
    grids = point_grids(p)
    per = int(p["points_per_batch"])
    return sum((4 ** li) * -(-len(grids[li]) // per) for li in range(int(p["crop_n_layers"]) + 1))


def nms(boxes_rc: np.ndarray, scores, thresh: float) -> np.ndarray:
    """torchvision's NMS as Meta calls it (XYXY float boxes, one category)."""
    import torch
    from torchvision.ops.boxes import batched_nms

    if len(boxes_rc) == 0:
        return np.zeros(0, np.int64)
    xyxy = torch.as_tensor(boxes_rc[:, [1, 0, 3, 2]], dtype=torch.float32)
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    return batched_nms(xyxy, s, torch.zeros(len(s), dtype=torch.int64), float(thresh)).numpy()


@dataclass(eq=False)
class Candidates:
    """Masks of one crop, in crop coordinates until :meth:`uncrop`."""

    score: list = field(default_factory=list)
    stability: list = field(default_factory=list)
    box: list = field(default_factory=list)
    point: list = field(default_factory=list)
    piece: list = field(default_factory=list)
    crop: list = field(default_factory=list)  # index of the crop

    def take(self, idx) -> Candidates:
        return Candidates(*([getattr(self, f)[i] for i in idx] for f in
                             FIELDS))

    def extend(self, other: Candidates) -> None:
        for f in FIELDS:
            getattr(self, f).extend(getattr(other, f))


FIELDS = ("score", "stability", "box", "point", "piece", "crop")


def decode_batch(model, emb, pts_rc, crop, ci, shape, p, edge: Candidates | None = None) -> Candidates:
    """Meta's ``_process_batch`` for points ``(B, 2)`` (row, col) in the crop; masks near the
    crop's edge (not the image's) are dropped, or go to ``edge`` when given (tiles)."""
    import torch

    from napari_promptseg.models.upscale import upscale_levels

    if follows_sam2(model):
        from napari_promptseg.segmentation.everything_sam2 import decode_sam2

        iou, keep, low = decode_sam2(model, emb, pts_rc, p)
    else:
        thr = float(p["pred_iou_thresh"])
        scores, keep, low = model.decode_points(emb, pts_rc, multimask=True,
                                                min_score=thr if thr > 0 else None)
        iou = scores[keep[:, 0], keep[:, 1]]
    out = Candidates()
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
        lo = torch.from_numpy(low[s:s + chunk])  # no copy
        # one resize, three thresholds: the mask (> mt), and the stability score's (> mt +- offset)
        masks, hi, wide = upscale_levels(lo, *geo, levels=(mt, mt + off, mt - off))
        inter = np.array([np.count_nonzero(m) for m in hi], np.int64)
        union = np.array([np.count_nonzero(m) for m in wide], np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            stab = inter / union
        ok = np.flatnonzero(stab >= st_thr) if st_thr > 0 else np.arange(len(lo))
        if ok.size == 0:
            continue
        boxes = mask_boxes(masks[ok])
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


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
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


def small_regions(c: Candidates, shape, area: int, nms_thresh: float) -> Candidates:
    """Meta's ``postprocess_small_regions``: fill small holes, drop small islands, NMS that
    prefers masks that did not change (on each mask's box piece, never a full-image mask)."""
    if not c.score:
        return c
    boxes, pieces, unchanged = [], [], []
    for b, piece in zip(c.box, c.piece):
        m = np.pad(piece, 1)
        m, ch1 = remove_small_regions(m, area, "holes")
        m, ch2 = remove_small_regions(m, area, "islands")
        m = m[1:-1, 1:-1]
        e = extent(m)
        if e is not None:
            boxes.append([b[0] + e[0], b[1] + e[1], b[0] + e[2], b[1] + e[3]])
            pieces.append(m[e[0]:e[2] + 1, e[1]:e[3] + 1].copy())
        else:  # Meta: an empty mask has the box (0, 0, 0, 0)
            boxes.append([0, 0, 0, 0])
            pieces.append(np.zeros((1, 1), bool))
        unchanged.append(float(not (ch1 or ch2)))
    boxes = np.asarray(boxes, np.int64)
    keep = nms(boxes, unchanged, nms_thresh)
    for i in keep:
        if unchanged[i] == 0.0:
            c.box[i] = boxes[i]
            c.piece[i] = pieces[i]
    return c.take(keep)


def cleanup(model, found: Candidates, shape, p: dict) -> Candidates:
    """SAM's generator: small-region cleanup of the kept masks; SAM 2's has none (its
    ``min_mask_region_area`` acted on the low-resolution logits in :func:`decode_batch`)."""
    if int(p["min_mask_region_area"]) > 0 and not follows_sam2(model):
        found = small_regions(found, shape, int(p["min_mask_region_area"]), p["box_nms_thresh"])
    return found


def to_result(c: Candidates, crops: Sequence, shape) -> Everything:
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


