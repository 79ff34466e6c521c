"""Our multi-head attention in JAX (SPEC 3), as pure functions.

- ``explicit(spec)``: every step of the spec written out, like JAX's ``lax_reference.py``.
- ``fused(spec)``: the attention core on ``jax.nn.dot_product_attention``, falling back to
  the explicit core only for what that function cannot express (see ``_kernel_can_run``).
- ``init(spec, rng)`` and ``apply(spec, params, query, key, value, ...)``: the same layer
  for use in a model; jit it with ``jax.jit(apply, static_argnames=APPLY_STATIC)``.

Heads stay in JAX's layout, (B, L, heads, head_size), which ``jax.nn.dot_product_attention``
takes as is. Query head h reads key/value head h // group_size (repeat-interleave).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from impls.oracle import structural_mask
from impls.spec import AttentionSpec
from impls.weights import weight_shapes

APPLY_STATIC = ("spec", "training", "fused")


def explicit(spec: AttentionSpec):
    return _factory(spec, fused=False)


def fused(spec: AttentionSpec):
    return _factory(spec, fused=True)


def _factory(spec: AttentionSpec, fused: bool):
    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        return apply(spec, params, query, key, value, mask, bias, training=training, seed=seed,
                     fused=fused)
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
    _check_rank("mask", mask)
    _check_rank("bias", bias)
    if mask is not None and mask.dtype != jnp.bool_:
        raise ValueError(f"mask: must be boolean (True = may attend), got dtype {mask.dtype}")
    dropping = training and spec.dropout > 0
    if dropping and seed is None:
        raise ValueError("seed: training with dropout > 0 needs a seed")
    dropout_key = jax.random.key(seed) if dropping else None

    # XLA on GPU runs float32 matmuls in TF32 by default (errors near 1e-3), which the
    # float32 bound rejects; ask for full precision (no effect on CPU). The backward pass
    # inherits it: precision is fixed when each matmul is traced.
    with jax.default_matmul_precision("highest"):
        q = project(spec, params, query, "q")
        k = project(spec, params, key, "k")
        v = project(spec, params, value, "v")
        if fused and _kernel_can_run(spec, q.dtype, dropping):
            heads = fused_attention(spec, q, k, v, mask, bias)
        else:
            heads = explicit_attention(spec, q, k, v, mask, bias, dropout_key)
        return output(spec, params, heads)


def _kernel_can_run(spec: AttentionSpec, dtype, dropping: bool) -> bool:
    # jax.nn.dot_product_attention has no softcap and no dropout, and it runs its softmax
    # in float32 whatever the input dtype, so in float64 it is only float32-accurate.
    return spec.softcap is None and not dropping and dtype != jnp.float64


def _check_rank(name: str, array) -> None:
    if array is not None and array.ndim not in (2, 4):
        raise ValueError(f"{name}: must have rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k), got "
                         f"shape {array.shape}; rank 3 is ambiguous when B == H")


# ---------------------------------------------------------------------------------------
# Projections, shared by both paths (and by the jax.nn.dot_product_attention built-in).

def project(spec: AttentionSpec, params, x, name: str) -> jax.Array:
    """x @ w{name} + b{name}, split into heads: (B, L, heads, head_size)."""
    y = x @ params["w" + name]
    if spec.bias:
        y = y + params["b" + name]
    heads = spec.H if name == "q" else spec.H_kv
    return y.reshape(*y.shape[:-1], heads, -1)


def output(spec: AttentionSpec, params, heads) -> jax.Array:
    """(B, L_q, H, d_v) -> concat_h @ wo + bo, shape (B, L_q, E_o)."""
    out = heads.reshape(*heads.shape[:-2], -1) @ params["wo"]
    return out + params["bo"] if spec.bias else out


def visibility(spec: AttentionSpec, L_q: int, L_k: int, mask=None) -> jax.Array:
    """Bool, broadcastable to (B, H, L_q, L_k): the user mask and the causal/window rules."""
    visible = jnp.asarray(structural_mask(spec, L_q, L_k))
    return visible if mask is None else visible & mask


def _as_4d(x):
    return x if x is None or x.ndim == 4 else x[None, None]


# ---------------------------------------------------------------------------------------
# The explicit path.

def explicit_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_key=None):
    """(B, L_q, H, d_k), (B, L_k, H_kv, d_k), (B, L_k, H_kv, d_v) -> (B, L_q, H, d_v)."""
    k = jnp.repeat(k, spec.group_size, axis=2)
    v = jnp.repeat(v, spec.group_size, axis=2)
    logits = spec.logit_scale * jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if spec.softcap is not None:
        logits = spec.softcap * jnp.tanh(logits / spec.softcap)
    if bias is not None:
        logits = logits + bias
    probs = masked_softmax(logits, visibility(spec, q.shape[1], k.shape[1], mask))
    if dropout_key is not None:
        probs = dropout(probs, spec.dropout, dropout_key)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def masked_softmax(logits, visible) -> jax.Array:
    """Softmax over the visible keys of each row, computed in at least float32. A row
    with no visible key is all zeros and passes no gradient (and no NaN) back."""
    x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    x = jnp.where(visible, x, -jnp.inf)
    # The shift only keeps exp from overflowing: the result does not depend on it, so no
    # gradient goes through it. An empty row's max is -inf; shift it by 0 instead.
    shift = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    # Invisible keys: exp(-inf) = 0, whose derivative is 0 as well, so no 0 * inf below.
    weights = jnp.exp(x - shift)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return (weights / jnp.where(total > 0, total, 1.0)).astype(logits.dtype)


def dropout(probs, rate: float, key: jax.Array) -> jax.Array:
    """Zero each weight with probability ``rate``; scale the kept ones by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


# ---------------------------------------------------------------------------------------
# The fused path.

def fused_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None) -> jax.Array:
    """The same contract as ``explicit_attention`` (no dropout), on
    ``jax.nn.dot_product_attention``, which does GQA itself from the fewer kv heads."""
    L_q, L_k = q.shape[1], k.shape[1]
    # Its causal and window rules are top-left aligned; bottom-right goes in the mask.
    native = spec.causal != "bottom_right"
    kernel_mask = mask if native else visibility(spec, L_q, L_k, mask)
    # It needs one head size for q, k and v: zero-padding the smaller ones changes no
    # dot product (the scale is passed explicitly), and the padded outputs are cut off.
    size = max(spec.d_k, spec.d_v)

    def pad(x):
        missing = size - x.shape[-1]
        return jnp.pad(x, [(0, 0)] * 3 + [(0, missing)]) if missing else x

    out = jax.nn.dot_product_attention(
        pad(q), pad(k), pad(v), bias=_as_4d(bias), mask=_as_4d(kernel_mask),
        scale=spec.logit_scale, is_causal=native and spec.causal == "top_left",
        local_window_size=spec.window if native else None)[..., :spec.d_v]
    # A row with no visible key comes back as the mean of all values (its logits are all
    # the same large negative number); the spec wants zeros. The kernel's output and
    # gradient are finite, so the where passes a clean zero gradient.
    rows = jnp.any(_as_4d(visibility(spec, L_q, L_k, mask)), axis=-1)  # (B|1, H|1, L_q)
    return jnp.where(jnp.swapaxes(rows, 1, 2)[..., None], out, 0.0)
