"""SAM 2 backend on Meta's ``sam2`` package (image prompts; the video memory is in ``tracking``).

The network is Meta's own ``SAM2VideoPredictor`` (a ``SAM2Base``) built from the configs that ship
inside ``sam2`` with the overrides of ``sam2.build_sam.build_sam2_video_predictor``, so one model
serves both image prompts and memory tracking (:mod:`napari_promptseg.propagation.memory`).

Coordinates: our ``(row, col)`` becomes SAM 2's ``(x, y) = (col, row)`` scaled by
``image_size / W`` and ``image_size / H`` here and nowhere else: SAM 2 squashes every image into
its square input (no aspect-preserving resize, no padding), so its low-resolution logits cover
the whole image. The image goes through ``SAM2Transforms`` exactly as in
``SAM2ImagePredictor.set_image``; the embedding stores the raw backbone maps (the two
high-resolution maps after ``conv_s0`` / ``conv_s1``, and the 1/16 map *without* ``no_mem_embed``)
so that the tracker can use them as the video predictor does; :meth:`Sam2Model._predict` adds
``no_mem_embed`` as the image predictor does. The decoder is :class:`~.sam2_decoder.Sam2FastDecoder`
(the official one's result with its prompt-independent half cached per embedding); masks are
upscaled lazily by :func:`~.upscale.upscale_masks` (bilinear straight to the image size, as
``SAM2Transforms.postprocess_masks``; tests/test_sam2_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_promptseg.core.cancel import install_cancel_hooks
from napari_promptseg.core.prompts import Prompt, xy_prompt
from napari_promptseg.core.results import Embedding, Prediction
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import ModelSpec
from napari_promptseg.models.sam2.decoder import Sam2FastDecoder
from napari_promptseg.models.triton_guard import guard_triton
from napari_promptseg.models.upscale import upscale_masks

__all__ = ["Sam2Arch", "SAM2_ARCHS", "build_sam2_network", "Sam2Model", "build_sam2_model",
           "FEATURE_KEYS"]

#: names of the three backbone maps in :attr:`Embedding.features` (fine to coarse)
FEATURE_KEYS = ("fpn0", "fpn1", "fpn2")

# The overrides of sam2.build_sam.build_sam2_video_predictor(apply_postprocessing=True), plus one.
_VIDEO_OVERRIDES = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
    # Not in Meta's builder: a frame corrected after tracking becomes a conditioning frame. With
    # Meta's default (False) re-tracking from the corrected frame re-predicts it without the
    # correction's points and overwrites it (facebookresearch/sam2 issue 731).
    "++model.add_all_frames_to_correct_as_cond=true",
)


@dataclass(frozen=True)
class Sam2Arch:
    """A config shipped inside ``sam2`` plus hydra overrides (e.g. a smaller input for tests)."""

    config: str
    overrides: tuple[str, ...] = ()


SAM2_ARCHS: dict[str, Sam2Arch] = {
    "sam2.1_hiera_t": Sam2Arch("configs/sam2.1/sam2.1_hiera_t.yaml"),
    "sam2.1_hiera_s": Sam2Arch("configs/sam2.1/sam2.1_hiera_s.yaml"),
    "sam2.1_hiera_b+": Sam2Arch("configs/sam2.1/sam2.1_hiera_b+.yaml"),
    "sam2.1_hiera_l": Sam2Arch("configs/sam2.1/sam2.1_hiera_l.yaml"),
    # The tiny config on a 256-pixel input: same network, 16x fewer tokens (fast tests).
    "sam2.1_hiera_t_256": Sam2Arch("configs/sam2.1/sam2.1_hiera_t.yaml", ("++model.image_size=256",)),
}


def _import_sam2():
    guard_triton()  # sam2 imports torchvision -> torch._dynamo -> triton
    try:
        import sam2  # noqa: F401  (initialises hydra's config module)
    except ImportError as err:  # pragma: no cover - sam2 is a dependency
        raise ImportError(
            "SAM 2 models need Meta's `sam2` package: pip install sam2 (set SAM2_BUILD_CUDA=0 "
            "to skip its optional CUDA extension)"
        ) from err


def build_sam2_network(arch: Sam2Arch | str):
    """Meta's ``SAM2VideoPredictor`` for ``arch`` with untrained weights, in eval mode, on the CPU."""
    _import_sam2()
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    a = SAM2_ARCHS[arch] if isinstance(arch, str) else arch
    cfg = compose(config_name=a.config, overrides=list(_VIDEO_OVERRIDES + a.overrides))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True).eval()


def _transforms(image_size: int):
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(resolution=image_size, mask_threshold=0.0)


class Sam2Model(PromptableModel):
    """A SAM 2 ready for ``embed``/``predict`` (:class:`~.base.PromptableModel`) and for memory
    tracking (:mod:`napari_promptseg.propagation.memory`). ``net`` is Meta's ``SAM2VideoPredictor``."""

    preprocessing = "sam2-rgb8-v1"
    everything_generator = "sam2"  # segment_everything follows Meta's SAM2AutomaticMaskGenerator

    def __init__(self, spec: ModelSpec, net, checkpoint_id: str, device) -> None:
        super().__init__(spec, checkpoint_id, device)
        self.net = net.to(device).eval()
        install_cancel_hooks(self.net.image_encoder.trunk)  # a cancel_scope stops it between blocks
        self.image_size = int(net.image_size)
        self.transforms = _transforms(self.image_size)
        self.decoder = Sam2FastDecoder(self.net)
        s = self.image_size // 4
        self._low_res = (s, s)

    @property
    def low_res_shape(self) -> tuple[int, int]:
        return self._low_res

    @property
    def supports_memory(self) -> bool:
        """True: this model tracks objects with memory (``ps.propagate(method="memory")``)."""
        return True

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> ``(1, 3, S, S)`` float32 normalised model input (as Meta's)."""
        return self.transforms(rgb)[None].to(self.device)

    @torch.no_grad()
    def _embed_rgb(self, rgb: np.ndarray, zoom: float | None = None) -> Embedding:
        if zoom is not None:
            raise ValueError(
                f"{self.name} stretches every image to its {self.image_size} x {self.image_size} input "
                "(as Meta's SAM 2 predictor); zoom= works with SAM 1 models only. For a large image use "
                "tiles (ps.embed_tiles), which feed SAM 2 square tiles at the image's own resolution"
            )
        out = self.net.forward_image(self.preprocess(rgb))
        feats = {k: f for k, f in zip(FEATURE_KEYS, out["backbone_fpn"], strict=True)}
        s = self.image_size
        return Embedding(
            model=self.name, checkpoint_id=self.checkpoint_id, preprocessing=self.preprocessing,
            original_size=(int(rgb.shape[0]), int(rgb.shape[1])), input_size=(s, s), features=feats,
        )

    def features_on_device(self, embedding: Embedding) -> list[torch.Tensor]:
        """The three backbone maps ``(1, C_i, h_i, w_i)`` on the model's device (moved once)."""
        out = []
        for k in FEATURE_KEYS:
            f = embedding.features[k]
            if f.device != self.device or f.dtype != torch.float32:
                f = embedding.features[k] = f.to(self.device, torch.float32)
            out.append(f)
        return out

    def _sam2_points(self, prompt: Prompt, original_size: tuple[int, int]):
        """Points and box as SAM 2's concatenated (x, y) point prompt, in model-input pixels."""
        h, w = original_size
        xy = xy_prompt(prompt)
        if xy is None:
            return None
        scale = np.array([self.image_size / w, self.image_size / h])
        coords = torch.as_tensor(xy[0] * scale, dtype=torch.float32)
        lab = torch.as_tensor(xy[1], dtype=torch.int32)
        return coords[None].to(self.device), lab[None].to(self.device)

    def _image_side(self, embedding: Embedding) -> dict:
        """Prompt-independent decoder tensors of an embedding, computed once (on this device)."""
        d = embedding.derived.get("sam2_decoder")
        if d is None or d["embed"].device != self.device:
            net = self.net
            f0, f1, f2 = self.features_on_device(embedding)
            embed = f2 + net.no_mem_embed.reshape(1, -1, 1, 1) if net.directly_add_no_mem_embed else f2
            d = embedding.derived["sam2_decoder"] = {
                "embed": embed, "first": self.decoder.prepare(embed),
                "high_res": self.decoder.prepare_high_res(f0, f1)}
        return d

    @torch.inference_mode()
    def _predict(self, embedding: Embedding, prompt: Prompt, multimask: bool) -> Prediction:
        image = self._image_side(embedding)
        mask = None
        if prompt.mask_input is not None:
            mask = torch.as_tensor(prompt.mask_input, dtype=torch.float32, device=self.device)[None]
        sparse, dense = self.net.sam_prompt_encoder(
            points=self._sam2_points(prompt, embedding.original_size), boxes=None, masks=mask)
        first = image["first"] if mask is None else self.decoder.prepare(image["embed"], dense)
        low, iou = self.decoder.decode(first, image["high_res"], sparse, multimask)
        side = self._low_res[0]
        original = embedding.original_size

        def upscale(indices):  # bilinear straight to the image size, thresholded at 0
            with torch.inference_mode():
                return upscale_masks(low[list(indices)], (side, side), original, side)

        logits = torch.clamp(low, -32.0, 32.0)  # as SAM2ImagePredictor returns them
        return Prediction(scores=iou.float().cpu().numpy(), logits=logits.float().cpu().numpy(),
                          upscale=upscale)


    def upscale_args(self, embedding: Embedding) -> tuple[tuple[int, int], tuple[int, int], int]:
        """The low-resolution logits cover the whole (squashed) image: one bilinear resize
        straight to the image size, as ``SAM2Transforms.postprocess_masks``."""
        side = self._low_res[0]
        return (side, side), tuple(embedding.original_size), side

    @torch.inference_mode()
    def decode_points(self, embedding: Embedding, points, multimask: bool = True,
                      min_score: float | None = None, batch: int | None = None, mask_input=None):
        """Batched :meth:`~.base.PromptableModel.decode_points` (as ``SAM2ImagePredictor._predict``
        with a batch of one-point prompts): :meth:`~.sam2_decoder.Sam2FastDecoder.decode_batch`
        on the cached image side. ``mask_input`` ``(B, h, w)``: a mask prompt per point (Meta's
        ``use_m2m`` refinement), its dense embedding added to each prompt's image side.
        ``batch``: prompts at a time (default :func:`~.sam_batch.cache_batch`). The logits
        returned are not clamped (the masks are made from them)."""
        from napari_promptseg.models.batching import decode_in_batches
        from napari_promptseg.models.sam.batch import cache_batch

        self.check_embedding(embedding)
        image = self._image_side(embedding)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        h, w = embedding.original_size
        xy = pts[:, ::-1] * np.array([self.image_size / w, self.image_size / h])
        net = self.net

        def step(s: int, e: int):
            coords = torch.as_tensor(xy[s:e], dtype=torch.float32, device=self.device)[:, None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=self.device)
            masks = None
            if mask_input is not None:
                masks = torch.as_tensor(np.asarray(mask_input[s:e]), dtype=torch.float32,
                                        device=self.device)[:, None]
            sparse, dense = net.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
            src = None
            if masks is not None:  # each prompt's own image side: the image plus its mask's embedding
                src = (image["embed"] + dense).flatten(2).transpose(1, 2)  # (B, hw, C)
            return self.decoder.decode_batch(image["first"], image["high_res"], sparse, multimask,
                                             min_score, src)

        return decode_in_batches(len(xy), int(batch) if batch else cache_batch(self.decoder), step,
                                 3 if multimask else 1, self._low_res)


def build_sam2_model(spec: ModelSpec, state: dict, checkpoint_id: str, device) -> Sam2Model:
    """Build ``spec``'s SAM 2 architecture, load ``state`` strictly, move to ``device``."""
    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models.weights import WeightsError

    if spec.arch not in SAM2_ARCHS:
        raise ValueError(f"unknown SAM 2 architecture {spec.arch!r}; known: {', '.join(SAM2_ARCHS)}")
    net = build_sam2_network(spec.arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        hint = ("it looks like a SAM 1 checkpoint (image_encoder.patch_embed.proj.weight)"
                if "image_encoder.patch_embed.proj.weight" in state else
                "pick the registry name that matches the file (tiny, small, base_plus, large)")
        raise WeightsError(
            f"checkpoint does not fit model {spec.name!r} (SAM 2 architecture {spec.arch}); "
            f"{hint}. Details: {str(err)[:500]}"
        ) from err
    return Sam2Model(spec, net, checkpoint_id, resolve_device(device))


# Hiera trunk: (embed_dim, number of blocks) of each official config.
_HIERA = {(96, 12): "sam2.1_hiera_t", (96, 16): "sam2.1_hiera_s", (112, 24): "sam2.1_hiera_b+",
          (144, 48): "sam2.1_hiera_l"}


def sam2_arch_of(state: dict) -> str | None:
    """The :data:`SAM2_ARCHS` name of a SAM 2 state dict (by its Hiera width and depth), or None."""
    w = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if w is None:
        return None
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    return _HIERA.get((int(w.shape[0]), len(blocks)))
