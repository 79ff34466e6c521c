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
- ``check_mask_and_bias(mask, bias)``: ``check_mask_and_bias`` below with its dtypes.

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
from typing import Callable

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
