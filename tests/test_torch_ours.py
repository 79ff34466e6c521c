"""Our PyTorch attention (impls/ours/torch.py), both paths, against the float64 oracle:
forward and every gradient, on every feature of the spec, in float64 and float32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_inputs, require
from impls import AttentionSpec, init_weights, oracle

tb = require("torch")
import torch  # noqa: E402  (after the skip)

from impls.convert import torch as convert  # noqa: E402
from impls.ours import torch as ours  # noqa: E402

# Bound on max|got - oracle| relative to max|oracle| of the same tensor. float64 must be
# float64-accurate: a path that leaks float32 (errors near 1e-7) fails.
TOL = {"float64": 1e-10, "float32": 1e-4}
# Gradients that are zero in the math (softmax cancels the key bias) are judged against
# the scale of a sibling gradient instead of their own (which is rounding noise).
SCALE_OF = {"bk": "wk"}
PATHS = {"explicit": ours.explicit, "fused": ours.fused}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    spec: AttentionSpec
    L_q: int = 5
    L_k: int = 5
    mask: str | None = None      # None | "rank2" | "rank4" (each with an empty query row)
    bias: str | None = None      # None | "rank2" | "rank4"


S = AttentionSpec
CASES = [
    Case("plain", S(8, 2)),
    Case("gqa", S(8, 4, num_kv_heads=2)),
    Case("mqa", S(8, 4, num_kv_heads=1), 4, 6),
    Case("cross_kdim_vdim", S(8, 2, kdim=5, vdim=7), 4, 6),
    Case("head_sizes_out_dim", S(8, 2, head_dim=3, value_head_dim=5, out_dim=6)),
    Case("no_bias", S(8, 2, bias=False), mask="rank2"),
    Case("custom_scale", S(8, 2, scale=0.9)),
    Case("top_left_long_query", S(8, 2, causal="top_left"), 6, 4),
    Case("top_left_long_key", S(8, 2, causal="top_left"), 4, 6),
    Case("bottom_right_long_query", S(8, 2, causal="bottom_right"), 6, 4),  # 2 empty rows
    Case("bottom_right_long_key", S(8, 2, causal="bottom_right"), 4, 6),
    Case("window", S(8, 2, window=(1, 2))),
    Case("window_bottom_right", S(8, 2, causal="bottom_right", window=(2, 0)), 4, 6),
    Case("top_left_with_mask", S(8, 2, causal="top_left"), mask="rank4"),
    Case("softcap", S(8, 2, softcap=1.0)),
    Case("softcap_before_bias_and_mask", S(8, 2, softcap=1.0), mask="rank2", bias="rank4"),
    Case("bias_rank2", S(8, 2), bias="rank2"),
    Case("bias_rank4", S(8, 4, num_kv_heads=2), 4, 6, bias="rank4"),
    Case("mask_rank2", S(8, 2), 4, 6, mask="rank2"),
    Case("mask_rank4", S(8, 4, num_kv_heads=1), mask="rank4"),
    Case("everything", S(12, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=4, value_head_dim=2,
                         out_dim=9, scale=0.5, causal="bottom_right", window=(2, 1), softcap=2.0),
         6, 5, mask="rank4", bias="rank2"),
    Case("everything_but_softcap", S(12, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                                     value_head_dim=2, out_dim=9, scale=0.5, causal="top_left",
                                     window=(3, 0)),
         6, 5, mask="rank4", bias="rank4"),
]

B = 2


def case_arrays(case: Case) -> dict:
    """Inputs, weights, and the mask/bias of ``case`` (seeded by its position)."""
    seed = CASES.index(case)
    rng = np.random.default_rng(100 + seed)
    arrays = make_inputs(case.spec, B, case.L_q, case.L_k, seed=seed)
    arrays["weights"] = init_weights(case.spec, seed=seed)
    H, L_q, L_k = case.spec.H, case.L_q, case.L_k
    arrays["mask"] = None
    if case.mask == "rank2":
        arrays["mask"] = rng.random((L_q, L_k)) > 0.3
        arrays["mask"][1] = False                   # query row 1 sees nothing, in every head
    elif case.mask == "rank4":
        arrays["mask"] = rng.random((B, H, L_q, L_k)) > 0.3
        arrays["mask"][0, :, 1] = False             # row 1 of batch 0, in every head
        arrays["mask"][1, H - 1, 2] = False         # row 2 of batch 1, in one head only
    arrays["bias"] = None
    if case.bias == "rank2":
        arrays["bias"] = rng.standard_normal((L_q, L_k))
    elif case.bias == "rank4":
        arrays["bias"] = rng.standard_normal((1, H, L_q, L_k))
    return arrays


def assert_close(what: str, got: np.ndarray, want: np.ndarray, tol: float, scale: float) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{what}: non-finite {got[bad][0]} at {tuple(np.argwhere(bad)[0])}"
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= tol * scale, (
        f"{what}: worst element {worst}: got {got[worst]!r}, oracle {want[worst]!r}, "
        f"|err| {err[worst]:.3g} > bound {tol:g} * scale {scale:.3g}")


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_oracle(case, path, dtype):
    a = case_arrays(case)
    w, q, k, v, d_out, mask, bias = (a[n] for n in ("weights", "query", "key", "value", "d_out",
                                                    "mask", "bias"))
    fn = PATHS[path](case.spec)
    where = f"{case.id} [{path}, {dtype}]"

    want = oracle.forward(case.spec, w, q, k, v, mask, bias)
    want_grads = oracle.vjp(case.spec, w, q, k, v, d_out, mask, bias)
    out_no_grad = tb.forward(fn, w, q, k, v, mask, bias, dtype=dtype)
    out, grads = tb.forward_and_vjp(fn, w, q, k, v, d_out, mask, bias, dtype=dtype)

    scale = np.abs(want).max()
    assert_close(f"{where} out (no_grad)", out_no_grad, want, TOL[dtype], scale)
    assert_close(f"{where} out", out, want, TOL[dtype], scale)
    assert set(grads) == set(want_grads), where
    for name, g in grads.items():
        g_scale = np.abs(want_grads[SCALE_OF.get(name, name)]).max()
        assert_close(f"{where} d{name}", g, want_grads[name], TOL[dtype], g_scale)

    # A query row that sees no key in any head: out is bo, nothing flows back through it.
    empty = ~oracle.visibility(case.spec, B, case.L_q, case.L_k, mask).any(axis=-1).any(axis=1)
    if empty.any():
        assert not grads["query"][empty].any(), f"{where}: gradient through an empty query row"
        bo = w["bo"] if case.spec.bias else 0.0
        np.testing.assert_allclose(out[empty], np.broadcast_to(bo, out[empty].shape),
                                   rtol=TOL[dtype], atol=0, err_msg=f"{where}: empty row is not bo")


def test_every_case_that_should_have_an_empty_row_has_one():
    """Guards the empty-row assertions above against vacuity."""
    with_empty = {c.id for c in CASES
                  if (~oracle.visibility(c.spec, B, c.L_q, c.L_k, case_arrays(c)["mask"])
                      .any(axis=-1)).any()}
    expected = {c.id for c in CASES if c.mask is not None} | {"bottom_right_long_query"}
    assert expected <= with_empty, sorted(expected - with_empty)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("spec", [S(8, 2), S(8, 4, num_kv_heads=2, causal="top_left", softcap=3.0)],
                         ids=["plain", "gqa_causal_softcap"])
def test_self_attention_matches_oracle(spec, path):
    a = make_inputs(spec, B, 5, seed=3)
    w = init_weights(spec, seed=3)
    x = a["query"]
    want_grads = oracle.vjp(spec, w, x, x, x, a["d_out"])
    want_total = want_grads["query"] + want_grads["key"] + want_grads["value"]
    out, grads = tb.forward_and_vjp(PATHS[path](spec), w, x, None, None, a["d_out"],
                                    dtype="float64", self_attention=True)
    want = oracle.forward(spec, w, x, x, x)
    assert_close(f"{path} self-attention out", out, want, TOL["float64"], np.abs(want).max())
    assert_close(f"{path} self-attention dx", grads["query"], want_total, TOL["float64"],
                 np.abs(want_total).max())


STRUCTURAL_SPECS = [S(4, 1, causal="top_left"), S(4, 1, causal="bottom_right"),
                    S(4, 1, window=(1, 0)), S(4, 1, window=(0, 2)),
                    S(4, 1, causal="top_left", window=(2, 0)),
                    S(4, 1, causal="bottom_right", window=(1, 1))]


@pytest.mark.parametrize("L_q, L_k", [(5, 5), (6, 3), (3, 6)])
@pytest.mark.parametrize("spec", STRUCTURAL_SPECS, ids=str)
def test_structural_visibility_is_the_oracles(spec, L_q, L_k):
    got = ours.structural_visibility(spec, L_q, L_k, "cpu").numpy()
    np.testing.assert_array_equal(got, oracle.structural_mask(spec, L_q, L_k),
                                  err_msg=f"{spec} L_q={L_q} L_k={L_k}")


@pytest.mark.parametrize("path", list(PATHS))
def test_rank3_mask_and_bias_are_rejected(path):
    spec = S(8, 2)
    a = make_inputs(spec, B, 4)
    fn = PATHS[path](spec)
    for name, value in (("mask", np.ones((B, 4, 4), bool)), ("bias", np.zeros((B, 4, 4)))):
        with pytest.raises(ValueError, match=f"{name}: must have rank 2 .* or rank 4"):
            tb.forward(fn, init_weights(spec), a["query"], a["key"], a["value"],
                       **{name: value}, dtype="float32")


# ---------------------------------------------------------------------------------------
# Dropout.

DROPOUT_SPEC = S(8, 2, num_kv_heads=1, dropout=0.4, causal="top_left")


@pytest.mark.parametrize("path", list(PATHS))
def test_dropout_is_seeded_and_only_in_training(path):
    a = make_inputs(DROPOUT_SPEC, B, 6, seed=5)
    w = init_weights(DROPOUT_SPEC, seed=5)
    fn = PATHS[path](DROPOUT_SPEC)

    def run(**kwargs):
        return tb.forward(fn, w, a["query"], a["key"], a["value"], dtype="float64", **kwargs)

    first, again, other = run(training=True, seed=0), run(training=True, seed=0), run(training=True, seed=1)
    np.testing.assert_array_equal(first, again, err_msg=f"{path}: seed 0 twice")
    assert not np.allclose(first, other), f"{path}: seeds 0 and 1 drop the same weights"
    want = oracle.forward(DROPOUT_SPEC, w, a["query"], a["key"], a["value"])
    assert not np.allclose(first, want), f"{path}: training mode dropped nothing"
    # Inference ignores dropout: with the keyword off and with it left out.
    for out in (run(), fn(tb.params(w, "float64"), *(tb.tensor(a[n], "float64")
                                                      for n in ("query", "key", "value")),
                          training=False, seed=0).numpy()):
        assert_close(f"{path} inference", out, want, TOL["float64"], np.abs(want).max())


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
    weights = core(spec, q, q[:, :, :L_k], v, dropout_p=p, seed=0)
    dropped = (weights == 0).double().mean().item()
    # 8192 draws: the standard deviation of the fraction is 0.005; 0.05 is ten of them.
    assert abs(dropped - p) < 0.05, f"{core.__name__} {dtype}: dropped {dropped:.3f}, p = {p}"
    kept = weights[weights != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (L_k * (1 - p))),
                               msg=f"{core.__name__} {dtype}: kept weights not scaled by 1/(1-p)")


# ---------------------------------------------------------------------------------------
# The Module.

MODULE_SPEC = S(8, 4, num_kv_heads=2, kdim=6, vdim=5, out_dim=7, causal="bottom_right", dropout=0.5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_module_matches_oracle_and_exports_its_weights(fused):
    spec = MODULE_SPEC
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
    assert_close("module out", out.detach().numpy(), want, TOL["float64"], np.abs(want).max())
    got_grads = {"query": q.grad, "key": k.grad, "value": v.grad}
    got_grads.update(convert.module_to_canonical(
        {name: p.grad for name, p in module.named_parameters()}))
    for name, g in got_grads.items():
        scale = np.abs(want_grads[SCALE_OF.get(name, name)]).max()
        assert_close(f"module d{name}", g.numpy(), want_grads[name], TOL["float64"], scale)


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
