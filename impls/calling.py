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

Call-time inputs — what ``fn`` takes besides the tensors, which the spec does not carry:

- ``bias``: whether it takes an additive attention bias (``bias=``);
- ``masks``: the mask layouts it takes (``MASK_LAYOUTS``): ``"rank2"``, ``(L_q, L_k)``;
  ``"rank4"``, ``(B or 1, 1, L_q or 1, L_k)``, one mask for every head; ``"per_head"``,
  ``(B or 1, H, L_q, L_k)`` with H > 1 (``mask_layout``). ``()``: it takes no mask;
- ``dropout``: whether ``training=True`` applies the spec's dropout (the dropout check).

A factory declares them with ``@call_inputs(bias=False, masks=("rank2", "rank4"))`` (or
by setting ``factory.call_inputs`` to such a mapping); what it leaves out, it takes, and
one that declares nothing takes everything. The gate declines a case needing an input
its implementation declared it does not take before calling ``fn``, as a statement of
what the layer has (like a spec the factory declines), not a hole in it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Iterable, Mapping

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


MASK_LAYOUTS = ("rank2", "rank4", "per_head")
_LAYOUT_WORDS = {"rank2": "rank-2 mask (L_q, L_k)", "rank4": "rank-4 mask (B, 1, L_q, L_k)",
                 "per_head": "per-head mask (B, H, L_q, L_k)"}


@dataclasses.dataclass(frozen=True)
class CallInputs:
    """The call-time inputs an ``fn`` takes (the module docstring); the default: all."""
    bias: bool = True
    masks: tuple[str, ...] = MASK_LAYOUTS
    dropout: bool = True

    def declines(self, mask_shape: tuple | None, bias: bool, training: bool) -> str | None:
        """Why a call with these inputs is one this fn declared it does not take, or None."""
        layout = mask_layout(mask_shape)
        if bias and not self.bias:
            return "takes no additive bias (declared)"
        if layout is not None and layout not in self.masks:
            takes = ", ".join(self.masks) if self.masks else "none"
            return f"takes no {_LAYOUT_WORDS[layout]} (declared mask layouts: {takes})"
        if training and not self.dropout:
            return "applies no dropout when training (declared)"
        return None


_INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(CallInputs))


def mask_layout(shape: tuple | None) -> str | None:
    """The layout (``MASK_LAYOUTS``) of a mask of this shape (rank 2 or 4); None for no mask."""
    if shape is None:
        return None
    if len(shape) == 2:
        return "rank2"
    return "per_head" if shape[1] > 1 else "rank4"


def call_inputs(**declared) -> Callable[[Callable], Callable]:
    """Decorator for a factory: the call-time inputs its ``fn`` takes (``CallInputs``'s
    fields: ``bias``, ``masks``, ``dropout``; those left out it takes)."""
    _inputs(declared, "call_inputs")

    def declare(factory: Callable) -> Callable:
        factory.call_inputs = dict(declared)
        return factory
    return declare


def _inputs(declared, where: str) -> CallInputs:
    if isinstance(declared, CallInputs):
        return declared
    if not isinstance(declared, Mapping):
        raise PluginError(f"{where}: expected a mapping of {', '.join(_INPUT_FIELDS)}, "
                          f"got {type(declared).__name__}")
    unknown = [name for name in declared if name not in _INPUT_FIELDS]
    if unknown:
        raise PluginError(f"{where}: unknown field {unknown[0]!r} (the fields: "
                          f"{', '.join(_INPUT_FIELDS)})")
    for name in ("bias", "dropout"):
        if name in declared and not isinstance(declared[name], bool):
            raise PluginError(f"{where}: field {name!r} must be True or False, "
                              f"got {declared[name]!r}")
    masks = declared.get("masks", MASK_LAYOUTS)
    masks = (masks,) if isinstance(masks, str) else masks
    if not isinstance(masks, (tuple, list, set, frozenset)) or any(m not in MASK_LAYOUTS for m in masks):
        raise PluginError(f"{where}: field 'masks' must be a tuple of mask layouts (each one of "
                          f"{', '.join(MASK_LAYOUTS)}), got {declared.get('masks')!r}")
    return CallInputs(bias=declared.get("bias", True), dropout=declared.get("dropout", True),
                      masks=tuple(m for m in MASK_LAYOUTS if m in masks))


def inputs_of(factory: Callable, name: str = "factory") -> CallInputs:
    """The call-time inputs a factory declares (all of them when it declares none)."""
    declared = getattr(factory, "call_inputs", None)
    return CallInputs() if declared is None else _inputs(declared, f"{name}.call_inputs")


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
