"""SAM 3's interactive predictor: point, box and mask prompts for one object, as Meta's
``Sam3Image.predict_inst``.

Meta's ``build_sam3_image_model(enable_inst_interactivity=True)`` adds two things to the image
model: a second copy of the vision neck (``backbone.vision_backbone.sam2_convs``, the "sam2 neck")
and ``inst_interactive_predictor``, a ``SAM3InteractiveImagePredictor`` around the tracker
(``Sam3TrackerPredictor``: SAM 2's prompt encoder and mask decoder on SAM 3's backbone). Meta's
checkpoint keeps the neck under ``detector.*`` and the tracker under ``tracker.*``.

What ``Sam3Processor.set_image`` + ``predict_inst`` do, split the way our models split work:

- :func:`tracker_features` (once per image, in ``embed``): the sam2 neck's three maps, the two
  high-resolution ones through the decoder's ``conv_s0`` / ``conv_s1`` (as ``set_image``), the 1/14
  map raw (``no_mem_embed`` is added per prediction, as ``predict_inst`` does, so the maps stay
  those a video tracker would take).
- :func:`decode` (per prompt): Meta's prompt encoder and mask decoder on those maps, with Meta's
  coordinate transform (``x / W * S``, ``y / H * S``) and the box as two corner points first.
- :func:`fill_holes`: Meta's post-processing of the masks (``SAM2Transforms.postprocess_masks``
  with ``max_hole_area=256``): background components of at most 256 low-resolution pixels become
  object before the bilinear resize; the returned logits are not filled (as Meta's).

Meta's tracker constructor enters ``torch.autocast("cuda", bfloat16)`` and never leaves it (on a
GPU every later op of that thread would run in bfloat16): :func:`release_autocast` leaves it right
after building, so our SAM 3 runs in float32 like our SAM and SAM 2 models.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_promptseg.core.prompts import xy_prompt

__all__ = ["TRACKER_KEYS", "MAX_HOLE_AREA", "tiny_interactive_predictor", "release_autocast",
           "tracker_state", "meta_state", "needed_tracker_keys", "drop_tracker", "has_tracker",
           "tracker_features", "decode", "fill_holes"]

#: names of the tracker's three maps in :attr:`Embedding.features` (fine to coarse): ``conv_s0`` /
#: ``conv_s1`` of the sam2 neck's 4x / 2x maps and its raw 1x map
TRACKER_KEYS = ("sam2_fpn0", "sam2_fpn1", "sam2_fpn2")
#: SAM3InteractiveImagePredictor's ``max_hole_area`` (low-resolution pixels)
MAX_HOLE_AREA = 256.0
_PREDICTOR = "inst_interactive_predictor."
_NECK = "backbone.vision_backbone.sam2_convs."
# what predict_inst runs: the sam2 neck, the prompt encoder, the mask decoder, no_mem_embed
_NEEDED = (_NECK, _PREDICTOR + "model.sam_prompt_encoder.", _PREDICTOR + "model.sam_mask_decoder.",
           _PREDICTOR + "model.no_mem_embed")


def _feature_sizes(resolution: int) -> list[tuple[int, int]]:
    s = resolution // 14
    return [(4 * s, 4 * s), (2 * s, 2 * s), (s, s)]


def tiny_interactive_predictor(resolution: int):
    """Meta's ``SAM3InteractiveImagePredictor`` around a tracker for a ``resolution`` input, composed
    from Meta's parts as ``build_tracker`` does, with a one-layer memory attention sized for that
    input (for fast tests; the SAM heads are Meta's own, full size)."""
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    s = resolution // 14
    maskmem = SimpleMaskEncoder(
        out_dim=64,
        position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, scale=None,
                                                temperature=10000, precompute_resolution=resolution),
        mask_downsampler=SimpleMaskDownSampler(kernel_size=3, stride=2, padding=1,
                                               interpol_size=[16 * s, 16 * s]),
        fuser=SimpleFuser(layer=CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                        use_dwconv=True), num_layers=1),
    )
    rope = dict(embedding_dim=256, num_heads=1, downsample_rate=1, dropout=0.1, rope_theta=10000.0,
                feat_sizes=[s, s], use_fa3=False, use_rope_real=False)
    layer = TransformerDecoderLayerv2(
        cross_attention_first=False, activation="relu", dim_feedforward=256, dropout=0.1,
        pos_enc_at_attn=False, pre_norm=True, self_attention=RoPEAttention(**rope), d_model=256,
        pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        cross_attention=RoPEAttention(**rope, kv_in_dim=64, rope_k_repeat=True),
    )
    encoder = TransformerEncoderCrossAttention(
        remove_cross_attention_layers=[], batch_first=True, d_model=256, frozen=False,
        pos_enc_at_input=True, layer=layer, num_layers=1, use_act_checkpoint=False)
    tracker = Sam3TrackerPredictor(  # build_tracker's settings, at this resolution
        image_size=resolution, num_maskmem=7, backbone=None, backbone_stride=14,
        transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=256),
        maskmem_backbone=maskmem, multimask_output_in_sam=True, forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False, multimask_output_for_tracking=True, multimask_min_pt_num=0,
        multimask_max_pt_num=1, always_start_from_first_ann_frame=False,
        non_overlap_masks_for_mem_enc=False, non_overlap_masks_for_output=False, max_cond_frames_in_attn=4,
        offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
        clear_non_cond_mem_around_input=True, fill_hole_area=0, use_memory_selection=False,
    )
    predictor = SAM3InteractiveImagePredictor(tracker)
    predictor._bb_feat_sizes = _feature_sizes(resolution)  # Meta's are those of a 1008 input
    return predictor


def release_autocast(net) -> None:
    """Leave the ``torch.autocast("cuda", bfloat16)`` that Meta's tracker constructor entered (and
    never left) in this thread; call it in the thread that built ``net``, right after building."""
    predictor = getattr(net, "inst_interactive_predictor", None)
    ctx = getattr(getattr(predictor, "model", None), "bf16_context", None)
    if ctx is not None and getattr(ctx, "prev", None) is not None:
        ctx.__exit__(None, None, None)
        ctx.prev = None  # left: never twice


def tracker_state(state: dict) -> dict:
    """The tracker's weights of a SAM 3 checkpoint (``tracker.*``) under the image model's names
    (``inst_interactive_predictor.model.*``), as ``sam3.model_builder._load_checkpoint`` maps them."""
    return {_PREDICTOR + "model." + k[len("tracker."):]: v for k, v in state.items()
            if k.startswith("tracker.")}


def meta_state(net) -> dict:
    """``net``'s weights (Meta's ``Sam3Image``, with or without its interactive predictor) in Meta's
    checkpoint layout, ``detector.*`` and ``tracker.*``: the inverse of :func:`tracker_state` and
    ``model.detector_state`` (to save a checkpoint Meta's builders and ours load)."""
    inner = _PREDICTOR + "model."
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith(inner):
            state["tracker." + k[len(inner):]] = v
        elif not k.startswith(_PREDICTOR):
            state["detector." + k] = v
    return state


def needed_tracker_keys(net) -> set[str]:
    """The weights of ``net`` (an image model with the interactive predictor) that ``predict``
    runs: the sam2 neck, the tracker's prompt encoder and mask decoder, ``no_mem_embed``."""
    return {k for k in net.state_dict() if k.startswith(_NEEDED)}


def drop_tracker(net) -> None:
    """Remove the interactive predictor and the sam2 neck (a checkpoint without them): ``find``
    works as before and the image encoder skips the second neck."""
    net.inst_interactive_predictor = None
    net.backbone.vision_backbone.sam2_convs = None


def has_tracker(net) -> bool:
    """Whether ``net`` has its interactive predictor (the checkpoint had the tracker weights)."""
    return getattr(net, "inst_interactive_predictor", None) is not None


def tracker_features(net, backbone_out: dict) -> dict[str, torch.Tensor]:
    """The tracker's maps of one image from ``backbone.forward_image``'s output (as
    ``Sam3Processor.set_image``): :data:`TRACKER_KEYS` -> ``(1, C_i, h_i, w_i)``."""
    fpn = backbone_out["sam2_backbone_out"]["backbone_fpn"]
    dec = net.inst_interactive_predictor.model.sam_mask_decoder
    return dict(zip(TRACKER_KEYS, (dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1]), fpn[2]), strict=True))


def _points(prompt, original_size: tuple[int, int], resolution: int, device):
    """Box corners (labels 2, 3) then points, as Meta's ``_prep_prompts`` + ``_predict`` build them:
    ``(x, y) = (col, row)`` in float32, divided by ``(W, H)``, times the input side."""
    h, w = original_size
    pts = xy_prompt(prompt)
    if pts is None:
        return None
    coords, labels = pts
    xy = torch.as_tensor(np.asarray(coords), dtype=torch.float32, device=device)
    xy[:, 0] = xy[:, 0] / w
    xy[:, 1] = xy[:, 1] / h
    xy = xy * resolution
    return xy[None], torch.as_tensor(labels, dtype=torch.int32, device=device)[None]


def decode(net, image: dict, prompt, original_size: tuple[int, int], multimask: bool):
    """Meta's ``SAM3InteractiveImagePredictor._predict`` for one prompt on an image's prepared
    maps ``image`` (``embed``: the 1x map plus ``no_mem_embed``; ``high_res``: the two others).
    Returns the raw low-resolution logits ``(K, h, w)`` and the scores ``(K,)``."""
    tracker = net.inst_interactive_predictor.model
    dev = image["embed"].device
    mask = None
    if prompt.mask_input is not None:
        mask = torch.as_tensor(prompt.mask_input, dtype=torch.float32, device=dev)[None]
    sparse, dense = tracker.sam_prompt_encoder(
        points=_points(prompt, original_size, tracker.image_size, dev), boxes=None, masks=mask)
    low, iou, _, _ = tracker.sam_mask_decoder(
        image_embeddings=image["embed"], image_pe=image["pe"], sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=False,
        high_res_features=image["high_res"])
    return low[0], iou[0]


def fill_holes(low: torch.Tensor, max_area: float = MAX_HOLE_AREA) -> torch.Tensor:
    """``(K, h, w)`` logits with every background component (``<= 0``, 8-connected) of at most
    ``max_area`` pixels set to 10, as Meta's ``postprocess_masks`` (its CPU path: scikit-image)."""
    from skimage.measure import label

    out = low.detach().float().cpu().clone()
    for k in range(len(out)):
        lab = label((out[k] <= 0).numpy())
        if lab.max() == 0:
            continue
        area = np.bincount(lab.ravel())
        hole = (lab > 0) & (area[lab] <= max_area)
        if hole.any():
            out[k][torch.from_numpy(hole)] = 10.0
    return out.to(low.device)
