"""The attention cores of the kernel benchmark (impls/kernels): each is checked against
the float64 oracle where it can run here, and declines with a reason where it cannot.

The oracle has no "core" entry point: with identity projections and zero biases a layer
is its core (out = merge(core(split(q), split(k), split(v)))), so the oracle's layer
forward on identity weights is the core's expected output.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnsuite.bench.case import head_arrays
from attnsuite.bench.sweeps import Config
from attnsuite.impls import oracle
from attnsuite.impls.backends import framework_status, load_backend
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.kernels import KERNELS, ours_for
from attnsuite.impls.registry import REGISTRY, find_entry, load_factory
from attnsuite.impls.spec import AttentionSpec

CONFIGS = [Config(batch=2, L_q=L_q, L_k=L_k, d_model=32, heads=4, kv_heads=4, dtype="float32",
                  causal=causal, device="cpu")
           for L_q, L_k, causal in ((12, 12, False), (12, 12, True), (7, 10, False))]


def _identity_weights(spec: AttentionSpec) -> dict[str, np.ndarray]:
    eye = np.eye(spec.E)
    return {**{f"w{x}": eye for x in "qkvo"}, **{f"b{x}": np.zeros(spec.E) for x in "qkvo"}}


def _core_expected(spec: AttentionSpec, q, k, v) -> np.ndarray:
    """(B, L, H, d) heads in -> (B, L_q, H, d) per-head outputs, from the oracle."""
    flat = [x.reshape(*x.shape[:2], -1).astype(np.float64) for x in (q, k, v)]
    out = oracle.forward(spec, _identity_weights(spec), *flat)
    return out.reshape(q.shape)


def _runnable(entry):
    available, reason = framework_status(entry.framework)
    if not available:
        pytest.skip(reason)
    return load_backend(entry.framework), load_factory(entry)


def test_kernels_resolve_by_name_but_stay_out_of_the_registry():
    registered = {e.name for e in REGISTRY}
    for kernel in KERNELS:
        assert kernel.name.startswith("core.") and kernel.kind == "kernel", kernel
        assert find_entry(kernel.name) == kernel
        assert kernel.name not in registered, kernel.name
        # Ours comes from our module, every other core from impls/kernels (which imports nothing of ours).
        package = "ours" if kernel.name == ours_for(kernel.framework) else "kernels"
        assert kernel.target.startswith(f"attnsuite.impls.{package}.{kernel.framework}:"), kernel
    for framework in {k.framework for k in KERNELS}:
        assert find_entry(ours_for(framework)).framework == framework


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_each_kernel_matches_the_oracle_or_declines_with_a_reason(entry, config):
    backend, factory = _runnable(entry)
    spec = config.spec()
    try:
        fn = factory(spec)
        arrays = head_arrays(spec, config, fn.layout)
        q, k, v = (backend.tensor(arrays[name], "float32") for name in ("query", "key", "value"))
        actual = backend.to_numpy(fn({}, q, k, v))
    except Unsupported as exc:
        assert str(exc).strip(), f"{entry.name} declined {config.label()} without a reason"
        assert any(word in str(exc) for word in ("GPU", "cuda", "decline", "kernel")), str(exc)
        return
    to_blhd = (lambda a: a.swapaxes(1, 2)) if fn.layout == "BHLD" else (lambda a: a)
    expected = _core_expected(spec, *(to_blhd(arrays[n]) for n in ("query", "key", "value")))
    error = np.max(np.abs(to_blhd(actual) - expected))
    assert error < 1e-5, f"{entry.name} on {config.label()}: max error {error:.2e} against the oracle"


def test_a_wrong_scale_would_be_caught():
    """The comparison above can fail: a core with the default 1/sqrt(d) replaced is off."""
    config = CONFIGS[0]
    spec = config.spec()
    arrays = head_arrays(spec, config, "BLHD")
    q, k, v = (arrays[n] for n in ("query", "key", "value"))
    wrong = dataclasses.replace(spec, scale=1.0)
    error = np.max(np.abs(_core_expected(wrong, q, k, v) - _core_expected(spec, q, k, v)))
    assert error > 1e-2


def test_head_arrays_lay_out_the_same_heads_both_ways():
    config = CONFIGS[2]
    spec = config.spec()
    blhd, bhld = head_arrays(spec, config, "BLHD"), head_arrays(spec, config, "BHLD")
    for name in blhd:
        np.testing.assert_array_equal(blhd[name].swapaxes(1, 2), bhld[name], err_msg=name)
    assert blhd["key"].shape == (config.batch, config.L_k, spec.H_kv, spec.d_k)
    with pytest.raises(ValueError, match="layout"):
        head_arrays(spec, config, "LBHD")


def _gpu_backend(framework: str):
    available, reason = framework_status(framework)
    if not available:
        pytest.skip(reason)
    backend = load_backend(framework)
    if "gpu" not in backend.devices():
        pytest.skip(f"{framework} sees no GPU here")
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_on_a_gpu_each_kernel_matches_the_oracle_in_bfloat16(entry, causal):
    """FlashAttention's rule: no worse than 3x a plain bfloat16 computation, plus one ulp."""
    backend = _gpu_backend(entry.framework)
    config = Config(batch=2, L_q=128, L_k=128, d_model=256, heads=4, kv_heads=4, dtype="bfloat16",
                    causal=causal, device="gpu")
    spec = config.spec()
    try:
        fn = load_factory(entry)(spec)
    except Unsupported as exc:
        pytest.skip(str(exc))
    arrays = head_arrays(spec, config, fn.layout)
    to_blhd = (lambda a: a.swapaxes(1, 2)) if fn.layout == "BHLD" else (lambda a: a)
    tensors = [backend.tensor(arrays[n], "bfloat16", "gpu") for n in ("query", "key", "value")]
    try:
        actual = to_blhd(backend.to_numpy(fn({}, *tensors)))
    except Unsupported as exc:
        pytest.skip(str(exc))
    rounded = [backend.to_numpy(t) for t in tensors]  # the inputs as the kernel got them
    heads = [to_blhd(a) for a in rounded]
    flat = [x.reshape(*x.shape[:2], -1) for x in heads]
    expected = _core_expected(spec, *heads)
    baseline = oracle.forward(spec, _identity_weights(spec), *flat, precision="bfloat16").reshape(expected.shape)
    bound = 3 * np.max(np.abs(baseline - expected)) + 2.0 ** -7 * np.max(np.abs(expected))
    error = np.max(np.abs(actual - expected))
    assert error <= bound, f"{entry.name} on {config.label()}: error {error:.3g} > bound {bound:.3g}"
