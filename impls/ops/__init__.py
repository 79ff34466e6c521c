"""Steps that our implementations, the built-in adapters and the kernels share, one module
per framework, the same functions in each. Nothing here imports ``attnsuite.impls.ours``,
so a change to our layers cannot change how a built-in one is judged.

Each of ``attnsuite.impls.ops.{torch,tensorflow,jax}`` defines, with heads in the
framework's layout (PyTorch (B, heads, L, d); TensorFlow and JAX (B, L, heads, d)):

- ``project(spec, params, x, letter) -> heads``: ``x @ w{letter} + b{letter}`` (bias only
  where the spec has one) split into heads; "q" gives H heads, "k" and "v" H_kv;
- ``output(spec, params, heads) -> out``: heads merged, ``@ wo + bo``: (B, L_q, E_o);
- ``structural_visibility(spec, L_q, L_k[, device]) -> (L_q, L_k) bool | None``: the
  spec's causal and window rules, ``structural_rule`` below in the framework's ops;
  None when the spec has neither;
- ``visibility(spec, L_q, L_k, mask[, device]) -> bool | None``: those rules and the
  user's mask together, broadcastable to (B, H, L_q, L_k); None when every key is visible;
- ``check_mask_and_bias(mask, bias)``: ``check_mask_and_bias`` below with its dtypes;
- ``rope(spec, x, positions) -> x``: rotary positions (SPEC 2) on heads ``x`` (d_k
  features), the token at index l sitting at ``positions[l]`` (1-D ints, the framework's
  or NumPy's); ``x`` itself where the spec has no RoPE. The rotation is ``rope_tables``
  below: angles and their cos/sin in float64 (JAX: in NumPy, so its positions are NumPy
  ints, static under ``jax.jit``), the rotation computed in at least float32 and rounded
  once to x's dtype; differentiable in ``x``;
- ``rope_qk(spec, q, k, start=0) -> (q, k)``: both rotated at their SPEC positions: key j
  at start + j, query i at start + i + L_k - L_q (the queries end-aligned with the keys).
  ``start`` is the number of tokens before these: a decoding step passes its cache length.

``ops.torch`` also has ``seeded`` (run a block on a seeded global RNG) and
``causal_lower_right`` (SDPA's bottom-right causal mask object); ``ops.tensorflow`` has
``widen`` (16-bit tensors to their float32 accumulation dtype) and ``length`` (a tensor's
L, a Python int wherever the graph knows it).

The oracle (``attnsuite.impls.oracle.structural_mask``) states the rules on its own, as
the reference; tests/test_ops.py checks every framework's against it.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, NamedTuple

import numpy as np

from attnsuite.impls.spec import AttentionSpec


def structural_rule(spec: AttentionSpec, arange: Callable, L_q, L_k):
    """(L_q, L_k) bool: may query i see key j under the spec's causal and window rules
    (SPEC 3)? None when the spec has neither rule, and then nothing is built.

    ``arange(n)`` is an array library's 0..n-1 (``np.arange``, ``tf.range``, ...); the
    rule itself uses only ``+ - <= >= &``, which NumPy, PyTorch, TensorFlow and JAX arrays
    all have. Under bottom-right alignment query i sits at i' = i + L_k - L_q; the causal
    rule is j <= i', a window (left, right) is i' - left <= j <= i' + right.
    """
    if spec.causal is None and spec.window is None:
        return None
    i, j = arange(L_q)[:, None], arange(L_k)[None, :]
    offset = j - (i + (L_k - L_q) if spec.causal == "bottom_right" else i)   # j - i'
    rules = []
    if spec.causal is not None:
        rules.append(offset <= 0)
    if spec.window is not None:
        left, right = spec.window
        rules += [offset >= -left, offset <= right]
    return functools.reduce(operator.and_, rules)


def check_mask_and_bias(mask, bias, is_bool: Callable[[object], bool]) -> None:
    """Raise ValueError unless mask and bias (either may be None) have rank 2 or 4 and the
    mask is boolean (``is_bool(mask.dtype)``)."""
    for name, t in (("mask", mask), ("bias", bias)):
        if t is not None and len(t.shape) not in (2, 4):
            raise ValueError(f"{name}: must have rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k), got "
                             f"shape {tuple(t.shape)}; rank 3 is ambiguous when B == H")
    if mask is not None and not is_bool(mask.dtype):
        dtype = getattr(mask.dtype, "name", mask.dtype)
        raise ValueError(f"mask: must be boolean (True = may attend), got dtype {dtype}")


class RopeTables(NamedTuple):
    """RoPE as a per-feature formula over the d_k features of a head (float64 NumPy):
    ``out[f] = x[f] * cos(p * frequency[f]) + sign[f] * x[partner[f]] * sin(p * frequency[f])``
    for a token at position p. Features past ``rotary_dim`` have frequency 0 (cos 1, sin 0):
    they pass unchanged. One gather and two products, the same in every framework."""
    frequency: np.ndarray   # (d_k,) float64: theta ** (-2m / rotary_dim) of the pair m it is in
    partner: np.ndarray     # (d_k,) int: the other feature of its pair (itself if unrotated)
    sign: np.ndarray        # (d_k,) float64: -1 for the first of a pair, +1 for the second


@functools.cache
def rope_tables(spec: AttentionSpec) -> RopeTables:
    """The tables of ``spec.rope``: pair m is features (m, m + r/2) in style "half",
    (2m, 2m + 1) in style "interleaved" (r = rotary_dim), as in the oracle's ``rotate``."""
    r, d = spec.rotary_dim, spec.d_k
    m = np.arange(r // 2)
    first, second = (m, m + r // 2) if spec.rope.style == "half" else (2 * m, 2 * m + 1)
    frequency, partner, sign = np.zeros(d), np.arange(d), np.zeros(d)
    frequency[first] = frequency[second] = spec.rope.theta ** (-2.0 * m / r)
    partner[first], partner[second] = second, first
    sign[first], sign[second] = -1.0, 1.0
    return RopeTables(frequency, partner, sign)
