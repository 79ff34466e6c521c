"""Weight converters (impls/convert/torch.py): exact round trips, state dicts that real
layers accept, and layers loaded through them that compute what the oracle computes."""

import numpy as np
import pytest

from conftest import make_inputs, require
from attnsuite.impls import AttentionSpec, init_weights, oracle

require("torch")
import torch  # noqa: E402  (after the skip)
from torch import nn  # noqa: E402

from attnsuite.impls.convert import torch as convert  # noqa: E402
from attnsuite.impls.ours.torch import MultiHeadAttention  # noqa: E402

S = AttentionSpec
MHA_SPECS = {
    "packed": S(8, 2),
    "packed_no_bias": S(8, 4, bias=False),
    "separate": S(8, 2, kdim=5, vdim=3),
    "separate_no_bias": S(8, 2, kdim=8, vdim=3, bias=False),
}
MODULE_SPECS = {"plain": S(8, 2), "everything": S(8, 4, num_kv_heads=2, kdim=5, vdim=3, head_dim=3,
                                                  value_head_dim=5, out_dim=6),
                "no_bias": S(8, 2, bias=False)}


def mha_layer(spec, dtype=torch.float64):
    return nn.MultiheadAttention(spec.E, spec.H, bias=spec.bias, kdim=spec.E_k, vdim=spec.E_v,
                                 batch_first=True, dtype=dtype)


def assert_same_weights(got: dict, want: dict, where: str):
    assert list(got) == list(want), f"{where}: names {list(got)} != {list(want)}"
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]),
                                      err_msg=f"{where}: {name}")


@pytest.mark.parametrize("spec", MHA_SPECS.values(), ids=MHA_SPECS.keys())
def test_mha_round_trip_is_exact_through_a_real_layer(spec):
    w = init_weights(spec, seed=1)
    layer = mha_layer(spec)
    layer.load_state_dict(convert.canonical_to_mha(spec, w), strict=True)  # every key, right shape
    back = convert.to_numpy(convert.mha_to_canonical(spec, layer.state_dict()))
    assert_same_weights(back, w, f"{spec} canonical -> MHA -> canonical")


@pytest.mark.parametrize("spec", MODULE_SPECS.values(), ids=MODULE_SPECS.keys())
def test_module_round_trip_is_exact_through_a_real_module(spec):
    w = init_weights(spec, seed=2)
    module = MultiHeadAttention(spec, dtype=torch.float64)
    module.load_state_dict(convert.canonical_to_module(w), strict=True)
    back = convert.to_numpy(convert.module_to_canonical(module.state_dict()))
    assert_same_weights(back, w, f"{spec} canonical -> Module -> canonical")


@pytest.mark.parametrize("spec", MHA_SPECS.values(), ids=MHA_SPECS.keys())
def test_a_torch_initialised_layer_exports_what_it_computes(spec):
    """The layer -> canonical direction on its own: torch's weights, the oracle's math."""
    torch.manual_seed(0)
    layer = mha_layer(spec).eval()
    if spec.bias:  # torch initialises the biases to zero, which would hide a swap
        with torch.no_grad():
            layer.in_proj_bias.normal_()
            layer.out_proj.bias.normal_()
    a = make_inputs(spec, 2, 4, 6, seed=3)
    with torch.no_grad():
        out, _ = layer(*(torch.from_numpy(a[n]) for n in ("query", "key", "value")))
    w = convert.to_numpy(convert.mha_to_canonical(spec, layer.state_dict()))
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-10 * np.abs(want).max(),
                               err_msg=str(spec))


def test_a_layer_loaded_through_the_converter_matches_the_oracle():
    """As a user would do it: load the state dict, call the layer with its own mask."""
    spec = S(8, 2, kdim=5, vdim=3, causal="top_left")
    w = init_weights(spec, seed=4)
    layer = mha_layer(spec)
    layer.load_state_dict(convert.canonical_to_mha(spec, w))
    a = make_inputs(spec, 2, 5, seed=4)
    causal = oracle.structural_mask(spec, 5, 5)
    out, _ = layer(*(torch.from_numpy(a[n]) for n in ("query", "key", "value")),
                   attn_mask=torch.from_numpy(~causal))  # its boolean mask: True = NOT allowed
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_conversion_is_differentiable():
    spec = MHA_SPECS["separate"]
    params = {n: torch.from_numpy(w).requires_grad_(True) for n, w in init_weights(spec).items()}
    state = convert.canonical_to_mha(spec, params)
    sum(t.sum() for t in state.values()).backward()
    for name, p in params.items():  # every canonical entry lands in the state dict once
        torch.testing.assert_close(p.grad, torch.ones_like(p), msg=name)


@pytest.mark.parametrize("change, field", [({"num_kv_heads": 1}, "num_kv_heads"),
                                           ({"head_dim": 3}, "head_dim"),
                                           ({"value_head_dim": 2}, "value_head_dim"),
                                           ({"out_dim": 5}, "out_dim")])
def test_mha_cannot_hold_other_layouts(change, field):
    spec = S(8, 2, **change)
    with pytest.raises(ValueError, match=field):
        convert.canonical_to_mha(spec, init_weights(spec))
    assert any(field in p for p in convert.mha_layout_problems(spec))
