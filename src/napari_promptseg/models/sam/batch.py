"""SAM's mask decoder for a batch of prompts at once (segment everything), on FastMaskDecoder.

The same computation as :class:`~.sam_decoder.FastMaskDecoder` (cached first block, re-associated
token/image attention, blocked output upscaling) with a leading batch axis: ``B`` prompts of ``T``
tokens each share the image side. Split in two steps so that a caller can drop prompts by their
predicted IoU before paying for the output upscaling (most of the cost per mask):

>>> final = head_tokens(dec, multimask=True)                   # the tokens the heads read
>>> queries, keys = transformer_batch(dec, cache, tokens, final)  # (B, len(final), C), (B, hw, C)
>>> iou, hyper = heads_batch(dec, queries, multimask=True)     # (B, K), (B, c2, K)
>>> low = upscale_batch(dec, keys[sel], hyper[sel])            # (b, K, 4h, 4w) logits
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_promptseg.models.sam.decoder import FastMaskDecoder

__all__ = ["transformer_batch", "heads_batch", "head_tokens", "upscale_batch", "cache_batch"]

#: bytes of one ``(B, hw, C)`` float tensor that a batch aims at: the transformer makes about ten
#: of them per layer, and they stay in the CPU's cache between its steps. Measured on 2 cores
#: (2 MB L2 each): the shipped model's transformer takes 1.7x as long with batches of 32 prompts
#: (16 MB tensors) as with 8 (4 MB), ViT-B's 1.6x with 32 as with 2 (8 MB)
CACHE_BYTES = 4 << 20


def cache_batch(dec: FastMaskDecoder) -> int:
    """Prompts per batch: as many as keep one ``(B, hw, C)`` tensor within :data:`CACHE_BYTES`,
    at least 2 (the shipped model: 8; ViT-B, 4096 x 256 per prompt: 2)."""
    h, w = dec.embed_hw
    per_prompt = h * w * dec.pe.shape[1] * dec.pe.element_size()
    return max(2, CACHE_BYTES // per_prompt)


def _bheads(x: Tensor, n: int) -> Tensor:
    """``(B, N, n*d) -> (B, n, N, d)``."""
    return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def _tok_to_img(attn, q_in: Tensor, img_k: Tensor, img_v: Tensor) -> Tensor:
    """Tokens (B, T, C) attend to per-prompt image keys/values (B, hw, C); returns (B, T, C)."""
    n = attn.num_heads
    B, T, _ = q_in.shape
    q = _bheads(F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias), n)  # (B, n, T, d)
    d = q.shape[-1]
    wk = attn.k_proj.weight.reshape(n, d, -1)  # (n, d, C)
    a = torch.matmul(q, wk).reshape(B, n * T, -1)  # (B, n*T, C)
    scores = torch.bmm(a, img_k.transpose(1, 2)).mul_(1.0 / math.sqrt(d))  # (B, n*T, hw)
    p = torch.softmax(scores, dim=-1)
    g = torch.bmm(p, img_v).reshape(B, n, T, -1)  # (B, n, T, C)
    wv = attn.v_proj.weight.reshape(n, d, -1)
    out = torch.matmul(g, wv.transpose(1, 2)) + attn.v_proj.bias.reshape(n, 1, d)  # (B, n, T, d)
    out = out.transpose(1, 2).reshape(B, T, -1)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _img_to_tok_out(attn, scores: Tensor, n: int, d: int, v_tok: Tensor) -> Tensor:
    """Image-to-token attention output (B, hw, C) from raw scores (B, n*T, hw)."""
    B, nT, hw = scores.shape
    s = scores.mul_(1.0 / math.sqrt(d)).reshape(B, n, nT // n, hw)
    p_t = torch.softmax(s, dim=2).reshape(B, nT, hw)
    v = _bheads(F.linear(v_tok, attn.v_proj.weight, attn.v_proj.bias), n)  # (B, n, T, d)
    wo = attn.out_proj.weight.reshape(attn.out_proj.weight.shape[0], n, -1)  # (C, n, d)
    vals = torch.matmul(v, wo.permute(1, 2, 0)).reshape(B, nT, -1)  # (B, n*T, C)
    return torch.baddbmm(attn.out_proj.bias, p_t.transpose(1, 2), vals)


def _img_to_tok(attn, img_k: Tensor, q_tok: Tensor, v_tok: Tensor) -> Tensor:
    """The image (per-prompt keys + pe, (B, hw, C)) attends to the tokens; returns (B, hw, C)."""
    n = attn.num_heads
    B, T, _ = q_tok.shape
    k = _bheads(F.linear(q_tok, attn.k_proj.weight, attn.k_proj.bias), n)  # (B, n, T, d)
    d = k.shape[-1]
    wq = attn.q_proj.weight.reshape(n, d, -1)  # (n, d, C)
    b = torch.matmul(k, wq).reshape(B, n * T, -1)  # (B, n*T, C)
    c = torch.matmul(k, attn.q_proj.bias.reshape(n, d, 1)).reshape(B, n * T, 1)
    return _img_to_tok_out(attn, torch.baddbmm(c, b, img_k.transpose(1, 2)), n, d, v_tok)


def _img_to_tok_cached(attn, q_heads: Tensor, q_tok: Tensor, v_tok: Tensor) -> Tensor:
    """As :func:`_img_to_tok` with the shared projected image queries ``q_heads`` (n, d, hw)."""
    n = attn.num_heads
    B, T, _ = q_tok.shape
    k = _bheads(F.linear(q_tok, attn.k_proj.weight, attn.k_proj.bias), n)  # (B, n, T, d)
    scores = torch.matmul(k, q_heads[None])  # (B, n, T, hw)
    return _img_to_tok_out(attn, scores.reshape(B, n * T, -1), n, k.shape[-1], v_tok)


@torch.inference_mode()
def transformer_batch(dec: FastMaskDecoder, cache: dict[str, Tensor] | None, tokens: Tensor,
                      final: list[int] | None = None, src: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The two-way transformer for ``B`` prompts: tokens (B, T, C) and the cached image side of
    :meth:`FastMaskDecoder.prepare`; returns queries (B, T, C) and keys (B, hw, C).

    final: the tokens whose queries are wanted (:func:`head_tokens`); the last attention is a
    per-token map, so it runs for these only and queries are ``(B, len(final), C)``.
    src: ``(B, hw, C)`` image side of each prompt (the image plus its mask prompt's dense
    embedding) instead of the cache (mask prompts: no projection is shared)."""
    tr = dec.sam.mask_decoder.transformer
    pe = dec.pe
    B, T, C = tokens.shape
    l0 = tr.layers[0]
    queries = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
    if src is None:
        flat = dec._tok_to_img_cached(l0.cross_attn_token_to_image, (queries + tokens).reshape(B * T, C),
                                      cache["k"], cache["v"])
        queries = l0.norm2(queries + flat.reshape(B, T, C))
    else:
        kin = src + pe
        queries = l0.norm2(queries + _tok_to_img(l0.cross_attn_token_to_image, queries + tokens, kin, src))
    queries = l0.norm3(queries + l0.mlp(queries))
    if src is None:
        attn = _img_to_tok_cached(l0.cross_attn_image_to_token, cache["q"], queries + tokens, queries)
        keys = l0.norm4(attn.add_(cache["src"]))
    else:
        keys = l0.norm4(src + _img_to_tok(l0.cross_attn_image_to_token, kin, queries + tokens, queries))
    for layer in tr.layers[1:]:
        q = queries + tokens
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        kin = keys + pe
        queries = layer.norm2(queries + _tok_to_img(layer.cross_attn_token_to_image, queries + tokens,
                                                    kin, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _img_to_tok(layer.cross_attn_image_to_token, kin, queries + tokens,
                                              queries))
    if final is not None:
        queries, tokens = queries[:, final], tokens[:, final]
    queries = tr.norm_final_attn(queries + _tok_to_img(tr.final_attn_token_to_image, queries + tokens,
                                                       keys + pe, keys))
    return queries, keys


def head_tokens(dec: FastMaskDecoder, multimask: bool) -> list[int]:
    """The output tokens :func:`heads_batch` reads: the IoU token, then the returned masks' ones."""
    n = dec.sam.mask_decoder.num_mask_tokens
    return [0, *(1 + i for i in (range(1, n) if multimask else range(1)))]


@torch.inference_mode()
def heads_batch(dec: FastMaskDecoder, queries: Tensor, multimask: bool) -> tuple[Tensor, Tensor]:
    """Predicted IoU (B, K) and hypernetwork outputs (B, c2, K) from the queries of the
    :func:`head_tokens` (B, 1 + K, C)."""
    md = dec.sam.mask_decoder
    sel = slice(1, md.num_mask_tokens) if multimask else slice(0, 1)
    idx = range(md.num_mask_tokens)[sel]
    hyper = torch.stack([md.output_hypernetworks_mlps[i](queries[:, 1 + j]) for j, i in enumerate(idx)],
                        dim=2)
    iou = md.iou_prediction_head(queries[:, 0])[:, sel]
    return iou, hyper


@torch.inference_mode()
def upscale_batch(dec: FastMaskDecoder, keys: Tensor, hyper: Tensor) -> Tensor:
    """Output upscaling + hypernetwork product: keys (B, hw, C), hyper (B, c2, K) ->
    low-resolution logits (B, K, 4h, 4w)."""
    h, w = dec.embed_hw
    B = keys.shape[0]
    y = torch.addmm(dec.b1, keys.reshape(-1, keys.shape[-1]), dec.w1).reshape(-1, dec.c1)
    y = F.gelu(F.layer_norm(y, (dec.c1,), dec.ln.weight, dec.ln.bias, dec.ln.eps))  # (B*hw*4, c1)
    y = F.gelu(torch.addmm(dec.b2, y, dec.w2)).reshape(B, -1, dec.c2)  # (B, hw*16, c2)
    m = torch.bmm(y, hyper)  # (B, hw*16, K), rows ordered (i, j, a, b, a2, b2)
    k = hyper.shape[2]
    m = m.reshape(B, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return m.reshape(B, k, 4 * h, 4 * w)
