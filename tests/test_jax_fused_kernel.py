"""Our fused JAX path on a GPU, checked without one: which implementation of
``jax.nn.dot_product_attention`` it asks for (cuDNN on a GPU in float16/bfloat16, XLA
elsewhere and wherever cuDNN declines), the matmul precision it sets, and that it builds
no L_q x L_k array where none is needed (memory linear in length at 32k). The numbers
themselves are checked against the oracle in tests/test_ours.py and by the gate."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from attnsuite.conformance import tolerance
from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import reference
from attnsuite.impls import AttentionSpec, init_weights, oracle

jb = require("jax")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

from attnsuite.impls.ours import jax as ours  # noqa: E402

S = AttentionSpec
REAL_KERNEL = jax.nn.dot_product_attention


# ---------------------------------------------------------------------------------------
# Which implementation: ours.kernel_implementation, with a stand-in for the kernel.

class FakeKernel:
    """Stands in for jax.nn.dot_product_attention: records each ``implementation`` asked
    for, declines "cudnn" with ``error`` if given (in the backward rule alone when
    ``in_backward``, as cuDNN does for odd lengths with a mask), else computes with XLA."""

    def __init__(self, error: Exception | None = None, in_backward: bool = False):
        self.calls, self.masks = [], []
        self.error, self.in_backward = error, in_backward

    def __call__(self, query, key, value, bias=None, mask=None, *, implementation=None, **options):
        self.calls.append(implementation)
        self.masks.append(mask)
        if implementation == "cudnn" and self.error is not None:
            if not self.in_backward:
                raise self.error
            return self._declining_in_backward(query)
        return REAL_KERNEL(query, key, value, bias, mask, implementation="xla", **options)

    def _declining_in_backward(self, query):
        @jax.custom_vjp
        def kernel(q):
            return q

        def forward_rule(q):
            raise self.error

        kernel.defvjp(forward_rule, lambda _, ct: (ct,))
        return kernel(query)


def qkv(dtype, L=8, heads=2, d=8):
    x = jnp.ones((1, L, heads, d), dtype)
    return x, x, x


@pytest.mark.parametrize("backend, dtype, decline, want", [
    ("cpu", jnp.bfloat16, None, "xla"),
    ("gpu", jnp.bfloat16, None, "cudnn"),
    ("gpu", jnp.float16, None, "cudnn"),
    ("gpu", jnp.float32, None, "xla"),
    ("gpu", jnp.bfloat16, dict(error=NotImplementedError("head dim")), "xla"),
    ("gpu", jnp.bfloat16, dict(error=ValueError("right window")), "xla"),
    ("gpu", jnp.bfloat16, dict(error=RuntimeError("cuDNN is not detected.")), "xla"),
    ("gpu", jnp.float16, dict(error=NotImplementedError("odd lengths"), in_backward=True), "xla"),
], ids=["cpu-bf16", "gpu-bf16", "gpu-f16", "gpu-f32", "declines-head-size",
        "declines-window", "no-cudnn", "declines-in-backward"])
def test_cudnn_is_asked_for_on_a_gpu_in_16_bits_unless_it_declines(monkeypatch, backend, dtype,
                                                                    decline, want):
    kernel = FakeKernel(**(decline or {}))
    monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)
    got = ours.kernel_implementation(*qkv(dtype), backend=backend, is_causal=True)
    where = f"{backend} {jnp.dtype(dtype).name} declining {decline}"
    assert got == want, f"{where}: chose {got}"
    # cuDNN is asked exactly where it could run: a GPU, 16-bit inputs.
    asked = backend == "gpu" and dtype != jnp.float32
    assert ("cudnn" in kernel.calls) == asked, f"{where}: kernel calls {kernel.calls}"


@pytest.mark.parametrize("options, L, d, mask, runs_on_cudnn", [
    ({"is_causal": True}, 8, 64, False, True),
    ({"is_causal": True, "local_window_size": (3, 0)}, 8, 128, False, True),
    ({}, 8, 12, False, False),                                        # head size not 8k
    ({"local_window_size": (2, 1)}, 8, 64, False, False),             # right window, no causal
    ({}, 7, 64, True, False),                                         # mask, odd length, backward
], ids=["causal", "causal-window", "head-12", "right-window", "odd-length-mask"])
def test_the_real_kernel_decides(options, L, d, mask, runs_on_cudnn):
    """Against the real jax.nn.dot_product_attention: on a GPU cuDNN takes or declines
    each case; without one it declines them all (no cuDNN), so we ask as a GPU would."""
    on_gpu = jax.default_backend() == "gpu"
    args = (*qkv(jnp.bfloat16, L=L, d=d), None, jnp.ones((1, 1, L, L), bool) if mask else None)
    got = ours.kernel_implementation(*args, backend="gpu", **options)
    want = "cudnn" if on_gpu and runs_on_cudnn else "xla"
    assert got == want, f"{options} L={L} d={d} mask={mask} on {jax.default_backend()}: chose {got}"


# ---------------------------------------------------------------------------------------
# The layer: what it asks for, through the suite's adapter (jitted forward and vjp).

SPEC = S(16, 2, causal="top_left", window=(3, 0))


def layer_inputs(spec, L_q, L_k, seed=0):
    rng = np.random.default_rng(seed)
    return (init_weights(spec, seed), rng.standard_normal((1, L_q, spec.E)),
            rng.standard_normal((1, L_k, spec.E_k)), rng.standard_normal((1, L_k, spec.E_v)),
            rng.standard_normal((1, L_q, spec.E_o)))


@pytest.mark.parametrize("dtype, want", [("bfloat16", "cudnn"), ("float16", "cudnn"),
                                         ("float32", "xla")])
def test_the_layer_on_a_gpu_asks_for_cudnn_in_16_bits(monkeypatch, dtype, want):
    kernel = FakeKernel()
    monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    w, q, k, v, d_out = layer_inputs(SPEC, 8, 8)
    jb.forward_and_vjp(ours.fused(SPEC), w, q, k, v, d_out, dtype=dtype)
    assert kernel.calls and set(kernel.calls) == {want}, f"{dtype}: kernel calls {kernel.calls}"

    params, x = jb.params(w, dtype), jb.tensor(q, dtype)
    scopes = {str(eqn.source_info.name_stack)
              for eqn in jax.make_jaxpr(ours.fused(SPEC))(params, x, x, x).jaxpr.eqns}
    assert any(f"dot_product_attention_{want}" in s for s in scopes), f"{dtype}: scopes {scopes}"


def test_the_layer_falls_back_to_xla_where_cudnn_declines(monkeypatch):
    kernel = FakeKernel(NotImplementedError("declined"), in_backward=True)
    monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    w, q, k, v, d_out = layer_inputs(SPEC, 8, 8)
    out, _ = jb.forward_and_vjp(ours.fused(SPEC), w, q, k, v, d_out, dtype="bfloat16")
    assert kernel.calls[-1] == "xla", f"kernel calls {kernel.calls}"
    want = oracle.forward(SPEC, w, q, k, v)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err < 0.05, f"bfloat16 output after the fallback is off by {err:.3g} of max|out|"


@pytest.mark.parametrize("dtype, highest", [("float32", True), ("float64", True),
                                            ("bfloat16", False), ("float16", False)])
@pytest.mark.parametrize("path", ["explicit", "fused"])
def test_full_matmul_precision_only_in_float32_and_wider(path, dtype, highest):
    w, q, k, v, _ = layer_inputs(SPEC, 8, 8)
    params, x = jb.params(w, dtype), jb.tensor(q, dtype)
    dots = [eqn for eqn in all_eqns(jax.make_jaxpr(getattr(ours, path)(SPEC))(params, x, x, x))
            if eqn.primitive.name == "dot_general"]
    full = [eqn.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2 for eqn in dots]
    assert dots and all(f == highest for f in full), (
        f"{path} {dtype}: HIGHEST on {sum(full)} of {len(dots)} matmuls, expected "
        f"{'all' if highest else 'none'}")


# ---------------------------------------------------------------------------------------
# No L_q x L_k array: with no mask and top-left rules, nothing our code adds is quadratic.

def all_eqns(closed):
    """Every equation of a ClosedJaxpr, nested jaxprs (jit, custom_vjp, ...) included."""
    stack = [closed.jaxpr]
    while stack:
        jaxpr = stack.pop()
        for eqn in jaxpr.eqns:
            yield eqn
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if hasattr(sub, "eqns"):
                        stack.append(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        stack.append(sub.jaxpr)


def all_shapes(closed):
    shapes = [np.shape(c) for c in closed.consts]
    for eqn in all_eqns(closed):
        shapes += [v.aval.shape for v in (*eqn.invars, *eqn.outvars) if hasattr(v.aval, "shape")]
    return shapes


LONG = 256  # every other size in these programs is below it


def shape_stub(query, key, value, bias=None, mask=None, **options):
    """The kernel's output shape from its query alone: the XLA kernel builds the L_q x L_k
    logits itself, and only what our code adds around it is under test."""
    assert mask is None, "a mask reached the kernel"
    return query * 1


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("spec, L_q, L_k", [
    (S(16, 2), 512, 384),
    (S(16, 2, causal="top_left"), 384, 512),
    (S(16, 2, causal="top_left", window=(16, 0)), 512, 512),
    (S(16, 2, window=(8, 4)), 512, 384),               # rows 392.. see no key
    (S(16, 2, num_kv_heads=1, head_dim=8, value_head_dim=4, causal="top_left"), 512, 384),
    (S(16, 2, causal="bottom_right", window=(4, 0)), 512, 512),
], ids=str)
def test_no_quadratic_array_without_a_mask(monkeypatch, backend, spec, L_q, L_k):
    monkeypatch.setattr(jax.nn, "dot_product_attention", shape_stub)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    w, q, k, v, d_out = layer_inputs(spec, L_q, L_k)
    args = (jb.params(w, "bfloat16"), *(jb.tensor(a, "bfloat16") for a in (q, k, v)))

    def forward_and_vjp(*args):
        out, pullback = jax.vjp(ours.fused(spec), *args)
        return out, pullback(out)

    quadratic = [s for s in all_shapes(jax.make_jaxpr(forward_and_vjp)(*args))
                 if sum(n >= LONG for n in s) >= 2]
    assert not quadratic, f"{spec} L_q={L_q} L_k={L_k} on {backend}: built {quadratic[:3]}"


# ---------------------------------------------------------------------------------------
# On a GPU: cuDNN's results against the oracle, and memory at 32k. These cases have head
# sizes that cuDNN takes (multiples of 8), unlike the gate's default catalog.

def needs_gpu(test):
    """Marked ``gpu`` (``.ci/gpu check`` runs ``pytest -m gpu``), skipped without one."""
    skip = pytest.mark.skipif("gpu" not in jb.devices(),
                              reason=f"needs a GPU (jax devices here: {jb.devices()})")
    return pytest.mark.gpu(skip(test))


# spec, L_q, L_k, mask, bias, and the implementation each gets on a GPU. No projection
# biases: their gradients are sums over B * L rows, which 16-bit arithmetic rounds well
# past the rule's baseline (one rounding) at these lengths, whatever the kernel does.
GPU_CASES = [
    (S(128, 2), 64, 64, "none", None, "cudnn"),
    (S(128, 2, causal="top_left"), 64, 64, "none", None, "cudnn"),
    (S(64, 4, num_kv_heads=2, causal="top_left", window=(16, 0)), 48, 80, "none", None, "cudnn"),
    (S(64, 4, window=(8, 0)), 80, 48, "none", None, "cudnn"),   # rows 56.. see no key
    (S(64, 4, head_dim=16, value_head_dim=8, causal="bottom_right"), 64, 64, "none", None, "cudnn"),
    (S(64, 4, causal="bottom_right"), 32, 64, "none", None, "cudnn"),  # the rule as a mask
    (S(64, 4, causal="top_left"), 64, 64, "random", None, "cudnn"),
    (S(64, 4), 64, 48, "fully_masked_rows", None, "cudnn"),
    (S(64, 4), 64, 64, "none", "random", "cudnn"),
    (S(64, 4), 63, 63, "random", None, "xla"),                  # a mask and odd lengths
    (S(64, 4, window=(2, 3)), 64, 64, "none", None, "xla"),     # a right window, no causal
]
GPU_PARAMS = [pytest.param(case, want, id=case.id) for case, want in (
    (Case(spec.replace(bias=False), 2, L_q, L_k, dtype, mask=mask, bias=bias), want)
    for spec, L_q, L_k, mask, bias, want in GPU_CASES for dtype in ("bfloat16", "float16"))]


@needs_gpu
@pytest.mark.parametrize("case, want", GPU_PARAMS)
def test_on_gpu_the_fused_path_matches_the_oracle(monkeypatch, case, want):
    calls = []

    def recording(*args, implementation=None, **options):
        calls.append(implementation)
        return REAL_KERNEL(*args, implementation=implementation, **options)

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    ref = reference(case, strict_fully_masked=True)
    data = ref.data
    out, grads = jb.forward_and_vjp(ours.fused(case.spec), data.weights, data.query, data.key,
                                    data.value, ref.d_out, data.mask, data.bias,
                                    dtype=case.dtype, device="gpu")
    assert calls and calls[-1] == want, f"{case.id}: kernel calls {calls}, expected {want}"
    verdicts = {"output": tolerance.compare(out, ref.out, case.dtype, baseline=ref.base_out)}
    scale = max(float(np.abs(g).max()) for g in ref.grads.values())
    for name, g in grads.items():
        verdicts[name] = tolerance.compare(g, ref.grads[name], case.dtype,
                                           baseline=ref.base_grads[name], gradient=True,
                                           scale_floor=scale, absolute=name == "bk")
    failed = {name: v.describe() for name, v in verdicts.items() if not v.ok}
    assert not failed, f"{case.id} on {want}: {failed}"


@needs_gpu
def test_on_gpu_memory_is_linear_in_length_at_32k():
    spec, L = S(128, 2, causal="top_left"), 32768   # head size 64
    params = jax.eval_shape(lambda: ours.init(spec, jax.random.key(0), jnp.bfloat16))
    x = jax.ShapeDtypeStruct((1, L, spec.E), jnp.bfloat16)

    def loss(params, x):
        return ours.fused(spec)(params, x, x, x).astype(jnp.float32).sum()

    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x)
    hlo = lowered.as_text()
    assert "__cudnn$fmhaSoftmax" in hlo and "__cudnn$fmhaSoftmaxBackward" in hlo, (
        "no cuDNN attention call in the forward and backward program")
    memory = lowered.compile().memory_analysis()
    if memory is None:
        pytest.skip("this jaxlib gives no memory analysis")
    # Anything L x L is at least 1 GiB (a boolean mask; one head's bfloat16 logits: 2 GiB);
    # everything linear here (activations, gradients, softmax statistics) is below 200 MiB.
    bound = L * L // 2
    assert memory.temp_size_in_bytes < bound, (
        f"L={L}: {memory.temp_size_in_bytes / 2**20:.0f} MiB of temporaries, bound "
        f"{bound / 2**20:.0f} MiB: something quadratic in length")
