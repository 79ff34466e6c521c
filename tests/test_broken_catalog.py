"""The gate against the catalog of broken implementations (impls/broken): every bug must
be caught, by the check and in the cases the catalog says, and the diagnosis must name
the bug's hypothesis first (or, for a bug in no hypothesis, say that none explains it).

The whole catalog is judged in two gate runs on the quick profile, each with one worker
process per framework: every bug, plus the correct layer the bugs of each framework are
built on as a control; then the bugs that only the strict rule for rows with no visible
key can show, on the cases that have such rows.

``ATTNSUITE_TEST_DEVICE=gpu`` judges them on the GPU instead (``.ci/gpu check``): a bug
must be caught there too, through the GPU kernels' own rounding.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import fnmatch
import os
from pathlib import Path

import pytest

from attnsuite.conformance.checks import CheckResult
from attnsuite.conformance.hypotheses import BY_ID
from attnsuite.conformance.runner import ImplResult, check
from attnsuite.impls.backends import DTYPES, framework_status
from attnsuite.impls.broken import BROKEN, CAUGHT_BY, CATEGORIES, Expect

# JAX first: its eager op-by-op compilation makes it the slowest worker.
FRAMEWORKS = ("jax", "tensorflow", "torch")
# The correct layer each framework's bugs are built on: the gate must pass it, so that a
# failure of a bug is the bug's.
CONTROLS = {fw: f"{fw}:attnsuite.impls.broken.{fw}:Attention" for fw in FRAMEWORKS}
# The bugs of the classic tutorial layer (shared/seed/README.md), each in the catalog.
TUTORIAL_BUGS = ("output_p_times_v_transposed", "own_position_excluded", "projections_sized_d_k",
                 "heads_merged_without_batch", "dropout_at_inference", "mask_polarity_inverted")


def _installed(framework: str) -> bool:
    return framework_status(framework)[0]


def _skip_unless_installed(framework: str) -> None:
    """conftest.require without the import: the gate judges in worker processes."""
    available, reason = framework_status(framework)
    if not available:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def judged() -> dict:
    """name -> ImplResult for every broken implementation and control whose framework is installed."""
    frameworks = [fw for fw in FRAMEWORKS if _installed(fw)]
    if not frameworks:
        pytest.skip("none of tensorflow, torch, jax is installed")
    bugs = [e.name for fw in frameworks for e in BROKEN if e.framework == fw]
    plain = [name for name in bugs if not CAUGHT_BY[name].strict]
    strict = [name for name in bugs if CAUGHT_BY[name].strict]
    device = os.environ.get("ATTNSUITE_TEST_DEVICE", "cpu")
    runs = [check([CONTROLS[fw] for fw in frameworks] + plain, profile="quick", device=device, isolate=True)]
    if strict:
        runs.append(check(strict, profile="quick", device=device, isolate=True, strict_fully_masked=True,
                          case_filter=lambda case: "fully_masked" in case.tags))
    return {impl.name: impl for run in runs for impl in run.implementations}


def _matches(patterns, names) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _brief(results) -> str:
    return "\n".join(f"    {r.case_id} :: {r.check}: {r.status}" for r in results[:8]) + (
        f"\n    ... and {len(results) - 8} more" if len(results) > 8 else "")


def problems(impl, expect: Expect) -> list[str]:
    """Why the gate's results on ``impl`` fall short of ``expect`` (empty: caught as stated)."""
    if impl.reason is not None:
        return [f"the gate could not judge it: {impl.reason}"]
    failing = impl.failures()
    if not failing:
        return [f"the gate passes it ({impl.counts()})"]
    found = []
    caught = [r for r in failing if _matches(expect.checks, [r.check])
              and all(_matches([tag], r.tags) for tag in expect.tags)]
    if not caught:
        found.append(f"no failing check matches {expect.checks} in a case tagged {expect.tags}; "
                     f"failing:\n{_brief(failing)}")
    if expect.forward_clean:
        # A case the layer declines (RoPE for a layer without it) says nothing of its forward.
        outputs = [r for r in impl.results if r.check == "output"
                   and r.status not in ("pass", "unsupported")]
        if outputs:
            found.append(f"a gradient-only bug, yet the output check does not pass:\n{_brief(outputs)}")
    if expect.only_in:
        elsewhere = [r for r in failing if not _matches(expect.only_in, r.tags)]
        if elsewhere:
            found.append(f"fails outside the cases tagged {expect.only_in}:\n{_brief(elsewhere)}")
    return found


def _verdict(*results) -> ImplResult:
    """An ImplResult from (case id, check, status, tags) rows."""
    impl = ImplResult("fake", results=[CheckResult(case, check_, status, "", tags)
                                       for case, check_, status, tags in results])
    impl.finish()
    return impl


def test_problems_names_each_way_a_verdict_falls_short():
    verdict = _verdict(("gqa4_2-float32", "output", "fail", ("gqa", "float32")),
                       ("gqa4_2-float32", "grad.wq", "fail", ("gqa", "float32")),
                       ("mha2-float32", "output", "pass", ("mha", "float32")))
    stated = Expect("case", ("output",), "tiled heads", tags=("gqa",), only_in=("gqa",))
    assert problems(verdict, stated) == []
    wrong = {"checks": ("stateless",), "tags": ("window",), "only_in": ("mha",), "forward_clean": True}
    for field, value in wrong.items():
        assert problems(verdict, dataclasses.replace(stated, **{field: value})), f"{field}={value!r}"
    assert problems(_verdict(("mha2-float32", "output", "pass", ("mha",))), stated)


@pytest.mark.parametrize("entry", BROKEN, ids=lambda e: e.name)
def test_the_gate_catches_the_bug_for_its_reason(entry, judged):
    _skip_unless_installed(entry.framework)
    expect = CAUGHT_BY[entry.name]
    found = problems(judged[entry.name], expect)
    assert not found, (f"{entry.name} ({entry.description}; {expect.reason}):\n"
                       + "\n".join(f"  - {p}" for p in found))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_layer_the_bugs_are_built_on_passes(framework, judged):
    _skip_unless_installed(framework)
    impl = judged[CONTROLS[framework]]
    assert impl.verdict == "pass", (
        f"{CONTROLS[framework]} must conform for its bugs' failures to be theirs "
        f"({impl.reason or 'failing'}):\n{_brief(impl.failures())}")


def test_the_pytorch_layer_rotates_and_decodes_right_in_every_dtype():
    """The RoPE and decode cases of the full profile, in all four dtypes: the layer the RoPE
    and cache bugs are built on passes them, so that their failures are theirs."""
    _skip_unless_installed("torch")
    run = check([CONTROLS["torch"]], profile="full", diagnose=False,
                case_filter=lambda case: case.spec.rope is not None or case.checks == ("decode",))
    impl = run.implementations[0]
    assert impl.verdict == "pass", _brief(impl.failures())
    judged = {(r.check, r.case_id.rsplit("-", 1)[1]) for r in impl.results if r.status == "pass"}
    assert {("output", d) for d in DTYPES} | {("decode", d) for d in DTYPES} <= judged, sorted(judged)


def test_the_catch_rate_is_complete(judged):
    judged_bugs = [e for e in BROKEN if e.name in judged]
    missed = sorted(e.name for e in judged_bugs if problems(judged[e.name], CAUGHT_BY[e.name]))
    rate = 1 - len(missed) / len(judged_bugs)
    print(f"catch rate {rate:.0%}: {len(judged_bugs) - len(missed)} of {len(judged_bugs)} "
          f"broken implementations caught for their stated reason")
    assert not missed, f"catch rate {rate:.0%}; missed: {missed}"


def test_the_catalog_covers_every_framework_and_category():
    assert len(BROKEN) >= 20, f"only {len(BROKEN)} broken implementations"
    by_framework = collections.Counter(e.framework for e in BROKEN)
    assert set(FRAMEWORKS) <= set(by_framework), f"frameworks covered: {dict(by_framework)}"
    by_category = collections.Counter(CAUGHT_BY[e.name].category for e in BROKEN)
    assert set(by_category) == set(CATEGORIES), (
        f"categories covered: {dict(by_category)}; listed: {sorted(CATEGORIES)}")
    tutorial = {e.name.rsplit(".", 1)[1] for e in BROKEN if e.framework == "tensorflow"}
    assert set(TUTORIAL_BUGS) <= tutorial, f"tutorial bugs missing: {set(TUTORIAL_BUGS) - tutorial}"


def test_every_entry_is_a_named_broken_factory():
    assert set(CAUGHT_BY) == {e.name for e in BROKEN}
    for entry in BROKEN:
        framework, factory = entry.name.split(".")[1:]
        assert entry.kind == "broken" and entry.framework == framework, entry
        assert entry.target == f"attnsuite.impls.broken.{framework}:{factory}", entry
        assert CAUGHT_BY[entry.name].checks, f"{entry.name}: no check is said to catch it"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_factory_says_its_bug_in_one_line(framework):
    """Read from the source, so that it holds without the framework installed."""
    source = Path(__file__).parent.parent / "impls" / "broken" / f"{framework}.py"
    functions = {node.name: ast.get_docstring(node) for node in ast.parse(source.read_text()).body
                 if isinstance(node, ast.FunctionDef)}
    for entry in (e for e in BROKEN if e.framework == framework):
        factory = entry.target.split(":")[1]
        assert factory in functions, f"{entry.target}: no such top-level function in {source}"
        doc = (functions[factory] or "").strip()
        assert doc and "\n" not in doc, f"{entry.target}: wants a one-line docstring, got {doc!r}"


def misdiagnosis(impl, expect: Expect) -> str | None:
    """Why the diagnosis of ``impl`` falls short of ``expect.diagnosis`` (None: it does not)."""
    found = impl.diagnosis
    if found is None:
        return f"not diagnosed (verdict {impl.verdict})"
    ranked = [d["id"] for d in found[:4]]
    if expect.diagnosis is None:
        return None if not found else f"names {ranked} for a bug in no hypothesis"
    if not found:
        return f"no hypothesis explains it; expected {expect.diagnosis}"
    return None if ranked[0] == expect.diagnosis else f"ranks {ranked}; expected {expect.diagnosis}"


def test_misdiagnosis_names_each_way_a_diagnosis_falls_short():
    impl = _verdict(("mha2-float32", "output", "fail", ("mha",)))
    stated = Expect("case", ("output",), "tiled heads", diagnosis="gqa_heads_tiled")
    hit = {"id": "gqa_heads_tiled", "cases_explained": 1, "cases_failing": 1}
    impl.diagnosis = [hit]
    assert misdiagnosis(impl, stated) is None
    for wrong in ([], [{**hit, "id": "mask_inverted"}, hit], None):
        impl.diagnosis = wrong
        assert misdiagnosis(impl, stated), wrong
    impl.diagnosis = []
    assert misdiagnosis(impl, dataclasses.replace(stated, diagnosis=None)) is None
    impl.diagnosis = [hit]
    assert misdiagnosis(impl, dataclasses.replace(stated, diagnosis=None))


def test_every_stated_diagnosis_is_a_hypothesis():
    unknown = {e.name: CAUGHT_BY[e.name].diagnosis for e in BROKEN
               if CAUGHT_BY[e.name].diagnosis not in (None, *BY_ID)}
    assert not unknown, f"not in attnsuite.conformance.hypotheses: {unknown}"


@pytest.mark.parametrize("entry", BROKEN, ids=lambda e: e.name)
def test_the_diagnosis_names_the_bug(entry, judged):
    _skip_unless_installed(entry.framework)
    problem = misdiagnosis(judged[entry.name], CAUGHT_BY[entry.name])
    assert problem is None, f"{entry.name} ({entry.description}): {problem}"


def test_the_diagnosis_rate_is_complete(judged):
    judged_bugs = [e for e in BROKEN if e.name in judged]
    wrong = sorted(e.name for e in judged_bugs if misdiagnosis(judged[e.name], CAUGHT_BY[e.name]))
    in_catalog = sum(CAUGHT_BY[e.name].diagnosis is not None for e in judged_bugs)
    print(f"diagnosis names the right cause for {len(judged_bugs) - len(wrong)} of "
          f"{len(judged_bugs)} broken implementations ({in_catalog} with a bug in the hypothesis "
          f"catalog, the rest told that no hypothesis explains them)")
    assert not wrong, f"misdiagnosed: {wrong}"
    assert all(judged[CONTROLS[fw]].diagnosis is None for fw in FRAMEWORKS if CONTROLS[fw] in judged)
