"""LeanAttention computes exactly what segment_anything's encoder Attention computes."""

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from napari_promptseg.models.sam.encoder import LeanAttention, use_lean_attention


@pytest.mark.parametrize("max_bytes", [1, 10_000, 2**30])  # one head per chunk .. all at once
@pytest.mark.parametrize("rel_pos", [True, False])
def test_bit_identical_to_official(max_bytes, rel_pos):
    torch.manual_seed(0)
    ref = Attention(48, num_heads=4, use_rel_pos=rel_pos, input_size=(6, 7))
    if rel_pos:
        torch.nn.init.normal_(ref.rel_pos_h)
        torch.nn.init.normal_(ref.rel_pos_w)
    lean = copy.deepcopy(ref)
    lean.__class__ = LeanAttention
    lean.max_bytes = max_bytes
    x = torch.randn(3, 6, 7, 48)
    with torch.inference_mode():
        assert torch.equal(lean(x), ref(x))


def test_switch_keeps_the_state_dict(tiny_ckpt):
    from napari_promptseg.models.sam.model import build_sam

    sam = build_sam("vit_tiny")
    keys = list(sam.state_dict())
    use_lean_attention(sam.image_encoder)
    assert list(sam.state_dict()) == keys
    kinds = {type(b.attn) for b in sam.image_encoder.blocks}
    assert kinds == {LeanAttention}
