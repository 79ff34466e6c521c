"""Properties the oracle must have whatever its inputs (SPEC 3), cases small enough to work
out by hand, and named tests for the bugs that public attention code is known to have."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_inputs
from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights


def visible_by_rule(spec: AttentionSpec, L_q: int, L_k: int) -> np.ndarray:
    """SPEC 1 and 3, key by key: the causal rule and the window rule on the shifted index."""
    visible = np.ones((L_q, L_k), dtype=bool)
    for i, j in itertools.product(range(L_q), range(L_k)):
        shifted_i = i + (L_k - L_q) if spec.causal == "bottom_right" else i
        if spec.causal is not None and j > shifted_i:
            visible[i, j] = False
        if spec.window is not None and not -spec.window[0] <= j - shifted_i <= spec.window[1]:
            visible[i, j] = False
    return visible


@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
@pytest.mark.parametrize("window", [None, (0, 0), (1, 2), (2, 0)])
@pytest.mark.parametrize("L_q, L_k", [(4, 4), (3, 6), (6, 3)])
def test_structural_mask_follows_the_rule(causal, window, L_q, L_k):
    spec = AttentionSpec(4, 2, causal=causal, window=window)
    np.testing.assert_array_equal(oracle.structural_mask(spec, L_q, L_k),
                                  visible_by_rule(spec, L_q, L_k), err_msg=f"{spec} L_q={L_q} L_k={L_k}")


# ---------------------------------------------------------------------------------------
# Attention weights.

@pytest.mark.parametrize("spec, L_q, L_k", [
    (AttentionSpec(6, 2, causal="bottom_right", window=(1, 1)), 4, 6),
    (AttentionSpec(6, 2, causal="top_left", softcap=2.0), 5, 3),
    (AttentionSpec(6, 3, num_kv_heads=1, window=(0, 1)), 4, 4),
], ids=str)
def test_rows_sum_to_one_over_visible_keys_and_are_zero_elsewhere(spec, L_q, L_k):
    B = 2
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k)
    rng = np.random.default_rng(1)
    mask = rng.random((B, spec.H, L_q, L_k)) < 0.8
    mask[1, 0, 0, :] = False  # one row with no visible key at all
    bias = rng.standard_normal((B, spec.H, L_q, L_k))
    probs = oracle.attention_probs(spec, init_weights(spec), inputs["query"], inputs["key"],
                                   inputs["value"], mask, bias)
    visible = mask & visible_by_rule(spec, L_q, L_k)
    assert np.all(probs[~visible] == 0), f"{spec}: weight on an invisible key"
    assert np.all(probs[visible] > 0), f"{spec}: zero weight on a visible key"
    expected_sums = visible.any(axis=-1).astype(float)  # 1, or 0 for a row with no visible key
    np.testing.assert_allclose(probs.sum(axis=-1), expected_sums, rtol=0, atol=1e-14,
                               err_msg=f"{spec}: row sums")


# ---------------------------------------------------------------------------------------
# What the mask hides cannot matter.

def _out_and_grads(spec, weights, inputs, mask=None, bias=None):
    args = (spec, weights, inputs["query"], inputs["key"], inputs["value"])
    return (oracle.forward(*args, mask, bias),
            oracle.vjp(*args, inputs["d_out"], mask, bias))


def _assert_unchanged(before, after, what):
    (out0, grads0), (out1, grads1) = before, after
    np.testing.assert_allclose(out1, out0, rtol=1e-13, atol=1e-13, err_msg=f"{what}: out")
    for name in ("query", "wq", "wk", "wv", "wo"):
        np.testing.assert_allclose(grads1[name], grads0[name], rtol=1e-12, atol=1e-13,
                                   err_msg=f"{what}: gradient of {name}")


@pytest.mark.parametrize("replacement", ["random", 1e30, -1e30])
def test_masked_keys_and_values_change_nothing(replacement):
    spec = AttentionSpec(6, 2, num_kv_heads=1, softcap=5.0)
    B, L_q, L_k = 2, 3, 5
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k)
    weights = init_weights(spec)
    mask = np.ones((B, 1, 1, L_k), dtype=bool)  # a key padding mask
    hidden = [(0, 1), (0, 4), (1, 0)]
    for b, j in hidden:
        mask[b, 0, 0, j] = False
    before = _out_and_grads(spec, weights, inputs, mask)

    rng = np.random.default_rng(7)
    poisoned = {name: a.copy() for name, a in inputs.items()}
    for b, j in hidden:
        for name in ("key", "value"):
            row = poisoned[name][b, j]
            row[:] = rng.standard_normal(row.shape) * 10 if replacement == "random" else replacement
    after = _out_and_grads(spec, weights, poisoned, mask)
    _assert_unchanged(before, after, f"masked keys replaced by {replacement}")
    for b, j in hidden:
        for name in ("key", "value"):
            assert not np.any(after[1][name][b, j]), f"{name} gradient at hidden ({b}, {j})"


def test_keys_beyond_the_top_left_diagonal_change_nothing():
    # top_left with L_q < L_k: keys j >= L_q are visible to no query.
    spec = AttentionSpec(6, 2, causal="top_left")
    L_q, L_k = 3, 5
    inputs = make_inputs(spec, L_q=L_q, L_k=L_k)
    weights = init_weights(spec)
    before = _out_and_grads(spec, weights, inputs)
    poisoned = {name: a.copy() for name, a in inputs.items()}
    poisoned["key"][:, L_q:] = 1e30
    poisoned["value"][:, L_q:] = -1e30
    _assert_unchanged(before, _out_and_grads(spec, weights, poisoned), "keys past the diagonal")


def test_permuting_keys_with_their_mask_and_bias_changes_nothing():
    spec = AttentionSpec(6, 2, num_kv_heads=1)  # no causal rule: key order means nothing
    B, L_q, L_k = 2, 4, 6
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k)
    weights = init_weights(spec)
    rng = np.random.default_rng(3)
    mask = rng.random((B, spec.H, L_q, L_k)) < 0.7
    bias = rng.standard_normal((B, spec.H, L_q, L_k))
    perm = rng.permutation(L_k)
    permuted = dict(inputs, key=inputs["key"][:, perm], value=inputs["value"][:, perm])

    before = _out_and_grads(spec, weights, inputs, mask, bias)
    after = _out_and_grads(spec, weights, permuted, mask[..., perm], bias[..., perm])
    _assert_unchanged(before, after, f"keys permuted by {perm}")
    for name in ("key", "value"):
        np.testing.assert_allclose(after[1][name], before[1][name][:, perm], rtol=1e-12, atol=1e-13,
                                   err_msg=f"{name} gradient, keys permuted by {perm}")
    probs = oracle.attention_probs(spec, weights, permuted["query"], permuted["key"],
                                   permuted["value"], mask[..., perm], bias[..., perm])
    np.testing.assert_allclose(probs, oracle.attention_probs(
        spec, weights, inputs["query"], inputs["key"], inputs["value"], mask, bias)[..., perm],
        rtol=1e-13, atol=1e-15, err_msg=f"attention weights, keys permuted by {perm}")


# ---------------------------------------------------------------------------------------
# By hand: one head of size one, every projection the identity, so the logit of key j is
# scale * query * key_j and out = sum_j P_j * value_j (+ biases).

def _one_dimensional(spec, query, keys, values, mask=None, bias=None, **biases):
    weights = {name: np.ones((1, 1)) for name in ("wq", "wk", "wv", "wo")}
    if spec.bias:
        weights |= {name: np.array([biases.get(name, 0.0)]) for name in ("bq", "bk", "bv", "bo")}
    column = lambda xs: np.array(xs, dtype=float).reshape(1, -1, 1)  # noqa: E731
    mask = None if mask is None else np.array(mask, dtype=bool)
    bias = None if bias is None else np.array(bias, dtype=float)
    out = oracle.forward(spec, weights, column(query), column(keys), column(values), mask, bias)
    return out[0, :, 0]


ONE_D = AttentionSpec(1, 1, bias=False, scale=1.0)
LN3 = math.log(3.0)
EXP_HALF = math.exp(0.5)
CAPPED_2_PLUS_1 = math.tanh(2.0) + 1.0  # softcap 1 on logit 2, then bias 1

HAND_CASES = [
    # id, spec, query, keys, values, mask, bias, expected out
    ("weights-1/4-3/4", ONE_D, [1], [0, LN3], [2, 6], None, None, [2 / 4 + 6 * 3 / 4]),
    ("scale-2", ONE_D.replace(scale=2.0), [1], [0, LN3 / 2], [2, 6], None, None, [5.0]),
    ("mask-second-key", ONE_D, [1], [0, LN3], [2, 6], [[True, False]], None, [2.0]),
    ("additive-bias", ONE_D, [1], [0, 0], [2, 6], None, [[0, LN3]], [5.0]),
    ("softcap", ONE_D.replace(softcap=1.0), [1], [0, math.atanh(0.5)], [2, 6], None, None,
     [(2 + 6 * EXP_HALF) / (1 + EXP_HALF)]),
    ("softcap-then-bias", ONE_D.replace(softcap=1.0), [1], [0, 2], [2, 6], None, [[0, 1]],
     [(2 + 6 * math.exp(CAPPED_2_PLUS_1)) / (1 + math.exp(CAPPED_2_PLUS_1))]),
    ("bottom-right-sees-both", ONE_D.replace(causal="bottom_right"), [1], [0, LN3], [2, 6],
     None, None, [5.0]),
    ("top-left-sees-first", ONE_D.replace(causal="top_left"), [1], [0, LN3], [2, 6],
     None, None, [2.0]),
    ("window-diagonal", ONE_D.replace(window=(0, 0)), [1, 1], [0, LN3], [2, 6], None, None,
     [2.0, 6.0]),
    ("no-visible-key", ONE_D.replace(window=(0, 0)), [1, 1], [0], [2], None, None, [2.0, 0.0]),
]


@pytest.mark.parametrize("spec, query, keys, values, mask, bias, expected",
                         [case[1:] for case in HAND_CASES], ids=[case[0] for case in HAND_CASES])
def test_by_hand(spec, query, keys, values, mask, bias, expected):
    out = _one_dimensional(spec, query, keys, values, mask, bias)
    np.testing.assert_allclose(out, expected, rtol=1e-14, err_msg=str(spec))


def test_by_hand_with_biases():
    # bk shifts every logit of a row by query * bk: the softmax cancels it. bv shifts every
    # value, so out by bv (the weights sum to one); bo adds to out.
    out = _one_dimensional(ONE_D.replace(bias=True), [1], [0, LN3], [2, 6], bk=7.0, bv=1.0, bo=0.5)
    np.testing.assert_allclose(out, [5.0 + 1.0 + 0.5], rtol=1e-14)


def test_gradients_by_hand():
    # out = sum_j P_j v_j with P = softmax(q k): d out / d v_j = P_j, and
    # d out / d q = sum_j P_j k_j v_j - (sum_j P_j k_j)(sum_j P_j v_j) = 0.75 ln 3 * 6 - 0.75 ln 3 * 5.
    weights = {name: np.ones((1, 1)) for name in ("wq", "wk", "wv", "wo")}
    column = lambda xs: np.array(xs, dtype=float).reshape(1, -1, 1)  # noqa: E731
    grads = oracle.vjp(ONE_D, weights, column([1]), column([0, LN3]), column([2, 6]), column([1]))
    np.testing.assert_allclose(grads["value"].ravel(), [0.25, 0.75], rtol=1e-14)
    np.testing.assert_allclose(grads["query"].ravel(), [0.75 * LN3], rtol=1e-14)
    np.testing.assert_allclose(grads["wo"].ravel(), [5.0], rtol=1e-14)  # d out / d wo = heads


# ---------------------------------------------------------------------------------------
# Known bugs of public attention code, each by name.

def _per_head_loops(spec, weights, query, key, value, kv_head_of):
    """Attention head by head, query head h reading key/value head kv_head_of(h)."""
    dk, dv = spec.d_k, spec.d_v
    Q = query @ weights["wq"] + weights["bq"]
    K = key @ weights["wk"] + weights["bk"]
    V = value @ weights["wv"] + weights["bv"]
    heads = np.zeros((query.shape[0], query.shape[1], spec.H * dv))
    for b, h in itertools.product(range(query.shape[0]), range(spec.H)):
        g = kv_head_of(h)
        logits = spec.logit_scale * Q[b, :, h * dk:(h + 1) * dk] @ K[b, :, g * dk:(g + 1) * dk].T
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        heads[b, :, h * dv:(h + 1) * dv] = p @ V[b, :, g * dv:(g + 1) * dv]
    return heads @ weights["wo"] + weights["bo"]


def test_gqa_query_heads_share_kv_heads_by_repeat_interleave_not_tile():
    spec = AttentionSpec(8, 4, num_kv_heads=2)  # query heads 0, 1 read kv head 0; 2, 3 read 1
    inputs = make_inputs(spec, L_q=4, L_k=5)
    weights = init_weights(spec)
    args = (spec, weights, inputs["query"], inputs["key"], inputs["value"])
    repeated = _per_head_loops(*args, kv_head_of=lambda h: h // spec.group_size)
    tiled = _per_head_loops(*args, kv_head_of=lambda h: h % spec.H_kv)
    assert np.max(np.abs(repeated - tiled)) > 1e-3, "the case cannot tell the two orders apart"
    np.testing.assert_allclose(oracle.forward(*args), repeated, rtol=1e-12, atol=1e-12)


def test_softcap_is_applied_before_the_mask():
    # Capping after masking would turn -inf into -c and give the masked key weight.
    spec = AttentionSpec(4, 1, softcap=1.0)
    inputs = make_inputs(spec, B=1, L_q=3, L_k=4)
    weights = init_weights(spec)
    mask = np.array([True, True, False, True])[None, :].repeat(3, axis=0)
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    probs = oracle.attention_probs(spec, weights, q, k, v, mask)
    assert np.all(probs[..., 2] == 0), f"masked key got weight {probs[..., 2]}"
    kept = [0, 1, 3]
    np.testing.assert_allclose(oracle.forward(spec, weights, q, k, v, mask),
                               oracle.forward(spec, weights, q, k[:, kept], v[:, kept]),
                               rtol=1e-13, err_msg="a masked key should be as good as absent")


def test_rows_with_no_visible_key_are_zero_not_nan():
    spec = AttentionSpec(6, 2, causal="bottom_right")
    L_q, L_k = 5, 3  # bottom_right with L_q > L_k: queries 0 and 1 see no key
    inputs = make_inputs(spec, L_q=L_q, L_k=L_k)
    weights = init_weights(spec)
    args = (spec, weights, inputs["query"], inputs["key"], inputs["value"])
    with np.errstate(invalid="raise", divide="raise"):  # not even a transient NaN
        probs = oracle.attention_probs(*args)
        out = oracle.forward(*args)
        grads = oracle.vjp(*args, inputs["d_out"])
    assert not np.any(probs[:, :, :2]), "weights of the empty rows"
    assert np.all(probs[:, :, 2:].sum(axis=-1) > 0.999)
    np.testing.assert_array_equal(out[:, :2], np.broadcast_to(weights["bo"], out[:, :2].shape))
    assert not np.any(grads["query"][:, :2]), "query gradient of the empty rows"
    assert all(np.all(np.isfinite(g)) for g in grads.values())


# ---------------------------------------------------------------------------------------
# The rows that see a key, from the rules alone (impls.oracle.structural_rows_with_keys).

@st.composite
def structural_cases(draw):
    causal = draw(st.sampled_from([None, "top_left", "bottom_right"]))
    window = draw(st.none() | st.tuples(st.integers(0, 20), st.integers(0, 20)))
    L_q, L_k = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    return AttentionSpec(4, 1, causal=causal, window=window), L_q, L_k


@settings(max_examples=300, deadline=None, database=None)
@given(case=structural_cases())
def test_rows_with_keys_are_those_of_the_structural_mask(case):
    spec, L_q, L_k = case
    np.testing.assert_array_equal(oracle.structural_rows_with_keys(spec, L_q, L_k),
                                  oracle.structural_mask(spec, L_q, L_k).any(axis=-1),
                                  err_msg=f"{spec} L_q={L_q} L_k={L_k}")


@settings(max_examples=200, deadline=None, database=None)
@given(case=structural_cases())
def test_under_top_left_rules_the_rows_with_keys_come_first(case):
    # fused_attention runs the kernel on the first n rows and gives the rest zeros.
    spec, L_q, L_k = case
    if spec.causal == "bottom_right" and L_q != L_k:
        return  # goes to the kernel as a mask, rows and all
    rows = oracle.structural_rows_with_keys(spec, L_q, L_k)
    n = int(rows.sum())
    np.testing.assert_array_equal(rows, np.arange(L_q) < n, err_msg=f"{spec} L_q={L_q} L_k={L_k}")
