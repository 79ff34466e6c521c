"""Our multi-head attention in JAX (SPEC 3), as pure functions, following the contract in
``attnsuite.impls.ours``. Heads are (B, L, heads, d), JAX's own layout, which
``jax.nn.dot_product_attention`` takes as is.

- ``explicit(spec)``: every step of the spec written out, like JAX's ``lax_reference.py``.
- ``fused(spec)``: the attention core on ``jax.nn.dot_product_attention``, falling back to
  the explicit core only for what that function cannot express (see ``_kernel_can_run``).
  On a GPU it asks for cuDNN's kernel where cuDNN takes the case (``kernel_implementation``).
- ``init(spec, rng)`` and ``apply(spec, params, query, key, value, ...)``: the same layer
  for use in a model; jit it with ``jax.jit(apply, static_argnames=APPLY_STATIC)``.
- ``init_cache(spec, params, batch_size)`` and ``decode(spec, params, cache, query, key,
  value, fused=...)``: decoding with a key/value cache, as pure functions.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

from attnsuite.impls.ops.jax import check_mask_and_bias, output, project, rope_qk, visibility
from attnsuite.impls.oracle import structural_rows_with_keys
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import weight_shapes

__all__ = ["project", "visibility", "masked_softmax", "dropout", "explicit_attention",
           "fused_attention", "project_qkv", "attention_fn", "explicit", "fused", "kernel", "init",
           "apply", "init_cache", "decode",
           "APPLY_STATIC", "kernel_implementation"]

APPLY_STATIC = ("spec", "training", "fused")


def masked_softmax(logits, visible) -> jax.Array:
    """Softmax over the visible keys of each row, computed in at least float32. A row
    with no visible key is all zeros and passes no gradient (and no NaN) back."""
    x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if visible is not None:
        x = jnp.where(visible, x, -jnp.inf)
    # The shift only keeps exp from overflowing: the result does not depend on it, so no
    # gradient goes through it. An empty row's max is -inf; shift it by 0 instead.
    shift = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    # Invisible keys: exp(-inf) = 0, whose derivative is 0 as well, so no 0 * inf below.
    weights = jnp.exp(x - shift)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return (weights / jnp.where(total > 0, total, 1.0)).astype(logits.dtype)


def dropout(probs, rate: float, seed) -> jax.Array:
    """Zero each weight with probability ``rate``; scale the kept ones by 1 / (1 - rate).
    Drawn from ``jax.random.key(seed)``: JAX has no global random state to fall back on."""
    keep = jax.random.bernoulli(jax.random.key(seed), 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


def explicit_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                       seed=None) -> jax.Array:
    """(B, L_q, H, d_k), (B, L_k, H_kv, d_k), (B, L_k, H_kv, d_v) -> (B, L_q, H, d_v)."""
    k = jnp.repeat(k, spec.group_size, axis=2)                          # (B, L_k, H, d_k)
    v = jnp.repeat(v, spec.group_size, axis=2)                          # (B, L_k, H, d_v)
    logits = spec.logit_scale * jnp.einsum("bqhd,bkhd->bhqk", q, k)     # (B, H, L_q, L_k)
    if spec.softcap is not None:
        logits = spec.softcap * jnp.tanh(logits / spec.softcap)
    if bias is not None:
        logits = logits + bias
    probs = masked_softmax(logits, visibility(spec, q.shape[1], k.shape[1], mask))
    if dropout_rate:
        probs = dropout(probs, dropout_rate, seed)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)                      # (B, L_q, H, d_v)


def _kernel_can_run(spec: AttentionSpec, dtype, dropout_rate: float) -> bool:
    # jax.nn.dot_product_attention has no softcap and no dropout, and it runs its softmax
    # in float32 whatever the input dtype, so in float64 it is only float32-accurate.
    return spec.softcap is None and not dropout_rate and dtype != jnp.float64


def fused_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                    seed=None) -> jax.Array:
    """What ``explicit_attention`` computes, on ``jax.nn.dot_product_attention``, which
    does GQA itself from the fewer kv heads.

    Without a user mask and under top-left rules (the common case) nothing of size
    L_q x L_k is built here: the rules reach the kernel as ``is_causal`` and
    ``local_window_size``, and the rows that see no key are found in O(L_q).
    """
    if not _kernel_can_run(spec, q.dtype, dropout_rate):
        return explicit_attention(spec, q, k, v, mask, bias, dropout_rate, seed)
    L_q, L_k = q.shape[1], k.shape[1]
    rules = _kernel_rules(spec, L_q, L_k)
    if rules is None:
        # The kernel's rules count from the top-left corner: bottom-right goes in as an
        # (L_q, L_k) mask, which costs what a user's mask does.
        visible = visibility(spec, L_q, L_k, mask)
        out = _attend(spec, q, k, v, _as_4d(bias), _as_4d(visible), is_causal=False, window=None)
        return _zero_rows_without_keys(out, visible)

    # Under top-left rules the rows that see a key are the first n, and n < L_q only where
    # a window ends before the last query (L_q > L_k + left). The kernel runs on those n
    # rows alone and the rest are zeros, gradient included: so it never meets a row with
    # no key, where XLA gives a mean of the values and cuDNN's result is not documented.
    n = int(structural_rows_with_keys(spec, L_q, L_k).sum())
    out = _attend(spec, q[:, :n], k, v, _first_rows(_as_4d(bias), n), _first_rows(_as_4d(mask), n),
                  *rules)                                               # (B, n, H, d_v)
    if mask is not None:
        out = _zero_rows_without_keys(out, _first_rows(_as_4d(visibility(spec, L_q, L_k, mask)), n))
    return out if n == L_q else jnp.pad(out, [(0, 0), (0, L_q - n), (0, 0), (0, 0)])  # (B, L_q, H, d_v)


def attention_fn(spec: AttentionSpec, core):
    """The SPEC 5 ``fn`` around an attention core (``explicit_attention`` or
    ``fused_attention``), with ``fn.init_cache`` and ``fn.decode`` on the same core."""
    is_fused = core is fused_attention

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        return apply(spec, params, query, key, value, mask, bias, training=training, seed=seed,
                     fused=is_fused)
    fn.init_cache = functools.partial(init_cache, spec)
    fn.decode = _compiled(functools.partial(decode, spec, fused=is_fused))
    return fn


def _compiled(step):
    """``step`` under ``jax.jit``: op by op, every primitive would compile anew for each
    cache length. Where XLA rejects the whole program but runs its ops one by one
    (float16 attention accumulated in float32 on CPU: "precision F16_F16_F32 is not
    supported by dot_general"), the step runs eagerly; any other error comes back from
    that run as well."""
    compiled = jax.jit(step)

    def run(*args):
        try:
            return compiled(*args)
        except ValueError:
            return step(*args)
    return run


def explicit(spec: AttentionSpec):
    return attention_fn(spec, explicit_attention)


def fused(spec: AttentionSpec):
    return attention_fn(spec, fused_attention)


def kernel(spec: AttentionSpec):
    """``fused_attention`` alone, for the kernel benchmark (``attnsuite.impls.kernels``)."""
    def fn(params, q, k, v):
        return fused_attention(spec, q, k, v)
    fn.layout = "BLHD"
    return fn


@functools.partial(jax.jit, static_argnames=("spec", "dtype"))  # one compile, not one per draw
def init(spec: AttentionSpec, rng: jax.Array, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Canonical params (SPEC 2): weights ~ N(0, 1/fan_in), zero biases."""
    shapes = weight_shapes(spec)
    keys = jax.random.split(rng, len(shapes))
    return {
        name: (jax.random.normal(k, shape, dtype) * shape[0] ** -0.5 if name.startswith("w")
               else jnp.zeros(shape, dtype))
        for (name, shape), k in zip(shapes.items(), keys)
    }


def apply(spec: AttentionSpec, params, query, key, value, mask=None, bias=None, *,
          training: bool = False, seed=None, fused: bool = True) -> jax.Array:
    """out, shape (B, L_q, E_o). ``mask``: bool, True = may attend; ``bias``: added to
    the logits; both rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k). Dropout acts only when
    ``training``, drawn from ``jax.random.key(seed)``."""
    check_mask_and_bias(mask, bias)
    dropout_rate = spec.dropout if training else 0.0
    if dropout_rate and seed is None:
        raise ValueError("seed: training with dropout > 0 needs a seed")
    core = fused_attention if fused else explicit_attention

    with _matmul_precision(jnp.result_type(query, key, value, *params.values())):
        q, k, v = project_qkv(spec, params, query, key, value)
        heads = core(spec, q, k, v, mask, bias, dropout_rate, seed)     # (B, L_q, H, d_v)
        return output(spec, params, heads)                              # (B, L_q, E_o)


def project_qkv(spec: AttentionSpec, params, query, key, value, start: int = 0):
    """Q (B, L_q, H, d_k), K (B, L_k, H_kv, d_k), V (B, L_k, H_kv, d_v): projected, Q and K
    rotated at their positions (``start`` tokens before these: a decoding step's cache)."""
    q, k = rope_qk(spec, project(spec, params, query, "q"), project(spec, params, key, "k"), start)
    return q, k, project(spec, params, value, "v")


def init_cache(spec: AttentionSpec, params, batch_size: int) -> dict[str, jax.Array]:
    """An empty cache for ``decode``: {"key", "value"}, the projected (and rotated) keys
    and values so far, (B, L, H_kv, d)."""
    dtype = params["wk"].dtype
    return {"key": jnp.zeros((batch_size, 0, spec.H_kv, spec.d_k), dtype),
            "value": jnp.zeros((batch_size, 0, spec.H_kv, spec.d_v), dtype)}


def decode(spec: AttentionSpec, params, cache, query, key, value, *, fused: bool = True):
    """(out, cache): one decoding step (protocol: ``attnsuite.conformance.decode``) on the
    new tokens only, a pure function (jit it with ``static_argnames=("spec", "fused")``;
    each cache length is a new shape). New queries are the last of the keys so far: the
    causal rule is bottom-right, and the window counts from there."""
    step_spec = spec.replace(causal="bottom_right") if spec.causal else spec
    core = fused_attention if fused else explicit_attention
    with _matmul_precision(jnp.result_type(query, key, value, *params.values())):
        q, k, v = project_qkv(spec, params, query, key, value, start=cache["key"].shape[1])
        cache = {"key": jnp.concatenate([cache["key"], k], axis=1),
                 "value": jnp.concatenate([cache["value"], v], axis=1)}
        heads = core(step_spec, q, cache["key"], cache["value"])        # (B, L_new, H, d_v)
        return output(spec, params, heads), cache


def _matmul_precision(dtype):
    """XLA on GPU runs float32 matmuls in TF32 by default (errors near 1e-3), which the
    float32 bound rejects: full precision there (no effect on CPU). The backward pass
    inherits it, as precision is fixed when each matmul is traced. float16 and bfloat16
    matmuls have nothing to gain from it, so they keep the default (and the fastest)."""
    if dtype in (jnp.float16, jnp.bfloat16):
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")


def _as_4d(x):
    return x if x is None or x.ndim == 4 else x[None, None]


def _kernel_rules(spec: AttentionSpec, L_q: int, L_k: int) -> tuple[bool, tuple | None] | None:
    """(is_causal, local_window_size): the spec's rules in the kernel's terms, which count
    from the top-left corner; None where they cannot say them (bottom-right, L_q != L_k)."""
    if spec.causal == "bottom_right" and L_q != L_k:  # with L_q == L_k the corners agree
        return None
    # A window with right == 0 is the causal rule plus a left window. Said that way cuDNN
    # runs it as its causal mask with a sliding window, the form of window it documents
    # (it rejects right > 0 without is_causal; XLA reads both forms the same).
    window_is_causal = spec.window is not None and spec.window[1] == 0
    return spec.causal is not None or window_is_causal, spec.window


def _first_rows(x, n: int):
    """x, rank 4 (or None), cut to the first n query rows unless broadcast along them."""
    return x if x is None or x.shape[-2] <= n else x[..., :n, :]


def _zero_rows_without_keys(out, visible) -> jax.Array:
    """``out`` (B, L_q, H, d_v) with zeros in the rows where ``visible`` has no key.

    Such a row comes back from the kernel as a mean of values (the mask reaches XLA and
    cuDNN alike as a finite large negative logit); the spec wants zeros. The kernel's
    output and gradient there are finite, so the where passes a clean zero gradient."""
    rows = jnp.any(_as_4d(visible), axis=-1)  # (B|1, H|1, L_q)
    return jnp.where(jnp.swapaxes(rows, 1, 2)[..., None], out, 0.0)


def _attend(spec: AttentionSpec, q, k, v, bias, mask, is_causal: bool, window) -> jax.Array:
    """``jax.nn.dot_product_attention`` on (B, L, heads, d) inputs, on cuDNN where it
    takes the call (see ``kernel_implementation``), else on XLA: (B, L_q, H, d_v)."""
    # It needs one head size for q, k and v: zero-padding the smaller ones changes no
    # dot product (the scale is passed explicitly), and the padded outputs are cut off.
    size = max(spec.d_k, spec.d_v)

    def pad(x):
        missing = size - x.shape[-1]
        return jnp.pad(x, [(0, 0)] * 3 + [(0, missing)]) if missing else x

    args = (pad(q), pad(k), pad(v), bias, mask)
    options = {"scale": spec.logit_scale, "is_causal": is_causal, "local_window_size": window}
    implementation = kernel_implementation(*args, **options)
    # The choice shows as this scope in the jaxpr, in HLO op names and in profiles.
    with jax.named_scope(f"dot_product_attention_{implementation}"):
        out = jax.nn.dot_product_attention(*args, **options, implementation=implementation)
    return out[..., :spec.d_v]


# cuDNN's fused attention takes these input dtypes (and fp8, which we never pass).
CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)


def kernel_implementation(query, key, value, bias=None, mask=None, *, backend: str | None = None,
                          **options) -> str:
    """The ``implementation`` to give ``jax.nn.dot_product_attention(query, key, value,
    bias, mask, **options)``: "cudnn" where cuDNN's kernel takes the call, forward and
    backward, on ``backend`` (default ``jax.default_backend()``); "xla" everywhere else.

    Why ask: left alone (``implementation=None``) the function runs its XLA version even
    on a GPU, which builds the L_q x L_k logits and, on an H100 (bf16, B=4, H=16,
    L=4096, d=128, forward), runs at a sixth of cuDNN's flash-attention kernel: 116
    against 652 TFLOP/s.

    cuDNN declines a call while JAX traces it, raising ValueError, NotImplementedError or
    RuntimeError (``jax/_src/nn/functions.py`` and ``jax/_src/cudnn/
    fused_attention_stablehlo.py``, the same checks in jax 0.10.2 and 0.11.2): inputs
    other than float16/bfloat16 (or fp8); a head size not a multiple of 8, or above 256
    (above 128 before Hopper); a right window without ``is_causal``; with a mask or a
    bias, an odd L_q or L_k once differentiated; no cuDNN at all. That odd-length check
    sits in the forward rule of a ``custom_vjp``, which JAX traces only when it
    differentiates: for ``grad(jit(f))``, after f has been traced and out of reach of a
    try around the call. So the question is put by tracing the forward and backward
    passes abstractly (``jax.eval_shape``: nothing is compiled or run); forward-only code
    with a mask or bias and an odd length goes to XLA as well. What cuDNN can only refuse
    when XLA compiles the program is not caught here.
    """
    if (backend or jax.default_backend()) != "gpu" or query.dtype not in CUDNN_DTYPES:
        return "xla"

    def forward_and_backward(query, key, value, bias, mask):
        def attend(query, key, value):
            return jax.nn.dot_product_attention(query, key, value, bias, mask,
                                                implementation="cudnn", **options)
        out, pullback = jax.vjp(attend, query, key, value)
        return pullback(out)

    shapes = [None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype)
              for x in (query, key, value, bias, mask)]
    try:
        jax.eval_shape(forward_and_backward, *shapes)
    except (ValueError, RuntimeError):  # NotImplementedError is a RuntimeError
        return "xla"
    return "cudnn"
