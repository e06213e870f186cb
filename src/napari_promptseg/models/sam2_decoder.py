"""A faster forward pass of SAM 2's mask decoder, numerically equal to the official one.

SAM 2's ``MaskDecoder`` is SAM's two-way transformer plus three things: an object-score token
before the IoU token, the two high-resolution backbone maps added inside the output upscaling
(``act1(ln1(dc1(src) + feat_s1))``, ``act2(dc2(.) + feat_s0)``), and a single-mask output that
falls back to the most stable multimask output (``dynamic_multimask_via_stability``). The
transformer and the blocked channel-last upscaling are :class:`~.sam_decoder.FastMaskDecoder`'s;
the high-resolution maps are rearranged into that blocked layout once per embedding
(:meth:`Sam2FastDecoder.prepare_high_res`), so a prompt adds them with one addition each.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from .sam_decoder import FastMaskDecoder

__all__ = ["Sam2FastDecoder"]


class Sam2FastDecoder(FastMaskDecoder):
    """``net.sam_mask_decoder`` of a SAM 2 network ``net`` for one prompt, cached and re-associated."""

    def __init__(self, net) -> None:
        self.net = net
        super().__init__(SimpleNamespace(mask_decoder=net.sam_mask_decoder,
                                         prompt_encoder=net.sam_prompt_encoder))

    @torch.inference_mode()
    def refresh(self) -> None:
        super().refresh()
        dec = self.sam.mask_decoder
        self.s = 1 if dec.pred_obj_scores else 0
        if self.s:
            self.output_tokens = torch.cat([dec.obj_score_token.weight, self.output_tokens], dim=0)
        _, _, self.act1, _, self.act2 = dec.output_upscaling

    @torch.inference_mode()
    def prepare_high_res(self, f0: Tensor, f1: Tensor) -> dict[str, Tensor]:
        """``feat_s0`` (1, c2, 4h, 4w) and ``feat_s1`` (1, c1, 2h, 2w) in the blocked row order
        of :meth:`_upscale` ((i, j, a, b[, a2, b2]) for pixel (2i + a, 2j + b) ...)."""
        h, w = self.embed_hw
        s1 = f1[0].reshape(self.c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(-1, self.c1)
        s0 = f0[0].reshape(self.c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(-1, self.c2)
        return {"s0": s0.contiguous(), "s1": s1.contiguous()}

    @torch.inference_mode()
    def decode(self, cache: dict[str, Tensor], high_res: dict[str, Tensor], sparse: Tensor,
               multimask: bool) -> tuple[Tensor, Tensor]:
        """Low-resolution logits ``(K, 4h, 4w)`` and predicted IoU ``(K,)`` of one prompt, as
        ``sam_mask_decoder(..., repeat_image=False)`` returns them (K = 3 or 1)."""
        dec = self.sam.mask_decoder
        tokens = torch.cat([self.output_tokens, sparse[0]], dim=0)
        queries, keys = self.transformer(cache, tokens)
        s, n = self.s, dec.num_mask_tokens
        dynamic = not multimask and dec.dynamic_multimask_via_stability
        idx = range(1, n) if multimask else range(n) if dynamic else range(1)
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[s + 1 + i]) for i in idx], dim=1)
        iou = dec.iou_prediction_head(queries[s])
        low = self._upscale_high_res(keys, hyper, high_res)
        if multimask:
            return low, iou[1:]
        if dynamic:
            low, iou = dec._dynamic_multimask_via_stability(low[None], iou[None])
            return low[0], iou[0]
        return low, iou[:1]

    def _upscale_high_res(self, keys: Tensor, hyper: Tensor, hr: dict[str, Tensor]) -> Tensor:
        h, w = self.embed_hw
        y = torch.addmm(self.b1, keys, self.w1).reshape(-1, self.c1).add_(hr["s1"])
        ln = self.ln
        y = self.act1(torch.nn.functional.layer_norm(y, (self.c1,), ln.weight, ln.bias, ln.eps))
        y = torch.addmm(self.b2, y, self.w2).reshape(-1, self.c2).add_(hr["s0"])
        m = torch.mm(self.act2(y), hyper)
        k = hyper.shape[1]
        m = m.reshape(h, w, 2, 2, 2, 2, k).permute(6, 0, 2, 4, 1, 3, 5)
        return m.reshape(k, 4 * h, 4 * w)
