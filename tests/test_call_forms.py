"""Call forms (SPEC 5): what a factory declares and is told, and that a layer taking one
form only is judged on every case of a profile, in that form."""

from __future__ import annotations

import collections

import pytest

from attnsuite.conformance.cases import catalog
from attnsuite.conformance.checks import Subject
from attnsuite.conformance.runner import check
from attnsuite.impls import AttentionSpec
from attnsuite.impls.calling import FORMS, call_forms, forms_of, make_fn
from attnsuite.impls.errors import PluginError
from tests.plugins import forms as plugins

P = "numpy:tests.plugins.forms:"


def test_a_factory_is_told_only_what_its_signature_takes():
    seen = {}

    def old(spec):
        seen["old"] = spec
        return "fn"

    def some(spec, dtype):
        seen["some"] = dtype
        return "fn"

    def every(spec, **context):
        seen["every"] = context
        return "fn"

    spec = AttentionSpec(8, 2)
    for factory in (old, some, every):
        assert make_fn(factory, spec, form="kv", dtype="float16", device="cpu") == "fn"
    assert seen == {"old": spec, "some": "float16",
                    "every": {"form": "kv", "dtype": "float16", "device": "cpu"}}


def test_declared_forms():
    assert forms_of(lambda spec: None) == FORMS
    assert forms_of(call_forms("kv", "self")(lambda spec: None)) == ("self", "kv")
    with pytest.raises(PluginError, match="call forms"):
        call_forms("selfish")
    factory = lambda spec: None  # noqa: E731
    factory.call_forms = ()
    with pytest.raises(PluginError, match="my.factory.call_forms"):
        forms_of(factory, "my.factory")


@pytest.mark.parametrize("form", ["self", "kv"])
def test_every_case_moves_into_a_form_it_can_take(form):
    for case in catalog("full"):
        moved = Subject("x", None, None, (form,)).case_for(case)
        assert moved.form == form, case.id
        assert moved.dtype == case.dtype and moved.mask == case.mask and moved.checks == case.checks
        if form == "self":
            assert moved.L_q == moved.L_k == case.L_k and not moved.spec.is_cross
        data = moved.materialize()
        assert data.key is data.value and (form == "kv" or data.query is data.key)
    three = Subject("x", None, None, FORMS)
    assert all(three.case_for(c) is c for c in catalog("full"))


def _judged_cases(impl):
    """case id -> statuses, for the judged (not unsupported) results."""
    judged = collections.defaultdict(list)
    for r in impl.results:
        if r.status != "unsupported":
            judged[r.case_id].append(r.status)
    return judged


def test_a_self_only_layer_is_judged_on_as_many_cases_as_a_three_input_one():
    plugins.CALLS.clear()
    run = check(["numpy.oracle", P + "self_only", P + "memory_only"], profile="default")
    oracle_impl, self_only, memory_only = run.implementations
    # (decoding aside: these plug-ins declare none)
    judged_for_oracle = [c for c in run.cases if c.id in _judged_cases(oracle_impl)
                         and c.checks != ("decode",)]
    numeric_numpy = {c.id for c in run.cases if c.dtype in ("float32", "float64") and c.checks == ("output", "grads")}
    assert numeric_numpy <= {c.id for c in judged_for_oracle}   # NumPy runs no half precision
    for impl, form in ((self_only, "self"), (memory_only, "kv")):
        assert impl.verdict == "pass", [r.message for r in impl.failures()][:3]
        judged, mover = _judged_cases(impl), Subject("x", None, None, (form,))
        # Every case the three-input oracle is judged on is judged, in the layer's form.
        missing = [c.id for c in judged_for_oracle if mover.case_for(c).id not in judged]
        assert not missing, (impl.name, missing)
    assert all("-self-" in r.case_id for r in self_only.results)
    assert all("-kv-" in r.case_id for r in memory_only.results)
    told = {(name, form) for name, form, *_ in plugins.CALLS}
    assert told == {("self_only", "self"), ("memory_only", "kv")}
    # Told the dtype of each call; NumPy's half-precision cases are declined before the factory.
    assert {dtype for *_, dtype, _ in plugins.CALLS} == {"float64", "float32"}
