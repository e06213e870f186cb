"""SAM's image-encoder attention with fewer and smaller temporaries; bit-identical results.

The official ``Attention.forward`` builds the attention matrix (for a global block of vit_b at
1024²: 12 heads x 4096 x 4096 floats = 805 MB), then adds the decomposed relative positions
out of place twice and takes an out-of-place softmax: four such tensors are allocated and
page-faulted per block. :class:`LeanAttention` does the same arithmetic in the same order,
in place, in chunks of heads bounded by ``max_bytes``: on a 2-core CPU vit_b's ``embed`` is
~1.5-1.9x faster than ``SamPredictor.set_image`` and its process peaks at 1.8 GB instead of 3.6 GB
(docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from napari_promptseg.models.triton_guard import guard_triton

guard_triton()  # segment_anything -> torchvision -> torch._dynamo -> triton: see triton_guard
from segment_anything.modeling.image_encoder import Attention, get_rel_pos  # noqa: E402

__all__ = ["LeanAttention", "use_lean_attention"]

#: upper bound of one chunk's attention matrix
MAX_ATTN_BYTES = 256 * 2**20


def _softmax_(attn: torch.Tensor) -> torch.Tensor:
    """Row softmax, in place where the backend allows it (same kernel, same numbers)."""
    if attn.device.type == "cpu":
        try:
            return torch.ops.aten._softmax.out(attn, -1, False, out=attn)
        except RuntimeError:  # a future PyTorch refusing aliased out=
            pass
    return attn.softmax(dim=-1)


class LeanAttention(Attention):
    """Drop-in for ``segment_anything``'s encoder ``Attention`` (same parameters and state dict)."""

    max_bytes: int = MAX_ATTN_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        if self.use_rel_pos:
            rh = get_rel_pos(H, H, self.rel_pos_h)
            rw = get_rel_pos(W, W, self.rel_pos_w)
        n = (H * W) ** 2 * q.element_size()
        step = max(1, self.max_bytes // n)
        outs = []
        for s in range(0, q.shape[0], step):
            qs = q[s : s + step]
            attn = (qs * self.scale) @ k[s : s + step].transpose(-2, -1)
            if self.use_rel_pos:
                r_q = qs.reshape(qs.shape[0], H, W, -1)
                rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
                rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
                a5 = attn.view(qs.shape[0], H, W, H, W)
                a5.add_(rel_h[:, :, :, :, None]).add_(rel_w[:, :, :, None, :])
            outs.append(_softmax_(attn) @ v[s : s + step])
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        x = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def use_lean_attention(image_encoder) -> None:
    """Switch every attention module of a SAM ``ImageEncoderViT`` to :class:`LeanAttention`."""
    for module in image_encoder.modules():
        if type(module) is Attention:
            module.__class__ = LeanAttention
