"""The oracle against an independent reference: ONNX's own NumPy implementation of its
Attention operator (``onnx.reference``), in float64.

We project Q, K, V with the canonical weights ourselves, hand ONNX the (B, heads, L, d)
tensors, and apply wo and bo to its output; the result must equal ``oracle.forward``.
ONNX's causal rule is top-left without a cache; with a past key/value cache of length
L_k - L_q it is bottom-right, which is how bottom_right is checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs
from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]'): "
                                          "the cross-check against ONNX's reference Attention needs it")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

OPSET = onnx.defs.onnx_opset_version()
if OPSET < 23:
    pytest.skip(f"onnx {onnx.__version__} has opset {OPSET}; Attention needs 23",
                allow_module_level=True)
WINDOW_OPSET = 25  # left_window_size / right_window_size
needs_window = pytest.mark.skipif(OPSET < WINDOW_OPSET,
                                  reason=f"sliding windows need opset {WINDOW_OPSET}")

_ELEMENT_TYPES = {np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(bool): TensorProto.BOOL}


def onnx_attention(Q, K, V, attn_mask=None, past_key=None, past_value=None, **attributes):
    """Y of a model holding one ONNX Attention node, run by the reference evaluator."""
    given = {"Q": Q, "K": K, "V": V, "attn_mask": attn_mask, "past_key": past_key,
             "past_value": past_value}
    feeds = {name: array for name, array in given.items() if array is not None}
    inputs = [name if name in feeds else "" for name in given]  # "" = an omitted optional input
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node("Attention", inputs, ["Y"], **attributes)
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info(name, _ELEMENT_TYPES[a.dtype], a.shape)
         for name, a in feeds.items()],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return ReferenceEvaluator(model).run(None, feeds)[0]


def _heads(x, n):
    """(B, L, n*d) -> (B, n, L, d)."""
    B, L, width = x.shape
    return x.reshape(B, L, n, width // n).transpose(0, 2, 1, 3)


def via_onnx(spec, weights, query, key, value, mask=None, bias=None):
    """out of SPEC 3, with steps 2 to 5 done by ONNX's Attention."""
    def project(x, name):
        y = x @ weights["w" + name]
        return y + weights["b" + name] if spec.bias else y

    # ONNX attributes are float32, and its reference takes sqrt(scale) in float32: the
    # scale goes into Q here, in float64, and ONNX's is 1. (Our softcaps are exact in float32.)
    q = _heads(project(query, "q"), spec.H) * spec.logit_scale
    k = _heads(project(key, "k"), spec.H_kv)
    v = _heads(project(value, "v"), spec.H_kv)
    attributes = {"scale": 1.0}
    if spec.softcap is not None:
        attributes["softcap"] = float(spec.softcap)
    if spec.window is not None:
        attributes["left_window_size"], attributes["right_window_size"] = spec.window
    past = {}
    if spec.causal is not None:
        attributes["is_causal"] = 1
    if spec.causal == "bottom_right":
        offset = key.shape[1] - query.shape[1]
        assert offset >= 0, "bottom_right through a cache needs L_k >= L_q"
        past = {"past_key": k[:, :, :offset], "past_value": v[:, :, :offset]}
        k, v = k[:, :, offset:], v[:, :, offset:]

    if mask is not None and bias is not None:  # ONNX takes one mask: fold ours into the bias
        attn_mask = bias + np.where(mask, 0.0, -np.inf)
    else:
        attn_mask = mask if mask is not None else bias
    y = onnx_attention(q, k, v, attn_mask, **past, **attributes)  # (B, H, L_q, d_v)
    out = y.transpose(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], -1) @ weights["wo"]
    return out + weights["bo"] if spec.bias else out


def make_case(spec, L_q, L_k, mask_kind, bias_kind, B=2, seed=0):
    """Inputs, weights, a mask that leaves every row some visible key, and a bias."""
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k, seed=seed)
    rng = np.random.default_rng(seed + 1)
    mask = bias = None
    if mask_kind is not None:
        shape = (L_q, L_k) if mask_kind == "rank2" else (B, spec.H, L_q, L_k)
        mask = rng.random(shape) < 0.6
        structural = oracle.structural_mask(spec, L_q, L_k)
        rows = np.flatnonzero(structural.any(axis=-1))
        mask[..., rows, structural[rows].argmax(axis=-1)] = True  # no row left without a key
    if bias_kind is not None:
        bias = rng.standard_normal((L_q, L_k) if bias_kind == "rank2" else (B, spec.H, L_q, L_k))
    assert oracle.visibility(spec, B, L_q, L_k, mask).any(axis=-1).all(), f"{spec}: a row sees nothing"
    args = (spec, init_weights(spec, seed), inputs["query"], inputs["key"], inputs["value"])
    return args, mask, bias


S = AttentionSpec
CASES = [
    pytest.param(S(8, 2), 4, 4, None, None, id="plain"),
    pytest.param(S(8, 4, num_kv_heads=2), 4, 5, None, None, id="gqa"),
    pytest.param(S(8, 4, num_kv_heads=1), 4, 5, None, None, id="mqa"),
    pytest.param(S(6, 2, kdim=4, vdim=5, head_dim=3, value_head_dim=2, out_dim=7), 3, 5, None, None,
                 id="cross-value-head-dim-out-dim"),
    pytest.param(S(8, 2, bias=False, scale=0.3), 4, 4, None, None, id="no-bias-custom-scale"),
    pytest.param(S(8, 2, causal="top_left"), 3, 6, None, None, id="top-left-Lq<Lk"),
    pytest.param(S(8, 2, causal="top_left"), 6, 3, None, None, id="top-left-Lq>Lk"),
    pytest.param(S(8, 4, num_kv_heads=2, causal="bottom_right"), 3, 6, None, None,
                 id="bottom-right-Lq<Lk"),
    pytest.param(S(8, 2), 4, 5, "rank2", None, id="bool-mask-rank2"),
    pytest.param(S(8, 2), 4, 5, "rank4", None, id="bool-mask-rank4"),
    pytest.param(S(8, 2), 4, 5, None, "rank2", id="additive-bias-rank2"),
    pytest.param(S(8, 2), 4, 5, None, "rank4", id="additive-bias-rank4"),
    pytest.param(S(8, 2, softcap=1.5), 4, 5, "rank4", "rank4", id="softcap-mask-and-bias"),
    pytest.param(S(8, 2, causal="top_left"), 4, 5, "rank4", "rank2", id="causal-mask-and-bias"),
    pytest.param(S(8, 2, window=(1, 2)), 5, 5, None, None, id="window", marks=needs_window),
    pytest.param(S(8, 2, causal="top_left", window=(2, 0)), 5, 4, None, None,
                 id="window-top-left", marks=needs_window),
    pytest.param(S(8, 4, num_kv_heads=2, causal="bottom_right", window=(1, 0), softcap=2.0), 3, 6,
                 "rank4", "rank4", id="everything-at-once", marks=needs_window),
]


@pytest.mark.parametrize("spec, L_q, L_k, mask_kind, bias_kind", CASES)
def test_oracle_matches_onnx_reference_attention(spec, L_q, L_k, mask_kind, bias_kind):
    args, mask, bias = make_case(spec, L_q, L_k, mask_kind, bias_kind)
    np.testing.assert_allclose(oracle.forward(*args, mask, bias), via_onnx(*args, mask, bias),
                               rtol=1e-12, atol=1e-13, err_msg=f"{spec}, L_q={L_q}, L_k={L_k}")


def test_gqa_with_3d_inputs_and_head_count_attributes():
    # The 3D form makes ONNX split heads itself (q_num_heads, kv_num_heads): its split must
    # agree with the canonical column layout, and its GQA with repeat-interleave.
    spec = AttentionSpec(8, 4, num_kv_heads=2)
    (spec, weights, query, key, value), _, _ = make_case(spec, 4, 5, None, None)
    y = onnx_attention((query @ weights["wq"] + weights["bq"]) * spec.logit_scale,
                       key @ weights["wk"] + weights["bk"], value @ weights["wv"] + weights["bv"],
                       q_num_heads=spec.H, kv_num_heads=spec.H_kv, scale=1.0)
    np.testing.assert_allclose(oracle.forward(spec, weights, query, key, value),
                               y @ weights["wo"] + weights["bo"], rtol=1e-12, atol=1e-13)


def test_rows_with_no_visible_key():
    spec = AttentionSpec(8, 2)
    args, mask, _ = make_case(spec, 4, 5, "rank4", None)
    mask[0, :, 1, :] = False
    expected = oracle.forward(*args, mask)
    got = via_onnx(*args, mask)
    if not np.all(np.isfinite(got)):
        pytest.skip(f"onnx {onnx.__version__} gives non-finite values for a row with no visible key")
    np.testing.assert_allclose(expected, got, rtol=1e-12, atol=1e-13)
