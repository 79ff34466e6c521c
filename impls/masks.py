"""The full visibility a layer must apply, in the form its mask argument takes (SPEC 5).

A layer whose only way to hide keys is a mask (equinox, haiku, HF's eager path) can still
declare causal, window and mask support: ``visible_mask`` combines the spec's causal and
window rules (``attnsuite.impls.oracle.structural_mask``, the one home of that rule) with
the user's mask, and gives the result in the layer's rank and polarity, boolean or
additive. Shapes are static at call time, so the structural part is NumPy; with a user
mask (a framework tensor, perhaps traced under ``jax.jit``) pass your framework's array
namespace as ``xp`` (``jax.numpy``, ``torch``) and the combination is done in its ops.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.errors import Unsupported
from attnsuite.impls.oracle import structural_mask
from attnsuite.impls.spec import AttentionSpec

RANKS = (2, 3, 4)


def visible_mask(spec: AttentionSpec, L_q: int, L_k: int, mask=None, *, rank: int = 4,
                 batch: int | None = None, broadcast: bool = False, attend: bool = True,
                 additive: float | None = None, dtype=None, xp=np):
    """Causal + window + ``mask`` as one array for a layer's mask argument, or ``None``
    when every key is visible (no causal, no window, no mask: the layer's no-mask path).

    - ``mask``: the ``mask`` your ``fn`` was given (rank 2 or 4, True = may attend), or None.
    - ``rank``: 2 gives (L_q, L_k); 3 gives (B, L_q, L_k), per example once vmapped over
      the batch; 4 gives (B, H, L_q, L_k). Dimensions nothing varies over have size 1
      unless ``broadcast`` (then B = ``batch``, required, and H = ``spec.H``). A mask
      that varies over a dimension the rank drops (batch for rank 2, heads for rank 2
      and 3) raises ``Unsupported``: the layer cannot express it.
    - ``attend``: True gives True = may attend; False gives True = masked out.
    - ``additive``: a number (``-np.inf``, or a large negative such as -1e9) gives a float
      mask, 0 where visible and ``additive`` where hidden, in ``dtype`` (``attend``
      then plays no part).
    - ``xp``: the array namespace of the result and of ``mask`` (NumPy by default).
    """
    if rank not in RANKS:
        raise ValueError(f"rank: expected one of {RANKS}, got {rank!r}")
    if broadcast and batch is None and rank > 2:
        raise ValueError("batch: required with broadcast=True for rank 3 or 4")
    if mask is not None and mask.ndim not in (2, 4):
        raise ValueError(f"mask: must have rank 2 or 4, got shape {tuple(mask.shape)}")
    structural = structural_mask(spec, L_q, L_k)
    if mask is None and structural.all():
        return None
    user_b, user_h = (1, 1) if mask is None or mask.ndim == 2 else tuple(mask.shape[:2])
    dropped = [(n, size) for n, size, kept in (("batch", user_b, rank > 2), ("heads", user_h, rank > 3))
               if size > 1 and not kept]
    if dropped:
        raise Unsupported(f"the layer takes a rank-{rank} mask: it cannot express a mask that "
                          f"varies over {' and '.join(n for n, _ in dropped)} "
                          f"(mask shape {tuple(mask.shape)})")
    B = batch if broadcast else user_b
    H = spec.H if broadcast else user_h
    shape = {2: (L_q, L_k), 3: (B, L_q, L_k), 4: (B, H, L_q, L_k)}[rank]
    lead = (None,) * (rank - 2)
    if mask is None:
        visible = xp.asarray(np.array(np.broadcast_to(structural[lead], shape)))  # writable
    else:
        user = mask if mask.ndim == 2 else mask[(slice(None),) * (rank - 2) + (0,) * (4 - rank)]
        user = user[lead] if mask.ndim == 2 else user
        visible = xp.broadcast_to(xp.logical_and(user, _like(xp, structural[lead], mask)), shape)
    if additive is not None:
        return xp.where(visible, _like(xp, np.asarray(0.0), mask, dtype),
                        _like(xp, np.asarray(additive), mask, dtype))
    return visible if attend else xp.logical_not(visible)


def _like(xp, array: np.ndarray, mask, dtype=None):
    """``array`` in ``xp``, on ``mask``'s device where the framework keeps one per tensor."""
    converted = xp.asarray(array) if dtype is None else xp.asarray(array, dtype=dtype)
    device = getattr(mask, "device", None)
    if hasattr(converted, "to") and device is not None:  # torch: CPU and GPU tensors do not mix
        converted = converted.to(device)
    return converted
