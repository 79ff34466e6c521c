"""HF transformers' LlamaAttention behind the contract: converters, its real forward against
the oracle (its real rotary embedding too), and what the gate found, confirmed here."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require

tb = require("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                   "(pip install -e '.[ecosystem]')")
import torch  # noqa: E402

from attnsuite.impls import AttentionSpec as S, Unsupported, init_weights, oracle  # noqa: E402
from attnsuite.impls.builtin import transformers as hf  # noqa: E402
from attnsuite.impls.calling import forms_of  # noqa: E402
from attnsuite.impls.convert.transformers import from_llama, llama_state_dict  # noqa: E402

FACTORIES = {"eager": hf.llama_attention_eager, "sdpa": hf.llama_attention_sdpa}
SPECS = [S(16, 4, num_kv_heads=2), S(16, 4, num_kv_heads=1, causal="top_left", bias=False),
         S(16, 2, rope={"style": "half"}, causal="bottom_right"),
         S(16, 4, num_kv_heads=2, rope={"style": "half", "theta": 500.0}, window=(2, 0))]


def test_weights_round_trip_exactly_through_a_real_layer():
    spec = S(16, 4, num_kv_heads=2)
    weights = init_weights(spec, seed=1)
    config = transformers.LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=4, attention_bias=True)
    layer = transformers.models.llama.modeling_llama.LlamaAttention(config, layer_idx=0).double()
    layer.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in llama_state_dict(weights).items()})
    prefix = "model.layers.0.self_attn."
    checkpoint = {prefix + k: v.numpy() for k, v in layer.state_dict().items()}
    back = from_llama(checkpoint, prefix)
    assert set(back) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(back[name], weights[name], err_msg=name)


@pytest.mark.parametrize("implementation", FACTORIES)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_forward_and_gradients_match_the_oracle_in_float32(implementation, spec):
    a = make_inputs(spec, B=2, L_q=6, seed=2)
    w = init_weights(spec, seed=2)
    x = a["query"]
    out, grads = tb.forward_and_vjp(FACTORIES[implementation](spec), w, x, None, None, a["d_out"],
                                    dtype="float32", form="self")
    np.testing.assert_allclose(out, oracle.forward(spec, w, x, x, x), atol=2e-5, rtol=1e-4)
    want = oracle.vjp(spec, w, x, x, x, a["d_out"])
    np.testing.assert_allclose(grads["query"], want["query"] + want["key"] + want["value"],
                               atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(grads["wk"], want["wk"], atol=1e-4, rtol=1e-3)


def test_a_self_attention_layer_declares_the_self_form_and_declines_what_it_cannot_express():
    assert all(forms_of(f) == ("self",) for f in FACTORIES.values())
    for spec, reason in [(S(16, 2, softcap=2.0), "softcap"), (S(16, 2, scale=0.5), "scale"),
                         (S(16, 2, rope={"style": "interleaved"}), "half style"),
                         (S(16, 6, num_kv_heads=2, head_dim=8), "LlamaConfig refuses")]:
        with pytest.raises(Unsupported, match=reason):
            hf.llama_attention_sdpa(spec)


def test_eager_attention_is_float32_accurate_in_float64():
    """What the gate reports (float64 fails, float32 passes), outside the gate: HF's eager
    attention takes its softmax in float32 whatever the input dtype."""
    spec = S(16, 4, num_kv_heads=2)
    a = make_inputs(spec, B=2, L_q=6, seed=4)
    w = init_weights(spec, seed=4)
    x = a["query"]
    want = oracle.forward(spec, w, x, x, x)
    errors = {name: np.abs(tb.forward(f(spec), w, x, None, None, dtype="float64", form="self") - want).max()
              for name, f in FACTORIES.items()}
    assert errors["sdpa"] < 1e-13, errors
    assert 1e-10 < errors["eager"] < 1e-5, errors
