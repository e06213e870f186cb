"""SAM backend on Meta's ``segment-anything`` package.

Coordinates: our API's ``(row, col)`` becomes SAM's ``(x, y) = (col, row)`` here and nowhere
else. The encoder path is the official ``SamPredictor.set_image`` path (same resize, same
normalisation, same network; attention computed in place by :mod:`.sam_encoder`), so embeddings
are bit-identical; the decoder path is
:class:`~.sam_decoder.FastMaskDecoder` plus :func:`~.upscale.upscale_masks`, equal to
``SamPredictor.predict`` up to float rounding (tests/test_sam_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from napari_promptseg.core.cancel import install_cancel_hooks
from napari_promptseg.core.devices import resolve_device
from napari_promptseg.core.prompts import Prompt
from napari_promptseg.core.results import Embedding, Prediction
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import ModelSpec
from napari_promptseg.models.sam.decoder import FastMaskDecoder
from napari_promptseg.models.sam.encoder import use_lean_attention
from napari_promptseg.models.triton_guard import guard_triton
from napari_promptseg.models.upscale import upscale_masks

__all__ = ["SamArch", "SAM_ARCHS", "build_sam", "SamModel", "build_sam_model"]


@dataclass(frozen=True)
class SamArch:
    """Network configuration of a SAM (official values for ViT-B in the defaults)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    # A tiny network with SAM's structure, for fast tests (random weights).
    "vit_tiny": SamArch(
        encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), image_size=256, patch_size=16, window_size=4,
        prompt_embed_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64,
    ),
    # The demo model that ships inside the package (2.3 M parameters, trained on synthetic
    # fluorescence images by napari_promptseg.training; docs/model_card_promptseg_demo.md).
    # 256-px input, 8-px patches: 32 x 32 tokens, 128 x 128 low-res logits.
    "promptseg_demo": SamArch(
        encoder_embed_dim=128, encoder_depth=6, encoder_num_heads=4,
        encoder_global_attn_indexes=(2, 5), image_size=256, patch_size=8, window_size=8,
        prompt_embed_dim=128, decoder_mlp_dim=512, decoder_num_heads=8, iou_head_hidden_dim=128,
    ),
}


def build_sam(arch: SamArch | str):
    """A ``segment_anything.modeling.Sam`` with ``arch``'s configuration and untrained weights."""
    guard_triton()  # segment_anything imports torchvision -> torch._dynamo -> triton
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    a = SAM_ARCHS[arch] if isinstance(arch, str) else arch
    grid = a.image_size // a.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth,
            embed_dim=a.encoder_embed_dim,
            img_size=a.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a.encoder_num_heads,
            patch_size=a.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a.encoder_global_attn_indexes,
            window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(a.image_size, a.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a.decoder_depth,
                embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim,
                num_heads=a.decoder_num_heads,
            ),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def arch_of(state: dict) -> str | None:
    """The :data:`SAM_ARCHS` name whose encoder width matches a state dict, or None."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    return next((name for name, a in SAM_ARCHS.items() if w.shape[0] == a.encoder_embed_dim), None)


def _guess_arch(state: dict) -> str:
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "not a SAM checkpoint (no image_encoder.patch_embed.proj.weight)"
    arch = arch_of(state)
    if arch is None:
        return f"its encoder width is {w.shape[0]}"
    return f"its encoder width {w.shape[0]} matches {arch!r}"


class SamModel(PromptableModel):
    """A SAM ready for ``embed``/``predict`` (see :class:`~.base.PromptableModel`).

    Takes ownership of ``sam``: it is moved to ``device`` and its encoder attention switched
    to :class:`~.sam_encoder.LeanAttention` in place.
    """

    def __init__(self, spec: ModelSpec, sam, checkpoint_id: str, device) -> None:
        guard_triton()
        from segment_anything.utils.transforms import ResizeLongestSide

        super().__init__(spec, checkpoint_id, device)
        self.sam = sam.to(device).eval()
        use_lean_attention(self.sam.image_encoder)  # in place; same weights, same numbers
        install_cancel_hooks(self.sam.image_encoder)  # a cancel_scope stops it between blocks
        self.image_size = int(sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.image_size)
        self.decoder = FastMaskDecoder(self.sam)
        h, w = self.decoder.embed_hw
        self._low_res = (4 * h, 4 * w)

    @property
    def low_res_shape(self) -> tuple[int, int]:
        return self._low_res

    @torch.no_grad()  # not inference_mode: embeddings must stay usable by ordinary torch code
    def _embed_rgb(self, rgb: np.ndarray, zoom: float | None = None) -> Embedding:
        h, w = rgb.shape[:2]
        target = (self.transform.get_preprocess_shape(h, w, self.image_size) if zoom is None
                  else (int(h * zoom + 0.5), int(w * zoom + 0.5)))
        if min(target) < 1:
            raise ValueError(
                f"image of shape ({h}, {w}) is too elongated for the model's {self.image_size}-pixel "
                "input (its short side would shrink to 0 pixels); crop it into shorter pieces or pad it"
            )
        if zoom is None:
            resized = self.transform.apply_image(rgb)  # Meta's resize: identical model input
        else:  # the same resize to another size; the rest of the square input is padding
            from torchvision.transforms.functional import resize, to_pil_image

            resized = np.array(resize(to_pil_image(rgb), list(target)))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = tuple(int(v) for v in x.shape[-2:])
        feats = self.sam.image_encoder(self.sam.preprocess(x))
        return Embedding(
            model=self.name,
            checkpoint_id=self.checkpoint_id,
            preprocessing=self.preprocessing,
            original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            input_size=input_size,
            features={"image_embed": feats},
        )

    @staticmethod
    def _to_input(xy: np.ndarray, embedding: Embedding) -> np.ndarray:
        """``(N, 2)`` (x, y) image pixels -> the resized model input's (Meta's ``apply_coords``)."""
        (h, w), (h_in, w_in) = embedding.original_size, embedding.input_size
        xy = np.array(xy, np.float64)
        xy[..., 0] = xy[..., 0] * (w_in / w)
        xy[..., 1] = xy[..., 1] * (h_in / h)
        return xy

    def _sam_inputs(self, prompt: Prompt, embedding: Embedding):
        """Prompt in SAM's frame: (x, y) coordinates scaled to the resized model input."""
        dev = self.device
        points = box = mask = None
        if len(prompt.points):
            xy = self._to_input(prompt.points[:, ::-1], embedding)
            points = (
                torch.as_tensor(xy, dtype=torch.float, device=dev)[None],
                torch.as_tensor(prompt.labels, dtype=torch.int, device=dev)[None],
            )
        if prompt.box is not None:
            r0, c0, r1, c1 = prompt.box
            xyxy = self._to_input(np.array([[c0, r0], [c1, r1]]), embedding).reshape(1, 4)
            box = torch.as_tensor(xyxy, dtype=torch.float, device=dev)
        if prompt.mask_input is not None:
            mask = torch.as_tensor(prompt.mask_input, dtype=torch.float, device=dev)[None]
        return points, box, mask

    @torch.inference_mode()
    def _predict(self, embedding: Embedding, prompt: Prompt, multimask: bool) -> Prediction:
        feats = embedding.features["image_embed"]
        if feats.device != self.device:  # e.g. loaded from disk: move once, keep it there
            feats = embedding.features["image_embed"] = feats.to(self.device)
        points, box, mask = self._sam_inputs(prompt, embedding)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=box, masks=mask)
        if mask is None:
            key = "sam_decoder"
            cache = embedding.derived.get(key)
            if cache is None or cache["src"].device != self.device:
                cache = embedding.derived[key] = self.decoder.prepare(feats)
        else:
            cache = self.decoder.prepare(feats, dense)
        low, iou = self.decoder(cache, sparse, multimask)
        geometry = (embedding.input_size, embedding.original_size, self.image_size)

        def upscale(indices):  # full-resolution masks only when asked for, one by one if wanted
            with torch.inference_mode():
                return upscale_masks(low[list(indices)], *geometry)

        return Prediction(scores=iou.float().cpu().numpy(), logits=low.float().cpu().numpy(), upscale=upscale)


    @torch.inference_mode()
    def decode_points(self, embedding: Embedding, points, multimask: bool = True,
                      min_score: float | None = None, batch: int | None = None, mask_input=None):
        """Batched :meth:`~.base.PromptableModel.decode_points`: the transformer for ``batch``
        prompts at once (default :func:`~.sam_batch.cache_batch`: the per-prompt image-side
        tensors of a batch stay in the CPU's cache), the output upscaling only for prompts with a
        mask above ``min_score`` (with ``mask_input``: prompt by prompt)."""
        from napari_promptseg.models.batching import decode_in_batches, passing
        from napari_promptseg.models.sam.batch import (
            cache_batch,
            head_tokens,
            heads_batch,
            transformer_batch,
            upscale_batch,
        )

        if mask_input is not None:
            return super().decode_points(embedding, points, multimask, min_score, mask_input)
        self.check_embedding(embedding)
        feats = embedding.features["image_embed"]
        if feats.device != self.device:
            feats = embedding.features["image_embed"] = feats.to(self.device)
        cache = embedding.derived.get("sam_decoder")
        if cache is None or cache["src"].device != self.device:
            cache = embedding.derived["sam_decoder"] = self.decoder.prepare(feats)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        xy = self._to_input(pts[:, ::-1], embedding)
        final = head_tokens(self.decoder, multimask)

        def step(s: int, e: int):
            coords = torch.as_tensor(xy[s:e], dtype=torch.float, device=self.device)[:, None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            sparse, _ = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            out = self.decoder.output_tokens[None].expand(len(coords), -1, -1)
            queries, keys = transformer_batch(self.decoder, cache, torch.cat([out, sparse], dim=1), final)
            iou, hyper = heads_batch(self.decoder, queries, multimask)
            ok = passing(iou, min_score)
            rows = ok.any(dim=1).nonzero()[:, 0]
            if not len(rows):
                return iou, torch.zeros((0, 2), dtype=torch.long), iou.new_zeros((0, *self.low_res_shape))
            low = upscale_batch(self.decoder, keys[rows], hyper[rows])  # (b, K, h, w)
            pick = ok[rows].nonzero()  # (m, 2): row in rows, mask
            return iou, torch.stack([rows[pick[:, 0]], pick[:, 1]], dim=1), low[pick[:, 0], pick[:, 1]]

        return decode_in_batches(len(xy), int(batch) if batch else cache_batch(self.decoder), step,
                                 3 if multimask else 1, self.low_res_shape)


def build_sam_model(spec: ModelSpec, state: dict, checkpoint_id: str, device) -> SamModel:
    """Build ``spec``'s architecture, load ``state`` strictly, move to ``device``."""
    from napari_promptseg.models.weights import WeightsError

    if spec.arch not in SAM_ARCHS:
        raise ValueError(f"unknown SAM architecture {spec.arch!r}; known: {', '.join(SAM_ARCHS)}")
    sam = build_sam(spec.arch)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(
            f"checkpoint does not fit model {spec.name!r} (architecture {spec.arch}); "
            f"{_guess_arch(state)}. Details: {str(err)[:500]}"
        ) from err
    return SamModel(spec, sam, checkpoint_id, resolve_device(device))
