"""Segment everything with SAM 2 models: where Meta's ``SAM2AutomaticMaskGenerator`` differs
from SAM's generator. :mod:`napari_promptseg.segmentation.everything` runs the shared steps (point grid per
crop, crop boxes, crop-edge filter, box NMS per crop and across crops) and calls :func:`decode_sam2`
for a model whose ``everything_generator`` is ``"sam2"``. What differs, followed here:

- defaults (:data:`~napari_promptseg.models.generator_defaults.SAM2_EVERYTHING_DEFAULTS`):
  ``pred_iou_thresh`` 0.8 instead of 0.88, plus
  ``mask_threshold`` 0.0, ``use_m2m`` False, ``multimask_output`` True;
- ``mask_threshold``: the stability score counts ``logits > mask_threshold ± offset`` and a mask
  is ``logits > mask_threshold`` (SAM's generator: 0);
- ``multimask_output=False``: one mask per point, the decoder's single output (which falls back
  to the most stable of the three when it is unstable, as SAM 2's decoder does);
- ``use_m2m``: every mask is decoded again from its point with its own low-resolution logits
  (clamped to +-32) as the mask prompt, one output; its new predicted IoU is what
  ``pred_iou_thresh`` filters;
- ``min_mask_region_area``: SAM 2's generator has no full-resolution clean-up. It hands the area
  to ``SAM2ImagePredictor`` (``max_hole_area``, ``max_sprinkle_area``), which edits the
  *low-resolution* logits before upscaling: background components (``<= 0``, 8-connected, area
  counted in low-resolution pixels) of at most that area become ``+10``, foreground components
  of at most that area ``-10`` (:func:`fill_low_res`). Meta computes the components with the
  CUDA extension ``sam2._C``; where it is missing (CPU installs) Meta's generator warns and skips
  the step, we compute it with scipy everywhere;
- masks are upscaled bilinearly straight from the logits to the (crop) image size
  (``SAM2Transforms.postprocess_masks``; :meth:`~napari_promptseg.models.sam2.model.Sam2Model.upscale_args`)
  and points map to ``(x / w, y / h) * image_size`` (SAM 2 squashes the image into its input).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_sam2_params", "decode_sam2", "fill_low_res"]

def check_sam2_params(p: dict) -> None:
    """Refuse values of the SAM 2 generator's own parameters that Meta's would misread."""
    for name in ("use_m2m", "multimask_output"):
        if not isinstance(p[name], (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {p[name]!r}")
    try:
        ok = np.isfinite(float(p["mask_threshold"]))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"mask_threshold must be a finite number, got {p['mask_threshold']!r}")


def fill_low_res(low, area: int):
    """``SAM2Transforms.postprocess_masks``'s hole and sprinkle removal (threshold 0) on
    low-resolution logits ``(M, h, w)`` (numpy; a changed copy is returned):
    8-connected components of ``<= 0`` with at most ``area`` pixels become ``+10``, those of
    ``> 0`` with at most ``area`` pixels ``-10`` (both found on the logits as given)."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    arr = np.array(low, np.float32)
    for m in arr:
        fg = m > 0
        for region, value in ((~fg, 10.0), (fg, -10.0)):
            lab, n = ndimage.label(region, structure=eight)
            if n == 0:
                continue
            small = np.bincount(lab.ravel(), minlength=n + 1) <= area
            small[0] = False
            m[small[lab]] = value
    return arr


def decode_sam2(model, emb, pts_rc: np.ndarray, p: dict):
    """``SAM2AutomaticMaskGenerator._process_batch`` up to the stability score: the masks of the
    points ``(B, 2)`` (row, col) whose predicted IoU passes ``pred_iou_thresh``. Returns
    ``(iou (M,), keep (M, 2) (point, mask), low (M, h, w) logits to upscale)``, numpy."""
    thr = float(p["pred_iou_thresh"])
    min_score = thr if thr > 0 else None
    multimask = bool(p["multimask_output"])
    if not p["use_m2m"]:
        scores, keep, low = model.decode_points(emb, pts_rc, multimask=multimask, min_score=min_score)
        iou = scores[keep[:, 0], keep[:, 1]]
    else:  # every mask of the batch is refined; the refined IoU is filtered
        _, keep, low = model.decode_points(emb, pts_rc, multimask=multimask)
        if len(keep) == 0:
            return np.zeros(0, np.float32), keep, low
        scores, k2, low = model.decode_points(emb, pts_rc[keep[:, 0]], multimask=False,
                                              min_score=min_score, mask_input=np.clip(low, -32.0, 32.0))
        iou = scores[k2[:, 0], k2[:, 1]]
        keep = keep[k2[:, 0]]
    area = int(p["min_mask_region_area"])
    if area > 0 and len(keep):
        low = fill_low_res(low, area)
    return iou, keep, low
