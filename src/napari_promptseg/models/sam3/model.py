"""SAM 3 backend on Meta's ``sam3`` package: concept prompts on images (:func:`napari_promptseg.find`)
and point / box / mask prompts for one object (``predict``, as every model).

The network is Meta's ``Sam3Image`` from ``sam3.model_builder.build_sam3_image_model`` with its
interactive predictor (``enable_inst_interactivity=True``: the sam2 neck and the tracker's SAM
heads, :mod:`.tracker`), built on the CPU inside :func:`~.device.on_device` and loaded from Meta's
checkpoint format ``{"model": {"detector.*", "tracker.*"}}`` as ``_load_checkpoint`` maps it. What
follows is ``sam3.model.sam3_image_processor.Sam3Processor``, step by step:

- :meth:`Sam3Model.embed` = ``Sam3Processor.set_image``: the uint8 RGB image is squashed into the
  1008 x 1008 input with the same torchvision transforms and run through the vision backbone; the
  embedding keeps the detector's three feature maps (the position encodings are recomputed, they
  depend only on the map sizes) and the tracker's three (:data:`~.tracker.TRACKER_KEYS`), so it
  goes through our memory, disk and store caches like any model's.
- :meth:`Sam3Model.detect` = ``set_text_prompt`` and/or ``add_geometric_prompt`` (all boxes in one
  grounding pass instead of one pass per added box; with no text, Meta's placeholder text
  ``"visual"``); text encodings are cached per phrase. Scores are ``sigmoid(logit) *
  sigmoid(presence)``; boxes come back as our ``(row0, col0, row1, col1)`` image pixels.
- :meth:`Sam3Model.mask_pieces` = the processor's bilinear resize of the mask logits to the image,
  ``sigmoid > 0.5``, for the kept objects only, each computed only around where it can be.
- :meth:`Sam3Model.predict` = ``Sam3Image.predict_inst`` (Meta's ``SAM3InteractiveImagePredictor``
  on the stored maps): scores, clamped low-resolution logits ``(K, 288, 288)`` and masks after
  Meta's hole filling and a bilinear resize to the image.

Coordinates: our ``(row, col)`` becomes Meta's normalised ``(cx, cy, w, h)`` (boxes of ``find``)
or ``(x, y) = (col, row) / (W, H) * 1008`` (``predict``) here and nowhere else, as SAM 2's boxes
in :mod:`..sam2.model`. A checkpoint without tracker weights still loads for ``find``;
``predict`` then raises a ValueError saying so.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from napari_promptseg.core.prompts import Prompt
from napari_promptseg.core.results import Embedding, Prediction
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import ModelSpec
from napari_promptseg.models.sam3.device import bpe_vocabulary, import_sam3, keep_sdp_flags, on_device
from napari_promptseg.models.sam3.tracker import (
    TRACKER_KEYS,
    decode,
    drop_tracker,
    fill_holes,
    has_tracker,
    needed_tracker_keys,
    release_autocast,
    tiny_interactive_predictor,
    tracker_features,
    tracker_state,
)
from napari_promptseg.models.upscale import upscale_masks, upscale_pieces

__all__ = ["Sam3Model", "ConceptPrompt", "build_sam3_network", "build_sam3_model", "FEATURE_KEYS",
           "TRACKER_KEYS", "RESOLUTION", "SAM3_ARCHS", "detector_state", "is_sam3_state"]

#: names of the vision backbone's three maps in :attr:`Embedding.features` (fine to coarse)
FEATURE_KEYS = ("fpn0", "fpn1", "fpn2")
#: side of SAM 3's square input (the official model)
RESOLUTION = 1008
_PLACEHOLDER_TEXT = "visual"  # what Sam3Processor encodes when only boxes are given
_TEXT_CACHE = 32


class ConceptPrompt(NamedTuple):
    """SAM 3's prompt tokens: ``tokens`` ``(S, 1, D)``, ``mask`` ``(1, S)`` (True = padding), the
    first ``n_text`` of them the text's."""

    tokens: torch.Tensor
    mask: torch.Tensor
    n_text: int


def _full(bpe: str):
    from sam3.model_builder import build_sam3_image_model

    return build_sam3_image_model(bpe_path=bpe, device="cpu", eval_mode=True, checkpoint_path=None,
                                  load_from_HF=False, enable_segmentation=True,
                                  enable_inst_interactivity=True)


def _tiny(bpe: str):
    """SAM 3's image model with a 2-block ViT-64 on a 336 input, a 1-layer text encoder and the
    interactive predictor (:func:`~.tracker.tiny_interactive_predictor`); the detector heads and
    the tracker's SAM heads are Meta's own, full size (for fast tests: Meta's builder has no small
    config, so this composes its parts as ``build_sam3_image_model`` does, smaller)."""
    import sam3.model_builder as mb
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT

    r = 336
    vit = ViT(img_size=r, pretrain_img_size=r, patch_size=14, embed_dim=64, depth=2, num_heads=2,
              mlp_ratio=4.625, norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True,
              tile_abs_pos=True, global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True,
              use_interp_rope=True, window_size=12, pretrain_use_cls_token=True, retain_cls_token=False,
              ln_pre=True, ln_post=False, return_interm_layers=False, bias_patch_embed=False)
    neck = mb._create_vit_neck(mb._create_position_encoding(precompute_resolution=r), vit,
                               enable_inst_interactivity=True)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe), d_model=256, width=64, heads=2, layers=1)
    parts = (mb._create_vl_backbone(neck, text), mb._create_sam3_transformer(), mb._create_geometry_encoder(),
             mb._create_segmentation_head(), mb._create_dot_product_scoring())
    with torch.random.fork_rng(devices=[]):  # the detector's random weights as without the tracker
        tracker = tiny_interactive_predictor(r)
    return mb._create_sam3_model(*parts, tracker, True).eval()


#: architecture -> (input side, builder); ``sam3_tiny_336`` is for tests only
SAM3_ARCHS = {"sam3": (RESOLUTION, _full), "sam3_tiny_336": (336, _tiny)}


def build_sam3_network(device="cpu", arch: str = "sam3"):
    """Meta's ``Sam3Image`` for ``arch`` with untrained weights, in eval mode, on the CPU (nothing
    downloaded). Meta leaves the text encoder's positional embedding and projection uninitialised
    (``torch.empty``: whatever the memory held, NaN at times); they are drawn here as CLIP does."""
    import_sam3()
    if arch not in SAM3_ARCHS:
        raise ValueError(f"unknown SAM 3 architecture {arch!r}; known: {', '.join(SAM3_ARCHS)}")
    with on_device(device), warnings.catch_warnings():  # caches land on ``device``
        # Meta's tracker enters a CUDA autocast (left below) and scripts its transforms
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        net = SAM3_ARCHS[arch][1](str(bpe_vocabulary()))
        release_autocast(net)
    enc = net.backbone.language_backbone.encoder
    with torch.no_grad():
        enc.positional_embedding.normal_(0.0, 0.01)
        if getattr(enc, "text_projection", None) is not None:
            enc.text_projection.normal_(0.0, enc.width ** -0.5)
    return net


def is_sam3_state(state: dict) -> bool:
    """True for a state dict in Meta's SAM 3 layout (``detector.*`` keys)."""
    return any(k.startswith("detector.") for k in state)


def detector_state(state: dict) -> dict:
    """The image model's weights of a SAM 3 checkpoint (``detector.*`` without the prefix), as
    ``sam3.model_builder._load_checkpoint`` selects them."""
    return {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}


class Sam3Model(PromptableModel):
    """A SAM 3 image model: ``embed`` an image once, then :func:`~napari_promptseg.find` concepts
    (a noun phrase, exemplar boxes) and :meth:`predict` single objects from points, a box and/or a
    mask, as many times as wanted. ``net`` is Meta's ``Sam3Image`` with its interactive predictor.

    ``predict`` (the API of every model: ``(row, col)`` points, a ``(row0, col0, row1, col1)``
    box, ``mask_input`` low-resolution logits ``(288, 288)``) equals Meta's
    ``Sam3Image.predict_inst``: the tracker's SAM heads on the maps :meth:`embed` stored, so a click
    costs one decoder pass. It needs the tracker weights of Meta's checkpoint (``tracker.*`` and the
    sam2 neck ``detector.backbone.vision_backbone.sam2_convs.*``); a checkpoint without them loads
    for ``find`` and :attr:`supports_prompts` is False.
    """

    # v2: the embedding also holds the tracker's maps (TRACKER_KEYS)
    preprocessing = "sam3-rgb8-v2"
    #: this model finds every instance of a concept (:func:`napari_promptseg.find`)
    supports_concepts = True

    def __init__(self, spec: ModelSpec, net, checkpoint_id: str, device,
                 resolution: int = RESOLUTION) -> None:
        from torchvision.transforms import v2

        super().__init__(spec, checkpoint_id, device)
        with on_device(device):
            self.net = net.to(device).eval()
        #: side of the square model input (1008 for the official model)
        self.image_size = int(resolution)
        self.transform = v2.Compose([  # Sam3Processor.transform, exactly
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize(size=(self.image_size, self.image_size)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ])
        self._texts: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def low_res_shape(self) -> tuple[int, int]:
        s = self.image_size // 14 * 4  # the decoders upsample the 1/14 map 4x: 288
        return (s, s)

    @property
    def supports_prompts(self) -> bool:
        """Whether :meth:`predict` works: the checkpoint had SAM 3's tracker weights."""
        return has_tracker(self.net)

    def upscale_args(self, embedding: Embedding) -> tuple[tuple[int, int], tuple[int, int], int]:
        """The low-resolution logits cover the whole (squashed) image: one bilinear resize
        straight to the image size, as Meta's ``postprocess_masks``."""
        side = self.low_res_shape[0]
        return (side, side), tuple(embedding.original_size), side

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> ``(1, 3, S, S)`` float32 model input (S = 1008; as Meta's)."""
        from torchvision.transforms import v2

        return self.transform(v2.functional.to_image(rgb).to(self.device)).unsqueeze(0)

    @torch.no_grad()
    def _embed_rgb(self, rgb: np.ndarray, zoom: float | None = None) -> Embedding:
        if zoom is not None:
            side = self.image_size
            raise ValueError(f"{self.name} stretches every image to its {side} x {side} input (as "
                             "Meta's Sam3Processor); zoom= works with SAM 1 models only")
        with on_device(self.device):
            out = self.net.backbone.forward_image(self.preprocess(rgb))
            feats = dict(zip(FEATURE_KEYS, out["backbone_fpn"], strict=True))
            if has_tracker(self.net):
                feats.update(tracker_features(self.net, out))
        return Embedding(
            model=self.name, checkpoint_id=self.checkpoint_id, preprocessing=self.preprocessing,
            original_size=(int(rgb.shape[0]), int(rgb.shape[1])), input_size=(self.image_size,) * 2,
            features=feats,
        )

    def _tracker_side(self, embedding: Embedding) -> dict:
        """Prompt-independent decoder inputs of an embedding, computed once (on this device): the
        1/14 map plus ``no_mem_embed`` (as ``predict_inst``), the two high-resolution maps, the
        prompt encoder's dense positional encoding."""
        d = embedding.derived.get("sam3_tracker")
        if d is None or d["embed"].device != self.device:
            missing = [k for k in TRACKER_KEYS if k not in embedding.features]
            if missing:
                raise ValueError(f"this embedding lacks SAM 3's tracker maps ({', '.join(missing)}); "
                                 f"embed the image again with {self.name!r}")
            f0, f1, f2 = (embedding.features[k].to(self.device, torch.float32) for k in TRACKER_KEYS)
            tracker = self.net.inst_interactive_predictor.model
            with on_device(self.device):
                d = embedding.derived["sam3_tracker"] = {
                    "embed": f2 + tracker.no_mem_embed.reshape(1, -1, 1, 1), "high_res": [f0, f1],
                    "pe": tracker.sam_prompt_encoder.get_dense_pe()}
        return d

    @torch.inference_mode()
    def _predict(self, embedding: Embedding, prompt: Prompt, multimask: bool) -> Prediction:
        if not has_tracker(self.net):
            raise ValueError(
                f"{self.name}: this checkpoint lacks SAM 3's tracker weights (tracker.* and "
                "detector.backbone.vision_backbone.sam2_convs.*), which point, box and mask prompts "
                "need; use Meta's full sam3.pt, or ps.find(model, image, text=..., exemplars=...) "
                "with this one"
            )
        image = self._tracker_side(embedding)
        with on_device(self.device), keep_sdp_flags():
            low, iou = decode(self.net, image, prompt, embedding.original_size, multimask)
        side = self.low_res_shape[0]
        original = embedding.original_size

        def upscale(indices):  # Meta's hole filling, then bilinear straight to the image size
            with torch.inference_mode():
                return upscale_masks(fill_holes(low[list(indices)]), (side, side), original, side)

        logits = torch.clamp(low, -32.0, 32.0)  # as predict_inst returns them
        return Prediction(scores=iou.float().cpu().numpy(), logits=logits.float().cpu().numpy(),
                          upscale=upscale)

    @torch.no_grad()
    def encode_text(self, text: str) -> dict:
        """Meta's text encoding of ``text`` (``backbone.forward_text``), cached per phrase."""
        with self._lock:
            hit = self._texts.get(text)
            if hit is not None:
                self._texts.move_to_end(text)
                return hit
        with on_device(self.device):
            enc = self.net.backbone.forward_text([text], device=self.device)
        with self._lock:
            self._texts[text] = enc
            while len(self._texts) > _TEXT_CACHE:
                self._texts.popitem(last=False)
        return enc

    def _backbone_out(self, embedding: Embedding) -> dict:
        feats = [embedding.features[k].to(self.device) for k in FEATURE_KEYS]
        pos_enc = self.net.backbone.vision_backbone.position_encoding
        pos = [pos_enc(f).to(f.dtype) for f in feats]  # as Sam3DualViTDetNeck.forward
        return {"backbone_fpn": feats, "vision_pos_enc": pos, "vision_features": feats[-1],
                "sam2_backbone_out": None}

    def _find_stage(self):
        from sam3.model.data_misc import FindStage

        dev = self.device
        return FindStage(img_ids=torch.tensor([0], device=dev, dtype=torch.long),
                         text_ids=torch.tensor([0], device=dev, dtype=torch.long),
                         input_boxes=None, input_boxes_mask=None, input_boxes_label=None,
                         input_points=None, input_points_mask=None)

    @torch.no_grad()
    def concept_prompt(self, embedding: Embedding, text: str | None = None, boxes=None,
                       box_labels=None) -> ConceptPrompt:
        """The prompt tokens of ``text`` and ``boxes`` on this embedding (Meta's
        ``_encode_prompt``: the text's tokens, then the geometry encoder's tokens of the boxes,
        which read the image inside them). Arguments as :meth:`detect`."""
        self.check_embedding(embedding)
        with on_device(self.device):
            return self._prompt(self._backbone_out(embedding), embedding.original_size, text, boxes,
                                box_labels)

    def _prompt(self, backbone_out: dict, size, text, boxes, box_labels) -> ConceptPrompt:
        """:meth:`concept_prompt` on an embedding's :meth:`_backbone_out` (which Meta's
        ``_encode_prompt`` completes with the text's features), inside :func:`on_device`."""
        h, w = size
        dev = self.device
        backbone_out.update(self.encode_text(_PLACEHOLDER_TEXT if text is None else text))
        prompt = self.net._get_dummy_prompt()
        b = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(b):
            r0, c0, r1, c1 = b.T
            cxcywh = np.stack([(c0 + c1) / 2 / w, (r0 + r1) / 2 / h, (c1 - c0) / w, (r1 - r0) / h], 1)
            lab = np.ones(len(b), bool) if box_labels is None else np.asarray(box_labels, bool)
            prompt.append_boxes(
                torch.tensor(cxcywh, device=dev, dtype=torch.float32).view(len(b), 1, 4),
                torch.tensor(lab, device=dev, dtype=torch.bool).view(len(b), 1),
            )
        tokens, mask, _ = self.net._encode_prompt(backbone_out, self._find_stage(), prompt)
        return ConceptPrompt(tokens, mask, int(backbone_out["language_features"].shape[0]))

    @staticmethod
    def join_prompts(prompts) -> ConceptPrompt:
        """One prompt of several :meth:`concept_prompt` results of the same text (boxes encoded in
        different windows of one image): the text's tokens once, then each one's box tokens."""
        first = prompts[0]
        tokens = [first.tokens] + [p.tokens[p.n_text:] for p in prompts[1:]]
        masks = [first.mask] + [p.mask[:, p.n_text:] for p in prompts[1:]]
        return ConceptPrompt(torch.cat(tokens, 0), torch.cat(masks, 1), first.n_text)

    @torch.no_grad()
    def detect(self, embedding: Embedding, text: str | None = None, boxes=None, box_labels=None,
               *, prompt: ConceptPrompt | None = None):
        """One grounding pass: every query's ``(scores, boxes, logits)``.

        text: a noun phrase or None (boxes only); boxes: ``(N, 4)`` validated ``(row0, col0, row1,
        col1)`` with ``row0 <= row1``, ``col0 <= col1`` in image pixels; box_labels: ``(N,)`` bool,
        True = an example of the concept, False = a counter-example. prompt: tokens made by
        :meth:`concept_prompt` (perhaps on another window of the image), used instead of text and
        boxes. Returns numpy ``scores (Q,)`` float32, ``boxes (Q, 4)`` float32 ``(row0, col0, row1,
        col1)`` image pixels, and the low-resolution mask logits ``(Q, 288, 288)``
        (:attr:`low_res_shape`) as a tensor (for :meth:`mask_pieces`).
        """
        from sam3.model import box_ops

        self.check_embedding(embedding)
        h, w = embedding.original_size
        net, find_stage = self.net, self._find_stage()
        with on_device(self.device):  # Sam3Image.forward_grounding, its _encode_prompt's maps reused
            backbone_out = self._backbone_out(embedding)
            if prompt is None:
                prompt = self._prompt(backbone_out, (h, w), text, boxes, box_labels)
            backbone_out, enc, _ = net._run_encoder(backbone_out, find_stage, prompt.tokens, prompt.mask)
            out = {"encoder_hidden_states": enc["encoder_hidden_states"],
                   "prev_encoder_out": {"encoder_out": enc, "backbone_out": backbone_out}}
            out, hs = net._run_decoder(memory=out["encoder_hidden_states"], pos_embed=enc["pos_embed"],
                                       src_mask=enc["padding_mask"], out=out, prompt=prompt.tokens,
                                       prompt_mask=prompt.mask, encoder_out=enc)
            net._run_segmentation_heads(out=out, backbone_out=backbone_out, img_ids=find_stage.img_ids,
                                        vis_feat_sizes=enc["vis_feat_sizes"],
                                        encoder_hidden_states=out["encoder_hidden_states"],
                                        prompt=prompt.tokens, prompt_mask=prompt.mask, hs=hs)
            presence = out["presence_logit_dec"].sigmoid().unsqueeze(1)
            scores = (out["pred_logits"].sigmoid() * presence).squeeze(-1)[0]
            xyxy = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"])[0]
        scale = torch.tensor([h, w, h, w], dtype=xyxy.dtype, device=xyxy.device)
        ours = xyxy[:, [1, 0, 3, 2]] * scale
        return (scores.float().cpu().numpy(), ours.float().cpu().numpy(), out["pred_masks"][0])

    @torch.no_grad()
    def mask_pieces(self, logits: torch.Tensor, size: tuple[int, int]) -> list:
        """``(K, h, w)`` mask logits -> each mask at the image's ``size`` as ``(window, piece)``
        (:func:`~napari_promptseg.models.upscale.upscale_pieces`: Meta's bilinear resize and
        ``sigmoid > 0.5``, computed only where the mask can be)."""
        return upscale_pieces(logits, size)


def build_sam3_model(spec: ModelSpec, state: dict, checkpoint_id: str, device) -> Sam3Model:
    """Meta's SAM 3 image model loaded from ``state`` (Meta's checkpoint layout: ``detector.*``,
    ``tracker.*``, mapped as ``sam3.model_builder._load_checkpoint`` does), moved to ``device``.
    Without the tracker weights ``predict`` needs (:func:`~.tracker.needed_tracker_keys`) the
    interactive predictor is dropped: the model finds concepts only."""
    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models.weights import WeightsError

    if not is_sam3_state(state):
        raise WeightsError(
            f"checkpoint does not fit model {spec.name!r}: it has no 'detector.*' weights, so it is "
            "not a SAM 3 checkpoint in Meta's format ({'model': {'detector.*', 'tracker.*'}})"
        )
    if spec.arch not in SAM3_ARCHS:
        raise ValueError(f"unknown SAM 3 architecture {spec.arch!r}; known: {', '.join(SAM3_ARCHS)}")
    dev = resolve_device(device)
    net = build_sam3_network(dev, spec.arch)
    weights = {**detector_state(state), **tracker_state(state)}
    needed = needed_tracker_keys(net)
    if not needed <= weights.keys():
        if needed & weights.keys():
            absent = sorted(needed - weights.keys())
            warnings.warn(f"the SAM 3 checkpoint has only part of the tracker weights (it lacks "
                          f"{len(absent)}: {', '.join(absent[:4])} ...): point and box prompts are "
                          "disabled, ps.find works", stacklevel=2)
        drop_tracker(net)
        keep = net.state_dict().keys()
        weights = {k: v for k, v in weights.items() if k in keep}
    try:
        missing, _unexpected = net.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as err:
        raise WeightsError(f"checkpoint does not fit model {spec.name!r} (SAM 3 image model). "
                           f"Details: {str(err)[:500]}") from err
    if missing:
        warnings.warn(f"the SAM 3 checkpoint lacks {len(missing)} weights of the image model, left "
                      f"untrained: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}",
                      stacklevel=2)
    return Sam3Model(spec, net, checkpoint_id, dev, resolution=SAM3_ARCHS[spec.arch][0])
