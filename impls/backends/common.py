"""What every adapter does the same way, given its own ``tensor`` function."""

from __future__ import annotations


from attnsuite.impls.calling import FORM_INPUTS


def convert_inputs(tensor, query, key, value, mask, bias, dtype, device, form):
    """NumPy query/key/value/mask/bias -> framework tensors, in the call form: "self" passes
    one tensor three times and "kv" one tensor as key and value, so that its gradient is the
    total of its uses."""
    q = tensor(query, dtype, device)
    if form == "self":
        k = v = q
    elif form == "kv":
        k = v = tensor(key, dtype, device)
    else:
        k, v = tensor(key, dtype, device), tensor(value, dtype, device)
    m = None if mask is None else tensor(mask, dtype, device)
    b = None if bias is None else tensor(bias, dtype, device)
    return q, k, v, m, b


def differentiable_inputs(form: str, q, k, v) -> dict:
    """The distinct input tensors of a call in ``form``, by gradient name."""
    return dict(zip(FORM_INPUTS[form], (q, k, v)))
