"""``keras.layers.MultiHeadAttention`` behind the suite's contract (impls/builtin/keras.py).

Each Keras backend is observed by ``observe(framework)``: in this process when Keras
already runs on that framework, otherwise in a subprocess with ``KERAS_BACKEND`` set
(this file run as a script prints the observation as JSON). The tests then hold each
observation to the oracle and to the behaviours documented in the adapter.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import SCALE_OF
from attnsuite.impls import AttentionSpec, Unsupported, init_weights, oracle
from attnsuite.impls.calling import inputs_of

S = AttentionSpec
FRAMEWORKS = ("tensorflow", "jax", "torch")

# Supported features together; head_dim 4 keeps Keras' scale exact in float32 and
# value_head_dim == head_dim because the JAX backend's op needs equal head sizes. Every
# observation uses its sizes and SHAPE, so that JAX compiles each op once.
SMOKE_SPEC = S(8, 2, kdim=6, vdim=5, head_dim=4, out_dim=7, causal="top_left")
SHAPE = {"B": 2, "L_q": 4, "L_k": 6}

# What Keras gives a query row with no visible key (conformance's vocabulary). With
# dropout > 0 the layer takes its masked-softmax path, which zeroes hidden weights; with
# dropout 0 it runs keras.ops.dot_product_attention, whose large negative fill makes
# such a row the average of every value, on all three backends.
FULLY_MASKED = {"dropout_0": "uniform", "dropout_0.2": "zeros"}
# Relative error bound in float64 (every observation runs float64, so that JAX compiles
# each op for one dtype only): TensorFlow's op keeps float64; on JAX and PyTorch Keras'
# fused path lands near 1e-7, float32 arithmetic somewhere inside.
FLOAT64_BOUND = {"tensorflow": 1e-10, "jax": 1e-5, "torch": 1e-5}
FLOAT32_BOUND = 1e-4


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _smoke(backend, fn) -> dict:
    """Worst relative error of out and of each gradient, on inputs where every row sees a key."""
    spec = SMOKE_SPEC
    w = init_weights(spec, seed=11)
    a = make_inputs(spec, **SHAPE, seed=11)
    mask = np.ones((SHAPE["B"], 1, SHAPE["L_q"], SHAPE["L_k"]), bool)
    mask[1, :, :, -2:] = False                 # key padding in batch 1; key 0 stays visible
    args = (w, a["query"], a["key"], a["value"])
    out, grads = backend.forward_and_vjp(fn, *args, a["d_out"], mask, dtype="float64")
    want = oracle.vjp(spec, *args, a["d_out"], mask)
    errors = {"out": _relative_error(out, oracle.forward(spec, *args, mask))}
    for name, g in grads.items():
        scale = np.abs(want[SCALE_OF.get(name, name)]).max()
        errors[f"d{name}"] = float(np.abs(g - want[name]).max() / scale)
    return errors


def _fully_masked(backend, factory, dropout: float) -> dict:
    from attnsuite.conformance.cases import Case
    from attnsuite.conformance.checks import classify_fully_masked, reference

    case = Case(SMOKE_SPEC.replace(causal=None, dropout=dropout), **SHAPE, dtype="float64",
                mask="fully_masked_rows")
    ref = reference(case)
    d = ref.data
    out, grads = backend.forward_and_vjp(factory(case.spec), d.weights, d.query, d.key, d.value,
                                         ref.d_out, d.mask, dtype="float64")
    counts = classify_fully_masked(out, ref)
    return {"behaviour": "+".join(sorted(counts)), "rows": sum(counts.values()),
            "grads_finite": all(np.isfinite(g).all() for g in grads.values())}


def _dropout(backend, factory) -> dict:
    spec = SMOKE_SPEC.replace(dropout=0.5)
    w = init_weights(spec, seed=12)
    a = make_inputs(spec, **SHAPE, seed=12)
    fn = factory(spec)

    def run(**kwargs):
        return backend.forward(fn, w, a["query"], a["key"], a["value"], dtype="float64", **kwargs)

    inference = run()
    return {"same_seed_same_output": bool(np.array_equal(run(training=True, seed=1),
                                                         run(training=True, seed=1))),
            "seeds_differ": not np.allclose(run(training=True, seed=1), run(training=True, seed=2)),
            "training_drops": not np.allclose(run(training=True, seed=1), inference),
            "inference_error": _relative_error(inference, oracle.forward(spec, w, a["query"],
                                                                         a["key"], a["value"]))}


def _unequal_head_sizes(backend, framework: str) -> str:
    """"ok", "wrong", or the name of the error Keras raises, for value heads of another size
    than the key heads (``value_dim`` != ``key_dim``)."""
    from attnsuite.impls.builtin.keras import multi_head_attention

    spec = S(8, 2, value_head_dim=6)
    w = init_weights(spec, seed=13)
    a = make_inputs(spec, B=2, L_q=4, L_k=5, seed=13)
    args = (w, a["query"], a["key"], a["value"])
    try:
        out = backend.forward(multi_head_attention(spec), *args, dtype="float64")
    except Exception as exc:
        return type(exc).__name__
    return "ok" if _relative_error(out, oracle.forward(spec, *args)) < FLOAT64_BOUND[framework] else "wrong"


def observe_here(framework: str) -> dict:
    """Run every observation in this process (Keras must already be on ``framework``)."""
    import keras

    from attnsuite.impls.backends import load_backend
    from attnsuite.impls.builtin.keras import multi_head_attention

    assert keras.backend.backend() == framework, (keras.backend.backend(), framework)
    backend = load_backend(framework)
    return {"smoke": _smoke(backend, multi_head_attention(SMOKE_SPEC)),
            "fully_masked": {f"dropout_{p:g}": _fully_masked(backend, multi_head_attention, p)
                             for p in (0.0, 0.2)},
            "dropout": _dropout(backend, multi_head_attention),
            "unequal_head_sizes": _unequal_head_sizes(backend, framework)}


@functools.cache
def observe(framework: str) -> dict:
    require(framework)
    pytest.importorskip("keras")
    import keras

    if keras.backend.backend() == framework:
        return observe_here(framework)
    env = {**os.environ, "KERAS_BACKEND": framework, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, __file__, framework], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (f"KERAS_BACKEND={framework} subprocess failed:\n"
                                  f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_matches_the_oracle_on_a_supported_spec(framework):
    errors = observe(framework)["smoke"]
    worst = max(errors, key=errors.get)
    assert errors[worst] <= FLOAT64_BOUND[framework], (
        f"keras.{framework} {SMOKE_SPEC} float64: {worst} relative error {errors[worst]:.3g} "
        f"> {FLOAT64_BOUND[framework]:g} (all: {errors})")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fully_masked_rows_behave_as_documented(framework):
    for dropout, seen in observe(framework)["fully_masked"].items():
        assert seen["rows"] > 0, f"keras.{framework} {dropout}: the case has no fully masked row"
        assert seen["behaviour"] == FULLY_MASKED[dropout], f"keras.{framework} {dropout}: {seen}"
        assert seen["grads_finite"], f"keras.{framework} {dropout}: non-finite gradients"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dropout_is_seeded_and_only_in_training(framework):
    seen = observe(framework)["dropout"]
    assert seen["same_seed_same_output"] and seen["seeds_differ"] and seen["training_drops"], \
        f"keras.{framework}: {seen}"
    assert seen["inference_error"] <= FLOAT64_BOUND["tensorflow"], f"keras.{framework}: {seen}"


# ---------------------------------------------------------------------------------------
# The options, in this process, on Keras' default (TensorFlow) backend.

@pytest.fixture(scope="module")
def tf_keras():
    tb = require("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"this process runs Keras on {keras.backend.backend()}")
    from attnsuite.impls.builtin.keras import multi_head_attention
    return tb, multi_head_attention


@pytest.mark.parametrize("spec, why", [
    (S(8, 4, num_kv_heads=2), "one key/value head per query head"),
    (S(8, 2, scale=0.3), "1/sqrt"),
    (S(8, 2, softcap=5.0), "softcap"),
    (S(8, 2, window=(2, 0)), "symmetric"),
], ids=["gqa", "scale", "softcap", "asymmetric_window"])
def test_what_it_cannot_express_is_unsupported(tf_keras, spec, why):
    _, factory = tf_keras
    with pytest.raises(Unsupported, match=why):
        factory(spec)


def test_call_time_features_it_lacks_are_unsupported(tf_keras):
    tb, factory = tf_keras
    spec = S(8, 2)
    a = make_inputs(spec, 2, 4)
    args = (factory(spec), init_weights(spec), a["query"], a["key"], a["value"])
    with pytest.raises(Unsupported, match="additive attention bias"):
        tb.forward(*args, bias=np.zeros((4, 4)), dtype="float32")
    with pytest.raises(Unsupported, match="per-head mask"):
        tb.forward(*args, mask=np.ones((2, 2, 4, 4), bool), dtype="float32")
    # The factory declares both, so the gate declines them before building the layer.
    declared = inputs_of(factory)
    assert declared.declines(None, bias=True, training=False)
    assert declared.declines((2, 2, 4, 4), bias=False, training=False)
    assert declared.declines((2, 1, 4, 4), bias=False, training=False) is None


@pytest.mark.parametrize("spec, L_q, L_k", [
    (S(8, 2, bias=False), 5, 5),
    (S(8, 2, head_dim=4, value_head_dim=3, out_dim=6), 4, 6),
    (S(8, 2, window=(1, 1)), 6, 6),                       # sliding_window=2
    (S(8, 2, causal="top_left", window=(2, 5)), 6, 6),    # causal cuts the right side
    (S(8, 2, causal="bottom_right"), 5, 5),               # alignments agree when L_q == L_k
], ids=["no_bias", "head_sizes", "window", "causal_window", "bottom_right_square"])
def test_options_it_has_match_the_oracle(tf_keras, spec, L_q, L_k):
    tb, factory = tf_keras
    w = init_weights(spec, seed=5)
    a = make_inputs(spec, 2, L_q, L_k, seed=5)
    mask = np.ones((L_q, L_k), bool)
    mask[:, 0] = False                                   # rank 2; no row loses every key
    mask[np.arange(L_q), np.arange(L_q) % L_k] = True
    got = tb.forward(factory(spec), w, a["query"], a["key"], a["value"], mask, dtype="float32")
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"], mask)
    assert _relative_error(got, want) <= FLOAT32_BOUND, f"{spec} L_q={L_q} L_k={L_k}"


def test_its_causal_mask_is_top_left_whatever_the_alignment(tf_keras):
    tb, factory = tf_keras
    spec = S(8, 2, causal="bottom_right")
    w = init_weights(spec, seed=6)
    a = make_inputs(spec, 2, 3, 6, seed=6)
    got = tb.forward(factory(spec), w, a["query"], a["key"], a["value"], dtype="float32")
    top_left = oracle.forward(spec.replace(causal="top_left"), w, a["query"], a["key"], a["value"])
    bottom_right = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    assert _relative_error(got, top_left) <= FLOAT32_BOUND
    assert _relative_error(got, bottom_right) > 1e-2


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_value_heads_of_another_size_than_the_key_heads(framework):
    """Keras on JAX hands its heads to jax.nn.dot_product_attention, which needs one head
    size for keys and values: the layer accepts value_dim != key_dim, then raises (a
    finding of the gate: README, "What the built-ins really do")."""
    assert observe(framework)["unequal_head_sizes"] == ("TypeError" if framework == "jax" else "ok")


if __name__ == "__main__":   # the subprocess side of observe()
    print(json.dumps(observe_here(sys.argv[1])))
