"""Call-time inputs (SPEC 5): what a factory declares its fn takes besides the tensors (an
additive bias, mask layouts, dropout), and that the gate declines a case needing anything
else up front, as a stated capability rather than a hole in the coverage."""

from __future__ import annotations

import pytest

from attnsuite.conformance.runner import check
from attnsuite.impls.calling import MASK_LAYOUTS, CallInputs, call_inputs, inputs_of, mask_layout
from attnsuite.impls.errors import PluginError

P = "numpy:tests.plugins.inputs:"


def test_mask_layouts_follow_the_shape():
    assert mask_layout(None) is None
    assert mask_layout((5, 7)) == "rank2"
    assert [mask_layout(s) for s in ((2, 1, 5, 7), (2, 1, 1, 7), (1, 1, 5, 7))] == ["rank4"] * 3
    assert mask_layout((2, 4, 5, 7)) == mask_layout((1, 4, 5, 7)) == "per_head"


def test_declared_inputs():
    assert inputs_of(lambda spec: None) == CallInputs(True, MASK_LAYOUTS, True)
    declared = inputs_of(call_inputs(masks=("per_head", "rank2"), dropout=False)(lambda spec: None))
    assert declared == CallInputs(bias=True, masks=("rank2", "per_head"), dropout=False)
    assert inputs_of(call_inputs(masks=())(lambda spec: None)).masks == ()


def test_what_a_declaration_declines_and_why():
    shared_only = CallInputs(bias=False, masks=("rank2", "rank4"), dropout=False)
    assert shared_only.declines((2, 1, 5, 7), bias=False, training=False) is None
    assert shared_only.declines((2, 1, 5, 7), bias=True, training=False) == "takes no additive bias (declared)"
    assert "per-head mask (B, H, L_q, L_k)" in shared_only.declines((2, 4, 5, 7), False, False)
    assert "dropout" in shared_only.declines(None, False, training=True)
    everything = CallInputs()
    assert all(everything.declines(shape, True, True) is None
               for shape in (None, (5, 7), (2, 1, 5, 7), (2, 4, 5, 7)))


@pytest.mark.parametrize("declared, field", [
    ({"bias": "no"}, "'bias'"), ({"dropout": 0}, "'dropout'"), ({"masks": ("per-head",)}, "'masks'"),
    ({"masks": 4}, "'masks'"), ({"biases": False}, "'biases'"),
])
def test_a_malformed_declaration_names_the_field(declared, field):
    with pytest.raises(PluginError, match=f"^call_inputs: .*{field}"):
        call_inputs(**declared)
    factory = lambda spec: None  # noqa: E731
    factory.call_inputs = declared    # set by hand: checked when the gate reads it
    with pytest.raises(PluginError, match=f"^my.factory.call_inputs: .*{field}"):
        inputs_of(factory, "my.factory")


def test_a_declaration_set_by_hand_must_be_a_mapping():
    factory = lambda spec: None  # noqa: E731
    factory.call_inputs = ["bias"]
    with pytest.raises(PluginError, match="my.factory.call_inputs: expected a mapping"):
        inputs_of(factory, "my.factory")


def test_declared_inputs_are_declined_up_front_and_leave_the_coverage_whole():
    run = check([P + "declared", P + "claims_bias", P + "undeclared"], profile="quick",
                case_filter=lambda case: case.checks != ("decode",))   # they declare no decoding
    declared, claims_bias, undeclared = run.implementations
    bias_cases = {c.id for c in run.cases if c.bias is not None and c.dtype in ("float32", "float64")}
    per_head = {c.id for c in run.cases if c.mask in ("random", "head", "all_visible")
                and c.spec.H > 1 and c.dtype in ("float32", "float64")}
    assert bias_cases and per_head
    by_case = lambda impl: {r.case_id: r for r in impl.results}  # noqa: E731

    # Declared: declined before fn is called, with the factory's prefix and the reason.
    results = by_case(declared)
    assert all(results[c].status == "unsupported" and
               results[c].message == "factory: takes no additive bias (declared)" for c in bias_cases)
    assert all(results[c].status == "unsupported" and results[c].message.startswith("factory: ")
               and "per-head mask" in results[c].message for c in per_head - bias_cases)
    coverage = declared.coverage()
    assert declared.verdict == "pass" and coverage.share_of_allowed == 1.0
    assert coverage.allowed < coverage.total

    # Bias declared but declined once built, and nothing declared: holes, as before
    # (claims_bias's per-head cases are still declined up front, by its declared masks).
    for impl, cases in ((claims_bias, bias_cases - per_head), (undeclared, bias_cases)):
        results = by_case(impl)
        assert cases and all(results[c].status == "unsupported" and not results[c].message.startswith("factory: ")
                             and "my_layer: no additive bias" in results[c].message for c in cases), impl.name
        assert impl.coverage().share_of_allowed < 1.0
    assert claims_bias.coverage().allowed > coverage.allowed   # its per-head cases still count
    assert undeclared.coverage().allowed == undeclared.coverage().total - sum(
        r.message.startswith("framework: ") for r in undeclared.results)
    # The same checks judged, with the same statuses: only how a decline counts differs.
    judged = lambda impl: {(r.case_id, r.check, r.status) for r in impl.results  # noqa: E731
                           if r.status != "unsupported"}
    assert judged(declared) == judged(claims_bias) == judged(undeclared)


def test_a_malformed_declaration_is_a_plugin_error_through_the_gate():
    run = check([P + "malformed"], profile="quick")
    impl = run.implementations[0]
    assert impl.verdict == "error" and "call_inputs" in impl.reason and "'masks'" in impl.reason


def test_a_fn_that_declares_no_decoding_is_declined_up_front():
    run = check([P + "declared"], profile="quick", case_filter=lambda case: case.checks == ("decode",))
    impl = run.implementations[0]
    declined = [r for r in impl.results if not r.message.startswith("framework: ")]
    assert declined and all(r.status == "unsupported" and r.message ==
                            "factory: fn declares no decoding (fn.init_cache and fn.decode)"
                            for r in declined)
    assert impl.coverage().allowed == 0
