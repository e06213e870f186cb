"""The parameters and defaults of Meta's automatic mask generators, per family (data only).

A model declares which generator it follows (``PromptableModel.everything_generator``) and
its defaults come from here (``PromptableModel.everything_defaults``), so neither the models nor
the generator compare family names.
"""

from __future__ import annotations

__all__ = ["EVERYTHING_DEFAULTS", "SAM2_EVERYTHING_DEFAULTS", "SAM2_ONLY", "GENERATOR_DEFAULTS"]

#: Meta's ``SamAutomaticMaskGenerator`` defaults (``point_grids``: None = a regular grid)
EVERYTHING_DEFAULTS: dict[str, object] = {
    "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95, "stability_score_offset": 1.0, "box_nms_thresh": 0.7,
    "crop_n_layers": 0, "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1, "point_grids": None, "min_mask_region_area": 0,
}

#: Meta's ``SAM2AutomaticMaskGenerator`` defaults (``output_mode`` aside: we return :class:`Everything`)
SAM2_EVERYTHING_DEFAULTS: dict[str, object] = {
    "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.95, "stability_score_offset": 1.0, "mask_threshold": 0.0,
    "box_nms_thresh": 0.7, "crop_n_layers": 0, "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1, "point_grids": None, "min_mask_region_area": 0,
    "use_m2m": False, "multimask_output": True,
}

#: parameters of SAM 2's generator that SAM's generator does not have
SAM2_ONLY = ("mask_threshold", "use_m2m", "multimask_output")



#: defaults per :attr:`~napari_promptseg.PromptableModel.everything_generator`
GENERATOR_DEFAULTS: dict[str, dict[str, object]] = {"sam": EVERYTHING_DEFAULTS,
                                                    "sam2": SAM2_EVERYTHING_DEFAULTS}
