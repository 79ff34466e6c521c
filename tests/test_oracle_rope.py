"""RoPE in the oracle (SPEC 2): its backward against finite differences, its forward
against ONNX's reference RotaryEmbedding + Attention, and the properties that define it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs
from test_oracle_gradients import assert_vjp_matches_finite_differences
from attnsuite.impls import oracle
from attnsuite.impls.convert.rope import half_to_interleaved, interleaved_to_half
from attnsuite.impls.spec import AttentionSpec as S
from attnsuite.impls.weights import init_weights

HALF, INTERLEAVED = {"style": "half"}, {"style": "interleaved"}
ROPE_SPECS = [
    pytest.param(S(8, 2, rope=HALF), 4, 4, id="half"),
    pytest.param(S(8, 2, rope=INTERLEAVED), 4, 4, id="interleaved"),
    pytest.param(S(12, 2, rope={"style": "half", "rotary_dim": 4, "theta": 500.0}), 3, 5,
                 id="half-partial-Lq<Lk"),
    pytest.param(S(12, 2, rope={"style": "interleaved", "rotary_dim": 2}), 3, 5,
                 id="interleaved-partial-Lq<Lk"),
    pytest.param(S(8, 4, num_kv_heads=2, causal="bottom_right", rope=HALF), 2, 5, id="gqa-causal"),
    pytest.param(S(8, 4, num_kv_heads=1, bias=False, softcap=2.0, rope=INTERLEAVED), 4, 4,
                 id="mqa-no-bias-softcap"),
    pytest.param(S(6, 2, kdim=4, vdim=5, head_dim=4, value_head_dim=2, rope=HALF), 3, 3,
                 id="cross-head-dim"),
]


def _args(spec, L_q, L_k, seed=0):
    inputs = make_inputs(spec, B=2, L_q=L_q, L_k=L_k, seed=seed)
    return spec, init_weights(spec, seed), inputs


@pytest.mark.parametrize("spec, L_q, L_k", ROPE_SPECS)
def test_rope_backward_matches_finite_differences(spec, L_q, L_k):
    spec, weights, inputs = _args(spec, L_q, L_k)
    assert_vjp_matches_finite_differences(spec, weights, inputs)


def test_a_backward_that_forgets_to_rotate_back_is_caught():
    spec, weights, inputs = _args(S(8, 2, rope=HALF), 4, 4)

    def unrotated_vjp(spec, *args):  # the gradient taken as if RoPE were not there
        grads = oracle.vjp(spec, *args)
        plain = oracle.vjp(spec.replace(rope=None), *args)
        return {**grads, "query": plain["query"]}

    with pytest.raises(AssertionError, match="query"):
        assert_vjp_matches_finite_differences(spec, weights, inputs, vjp=unrotated_vjp)


def test_rope_changes_the_output_and_keeps_unrotated_features():
    spec, weights, inputs = _args(S(8, 2, rope=HALF), 4, 4)
    args = (weights, inputs["query"], inputs["key"], inputs["value"])
    assert not np.allclose(oracle.forward(spec, *args), oracle.forward(spec.replace(rope=None), *args))
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 12))
    partial = S(24, 2, rope={"style": "interleaved", "rotary_dim": 4})
    rotated = oracle.rotate(partial, x, oracle.rope_angles(partial, np.arange(5)))
    np.testing.assert_array_equal(rotated[..., 4:], x[..., 4:])
    assert not np.allclose(rotated[..., :4], x[..., :4])
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14)


def test_logits_depend_on_relative_positions_only():
    """q_i . k_j after RoPE depends on i - j: shifting every position leaves P unchanged."""
    spec = S(8, 2, rope={"style": "half", "theta": 100.0})
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    def logits(shift):
        positions = np.arange(4) + shift
        angles = oracle.rope_angles(spec, positions)
        return oracle.rotate(spec, q, angles) @ oracle.rotate(spec, k, angles).swapaxes(-1, -2)
    np.testing.assert_allclose(logits(0), logits(37), rtol=1e-11, atol=1e-12)
    assert not np.allclose(logits(0), q @ k.swapaxes(-1, -2))


def test_queries_sit_at_the_end_of_the_keys():
    """With L_q < L_k the queries are the last L_q tokens: the output for them equals the
    last rows of the full self-attention over all L_k tokens (causal bottom-right)."""
    spec = S(8, 2, causal="bottom_right", rope=INTERLEAVED)
    inputs = make_inputs(spec, B=1, L_q=6, seed=3)
    weights = init_weights(spec, 3)
    full = oracle.forward(spec, weights, inputs["query"], inputs["key"], inputs["value"])
    tail = oracle.forward(spec, weights, inputs["query"][:, 4:], inputs["key"], inputs["value"])
    np.testing.assert_allclose(tail, full[:, 4:], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("rope", [INTERLEAVED, {"style": "interleaved", "rotary_dim": 4}])
def test_the_two_styles_agree_once_wq_and_wk_are_permuted(rope):
    interleaved = S(24, 3, num_kv_heads=1, rope=rope)   # d_k 8: with 2 rotated features the styles coincide
    half = interleaved.replace(rope={**rope, "style": "half"})
    spec, weights, inputs = _args(interleaved, 4, 4)
    args = (inputs["query"], inputs["key"], inputs["value"])
    expected = oracle.forward(interleaved, weights, *args)
    np.testing.assert_allclose(oracle.forward(half, interleaved_to_half(weights, interleaved), *args),
                               expected, rtol=1e-12, atol=1e-13)
    assert not np.allclose(oracle.forward(half, weights, *args), expected)  # the port that forgets
    back = half_to_interleaved(interleaved_to_half(weights, interleaved), interleaved)
    for name in weights:
        np.testing.assert_array_equal(back[name], weights[name])


# ---------------------------------------------------------------------------------------
# An independent reference: ONNX's RotaryEmbedding reference op, with cos/sin caches built
# from theta, composed with its Attention op (tests/test_oracle_onnx.py).

onnx_reference = pytest.importorskip("onnx.reference.ops.op_rotary_embedding",
                                     reason="onnx is not installed (pip install -e '.[test]')")


def _onnx_rotary(spec, x, positions):
    """x (B, heads, L, d) rotated by ONNX's reference op."""
    m = np.arange(spec.rotary_dim // 2)
    angles = np.arange(max(positions) + 1)[:, None] * spec.rope.theta ** (-2.0 * m / spec.rotary_dim)
    position_ids = np.broadcast_to(positions, (x.shape[0], len(positions)))
    return onnx_reference.rotary_embedding(
        x, np.cos(angles), np.sin(angles), position_ids=position_ids,
        interleaved=int(spec.rope.style == "interleaved"), rotary_embedding_dim=spec.rotary_dim)


@pytest.mark.parametrize("spec, L_q, L_k", ROPE_SPECS)
def test_oracle_matches_onnx_rotary_embedding_and_attention(spec, L_q, L_k):
    from test_oracle_onnx import _heads, onnx_attention

    spec, weights, inputs = _args(spec, L_q, L_k)
    query, key, value = inputs["query"], inputs["key"], inputs["value"]

    def project(x, name):
        y = x @ weights["w" + name]
        return y + weights["b" + name] if spec.bias else y

    q_positions, k_positions = np.arange(L_q) + L_k - L_q, np.arange(L_k)
    q = _onnx_rotary(spec, _heads(project(query, "q"), spec.H), q_positions) * spec.logit_scale
    k = _onnx_rotary(spec, _heads(project(key, "k"), spec.H_kv), k_positions)
    v = _heads(project(value, "v"), spec.H_kv)
    attributes = {"scale": 1.0}
    if spec.softcap is not None:
        attributes["softcap"] = float(spec.softcap)
    past = {}
    if spec.causal is not None:
        attributes["is_causal"] = 1
        offset = L_k - L_q
        past = {"past_key": k[:, :, :offset], "past_value": v[:, :, :offset]}
        k, v = k[:, :, offset:], v[:, :, offset:]
    y = onnx_attention(q, k, v, **past, **attributes)
    out = y.transpose(0, 2, 1, 3).reshape(query.shape[0], L_q, -1) @ weights["wo"]
    out = out + weights["bo"] if spec.bias else out
    np.testing.assert_allclose(oracle.forward(spec, weights, query, key, value), out,
                               rtol=1e-12, atol=1e-13)
