"""Our attention in every framework (impls/ours/{torch,tensorflow,jax}.py), both paths,
against the float64 oracle: forward and every gradient on every feature case
(tests/feature_cases.py) in float64 and float32, and the output in float16 and bfloat16.
What one framework alone has (torch's Module, the Keras layer, JAX's init/apply) is in
tests/test_<framework>_ours.py."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import (B, CASE, CASES, MULTI_QUERY, SQUARE, TOL, Case, assert_close,
                           assert_grads_close, case_arrays)
from attnsuite.impls import AttentionSpec, init_weights, oracle

S = AttentionSpec
PATHS = ("explicit", "fused")


@dataclasses.dataclass(frozen=True)
class Framework:
    """What differs between the frameworks, as data."""
    # The function the fused path hands the attention to, and the dtypes in which it runs
    # its explicit core instead. Every fused path also does so for softcap, which no
    # kernel can express (none has a hook between the logits and the softmax).
    kernel: str
    explicit_dtypes: tuple[str, ...] = ()


FRAMEWORKS = {
    "torch": Framework("torch.nn.functional.scaled_dot_product_attention"),
    "tensorflow": Framework("keras.ops.dot_product_attention"),
    "jax": Framework("jax.nn.dot_product_attention",
                     explicit_dtypes=("float64",)),   # the kernel's softmax is float32
}


def load(framework: str):
    """(adapter, our implementation module) of ``framework``; a skip when it is missing."""
    return require(framework), importlib.import_module(f"attnsuite.impls.ours.{framework}")


@contextlib.contextmanager
def kernel_calls(framework: str):
    """Yield a list that records each call of ``framework``'s attention kernel."""
    module_name, _, name = FRAMEWORKS[framework].kernel.rpartition(".")
    module = importlib.import_module(module_name)
    calls, original = [], getattr(module, name)
    if framework == "torch":
        # Observe the calls rather than replace the function: torch's causal masks
        # (torch.nn.attention.bias) dispatch on the identity of scaled_dot_product_attention.
        from torch.overrides import TorchFunctionMode

        class Recording(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is original:
                    calls.append(1)
                return func(*args, **(kwargs or {}))

        with Recording():
            yield calls
    else:
        def recording(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        setattr(module, name, recording)
        try:
            yield calls
        finally:
            setattr(module, name, original)


def empty_query_rows(case, mask) -> np.ndarray:
    """(B, L_q) bool: the query rows that see no key in any head."""
    return ~oracle.visibility(case.spec, B, case.L_q, case.L_k, mask).any(axis=-1).any(axis=1)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_matches_oracle(framework, case, path, dtype):
    backend, ours = load(framework)
    a = case_arrays(case)
    w, q, k, v, d_out, mask, bias = (a[n] for n in ("weights", "query", "key", "value", "d_out",
                                                    "mask", "bias"))
    fn = getattr(ours, path)(case.spec)
    where = f"{framework} {case.id} [{path}, {dtype}]"

    want = oracle.forward(case.spec, w, q, k, v, mask, bias)
    fw = FRAMEWORKS[framework]
    with kernel_calls(framework) as calls:
        # The forward alone takes another path: torch's no_grad kernels, TensorFlow without
        # a tape, JAX op by op (its vjp is one jitted program).
        out_alone = backend.forward(fn, w, q, k, v, mask, bias, dtype=dtype)
        out, grads = backend.forward_and_vjp(fn, w, q, k, v, d_out, mask, bias, dtype=dtype)
    runs_kernel = path == "fused" and case.spec.softcap is None and dtype not in fw.explicit_dtypes
    assert bool(calls) == runs_kernel, f"{where}: {fw.kernel} called {len(calls)} times"
    assert_close(f"{where} out (forward alone)", out_alone, want, TOL[dtype])
    assert_close(f"{where} out", out, want, TOL[dtype])
    assert_grads_close(where, grads, oracle.vjp(case.spec, w, q, k, v, d_out, mask, bias),
                       TOL[dtype])

    # A query row that sees no key in any head: out is bo, nothing flows back through it.
    empty = empty_query_rows(case, mask)
    if empty.any():
        assert not grads["query"][empty].any(), f"{where}: gradient through an empty query row"
        bo = w["bo"] if case.spec.bias else 0.0
        np.testing.assert_allclose(out[empty], np.broadcast_to(bo, out[empty].shape),
                                   rtol=TOL[dtype], atol=0, err_msg=f"{where}: empty row is not bo")


def test_every_case_that_should_have_an_empty_row_has_one():
    """Guards the empty-row assertions above against vacuity."""
    with_empty = {c.id for c in CASES if empty_query_rows(c, case_arrays(c)["mask"]).any()}
    expected = {c.id for c in CASES if c.mask is not None} | {"bottom_right_long_query"}
    assert expected <= with_empty, sorted(expected - with_empty)


LOW_PRECISION_CASES = [
    CASE["everything_but_softcap"],
    # Long contractions: accumulated in 16 bits they land 4-6x the plain float16 error.
    Case("wide", S(128, 2), 32, 32),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_low_precision_is_within_a_few_times_the_plain_computation(framework, case, path, dtype):
    backend, ours = load(framework)
    a = case_arrays(case)
    args = (a["weights"], a["query"], a["key"], a["value"], a["mask"], a["bias"])
    want = oracle.forward(case.spec, *args)
    baseline = np.abs(oracle.forward(case.spec, *args, precision=dtype) - want).max()
    err = np.abs(backend.forward(getattr(ours, path)(case.spec), *args, dtype=dtype) - want).max()
    assert err <= 3 * baseline, (f"{framework} {case.id} [{path}, {dtype}]: error {err:.3g} > 3 x "
                                 f"the plain {dtype} computation's {baseline:.3g}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("spec", [SQUARE, S(8, 4, num_kv_heads=2, causal="top_left", softcap=3.0)],
                         ids=["plain", "gqa_causal_softcap"])
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_self_attention_matches_oracle(framework, spec, path):
    backend, ours = load(framework)
    a = make_inputs(spec, B, 5, seed=3)
    w = init_weights(spec, seed=3)
    x = a["query"]
    want_grads = oracle.vjp(spec, w, x, x, x, a["d_out"])
    want_total = want_grads["query"] + want_grads["key"] + want_grads["value"]
    out, grads = backend.forward_and_vjp(getattr(ours, path)(spec), w, x, None, None, a["d_out"],
                                         dtype="float64", form="self")
    where = f"{framework} {path} self-attention {spec}"
    assert "key" not in grads and "value" not in grads, f"{where}: {sorted(grads)}"
    assert_close(f"{where} out", out, oracle.forward(spec, w, x, x, x), TOL["float64"])
    assert_close(f"{where} dx", grads["query"], want_total, TOL["float64"])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_rank3_mask_and_bias_are_rejected(framework, path):
    backend, ours = load(framework)
    spec = S(8, 2)
    a = make_inputs(spec, B, 4)
    fn = getattr(ours, path)(spec)
    for name, value in (("mask", np.ones((B, 4, 4), bool)), ("bias", np.zeros((B, 4, 4)))):
        with pytest.raises(ValueError, match=f"{name}: must have rank 2 .* or rank 4"):
            backend.forward(fn, init_weights(spec), a["query"], a["key"], a["value"],
                            **{name: value}, dtype="float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_non_boolean_mask_is_rejected(framework, path):
    backend, ours = load(framework)
    spec = S(8, 2)
    q = backend.tensor(make_inputs(spec, B, 4)["query"], "float32")
    float_mask = backend.tensor(np.ones((4, 4)), "float32")
    with pytest.raises(ValueError, match="mask: must be boolean"):
        getattr(ours, path)(spec)(backend.params(init_weights(spec), "float32"), q, q, q,
                                  mask=float_mask)


DROPOUT_SPEC = MULTI_QUERY.replace(dropout=0.4, causal="top_left")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_dropout_is_seeded_and_only_in_training(framework, path):
    backend, ours = load(framework)
    a = make_inputs(DROPOUT_SPEC, B, 4, 6, seed=5)
    w = init_weights(DROPOUT_SPEC, seed=5)
    fn = getattr(ours, path)(DROPOUT_SPEC)
    where = f"{framework} {path}"

    def run(**kwargs):
        return backend.forward(fn, w, a["query"], a["key"], a["value"], dtype="float64", **kwargs)

    first, again, other = (run(training=True, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again, err_msg=f"{where}: seed 0 twice")
    assert not np.allclose(first, other), f"{where}: seeds 0 and 1 drop the same weights"
    want = oracle.forward(DROPOUT_SPEC, w, a["query"], a["key"], a["value"])
    assert not np.allclose(first, want, atol=1e-3), f"{where}: training mode dropped nothing"
    # Inference ignores dropout, with the keyword left out and with training=False.
    p = backend.params(w, "float64")
    q, k, v = (backend.tensor(a[n], "float64") for n in ("query", "key", "value"))
    for out in (run(), backend.to_numpy(fn(p, q, k, v, training=False, seed=0))):
        assert_close(f"{where} inference", out, want, TOL["float64"])
