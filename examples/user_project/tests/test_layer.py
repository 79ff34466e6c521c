"""The project's own unit test; the conformance tests come from the attnsuite plugin."""

import torch

from myattention import MultiHeadAttention


def test_output_shape():
    layer = MultiHeadAttention(d_model=16, heads=4, kv_heads=2)
    x = torch.randn(2, 5, 16)
    assert layer(x, x, x).shape == (2, 5, 16)
