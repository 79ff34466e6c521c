"""HF transformers' layers as built-ins (impls/builtin/transformers.py) and their weight
converters (impls/convert/transformers.py).

The converters follow the modules' own state dicts (keys and shapes of freshly built
``BertAttention`` and ``LlamaAttention``) and are exact both ways; the adapters agree with
the oracle in the self-attention form, the one call form these layers declare (a call
with three tensors is declined with that reason), and Llama's own rotary embedding agrees
with the oracle's half-style RoPE.

Observed here (transformers 5.24, torch 2.13), asserted below:
- ``LlamaAttention`` under ``eager`` runs its softmax in float32 (``softmax(...,
  dtype=torch.float32)``): float64 is only float32-accurate, and a query row with no
  visible key is NaN in float64 (the additive mask's ``finfo(float64).min`` becomes -inf
  in float32); in the other dtypes it is the plain mean of the values;
- ``BertSelfAttention`` under ``eager``: that row is the mean of the values (uniform);
- under ``sdpa`` (a boolean mask into ``F.scaled_dot_product_attention``) that row is
  zeros, the spec's rule.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import require
from feature_cases import TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, init_weights, oracle
from attnsuite.impls.errors import Unsupported

tb = require("torch")
pytest.importorskip("transformers",
                    reason="transformers is not installed: pip install 'attnsuite[ecosystem]'")
import torch  # noqa: E402  (after the skips)
from transformers import BertConfig, LlamaConfig  # noqa: E402
from transformers.models.bert.modeling_bert import BertAttention  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention  # noqa: E402

from attnsuite.impls.builtin import transformers as builtin  # noqa: E402
from attnsuite.impls.convert import transformers as convert  # noqa: E402

S = AttentionSpec
B, L = 2, 5
FACTORIES = {"BertSelfAttention.eager": builtin.bert_self_attention_eager,
             "BertSelfAttention.sdpa": builtin.bert_self_attention_sdpa,
             "LlamaAttention.eager": builtin.llama_attention_eager,
             "LlamaAttention.sdpa": builtin.llama_attention_sdpa}
BERT_SPECS = [S(8, 2), S(12, 3, causal="top_left", window=(2, 0))]
LLAMA_SPECS = [S(8, 2), S(12, 6, num_kv_heads=2, head_dim=4, bias=False, causal="bottom_right"),
               S(16, 4, num_kv_heads=1, causal="top_left", window=(1, 1))]
SPECS = {name: BERT_SPECS if name.startswith("Bert") else LLAMA_SPECS for name in FACTORIES}
# The dtype each is accurate in (module docstring): Llama's eager softmax is float32.
ACCURATE = {"BertSelfAttention.eager": "float64", "BertSelfAttention.sdpa": "float64",
            "LlamaAttention.eager": "float32", "LlamaAttention.sdpa": "float64"}


def bert_module(spec):
    config = BertConfig(hidden_size=spec.E, num_attention_heads=spec.H)
    torch.manual_seed(5)
    return BertAttention(config)


def llama_module(spec):
    config = LlamaConfig(hidden_size=spec.E, num_attention_heads=spec.H, num_key_value_heads=spec.H_kv,
                         head_dim=spec.d_k, attention_bias=spec.bias)
    torch.manual_seed(5)
    return LlamaAttention(config, layer_idx=0)


CASES = [(convert.BERT, bert_module, spec) for spec in BERT_SPECS] + \
        [(convert.LLAMA, llama_module, spec) for spec in LLAMA_SPECS]


@pytest.mark.parametrize("layout, module, spec", CASES, ids=lambda x: str(x) if isinstance(x, S) else "")
def test_layout_is_the_modules_and_conversion_is_exact_both_ways(layout, module, spec):
    own = {k: v.detach() for k, v in module(spec).state_dict().items() if "LayerNorm" not in k}
    w = init_weights(spec, seed=1)
    state = convert.to_state_dict(spec, w, layout)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}
    back = convert.from_state_dict(spec, state, layout)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name], err_msg=name)
    again = convert.to_state_dict(spec, convert.from_state_dict(spec, own, layout), layout)
    for key in own:
        np.testing.assert_array_equal(np.asarray(again[key]), own[key].numpy(), err_msg=key)


def test_from_state_dict_names_a_misshapen_or_missing_key():
    spec = BERT_SPECS[0]
    state = convert.to_state_dict(spec, init_weights(spec), convert.BERT)
    state["self.key.weight"] = state["self.key.weight"][:4]
    with pytest.raises(ValueError, match=r"self\.key\.weight"):
        convert.from_state_dict(spec, state, convert.BERT)
    del state["output.dense.bias"]
    state["self.key.weight"] = np.zeros((8, 8))
    with pytest.raises(ValueError, match=r"output\.dense\.bias.*got None"):
        convert.from_state_dict(spec, state, convert.BERT)


def self_inputs(spec, seed: int = 0, mask: bool = True):
    rng = np.random.default_rng(seed)
    x, d_out = rng.standard_normal((B, L, spec.E)), rng.standard_normal((B, L, spec.E_o))
    m = rng.random((B, 1, L, L)) > 0.3 if mask else None
    if mask:  # every row keeps a key its causal/window rule allows
        m[..., np.arange(L), oracle.structural_mask(spec, L, L).argmax(-1)] = True
    return init_weights(spec, seed), x, d_out, m


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("extras", ["none", "mask+bias"])
def test_self_attention_matches_oracle(name, index, extras):
    spec, dtype = SPECS[name][index], ACCURATE[name]
    w, x, d_out, mask = self_inputs(spec, mask=extras != "none")
    bias = np.random.default_rng(1).standard_normal((L, L)) if extras != "none" else None
    out, grads = tb.forward_and_vjp(FACTORIES[name](spec), w, x, x, x, d_out, mask, bias,
                                    dtype=dtype, form="self")
    want = oracle.vjp(spec, w, x, x, x, d_out, mask, bias)
    want = {"query": want["query"] + want["key"] + want["value"],
            **{n: g for n, g in want.items() if n not in ("query", "key", "value")}}
    assert_close(f"{name} {spec} out", out, oracle.forward(spec, w, x, x, x, mask, bias), TOL[dtype])
    assert_grads_close(f"{name} {spec}", grads, want, TOL[dtype])


def test_llama_eager_is_only_float32_accurate_in_float64():
    spec = LLAMA_SPECS[0]
    w, x, _, mask = self_inputs(spec)
    out = tb.forward(builtin.llama_attention_eager(spec), w, x, x, x, mask, dtype="float64",
                     form="self")
    want = oracle.forward(spec, w, x, x, x, mask)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert 1e-12 < err < 1e-5, f"float64 relative error {err:.2e}"


def test_llama_sdpa_with_its_rotary_embedding_is_only_float32_accurate_in_float64():
    """Without RoPE its float64 is float64-accurate (ACCURATE); with it, LlamaRotaryEmbedding
    computes cos and sin in float32 and hands them over cast to float64."""
    spec = S(16, 4, num_kv_heads=2, causal="bottom_right", rope={"style": "half"})
    w, x, _, mask = self_inputs(spec)
    out = tb.forward(builtin.llama_attention_sdpa(spec), w, x, x, x, mask, dtype="float64", form="self")
    want = oracle.forward(spec, w, x, x, x, mask)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert 1e-12 < err < 1e-5, f"float64 relative error {err:.2e}"
    plain = spec.replace(rope=None)
    out = tb.forward(builtin.llama_attention_sdpa(plain), w, x, x, x, mask, dtype="float64", form="self")
    want = oracle.forward(plain, w, x, x, x, mask)
    assert np.abs(out - want).max() / np.abs(want).max() < 1e-12


@pytest.mark.parametrize("name, dtype, observed", [
    ("BertSelfAttention.eager", "float64", "uniform"), ("BertSelfAttention.sdpa", "float32", "zeros"),
    ("LlamaAttention.eager", "float32", "uniform"), ("LlamaAttention.eager", "float64", "nan"),
    ("LlamaAttention.sdpa", "float64", "zeros")])
def test_a_row_with_no_visible_key_is_as_documented(name, dtype, observed):
    spec = S(8, 2)
    w, x, _, _ = self_inputs(spec, mask=False)
    mask = np.ones((L, L), bool)
    mask[1] = False
    row = tb.forward(FACTORIES[name](spec), w, x, x, x, mask, dtype=dtype, form="self")[:, 1]
    uniform = (x @ w["wv"] + w["bv"]).mean(axis=1) @ w["wo"] + w["bo"]
    got = ("nan" if np.isnan(row).any() else "zeros" if np.allclose(row, w["bo"], atol=1e-4)
           else "uniform" if np.allclose(row, uniform, atol=1e-4) else "other")
    assert got == observed, f"{name} {dtype}: the empty row is {got}"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_each_layer_declares_the_self_form(name):
    from attnsuite.impls.calling import forms_of

    assert forms_of(FACTORIES[name]) == ("self",)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_three_tensors_are_unsupported_with_the_reason(name):
    spec = SPECS[name][0]
    w, x, _, _ = self_inputs(spec, mask=False)
    with pytest.raises(Unsupported, match="self-attention .*this call passes three tensors"):
        tb.forward(FACTORIES[name](spec), w, x, x, x.copy(), dtype="float32")


@pytest.mark.parametrize("name, spec, why", [
    ("BertSelfAttention.eager", S(8, 4, num_kv_heads=2), "grouped"),
    ("BertSelfAttention.sdpa", S(8, 2, head_dim=3), "head size"),
    ("BertSelfAttention.eager", S(8, 2, bias=False), "biases"),
    ("BertSelfAttention.sdpa", S(8, 2, out_dim=4), "dense"),
    ("LlamaAttention.eager", S(12, 3, head_dim=5), "even"),
    ("LlamaAttention.sdpa", S(8, 2, value_head_dim=2), "one head_dim"),
    ("LlamaAttention.eager", S(8, 2, scale=0.3), "scale"),
    ("LlamaAttention.sdpa", S(8, 2, softcap=3.0), "softcap"),
    ("LlamaAttention.eager", S(16, 6, num_kv_heads=2, head_dim=8), "LlamaConfig refuses"),
    ("LlamaAttention.sdpa", S(8, 2, rope={"style": "interleaved"}), "half style"),
    ("BertSelfAttention.sdpa", S(8, 2, rope={"style": "half"}), "rotary")])
def test_refuses_what_the_layer_cannot_express(name, spec, why):
    with pytest.raises(Unsupported, match=why):
        FACTORIES[name](spec)


def test_a_missing_library_is_unsupported_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(Unsupported, match=r"transformers is not available.*attnsuite\[ecosystem\]"):
        builtin.bert_self_attention_eager(BERT_SPECS[0])


@pytest.mark.parametrize("name", ["LlamaAttention.eager", "LlamaAttention.sdpa"])
@pytest.mark.parametrize("spec", [S(16, 2, rope={"style": "half"}, causal="bottom_right"),
                                  S(16, 4, num_kv_heads=2, rope={"style": "half", "theta": 500.0},
                                    window=(2, 0))], ids=str)
def test_its_own_rotary_embedding_matches_the_oracles_rope(name, spec):
    """Llama's real LlamaRotaryEmbedding + apply_rotary_pos_emb against the oracle's RoPE:
    an independent check of the half style (and of the adapter's positions)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, spec.E))
    w = init_weights(spec, seed=5)
    out = tb.forward(FACTORIES[name](spec), w, x, x, x, dtype="float32", form="self")
    np.testing.assert_allclose(out, oracle.forward(spec, w, x, x, x), atol=3e-5, rtol=1e-4)
    plain = oracle.forward(spec.replace(rope=None), w, x, x, x)
    assert not np.allclose(out, plain, atol=1e-3), "RoPE made no difference"


@pytest.mark.parametrize("name", ["LlamaAttention.eager", "LlamaAttention.sdpa"])
@pytest.mark.parametrize("spec", [S(16, 4, num_kv_heads=2, causal="bottom_right", rope={"style": "half"}),
                                  S(16, 2, causal="top_left", window=(2, 0))], ids=str)
def test_decoding_with_its_dynamic_cache_matches_the_full_causal_pass(name, spec):
    """fn.decode through Llama's real cache classes (DynamicCache under eager, StaticCache
    under sdpa), a prefill then single tokens, row for row against the oracle's causal pass
    over the whole sequence (float32: its rotary embedding computes cos and sin in float32)."""
    import attnsuite.impls.backends.torch as backend

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, spec.E))
    w = init_weights(spec, seed=7)
    full = oracle.forward(spec, w, x, x, x)
    fn = FACTORIES[name](spec)
    params = backend.params(w, "float32", "cpu")
    cache = fn.init_cache(params, 2)
    for start, stop in [(0, 3), (3, 4), (4, 5), (5, 7)]:
        chunk = torch.tensor(x[:, start:stop], dtype=torch.float32)
        out, cache = fn.decode(params, cache, chunk, chunk, chunk)
        np.testing.assert_allclose(out.detach().numpy(), full[:, start:stop], atol=3e-5, rtol=1e-4)
    assert cache.get_seq_length() == 7, "the cache holds every token fed"
