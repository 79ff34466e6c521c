"""The diagnosis (conformance/diagnosis.py): a failing implementation's likely bug, named
from the catalog of hypotheses (conformance/hypotheses.py), or plainly none.

The hypotheses are held here to implementations written independently of them (the NumPy
plug-ins of tests/plugins, and the oracle on changed inputs or a changed spec); the
broken catalog's entries are held to their stated diagnosis in test_broken_catalog.py.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from attnsuite.impls.calling import fold_input_grads
from attnsuite.conformance import diagnosis, report, tolerance
from attnsuite.conformance.cases import NUMERIC, catalog
from attnsuite.conformance.checks import reference
from attnsuite.conformance.hypotheses import BY_ID, HYPOTHESES, KINDS
from attnsuite.conformance.runner import check
from attnsuite.conformance.variant import Steps
from attnsuite.impls import oracle

P = "numpy:tests.plugins.numpy_impls:"
F32 = ["float32"]


def _numeric_cases(dtypes):
    return [c for c in catalog("default", dtypes) if c.checks == NUMERIC]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_steps_unchanged_are_the_oracle(dtype):
    """The variants' base computation is the oracle's, forward and backward, on every
    numeric case of the default profile."""
    for case in _numeric_cases([dtype]):
        ref = reference(case)
        d = ref.data
        trace, grads = Steps(case.spec).vjp(d.weights, d.query, d.key, d.value, ref.d_out,
                                            d.mask, d.bias)
        grads = fold_input_grads(grads, case.form)
        np.testing.assert_allclose(trace.out, ref.out, rtol=1e-12, atol=1e-12 * np.abs(ref.out).max(),
                                   err_msg=case.id)
        assert set(grads) == set(ref.grads), case.id
        for name, g in grads.items():
            scale = max(np.abs(ref.grads[name]).max(), 1e-300)
            np.testing.assert_allclose(g, ref.grads[name], rtol=1e-12, atol=1e-12 * scale,
                                       err_msg=f"{case.id} {name}")


def _decode_cases(dtypes):
    """The decode cases of the default profile, as the numeric twins the diagnosis reads."""
    return [c.replace(checks=NUMERIC) for c in catalog("default", dtypes) if c.checks == ("decode",)]


def test_every_hypothesis_is_documented_and_changes_something():
    """Each has a one-line explanation, a known kind, and shows on some default case (a
    decode hypothesis on some decode case)."""
    cases, decode_cases = _numeric_cases(["float64"]), _decode_cases(["float64"])
    for h in HYPOTHESES:
        assert h.kind in KINDS and h.explanation and "\n" not in h.explanation, h.id
        if h.kind == "evidence":
            continue
        shown = False
        for case in decode_cases if h.kind == "decode" else cases:
            ref = reference(case, strict_fully_masked=True)
            # A fitted parameter (the mask's fill) is fitted to this output: not the oracle's.
            prediction = h.predict(ref, np.zeros_like(ref.out))
            if prediction is None:
                continue
            changed = prediction.grads if h.kind == "gradient" else {"out": prediction.out}
            expected = ref.grads if h.kind == "gradient" else {"out": ref.out}
            shown = any(not tolerance.compare(changed[k], expected[k], "float64").ok for k in changed)
            if shown:
                break
        assert shown, f"{h.id}: no default float64 case shows the mistake"


def test_the_input_and_spec_mistakes_are_the_oracle_with_that_change():
    """Three hypotheses against the oracle computed independently on the changed inputs."""
    case = next(c for c in _numeric_cases(["float64"]) if c.spec.causal == "bottom_right"
                and c.L_q != c.L_k and c.mask != "none")
    ref = reference(case)
    d = ref.data
    s = case.spec
    changed = {
        "mask_inverted": oracle.forward(s, d.weights, d.query, d.key, d.value, ~d.mask, d.bias),
        "causal_top_left": oracle.forward(s.replace(causal="top_left"), d.weights, d.query, d.key,
                                          d.value, d.mask, d.bias),
        "causal_dropped": oracle.forward(s.replace(causal=None), d.weights, d.query, d.key,
                                         d.value, d.mask, d.bias),
    }
    for hypothesis_id, expected in changed.items():
        prediction = BY_ID[hypothesis_id].predict(ref, None)
        rows = prediction.rows & ~d.fully_masked
        np.testing.assert_allclose(prediction.out[rows], expected[rows], rtol=1e-12, atol=1e-12,
                                   err_msg=hypothesis_id)


def test_the_rope_mistakes_are_the_oracle_with_that_rope():
    """The RoPE hypotheses that are a changed spec, against the oracle computed on it."""
    case = next(c for c in _numeric_cases(["float64"]) if c.spec.rope is not None
                and c.spec.rotary_dim < c.spec.d_k and c.spec.rotary_dim > 2)
    ref = reference(case)
    d = ref.data
    rope = case.spec.rope.to_dict()
    other = "half" if rope["style"] == "interleaved" else "interleaved"
    changed = {
        "rope_style_swapped": case.spec.replace(rope={**rope, "style": other}),
        "rope_not_applied": case.spec.replace(rope=None),
        "rope_partial_ignored": case.spec.replace(rope={**rope, "rotary_dim": case.spec.d_k}),
    }
    for hypothesis_id, spec in changed.items():
        expected = oracle.forward(spec, d.weights, d.query, d.key, d.value, d.mask, d.bias)
        np.testing.assert_allclose(BY_ID[hypothesis_id].predict(ref, None).out, expected,
                                   rtol=1e-12, atol=1e-12, err_msg=hypothesis_id)


def test_a_decode_mistake_that_is_a_changed_spec_is_the_oracle_pass_with_it():
    """A decoder without the window gives, step by step, the full causal pass without it."""
    case = next(c for c in _decode_cases(["float64"]) if c.spec.window is not None)
    ref = reference(case)
    d = ref.data
    expected = oracle.forward(case.spec.replace(window=None), d.weights, d.query, d.key, d.value)
    np.testing.assert_allclose(BY_ID["decode_window_ignored"].predict(ref, None).out, expected,
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# The diagnosis through the gate, on NumPy plug-ins with one known flaw each.

NAMED = {
    "wrong_scale": "scale_d_k",
    "gqa_tiled": "gqa_heads_tiled",
    "naive": "softmax_without_max_subtraction",
    "leaky_mask": "mask_additive_finite",
    "float32_inside": "float32_in_float64",
    "stateful": "state_between_calls",
    "cached_by_shape": "state_between_calls",
}


@pytest.fixture(scope="module")
def judged():
    names = [P + n for n in (*NAMED, "wrong_key_grad", "wrong_shape", "returns_nan")]
    run = check(names, profile="quick")
    return {impl.name.removeprefix(P): impl for impl in run.implementations}


@pytest.mark.parametrize("plugin", NAMED)
def test_the_diagnosis_names_a_known_flaw_first(plugin, judged):
    impl = judged[plugin]
    assert impl.verdict == "fail"
    assert impl.diagnosis, f"{plugin}: no hypothesis found; {impl.diagnosis}"
    top = impl.diagnosis[0]
    assert top["id"] == NAMED[plugin], f"{plugin}: ranked {[d['id'] for d in impl.diagnosis]}"
    assert 1 <= top["cases_explained"] <= top["cases_failing"] <= diagnosis.MAX_CASES
    assert set(top) >= {"id", "explanation", "cases_explained", "cases_failing", "max_err"}


@pytest.mark.parametrize("plugin", ["wrong_key_grad", "wrong_shape", "returns_nan"])
def test_a_flaw_outside_the_catalog_is_explained_by_none(plugin, judged):
    impl = judged[plugin]
    assert impl.verdict == "fail"
    assert impl.diagnosis == [], f"{plugin}: a wrong name: {impl.diagnosis}"
    assert diagnosis.cause_lines(impl) == [f"Likely cause: {diagnosis.NONE_EXPLAINS}."]


# The NumPy decoders of the decode check's own tests (tests/plugins/decoders.py), each
# wrong in one way: the diagnosis reads the decoded steps.
DECODERS = {
    "dropped_cache": "decode_cache_dropped",
    "oldest_entry_dropped": "decode_cache_drops_oldest",
    "never_reset": "decode_cache_kept_across_sequences",
    "window_ignored_while_decoding": "decode_window_ignored",
}


@pytest.fixture(scope="module")
def decoded():
    D = "numpy:tests.plugins.decoders:"
    run = check([D + "correct", *(D + name for name in DECODERS)], profile="default",
                case_filter="*decode*")
    return {impl.name.removeprefix(D): impl for impl in run.implementations}


@pytest.mark.parametrize("plugin", DECODERS)
def test_the_diagnosis_names_a_decoding_flaw_from_the_steps(plugin, decoded):
    impl = decoded[plugin]
    assert impl.verdict == "fail" and impl.diagnosis, f"{plugin}: {impl.diagnosis}"
    top = impl.diagnosis[0]
    assert top["id"] == DECODERS[plugin], f"{plugin}: ranked {[d['id'] for d in impl.diagnosis]}"
    assert top["cases_explained"] == top["cases_failing"] and top["checks"] == ["decode"]
    assert decoded["correct"].verdict == "pass" and decoded["correct"].diagnosis is None


def test_a_fully_masked_behaviour_is_named_under_the_strict_rule():
    run = check([P + "uniform_fully_masked"], profile="quick", strict_fully_masked=True,
                case_filter=lambda c: "fully_masked" in c.tags)
    impl = run.implementations[0]
    assert impl.diagnosis and impl.diagnosis[0]["id"] == "fully_masked_uniform", impl.diagnosis


def test_a_passing_run_does_no_diagnosis_work(monkeypatch):
    called = []
    monkeypatch.setattr(diagnosis, "diagnose", lambda *a, **k: called.append(a) or [])
    run = check(["numpy.oracle"], profile="quick")
    assert run.ok and run.implementations[0].diagnosis is None and not called
    assert diagnosis.cause_lines(run.implementations[0]) == []


def test_no_diagnose_skips_it():
    run = check([P + "wrong_scale"], profile="quick", dtypes=F32, diagnose=False)
    impl = run.implementations[0]
    assert impl.verdict == "fail" and impl.diagnosis is None
    assert diagnosis.cause_lines(impl) == []


def test_the_budget_bounds_the_cases_examined(monkeypatch):
    monkeypatch.setattr(diagnosis, "MAX_CASES", 2)
    impl = check([P + "wrong_scale"], profile="quick").implementations[0]
    assert impl.diagnosis[0]["cases_failing"] == 2
    line = diagnosis.cause_lines(impl)[0]
    failing = len({r.case_id for r in impl.failures()})
    assert f"[2 of {failing} failing cases examined]" in line, line


def test_the_time_budget_stops_after_the_case_it_overruns(monkeypatch):
    monkeypatch.setattr(diagnosis, "BUDGET_SECONDS", 0.0)
    impl = check([P + "wrong_scale"], profile="quick").implementations[0]
    assert [d["cases_failing"] for d in impl.diagnosis] == [1] * len(impl.diagnosis)
    assert impl.diagnosis[0]["id"] == "scale_d_k"


def test_a_layer_wrong_on_every_call_is_not_said_to_keep_state(judged):
    """Its stateless check fails too, at the first call: no evidence of state."""
    impl = judged["wrong_scale"]
    assert [r.status for r in impl.results if r.check == "stateless"] == ["fail"]
    assert "state_between_calls" not in [d["id"] for d in impl.diagnosis], impl.diagnosis


def test_a_diagnosis_that_raises_costs_only_the_diagnosis(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(diagnosis, "diagnose", broken)
    impl = check([P + "wrong_scale"], profile="quick", dtypes=F32).implementations[0]
    assert impl.verdict == "fail"
    assert diagnosis.cause_lines(impl) == ["Likely cause: not diagnosed (the diagnosis itself "
                                           "failed: RuntimeError: boom)."]


# ---------------------------------------------------------------------------------------
# Everywhere the verdict appears.

def test_the_verdict_reaches_json_markdown_html_and_junit(tmp_path):
    run = check([P + "gqa_tiled", "numpy.oracle"], profile="quick", dtypes=F32)
    report.write_reports(run, tmp_path)
    data = json.loads((tmp_path / "conformance.json").read_text())
    by_name = {i["name"]: i for i in data["implementations"]}
    assert by_name["numpy.oracle"]["diagnosis"] is None
    top = by_name[P + "gqa_tiled"]["diagnosis"][0]
    assert top["id"] == "gqa_heads_tiled" and top["cases_explained"] == top["cases_failing"]
    line = diagnosis.cause_lines(run.implementations[0])[0]
    assert line.startswith("Likely cause: gqa_heads_tiled: ") and "max |err|" in line
    assert line in (tmp_path / "conformance.md").read_text().replace("\\", "")  # Markdown escapes
    assert "Likely cause: gqa_heads_tiled" in (tmp_path / "conformance.html").read_text()
    junit = ET.fromstring(report.to_junit(run))
    failures = [f.text for f in junit.iter("failure")]
    assert failures and all(line in text for text in failures)


def test_failures_all_expected_carry_no_diagnosis():
    run = check([P + "wrong_scale"], profile="quick", dtypes=F32,
                xfails=[f"{P}wrong_scale::*  # known"])
    impl = run.implementations[0]
    assert impl.verdict == "pass"
    assert report.to_json(run)["implementations"][0]["diagnosis"] is None
    assert diagnosis.cause_lines(impl) == [] and "Likely cause" not in report.to_markdown(run)


def test_the_terminal_summary_prints_the_likely_cause(capsys):
    from attnsuite.conformance.cli import main
    assert main([P + "gqa_tiled", "--dtype", "float32", "-q"]) == 1
    out = capsys.readouterr().out
    assert "      Likely cause: gqa_heads_tiled: grouped key/value heads are tiled" in out
    assert main([P + "gqa_tiled", "--dtype", "float32", "-q", "--no-diagnose"]) == 1
    assert "Likely cause" not in capsys.readouterr().out
