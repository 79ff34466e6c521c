"""The checkpoint readers and key layouts of ``attnsuite port`` (conformance/checkpoints.py,
conformance/layouts.py): canonical weights written in each format with the framework's own
saver read back equal, and what cannot be read named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require
from attnsuite.conformance import checkpoints
from attnsuite.conformance.port import read_side, restyled
from attnsuite.conformance.weights import save_weights
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

SPEC = AttentionSpec(16, 4)                                   # with biases
GQA = AttentionSpec(16, 4, num_kv_heads=2, bias=False, rope={"style": "half"})


def canonical(spec, seed=0):
    return init_weights(spec, seed=seed, dtype=np.float32)   # float32: every format holds it exactly


def assert_read_back(path, spec, weights, layout, prefix="", fields=None):
    side, dtype = read_side(str(path), layout, prefix, None, fields or {"num_heads": spec.H},
                            "CHECKPOINT")
    assert side.spec == spec
    assert sorted(side.weights) == sorted(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(side.weights[name], w, err_msg=name)
    assert dtype == "float32"


def test_torch_multihead_attention_state_dict(tmp_path):
    torch = require("torch") and __import__("torch")
    from attnsuite.impls.convert.torch import canonical_to_mha

    weights = canonical(SPEC)
    layer = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    layer.load_state_dict(canonical_to_mha(SPEC, weights))
    # Nested, as a model's state holds a layer's.
    torch.save({"encoder": {"attn": layer.state_dict()}}, tmp_path / "mha.pt")
    assert_read_back(tmp_path / "mha.pt", SPEC, weights, "torch-mha", prefix="encoder.attn.")


def test_torch_cross_attention_with_its_projections_apart(tmp_path):
    torch = require("torch") and __import__("torch")
    from attnsuite.impls.convert.torch import canonical_to_mha

    spec = AttentionSpec(16, 4, kdim=8, vdim=12)
    weights = canonical(spec)
    layer = torch.nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=True)
    layer.load_state_dict(canonical_to_mha(spec, weights))
    torch.save(layer.state_dict(), tmp_path / "cross.pt")
    assert_read_back(tmp_path / "cross.pt", spec, weights, None)     # the layout guessed


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_hf_llama_keys_in_torch_and_safetensors_files(tmp_path, suffix):
    torch = require("torch") and __import__("torch")
    from attnsuite.impls.convert.transformers import LLAMA, to_state_dict

    weights = canonical(GQA)
    prefix = "model.layers.3.self_attn."
    state = {prefix + k: torch.tensor(v) for k, v in to_state_dict(GQA, weights, LLAMA).items()}
    state["model.layers.3.mlp.up_proj.weight"] = torch.zeros(4, 16)   # other keys stay unread
    if suffix == ".bin":
        torch.save(state, tmp_path / "model.bin")
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    assert_read_back(tmp_path / f"model{suffix}", GQA, weights, "hf-llama", prefix,
                     {"num_heads": 4, "rope": {}})


def test_keras_weights_h5(tmp_path):
    require("tensorflow")
    import keras

    from attnsuite.impls.convert.keras import load_keras

    weights = canonical(SPEC)
    inputs = keras.Input((3, 16))
    layer = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4)
    model = keras.Model(inputs, layer(inputs, inputs))
    load_keras(layer, SPEC, weights)
    model.save_weights(tmp_path / "model.weights.h5")
    # num_heads comes from the kernels' shapes.
    side, _ = read_side(str(tmp_path / "model.weights.h5"), None, "layers/multi_head_attention/",
                        None, {}, "CHECKPOINT")
    assert side.spec == SPEC
    for name, w in weights.items():
        np.testing.assert_array_equal(side.weights[name], w, err_msg=name)


def test_flax_msgpack(tmp_path):
    require("jax")
    import jax
    from flax import linen, serialization

    from attnsuite.impls.convert.flax import to_linen

    weights = canonical(SPEC)
    layer = linen.MultiHeadDotProductAttention(num_heads=4, qkv_features=16)
    x = np.zeros((1, 3, 16), np.float32)
    variables = layer.init(jax.random.PRNGKey(0), x, x)
    params = jax.tree.map(np.asarray, to_linen(SPEC, weights))
    assert jax.tree.structure(params) == jax.tree.structure(variables["params"])
    (tmp_path / "params.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    assert_read_back(tmp_path / "params.msgpack", SPEC, weights, None, "params/")


def test_canonical_npz_with_its_spec(tmp_path):
    weights = canonical(GQA)
    save_weights(tmp_path / "w.npz", GQA, weights)
    side, _ = read_side(str(tmp_path / "w.npz"), None, None, None, {}, "CHECKPOINT")
    assert side.spec == GQA
    for name, w in weights.items():
        np.testing.assert_array_equal(side.weights[name], w, err_msg=name)


def test_meta_layout_is_interleaved_and_the_suite_permutes_it_to_half(tmp_path):
    torch = require("torch") and __import__("torch")
    from attnsuite.impls.convert.rope import half_to_interleaved

    half = canonical(GQA.replace(rope={"style": "half"}))
    meta = half_to_interleaved(half, GQA)
    torch.save({f"layers.0.attention.w{x}.weight": torch.tensor(meta[f"w{x}"].T.copy()) for x in "qkvo"},
               tmp_path / "consolidated.00.pth")
    side, _ = read_side(str(tmp_path / "consolidated.00.pth"), "meta-llama", None, 0,
                        {"num_heads": 4, "rope": {}}, "CHECKPOINT")
    assert side.spec.rope.style == "interleaved"
    back = restyled(side, "half")
    assert back.spec == GQA
    for name in half:
        np.testing.assert_array_equal(back.weights[name], half[name], err_msg=name)


def test_hf_config_gives_the_spec(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
              "num_key_value_heads": 2, "head_dim": 16, "attention_bias": True,
              "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
              "partial_rotary_factor": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    fields = checkpoints.hf_spec_fields(tmp_path)
    assert AttentionSpec.from_dict(fields) == AttentionSpec(
        64, 8, num_kv_heads=2, head_dim=16, bias=True, causal="bottom_right",
        rope={"style": "half", "theta": 500000.0, "rotary_dim": 8})


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "rope_type 'llama3'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"sliding_window": 4096}, "sliding_window 4096"),
    ({"hidden_size": None}, "hidden_size missing"),
])
def test_hf_config_that_the_spec_cannot_hold_is_named(tmp_path, change, message):
    config = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: .*" + message.split()[0]) as info:
        checkpoints.hf_spec_fields(tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize("name, content",
                         [("w.xyz", b"..."), ("w.npz", b"not a zip"), ("w.pt", b"junk")])
def test_unreadable_files_are_named(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=str(tmp_path / name)):
        checkpoints.read_tensors(tmp_path / name)


def test_meta_params_json_gives_the_spec(tmp_path):
    params = {"dim": 64, "n_heads": 8, "n_kv_heads": 2, "rope_theta": 500000.0, "norm_eps": 1e-5}
    (tmp_path / "params.json").write_text(json.dumps(params))
    fields = checkpoints.meta_spec_fields(tmp_path / "consolidated.00.pth")
    assert AttentionSpec.from_dict(fields) == AttentionSpec(
        64, 8, num_kv_heads=2, bias=False, causal="bottom_right",
        rope={"style": "interleaved", "theta": 500000.0})
    params["use_scaled_rope"] = True
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match="params.json: use_scaled_rope"):
        checkpoints.meta_spec_fields(tmp_path / "consolidated.00.pth")
    assert checkpoints.meta_spec_fields(tmp_path / "elsewhere" / "x.pth") == {}
