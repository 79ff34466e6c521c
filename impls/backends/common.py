"""What every adapter does the same way, given its own ``tensor`` function."""

from __future__ import annotations


def convert_inputs(tensor, query, key, value, mask, bias, dtype, device, self_attention):
    """NumPy query/key/value/mask/bias -> framework tensors; self-attention passes one tensor
    three times, so that its gradient is the total of the three uses."""
    q = tensor(query, dtype, device)
    k, v = (q, q) if self_attention else (tensor(key, dtype, device), tensor(value, dtype, device))
    m = None if mask is None else tensor(mask, dtype, device)
    b = None if bias is None else tensor(bias, dtype, device)
    return q, k, v, m, b
