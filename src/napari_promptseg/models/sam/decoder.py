"""A faster forward pass of SAM's mask decoder, numerically equal to the official one.

Same weights, same mathematics as ``segment_anything.modeling.MaskDecoder``; three changes
make a decode on a CPU ~2x cheaper (see docs/benchmarks.md):

1. Prompt-independent work is done once per embedding: in the first two-way block the image
   side is ``image embedding + no-mask embedding``, so its key/value/query projections are
   cached (:meth:`FastMaskDecoder.prepare`).
2. Attention between the few prompt tokens (T ~ 7) and the 4096 image tokens is re-associated
   so that no 4096 x 256 x 128 projection runs per prompt: ``softmax(q (X Wk)^T) (X Wv)`` becomes
   ``softmax((q Wk) X^T) X Wv`` and the output projection is folded into the token values.
   Adding ``q . bk`` to every score of a row does not change its softmax, so it is dropped.
3. The output upscaling (two stride-2 transposed convolutions with LayerNorm and GELU) runs as
   two channel-last matrix products in a blocked layout; only the returned masks' hypernetwork
   rows are evaluated, and pixels are shuffled once, at the end.

All tensors here are batch-free: tokens ``(T, C)``, image ``(h*w, C)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FastMaskDecoder"]


def _heads(x: Tensor, n: int) -> Tensor:
    """``(N, n*d) -> (n, N, d)``."""
    return x.reshape(x.shape[0], n, -1).transpose(0, 1)


class FastMaskDecoder:
    """Evaluate ``sam.mask_decoder`` for one prompt with caching and re-association.

    ``sam`` is a ``segment_anything.modeling.Sam``; its weights are read, never copied, so the
    decoder follows later ``load_state_dict`` calls only if :meth:`refresh` is called.
    """

    def __init__(self, sam) -> None:
        self.sam = sam
        self.refresh()

    @torch.inference_mode()
    def refresh(self) -> None:
        """Recompute the prompt-independent tensors derived from the weights."""
        dec = self.sam.mask_decoder
        pe = self.sam.prompt_encoder.get_dense_pe()  # (1, C, h, w)
        self.embed_hw = tuple(pe.shape[-2:])
        self.pe = pe.flatten(2)[0].transpose(0, 1).contiguous()  # (hw, C)
        self.no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1)  # (1, C)
        self.output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        up1, ln, _, up2, _ = dec.output_upscaling
        c_in, c1 = up1.weight.shape[:2]
        c2 = up2.weight.shape[1]
        # ConvTranspose2d(k=2, s=2) == per-pixel linear map to a 2x2 block: columns (a, b, c).
        self.w1 = up1.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c1).contiguous()
        self.b1 = up1.bias.repeat(4)
        self.w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2).contiguous()
        self.b2 = up2.bias.repeat(4)
        self.ln = ln
        self.c1, self.c2 = c1, c2

    # -- attention pieces ------------------------------------------------------------------
    @staticmethod
    def _tok_to_img(attn, q_in: Tensor, img_k: Tensor, img_v: Tensor) -> Tensor:
        """Tokens attend to the image; ``img_k = keys + pe`` and ``img_v = keys``, (hw, C)."""
        n = attn.num_heads
        q = _heads(F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias), n)  # (n, T, d)
        d = q.shape[-1]
        wk = attn.k_proj.weight.reshape(n, d, -1)  # (n, d, C)
        a = torch.bmm(q, wk).reshape(-1, wk.shape[-1])  # (n*T, C)
        scores = torch.mm(a, img_k.t()).mul_(1.0 / math.sqrt(d))  # (n*T, hw)
        p = torch.softmax(scores, dim=-1)
        g = torch.mm(p, img_v).reshape(n, -1, wk.shape[-1])  # (n, T, C)
        wv = attn.v_proj.weight.reshape(n, d, -1)
        out = torch.bmm(g, wv.transpose(1, 2)) + attn.v_proj.bias.reshape(n, 1, d)  # (n, T, d)
        out = out.transpose(0, 1).reshape(q_in.shape[0], -1)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    @staticmethod
    def _tok_to_img_cached(attn, q_in: Tensor, k_heads: Tensor, v_heads: Tensor) -> Tensor:
        """As :meth:`_tok_to_img` with projected keys ``(n, d, hw)`` and values ``(n, hw, d)``."""
        n = attn.num_heads
        q = _heads(F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias), n)
        scores = torch.bmm(q, k_heads).mul_(1.0 / math.sqrt(q.shape[-1]))
        out = torch.bmm(torch.softmax(scores, dim=-1), v_heads)
        out = out.transpose(0, 1).reshape(q_in.shape[0], -1)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    @staticmethod
    def _img_to_tok_values(attn, tokens: Tensor) -> Tensor:
        """Token values with the output projection folded in: ``(n*T, C)``."""
        n = attn.num_heads
        v = _heads(F.linear(tokens, attn.v_proj.weight, attn.v_proj.bias), n)  # (n, T, d)
        wo = attn.out_proj.weight.reshape(attn.out_proj.weight.shape[0], n, -1)  # (C, n, d)
        return torch.bmm(v, wo.permute(1, 2, 0)).reshape(-1, wo.shape[0])

    def _img_to_tok_out(self, attn, scores_t: Tensor, n: int, d: int, v_tok: Tensor) -> Tensor:
        """Attention output (hw, C) from raw scores ``(n*T, hw)``: softmax over each head's
        tokens, taken with the image axis last (which vectorises; a softmax over a last axis
        of ~7 tokens is slow), then the folded token values."""
        s = scores_t.mul_(1.0 / math.sqrt(d)).reshape(n, -1, scores_t.shape[-1])
        p_t = torch.softmax(s, dim=1).reshape(scores_t.shape)
        return torch.addmm(attn.out_proj.bias, p_t.t(), self._img_to_tok_values(attn, v_tok))

    def _img_to_tok(self, attn, img_k: Tensor, q_tok: Tensor, v_tok: Tensor) -> Tensor:
        """The image attends to the tokens; ``img_k = keys + pe`` (hw, C); returns (hw, C)."""
        n = attn.num_heads
        k = _heads(F.linear(q_tok, attn.k_proj.weight, attn.k_proj.bias), n)  # (n, T, d)
        d = k.shape[-1]
        wq = attn.q_proj.weight.reshape(n, d, -1)  # (n, d, C)
        b = torch.bmm(wq.transpose(1, 2), k.transpose(1, 2))  # (n, C, T)
        b = b.permute(1, 0, 2).reshape(wq.shape[-1], -1)  # (C, n*T)
        c = torch.bmm(k, attn.q_proj.bias.reshape(n, d, 1)).reshape(-1, 1)  # (n*T, 1)
        return self._img_to_tok_out(attn, torch.addmm(c, b.t(), img_k.t()), n, d, v_tok)

    def _img_to_tok_cached(self, attn, q_heads: Tensor, q_tok: Tensor, v_tok: Tensor) -> Tensor:
        """As :meth:`_img_to_tok` with projected image queries ``q_heads`` (n, d, hw)."""
        n = attn.num_heads
        k = _heads(F.linear(q_tok, attn.k_proj.weight, attn.k_proj.bias), n)  # (n, T, d)
        scores_t = torch.bmm(k, q_heads).reshape(-1, q_heads.shape[-1])  # (n*T, hw)
        return self._img_to_tok_out(attn, scores_t, n, k.shape[-1], v_tok)

    # -- public ----------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, features: Tensor, dense: Tensor | None = None) -> dict[str, Tensor]:
        """Prompt-independent tensors of the first block for ``features`` (1, C, h, w).

        ``dense`` is the prompt encoder's dense embedding (1, C, h, w) for a mask prompt, or
        None for the no-mask embedding (then the result can be cached per image).
        """
        layer = self.sam.mask_decoder.transformer.layers[0]
        src = features.flatten(2)[0].transpose(0, 1)  # (hw, C)
        src = src + (self.no_mask if dense is None else dense.flatten(2)[0].transpose(0, 1))
        src = src.contiguous()
        kin = src + self.pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        n = t2i.num_heads
        k = F.linear(kin, t2i.k_proj.weight, t2i.k_proj.bias)
        v = F.linear(src, t2i.v_proj.weight, t2i.v_proj.bias)
        q = F.linear(kin, i2t.q_proj.weight, i2t.q_proj.bias)
        return {
            "src": src,
            "k": _heads(k, n).transpose(1, 2).contiguous(),  # (n, d, hw)
            "v": _heads(v, n).contiguous(),  # (n, hw, d)
            "q": _heads(q, i2t.num_heads).transpose(1, 2).contiguous(),  # (n, d, hw)
        }

    @torch.inference_mode()
    def __call__(
        self, cache: dict[str, Tensor], sparse: Tensor, multimask: bool
    ) -> tuple[Tensor, Tensor]:
        """Decode one prompt.

        cache: :meth:`prepare`'s output; sparse: the prompt encoder's sparse embedding
        (1, N, C). Returns low-resolution mask logits ``(K, 4h, 4w)`` and predicted IoU ``(K,)``
        with K = 3 (multimask) or 1, exactly the masks the official decoder returns.
        """
        dec = self.sam.mask_decoder
        tokens = torch.cat([self.output_tokens, sparse[0]], dim=0)  # (T, C)
        queries, keys = self.transformer(cache, tokens)
        sel = slice(1, dec.num_mask_tokens) if multimask else slice(0, 1)
        idx = range(dec.num_mask_tokens)[sel]
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](queries[1 + i]) for i in idx], dim=1
        )  # (c2, K)
        iou = dec.iou_prediction_head(queries[0])[sel]
        return self._upscale(keys, hyper), iou

    def transformer(self, cache: dict[str, Tensor], tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The two-way transformer on ``tokens`` (T, C) and the cached image side: returns the
        output queries (T, C) and keys (hw, C)."""
        tr = self.sam.mask_decoder.transformer
        pe = self.pe

        # Block 0 (no PE in its self-attention; image side cached).
        l0 = tr.layers[0]
        queries = l0.norm1(l0.self_attn(q=tokens[None], k=tokens[None], v=tokens[None])[0])
        queries = l0.norm2(queries + self._tok_to_img_cached(
            l0.cross_attn_token_to_image, queries + tokens, cache["k"], cache["v"]))
        queries = l0.norm3(queries + l0.mlp(queries))
        attn = self._img_to_tok_cached(
            l0.cross_attn_image_to_token, cache["q"], queries + tokens, queries)
        keys = l0.norm4(cache["src"] + attn)

        for layer in tr.layers[1:]:
            q = (queries + tokens)[None]
            queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries[None])[0])
            kin = keys + pe
            queries = layer.norm2(queries + self._tok_to_img(
                layer.cross_attn_token_to_image, queries + tokens, kin, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + self._img_to_tok(
                layer.cross_attn_image_to_token, kin, queries + tokens, queries))

        queries = tr.norm_final_attn(queries + self._tok_to_img(
            tr.final_attn_token_to_image, queries + tokens, keys + pe, keys))
        return queries, keys

    def _upscale(self, keys: Tensor, hyper: Tensor) -> Tensor:
        """Output upscaling + hypernetwork product: keys (hw, C), hyper (c2, K) -> (K, 4h, 4w)."""
        h, w = self.embed_hw
        y = torch.addmm(self.b1, keys, self.w1).reshape(-1, self.c1)  # (hw*4, c1)
        y = F.gelu(F.layer_norm(y, (self.c1,), self.ln.weight, self.ln.bias, self.ln.eps))
        y = F.gelu(torch.addmm(self.b2, y, self.w2)).reshape(-1, self.c2)  # (hw*16, c2)
        m = torch.mm(y, hyper)  # (hw*16, K), rows ordered (i, j, a, b, a2, b2)
        k = hyper.shape[1]
        m = m.reshape(h, w, 2, 2, 2, 2, k).permute(6, 0, 2, 4, 1, 3, 5)
        return m.reshape(k, 4 * h, 4 * w)
