"""How the suite calls an implementation (SPEC 5): its call forms, and what its factory is told.

Call forms — the ways a layer takes its inputs:

- ``"qkv"``: three tensors, ``fn(params, query, key, value)`` (cross-attention in general);
- ``"self"``: one tensor passed as all three (``fn(params, x, x, x)``, the same object):
  self-attention, L_q = L_k and E = E_k = E_v; its gradient is the total gradient of x;
- ``"kv"``: key and value are one tensor, ``fn(params, query, memory, memory)``: the
  encoder–decoder attention of a decoder (E_k = E_v); ``memory`` gets the total gradient.

A factory declares the forms it takes with ``@call_forms("self")`` (or by setting
``factory.call_forms``); one that declares nothing takes all three, as a three-tensor
``fn`` does. The gate judges every case of a profile in a form the implementation takes
(``attnsuite.conformance.cases.Case.in_form``), so a self-attention-only layer is judged
on as many cases as a three-input one.

A factory is called ``factory(spec)``, and is also told the call's ``form``, ``dtype`` and
``device`` when its signature accepts those keywords (or ``**kwargs``), so that a layer can
be built for them or decline them with ``Unsupported``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

from attnsuite.impls.errors import PluginError

FORMS = ("qkv", "self", "kv")
FACTORY_CONTEXT = ("form", "dtype", "device")
# The inputs whose gradients a call in each form has (one tensor passed twice or three
# times gets the total gradient of its uses).
FORM_INPUTS = {"qkv": ("query", "key", "value"), "self": ("query",), "kv": ("query", "memory")}


def call_forms(*forms: str) -> Callable[[Callable], Callable]:
    """Decorator for a factory: the call forms its ``fn`` takes."""
    _check(forms, "call_forms")

    def declare(factory: Callable) -> Callable:
        factory.call_forms = tuple(forms)
        return factory
    return declare


def _check(forms: Iterable[str], where: str) -> tuple[str, ...]:
    forms = tuple(forms) if not isinstance(forms, str) else (forms,)
    unknown = [f for f in forms if f not in FORMS]
    if unknown or not forms:
        raise PluginError(f"{where}: {forms!r} is not a non-empty tuple of call forms "
                          f"(each one of {', '.join(FORMS)})")
    return forms


def forms_of(factory: Callable, name: str = "factory") -> tuple[str, ...]:
    """The forms a factory declares (all three when it declares none), in FORMS order."""
    declared = getattr(factory, "call_forms", None)
    if declared is None:
        return FORMS
    declared = _check(declared, f"{name}.call_forms")
    return tuple(f for f in FORMS if f in declared)


def make_fn(factory: Callable, spec, *, form: str = "qkv", dtype: str | None = None,
            device: str | None = None) -> Callable:
    """``factory(spec)``, passing ``form``, ``dtype`` and ``device`` where it takes them."""
    context = {"form": form, "dtype": dtype, "device": device}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):   # a builtin or C callable: the plain call
        return factory(spec)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return factory(spec, **context)
    return factory(spec, **{k: v for k, v in context.items() if k in parameters})


def declares_decoding(fn) -> bool:
    """Whether ``fn`` decodes with a cache (SPEC 5, "Decoding"): ``fn.init_cache`` and ``fn.decode``."""
    return callable(getattr(fn, "init_cache", None)) and callable(getattr(fn, "decode", None))


def fold_input_grads(grads: dict, form: str) -> dict:
    """Gradients of a three-input call turned into those of a call in ``form``: a tensor
    passed in several places gets the sum of its gradients there."""
    grads = dict(grads)
    if form == "self":
        grads["query"] = grads["query"] + grads.pop("key") + grads.pop("value")
    elif form == "kv":
        grads["memory"] = grads.pop("key") + grads.pop("value")
    return grads
