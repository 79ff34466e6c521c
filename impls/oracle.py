"""The float64 NumPy oracle: SPEC section 3 as array code, and its hand-derived backward.

Shapes use the spec's letters: B batch, H query heads, H_kv key/value heads (each
shared by ``group_size`` = H / H_kv query heads), Lq and Lk lengths, dk and dv head
sizes. Every function is vectorised over batch and heads.

``precision`` (None, "float32", "float16" or "bfloat16") rounds the inputs, the weights
and every intermediate to that dtype: the plain low-precision computation that the
tolerance rule for float16/bfloat16 measures its baseline error with (SPEC section 6).
Matrix products accumulate exactly and round once (frameworks accumulate them in
float32); the bias gradients, sums over batch and length, round every partial sum
(``_low_precision_sum``).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights

_ROUNDING_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}


def rounding(precision: str | None):
    """The function that rounds a float64 array to ``precision`` and back."""
    if precision in (None, "float64"):
        return lambda a: a
    try:
        dtype = _ROUNDING_DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision: expected one of {list(_ROUNDING_DTYPES)}, got {precision!r}")
    return lambda a: np.asarray(a).astype(dtype).astype(np.float64)


# ---------------------------------------------------------------------------------------
# Which keys each query may see.

def structural_mask(spec: AttentionSpec, L_q: int, L_k: int) -> np.ndarray:
    """(L_q, L_k) bool: the causal and window rules of the spec (True = visible)."""
    i = np.arange(L_q)[:, None]
    j = np.arange(L_k)[None, :]
    shifted_i = i + (L_k - L_q) if spec.causal == "bottom_right" else i
    visible = np.ones((L_q, L_k), dtype=bool)
    if spec.causal is not None:
        visible &= j <= shifted_i
    if spec.window is not None:
        left, right = spec.window
        visible &= (j - shifted_i >= -left) & (j - shifted_i <= right)
    return visible


def structural_rows_with_keys(spec: AttentionSpec, L_q: int, L_k: int) -> np.ndarray:
    """(L_q,) bool: the query rows that the causal and window rules leave at least one key,
    i.e. ``structural_mask(spec, L_q, L_k).any(-1)`` without the (L_q, L_k) array.

    Row i sees the keys j with lo <= j <= hi, an interval: lo = max(0, i' - left), and
    hi = min(L_k - 1, i' if causal, i' + right), i' being i shifted by the causal alignment.
    """
    shifted_i = np.arange(L_q) + (L_k - L_q if spec.causal == "bottom_right" else 0)
    lo = np.zeros(L_q, dtype=np.int64)
    hi = np.full(L_q, L_k - 1, dtype=np.int64)
    if spec.causal is not None:
        hi = np.minimum(hi, shifted_i)
    if spec.window is not None:
        left, right = spec.window
        lo = np.maximum(lo, shifted_i - left)
        hi = np.minimum(hi, shifted_i + right)
    return lo <= hi


def visibility(spec: AttentionSpec, B: int, L_q: int, L_k: int, mask=None) -> np.ndarray:
    """(B, H, L_q, L_k) bool: the user mask combined with the structural rules."""
    visible = structural_mask(spec, L_q, L_k)
    if mask is not None:
        visible = visible & mask
    return np.broadcast_to(visible, (B, spec.H, L_q, L_k))


# ---------------------------------------------------------------------------------------
# Rotary positions (SPEC 2): where each query and key sits, and the rotation it gets.

def rope_positions(L_q: int, L_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the queries and keys: key j sits at j, query i at i + L_k - L_q (the
    queries are the last L_q tokens, as when decoding with a cache)."""
    return np.arange(L_q) + (L_k - L_q), np.arange(L_k)


def rope_angles(spec: AttentionSpec, positions: np.ndarray) -> np.ndarray:
    """(L, rotary_dim/2): position * theta ** (-2m / rotary_dim), in float64."""
    m = np.arange(spec.rotary_dim // 2, dtype=np.float64)
    frequencies = spec.rope.theta ** (-2.0 * m / spec.rotary_dim)
    return np.asarray(positions, dtype=np.float64)[:, None] * frequencies[None, :]


def _rope_pairs(spec: AttentionSpec) -> tuple[slice, slice]:
    """The features rotated together: (m, m + r/2) for "half", (2m, 2m + 1) "interleaved"."""
    r = spec.rotary_dim
    if spec.rope.style == "half":
        return slice(0, r // 2), slice(r // 2, r)
    return slice(0, r, 2), slice(1, r, 2)


def rotate(spec: AttentionSpec, x: np.ndarray, angles: np.ndarray, inverse: bool = False) -> np.ndarray:
    """x (..., L, d) with each position's feature pairs rotated by its angles (L, r/2);
    ``inverse`` rotates back (the rotation's transpose: the backward pass)."""
    if spec.rope is None:
        return x
    first, second = _rope_pairs(spec)
    cos, sin = np.cos(angles), np.sin(angles)
    if inverse:
        sin = -sin
    x1, x2 = x[..., first], x[..., second]
    out = x.copy()
    out[..., first] = x1 * cos - x2 * sin
    out[..., second] = x2 * cos + x1 * sin
    return out


# ---------------------------------------------------------------------------------------
# Input validation: every error names the argument and the shapes.

def _check_broadcastable(name: str, array, target: tuple[int, ...], kind) -> None:
    array = np.asarray(array)
    if kind is bool and array.dtype != bool:
        raise ValueError(f"{name}: must be a boolean array (True = may attend), got dtype {array.dtype}")
    if kind is float and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: must be a float array, got dtype {array.dtype}")
    if array.ndim not in (2, 4):
        raise ValueError(f"{name}: must have rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k), got shape "
                         f"{array.shape}; rank 3 is ambiguous when B == H")
    aligned = target[-array.ndim:]
    if any(a not in (1, t) for a, t in zip(array.shape, aligned)):
        raise ValueError(f"{name}: shape {array.shape} does not broadcast to (B, H, L_q, L_k) = {target}")


def check_inputs(spec: AttentionSpec, weights, query, key, value, mask=None, bias=None,
                 d_out=None) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit the spec."""
    check_weights(spec, weights)
    arrays = {"query": (query, spec.E), "key": (key, spec.E_k), "value": (value, spec.E_v)}
    for name, (array, features) in arrays.items():
        shape = np.shape(array)
        if len(shape) != 3 or shape[-1] != features:
            raise ValueError(f"{name}: expected shape (B, L, {features}), got {shape}")
    B, L_q, _ = np.shape(query)
    if np.shape(key)[0] != B or np.shape(value)[0] != B:
        raise ValueError(f"query, key, value: batch sizes differ: {np.shape(query)}, "
                         f"{np.shape(key)}, {np.shape(value)}")
    if np.shape(key)[1] != np.shape(value)[1]:
        raise ValueError(f"key, value: lengths differ: {np.shape(key)} vs {np.shape(value)}")
    target = (B, spec.H, L_q, np.shape(key)[1])
    if mask is not None:
        _check_broadcastable("mask", mask, target, bool)
    if bias is not None:
        _check_broadcastable("bias", bias, target, float)
    if d_out is not None and np.shape(d_out) != (B, L_q, spec.E_o):
        raise ValueError(f"d_out: expected shape {(B, L_q, spec.E_o)}, got {np.shape(d_out)}")


# ---------------------------------------------------------------------------------------
# Forward.

def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    B, L, width = x.shape
    return x.reshape(B, L, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, heads, L, d) -> (B, L, heads*d)."""
    B, heads, L, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, heads * d)


def _expand_kv(x: np.ndarray, group_size: int) -> np.ndarray:
    """(B, H_kv, L, d) -> (B, H, L, d): query head h reads key/value head h // group_size."""
    return np.repeat(x, group_size, axis=1)


def _sum_groups(x: np.ndarray, group_size: int) -> np.ndarray:
    """The adjoint of _expand_kv: (B, H, L, d) -> (B, H_kv, L, d)."""
    B, H, L, d = x.shape
    return x.reshape(B, H // group_size, group_size, L, d).sum(axis=2)


def _masked_softmax(logits: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Softmax over the visible keys of each row; a row with no visible key is all zeros."""
    e = np.where(visible, logits, -np.inf)
    row_max = e.max(axis=-1, keepdims=True)
    row_max[~np.isfinite(row_max)] = 0.0
    e -= row_max
    np.exp(e, out=e)  # exp(-inf) == 0: invisible keys drop out without a second pass
    total = e.sum(axis=-1, keepdims=True)
    total[~(total > 0)] = 1.0
    e /= total
    return e


class _Forward(NamedTuple):
    """Every intermediate the backward pass needs."""
    q: np.ndarray       # (B, H, Lq, dk), rotated where the spec has RoPE
    k: np.ndarray       # (B, H, Lk, dk), likewise, and expanded to H heads
    v: np.ndarray       # (B, H, Lk, dv), likewise
    tanh: np.ndarray | None  # tanh(S / c) when softcapped
    probs: np.ndarray   # (B, H, Lq, Lk)
    heads: np.ndarray   # (B, Lq, H*dv), the merged head outputs
    out: np.ndarray     # (B, Lq, E_o)


def _as_f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _forward(spec, weights, query, key, value, mask, bias, precision) -> _Forward:
    check_inputs(spec, weights, query, key, value, mask, bias)
    r = rounding(precision)
    w = {name: r(np.asarray(array, dtype=np.float64)) for name, array in weights.items()}
    query, key, value, bias = [None if a is None else r(a) for a in _as_f64(query, key, value, bias)]

    def project(x, name):
        y = x @ w["w" + name]
        return r(y + w["b" + name]) if spec.bias else r(y)

    group_size = spec.group_size
    B, L_q, L_k = query.shape[0], query.shape[1], key.shape[1]
    q = _split_heads(project(query, "q"), spec.H)
    k = _split_heads(project(key, "k"), spec.H_kv)
    if spec.rope is not None:
        q_positions, k_positions = rope_positions(L_q, L_k)
        q = r(rotate(spec, q, rope_angles(spec, q_positions)))
        k = r(rotate(spec, k, rope_angles(spec, k_positions)))
    k = _expand_kv(k, group_size)
    v = _expand_kv(_split_heads(project(value, "v"), spec.H_kv), group_size)

    logits = q @ k.transpose(0, 1, 3, 2)
    logits *= spec.logit_scale
    logits = r(logits)
    tanh = None
    if spec.softcap is not None:
        tanh = np.tanh(logits / spec.softcap)
        logits = r(spec.softcap * tanh)
    if bias is not None:
        logits = r(logits + bias)

    probs = r(_masked_softmax(logits, visibility(spec, B, L_q, L_k, mask)))
    heads = r(_merge_heads(probs @ v))
    out = heads @ w["wo"]
    out = r(out + w["bo"]) if spec.bias else r(out)
    return _Forward(q, k, v, tanh, probs, heads, out)


def forward(spec: AttentionSpec, weights, query, key, value, mask=None, bias=None,
            precision: str | None = None) -> np.ndarray:
    """out, shape (B, L_q, E_o), in float64."""
    return _forward(spec, weights, query, key, value, mask, bias, precision).out


def attention_probs(spec: AttentionSpec, weights, query, key, value, mask=None,
                    bias=None) -> np.ndarray:
    """P, shape (B, H, L_q, L_k): each row sums to one over its visible keys (or is zero)."""
    return _forward(spec, weights, query, key, value, mask, bias, None).probs


# ---------------------------------------------------------------------------------------
# Backward: the vector-Jacobian product of sum(out * d_out), derived by hand.

# A plain sum in float16/bfloat16 rounds every partial sum, so its error grows with the
# number of terms; rounding the exact sum once would make the baseline of the tolerance
# rule far more accurate than the computation it stands for (the bias gradients sum
# B * L rows), and its bound would shrink to the one-ulp floor. The model follows XLA on
# CPU, which reduces in the dtype: running sums over blocks of 32 terms, then the block
# sums summed the same way (its tree reduction rewriter). Its error lands within a factor
# 2 of jax.lax.reduce_sum's on 16 to 2048 terms; a running sum over all the terms
# overstates that error 3-6x past 250 terms, a pairwise sum understates it up to 2.5x.
_SUM_BLOCK = 32


def _low_precision_sum(x: np.ndarray, axis, r) -> np.ndarray:
    """The sum of ``x`` over ``axis`` (an int or a tuple), ``r`` rounding every partial
    sum: running sums over blocks of _SUM_BLOCK terms, repeated on the block sums."""
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    terms = np.moveaxis(x, axes, range(len(axes)))
    terms = terms.reshape(-1, *terms.shape[len(axes):])              # (terms, *kept)
    if len(terms) == 0:
        return np.zeros(terms.shape[1:])
    while len(terms) > 1:
        block = min(_SUM_BLOCK, len(terms))
        padded = np.concatenate([terms, np.zeros((-len(terms) % block, *terms.shape[1:]))])
        blocks = padded.reshape(-1, block, *terms.shape[1:])
        terms = np.zeros((len(blocks), *terms.shape[1:]))
        for i in range(block):
            terms = r(terms + blocks[:, i])
    return terms.reshape(terms.shape[1:])


def _weight_grad(x: np.ndarray, d_y: np.ndarray) -> np.ndarray:
    """d(sum(d_y * (x @ W))) / dW = sum over batch and length of x^T d_y, as one matmul."""
    return x.reshape(-1, x.shape[-1]).T @ d_y.reshape(-1, d_y.shape[-1])


def _bias_grad(d_y: np.ndarray, precision: str | None) -> np.ndarray:
    """d(sum(d_y * (y + b))) / db = sum over batch and length of d_y, summed in ``precision``."""
    if precision in (None, "float64"):
        return d_y.sum(axis=(0, 1))
    return _low_precision_sum(d_y, (0, 1), rounding(precision))


def vjp(spec: AttentionSpec, weights, query, key, value, d_out, mask=None, bias=None,
        precision: str | None = None) -> dict[str, np.ndarray]:
    """Gradients of sum(out * d_out) for "query", "key", "value" and every weight name."""
    fwd = _forward(spec, weights, query, key, value, mask, bias, precision)
    check_inputs(spec, weights, query, key, value, mask, bias, d_out)
    r = rounding(precision)
    w = {name: r(np.asarray(array, dtype=np.float64)) for name, array in weights.items()}
    query, key, value, d_out = [r(a) for a in _as_f64(query, key, value, d_out)]
    group_size = spec.group_size
    grads = {}

    # out = heads @ wo + bo
    grads["wo"] = r(_weight_grad(fwd.heads, d_out))
    if spec.bias:
        grads["bo"] = _bias_grad(d_out, precision)
    d_heads = _split_heads(r(d_out @ w["wo"].T), spec.H)          # (B, H, Lq, dv)

    # heads_h = P_h @ V_h
    d_probs = r(d_heads @ fwd.v.transpose(0, 1, 3, 2))             # (B, H, Lq, Lk)
    d_v = r(fwd.probs.transpose(0, 1, 3, 2) @ d_heads)             # (B, H, Lk, dv)

    # P = softmax(S) over visible keys: dS = P * (dP - sum_j dP_j P_j).
    # Invisible keys and empty rows have P = 0, so no gradient flows through them.
    d_probs -= np.einsum("...j,...j->...", d_probs, fwd.probs)[..., None]
    d_logits = r(np.multiply(d_probs, fwd.probs, out=d_probs))
    if fwd.tanh is not None:                                        # S' = c * tanh(S / c)
        d_logits = r(d_logits * (1.0 - fwd.tanh ** 2))

    # S = scale * Q K^T
    d_q = r(spec.logit_scale * (d_logits @ fwd.k))                  # (B, H, Lq, dk)
    d_k = r(spec.logit_scale * (d_logits.transpose(0, 1, 3, 2) @ fwd.q))  # (B, H, Lk, dk)
    d_k = _sum_groups(d_k, group_size)                                       # (B, H_kv, Lk, dk)

    # Q and K were rotated per position: the gradient rotates back.
    if spec.rope is not None:
        q_positions, k_positions = rope_positions(query.shape[1], key.shape[1])
        d_q = r(rotate(spec, d_q, rope_angles(spec, q_positions), inverse=True))
        d_k = r(rotate(spec, d_k, rope_angles(spec, k_positions), inverse=True))

    # Q = query @ wq + bq, likewise K and V (whose expanded heads sum back into groups).
    projected = {
        "q": (query, _merge_heads(d_q)),
        "k": (key, _merge_heads(d_k)),
        "v": (value, _merge_heads(_sum_groups(d_v, group_size))),
    }
    inputs = {"q": "query", "k": "key", "v": "value"}
    for name, (x, d_y) in projected.items():
        grads["w" + name] = r(_weight_grad(x, d_y))
        if spec.bias:
            grads["b" + name] = _bias_grad(d_y, precision)
        grads[inputs[name]] = r(d_y @ w["w" + name].T)
    return grads


# ---------------------------------------------------------------------------------------
# The oracle as an implementation the suite can run (registered as "numpy.oracle").

def factory(spec: AttentionSpec):
    """SPEC section 5 factory. NumPy has no autodiff, so ``fn.vjp`` supplies the backward;
    ``fn.init_cache``/``fn.decode`` decode with a cache of the key and value inputs."""

    def fn(params, query, key, value, mask=None, bias=None):
        # Computed in float64, handed back in the inputs' dtype, as the contract asks.
        out = forward(spec, params, query, key, value, mask, bias)
        return out.astype(np.result_type(query), copy=False)

    def fn_vjp(params, query, key, value, d_out, mask=None, bias=None):
        return vjp(spec, params, query, key, value, d_out, mask, bias)

    # New queries are the last tokens of the keys seen so far: the bottom-right alignment.
    decoding = spec.replace(causal="bottom_right") if spec.causal else spec

    def init_cache(params, batch_size):
        return {"key": np.zeros((batch_size, 0, spec.E_k)), "value": np.zeros((batch_size, 0, spec.E_v))}

    def decode(params, cache, query, key, value):
        cache = {"key": np.concatenate([cache["key"], key], axis=1),
                 "value": np.concatenate([cache["value"], value], axis=1)}
        return forward(decoding, params, query, cache["key"], cache["value"]), cache

    fn.vjp, fn.init_cache, fn.decode = fn_vjp, init_cache, decode
    return fn
