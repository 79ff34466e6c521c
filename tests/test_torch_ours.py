"""What only our PyTorch attention (impls/ours/torch.py) has: its dropout cores and the
Module. Both paths on every feature case, in every framework, are in tests/test_ours.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import B, LAYER_SPEC, TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, init_weights, oracle

require("torch")
import torch  # noqa: E402  (after the skip)

from attnsuite.impls.convert import torch as convert  # noqa: E402
from attnsuite.impls.ours import torch as ours  # noqa: E402

S = AttentionSpec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("core", [ours.explicit_attention, ours.fused_attention],
                         ids=["explicit", "fused"])
def test_dropout_drops_a_fraction_p_and_rescales_the_rest(core, dtype):
    # Q = K = 0 makes every weight 1/L_k; V = identity makes the output the weights.
    p, L_k, L_q = 0.3, 16, 64
    spec = S(16, 1, dropout=p)
    t = getattr(torch, dtype)
    q = torch.zeros(8, 1, L_q, 16, dtype=t)
    v = torch.eye(L_k, dtype=t).expand(8, 1, L_k, L_k)
    weights = core(spec, q, q[:, :, :L_k], v, dropout_rate=p, seed=0)
    dropped = (weights == 0).double().mean().item()
    # 8192 draws: the standard deviation of the fraction is 0.005; 0.05 is ten of them.
    assert abs(dropped - p) < 0.05, f"{core.__name__} {dtype}: dropped {dropped:.3f}, p = {p}"
    kept = weights[weights != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (L_k * (1 - p))),
                               msg=f"{core.__name__} {dtype}: kept weights not scaled by 1/(1-p)")


# The fused core fixes the rows without a key only where there can be such rows.
RULES = [S(4, 1, causal=c, window=w) for c in (None, "top_left", "bottom_right")
         for w in (None, (0, 0), (2, 0), (1, 2))]


@pytest.mark.parametrize("spec", RULES, ids=str)
@pytest.mark.parametrize("L_q, L_k", [(4, 4), (3, 6), (6, 3), (8, 2)])
def test_fused_core_looks_for_empty_rows_only_where_the_rules_can_leave_one(spec, L_q, L_k):
    structural = oracle.structural_mask(spec, L_q, L_k)
    q = torch.randn(1, 1, L_q, 4, dtype=torch.float64)
    k, v = torch.randn(1, 1, L_k, 4, dtype=torch.float64), torch.randn(1, 1, L_k, 4, dtype=torch.float64)
    out = ours.fused_attention(spec, q, k, v)
    assert torch.isfinite(out).all(), f"{spec} L_q={L_q} L_k={L_k}: NaN or inf"
    assert (out[0, 0, ~torch.from_numpy(structural.any(-1))] == 0).all(), "a row without keys is not zero"
    *_, has_key = ours._sdpa_masking(spec, L_q, L_k, None, None, q.device)
    if structural.any(-1).all():
        assert has_key is None, f"{spec} L_q={L_q} L_k={L_k}: looks for empty rows where none can be"
    else:
        np.testing.assert_array_equal(has_key.numpy()[..., 0], structural.any(-1))


# ---------------------------------------------------------------------------------------
# The Module.

@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_module_matches_oracle_and_exports_its_weights(fused):
    spec = LAYER_SPEC
    w = init_weights(spec, seed=7)
    a = make_inputs(spec, B, 4, 6, seed=7)
    module = ours.MultiHeadAttention.from_canonical(spec, w, fused=fused).eval()
    exported = module.to_canonical()
    assert list(exported) == list(w)
    for name in w:
        assert exported[name].dtype == np.float64, name
        np.testing.assert_array_equal(exported[name], w[name], err_msg=f"exported {name}")

    q, k, v = (torch.from_numpy(a[n]).requires_grad_(True) for n in ("query", "key", "value"))
    mask = torch.from_numpy(np.tril(np.ones((4, 6), bool), 1))
    out = module(q, k, v, mask=mask)
    out.backward(torch.from_numpy(a["d_out"]))

    want = oracle.forward(spec, w, a["query"], a["key"], a["value"], mask.numpy())
    want_grads = oracle.vjp(spec, w, a["query"], a["key"], a["value"], a["d_out"], mask.numpy())
    assert_close("module out", out.detach().numpy(), want, TOL["float64"])
    got_grads = {"query": q.grad, "key": k.grad, "value": v.grad}
    got_grads.update(convert.module_to_canonical(
        {name: p.grad for name, p in module.named_parameters()}))
    assert_grads_close("module", {n: g.numpy() for n, g in got_grads.items()}, want_grads,
                       TOL["float64"])


def test_module_self_attention_and_training_mode():
    spec = S(8, 2, dropout=0.5)
    module = ours.MultiHeadAttention.from_canonical(spec, init_weights(spec, seed=2))
    x = torch.from_numpy(make_inputs(spec, B, 5, seed=2)["query"])
    with torch.no_grad():
        module.eval()
        torch.testing.assert_close(module(x), module(x, x, x), rtol=0, atol=0)
        module.train()
        torch.testing.assert_close(module(x, seed=3), module(x, seed=3), rtol=0, atol=0)
        assert not torch.allclose(module(x, seed=3), module(x, seed=4))
