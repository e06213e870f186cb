"""A faster forward pass of SAM 2's mask decoder, numerically equal to the official one.

SAM 2's ``MaskDecoder`` is SAM's two-way transformer plus three things: an object-score token
before the IoU token, the two high-resolution backbone maps added inside the output upscaling
(``act1(ln1(dc1(src) + feat_s1))``, ``act2(dc2(.) + feat_s0)``), and a single-mask output that
falls back to the most stable multimask output (``dynamic_multimask_via_stability``). The
transformer and the blocked channel-last upscaling are :class:`~.sam_decoder.FastMaskDecoder`'s;
the high-resolution maps are rearranged into that blocked layout once per embedding
(:meth:`Sam2FastDecoder.prepare_high_res`), so a prompt adds them with one addition each.
:meth:`Sam2FastDecoder.decode_batch` decodes many prompts at once (segment everything) on
:func:`~.sam_batch.transformer_batch`, upscaling only prompts with a mask above a score.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from napari_promptseg.models.sam.decoder import FastMaskDecoder

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

    @torch.inference_mode()
    def decode_batch(self, cache: dict[str, Tensor], high_res: dict[str, Tensor], sparse: Tensor,
                     multimask: bool, min_score: float | None = None,
                     src: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`decode` for ``B`` prompts: sparse ``(B, N, C)``. Returns the predicted IoUs
        ``(B, K)``, ``keep`` ``(M, 2)`` (prompt, mask) pairs scored > ``min_score`` (all: None) and
        their logits ``(M, 4h, 4w)``; the output upscaling runs only for prompts in ``keep``
        (all of them for the dynamic single mask, whose choice needs the logits). src: ``(B, hw,
        C)`` image plus each prompt's dense mask embedding, for mask prompts (then ``cache`` is
        not read)."""
        from napari_promptseg.models.batching import passing
        from napari_promptseg.models.sam.batch import transformer_batch

        dec = self.sam.mask_decoder
        B = sparse.shape[0]
        tokens = torch.cat([self.output_tokens[None].expand(B, -1, -1), sparse], dim=1)
        s, n = self.s, dec.num_mask_tokens
        dynamic = not multimask and dec.dynamic_multimask_via_stability
        idx = range(1, n) if multimask else range(n) if dynamic else range(1)
        # the heads read the IoU token and the masks' tokens: the last attention runs for these only
        queries, keys = transformer_batch(self, cache, tokens, [s, *(s + 1 + i for i in idx)], src)
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + j]) for j, i in enumerate(idx)],
                            dim=2)
        iou = dec.iou_prediction_head(queries[:, 0])  # (B, n)
        if dynamic:
            low, iou = dec._dynamic_multimask_via_stability(
                self._upscale_high_res_batch(keys, hyper, high_res), iou)
            keep = passing(iou, min_score).nonzero()
            return iou, keep, low[keep[:, 0], keep[:, 1]]
        iou = iou[:, 1:] if multimask else iou[:, :1]
        ok = passing(iou, min_score)
        rows = ok.any(dim=1).nonzero()[:, 0]
        if len(rows) == 0:
            return iou, torch.zeros((0, 2), dtype=torch.long), keys.new_zeros((0, 4 * self.embed_hw[0],
                                                                                 4 * self.embed_hw[1]))
        low = self._upscale_high_res_batch(keys[rows], hyper[rows], high_res)  # (b, K, 4h, 4w)
        pick = ok[rows].nonzero()
        return iou, torch.stack([rows[pick[:, 0]], pick[:, 1]], dim=1), low[pick[:, 0], pick[:, 1]]

    def _upscale_high_res_batch(self, keys: Tensor, hyper: Tensor, hr: dict[str, Tensor]) -> Tensor:
        """:meth:`_upscale_high_res` for keys ``(B, hw, C)``, hyper ``(B, c2, K)``: ``(B, K, 4h, 4w)``."""
        h, w = self.embed_hw
        B, k = keys.shape[0], hyper.shape[2]
        y = torch.addmm(self.b1, keys.reshape(-1, keys.shape[-1]), self.w1).reshape(B, -1, self.c1)
        y = y.add_(hr["s1"])
        ln = self.ln
        y = self.act1(torch.nn.functional.layer_norm(y, (self.c1,), ln.weight, ln.bias, ln.eps))
        y = torch.addmm(self.b2, y.reshape(-1, self.c1), self.w2).reshape(B, -1, self.c2).add_(hr["s0"])
        m = torch.bmm(self.act2(y), hyper)  # (B, hw*16, K)
        m = m.reshape(B, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(B, k, 4 * h, 4 * w)

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
