"""PyTorch's built-in attention behind the contract (impls/builtin/torch.py): each agrees
with the oracle where it supports the spec, says why where it cannot, and what it does
with a fully masked query row is recorded as observed (torch is pinned in pyproject)."""

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, Unsupported, init_weights, oracle

tb = require("torch")
from attnsuite.impls.builtin import torch as builtin  # noqa: E402

S = AttentionSpec
FACTORIES = {"nn.MultiheadAttention": builtin.multihead_attention, "sdpa": builtin.sdpa}
B, L_Q, L_K = 2, 4, 6

# Specs each supports, covering its mask, bias and causal mappings.
SUPPORTED = [
    ("nn.MultiheadAttention", S(8, 2), None, None),
    ("nn.MultiheadAttention", S(8, 2, kdim=5, vdim=3, causal="bottom_right", window=(2, 1)),
     "rank4", "rank2"),
    ("nn.MultiheadAttention", S(8, 4, bias=False, causal="top_left"), "rank2", None),
    ("nn.MultiheadAttention", S(8, 2, causal="top_left"), None, None),  # the is_causal hint
    ("sdpa", S(8, 4, num_kv_heads=2, head_dim=3, value_head_dim=5, out_dim=6, scale=0.7,
               causal="bottom_right"), None, None),                   # causal_lower_right
    ("sdpa", S(8, 4, num_kv_heads=1, causal="top_left"), None, None),  # is_causal
    ("sdpa", S(8, 2, kdim=5, vdim=3, window=(1, 1)), "rank4", "rank4"),
]


def mask_and_bias(spec, mask_kind, bias_kind, seed):
    """A random mask of the given rank that leaves no row empty (the smoke tests compare
    the ordinary rows; empty rows have their own test), and a random bias."""
    rng = np.random.default_rng(seed)
    shape = {None: None, "rank2": (L_Q, L_K), "rank4": (B, spec.H, L_Q, L_K)}
    mask = bias = None
    if mask_kind:
        mask = rng.random(shape[mask_kind]) > 0.3
        first_allowed = oracle.structural_mask(spec, L_Q, L_K).argmax(axis=-1)
        mask[..., np.arange(L_Q), first_allowed] = True
    if bias_kind:
        bias = rng.standard_normal(shape[bias_kind])
    return mask, bias


@pytest.mark.parametrize("name, spec, mask_kind, bias_kind", SUPPORTED,
                         ids=[f"{n}-{s}-mask={m}-bias={b}" for n, s, m, b in SUPPORTED])
def test_agrees_with_the_oracle_where_supported(name, spec, mask_kind, bias_kind):
    a = make_inputs(spec, B, L_Q, L_K, seed=1)
    w = init_weights(spec, seed=1)
    mask, bias = mask_and_bias(spec, mask_kind, bias_kind, seed=2)
    assert oracle.visibility(spec, B, L_Q, L_K, mask).any(axis=-1).all(), "an empty row"
    fn = FACTORIES[name](spec)
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"], mask, bias)
    want_grads = oracle.vjp(spec, w, a["query"], a["key"], a["value"], a["d_out"], mask, bias)
    out, grads = tb.forward_and_vjp(fn, w, a["query"], a["key"], a["value"], a["d_out"], mask,
                                    bias, dtype="float64")
    assert_close(f"{name} {spec} out", out, want, TOL["float64"])
    assert_grads_close(f"{name} {spec}", grads, want_grads, TOL["float64"])


@pytest.mark.parametrize("name", FACTORIES)
def test_self_attention_in_inference_matches_the_oracle(name):
    """One tensor three times, no grad, eval: nn.MultiheadAttention's fast path."""
    spec = S(8, 2, causal="top_left")
    a = make_inputs(spec, B, 5, seed=3)
    w = init_weights(spec, seed=3)
    x = a["query"]
    out = tb.forward(FACTORIES[name](spec), w, x, None, None, dtype="float32", form="self")
    want = oracle.forward(spec, w, x, x, x)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=name)


# ---------------------------------------------------------------------------------------
# A query row with no visible key: the spec defines its heads as zero (out row = bo);
# each layer does what it does, and this records it.

def row_class(row: np.ndarray, bo: np.ndarray) -> str:
    if np.isnan(row).any():
        return "nan"
    if np.allclose(row, bo, rtol=1e-12, atol=1e-12):
        return "zeros"  # the heads are zero: the spec's rule
    return "other"      # e.g. a uniform average over the masked keys


def empty_row_outputs(name, spec, *, self_attention, with_grad):
    """(class of the empty row's output, d query, the oracle's d query or None)."""
    a = make_inputs(spec, 1, 4, seed=5)
    w = init_weights(spec, seed=5)
    mask = np.ones((4, 4), bool)
    mask[2] = False                          # query row 2 sees nothing
    k, v = (a["query"], a["query"]) if self_attention else (a["key"], a["value"])
    args = (FACTORIES[name](spec), w, a["query"], k, v)
    kwargs = {"dtype": "float64", "form": "self" if self_attention else "qkv"}
    if not with_grad:
        return row_class(tb.forward(*args, mask, **kwargs)[0, 2], w["bo"]), None, None
    out, grads = tb.forward_and_vjp(*args, a["d_out"], mask, **kwargs)
    want = oracle.vjp(spec, w, a["query"], k, v, a["d_out"], mask)
    want_query = want["query"] + (want["key"] + want["value"] if self_attention else 0)
    return row_class(out[0, 2], w["bo"]), grads["query"], want_query


# (layer, self-attention, with grad) -> what torch 2.13 gives on CPU.
EMPTY_ROW = [
    # The fast path (eval, no grad, one tensor as query/key/value) is a separate kernel.
    ("nn.MultiheadAttention", True, False, "nan"),
    ("nn.MultiheadAttention", True, True, "zeros"),
    ("nn.MultiheadAttention", False, False, "zeros"),
    ("nn.MultiheadAttention", False, True, "zeros"),
    ("sdpa", True, False, "zeros"),
    ("sdpa", False, True, "zeros"),
]


@pytest.mark.parametrize("name, self_attention, with_grad, observed", EMPTY_ROW,
                         ids=[f"{n}-self={s}-grad={g}" for n, s, g, _ in EMPTY_ROW])
def test_what_a_fully_masked_row_gives(name, self_attention, with_grad, observed):
    got, d_query, want_d_query = empty_row_outputs(name, S(8, 2), self_attention=self_attention,
                                                   with_grad=with_grad)
    assert got == observed, (f"{name} (self_attention={self_attention}, grad={with_grad}): a "
                             f"fully masked row now gives {got!r}, was {observed!r}: update the docs")
    if with_grad and observed == "zeros":  # and nothing flows back through the empty row
        assert_close(f"{name} d query", d_query, want_d_query, TOL["float64"])


def test_sdpa_bottom_right_with_a_longer_query_gives_zero_rows():
    """causal_lower_right warns of NaN for L_q > L_k; on CPU its first rows are zeros."""
    spec = S(8, 2, causal="bottom_right")
    a = make_inputs(spec, 1, 5, 3, seed=6)
    w = init_weights(spec, seed=6)
    out = tb.forward(builtin.sdpa(spec), w, a["query"], a["key"], a["value"], dtype="float64")
    assert [row_class(row, w["bo"]) for row in out[0, :2]] == ["zeros", "zeros"]
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    np.testing.assert_allclose(out[0, 2:], want[0, 2:], rtol=1e-10)


# ---------------------------------------------------------------------------------------
# What each cannot express, and dropout.

UNSUPPORTED = [
    ("nn.MultiheadAttention", {"num_kv_heads": 1}, "key/value head"),
    ("nn.MultiheadAttention", {"head_dim": 2}, "head_dim"),
    ("nn.MultiheadAttention", {"value_head_dim": 2}, "value_head_dim"),
    ("nn.MultiheadAttention", {"out_dim": 6}, "out_dim"),
    ("nn.MultiheadAttention", {"scale": 0.3}, "scale"),
    ("nn.MultiheadAttention", {"softcap": 5.0}, "softcap"),
    ("sdpa", {"softcap": 5.0}, "softcap"),
]


@pytest.mark.parametrize("name, change, reason", UNSUPPORTED,
                         ids=[f"{n}-{next(iter(c))}" for n, c, _ in UNSUPPORTED])
def test_unsupported_says_why(name, change, reason):
    with pytest.raises(Unsupported, match=reason):
        FACTORIES[name](S(8, 2, **change))


def test_mha_accepts_the_default_scale_written_out():
    FACTORIES["nn.MultiheadAttention"](S(8, 2, scale=0.5))  # 1 / sqrt(4)


@pytest.mark.parametrize("name", FACTORIES)
def test_dropout_is_seeded_and_only_in_training(name):
    spec = S(8, 2, dropout=0.5)
    a = make_inputs(spec, B, 5, seed=8)
    w = init_weights(spec, seed=8)
    fn = FACTORIES[name](spec)

    def run(**kwargs):
        return tb.forward(fn, w, a["query"], a["key"], a["value"], dtype="float64", **kwargs)

    np.testing.assert_array_equal(run(training=True, seed=0), run(training=True, seed=0))
    assert not np.allclose(run(training=True, seed=0), run(training=True, seed=1))
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    assert_close(f"{name} inference", run(), want, TOL["float64"])
