"""Expected failures as array-api-tests has them: case-level and check-level patterns,
strict mode (an XPASS fails), stale-pattern warnings only for the run's implementations,
capped XPASS output, and a worst ratio that leaves expected failures out."""

from __future__ import annotations

import re

import pytest

from attnsuite import sanitize
from attnsuite.conformance.checks import FAILING
from attnsuite.conformance.cli import main
from attnsuite.conformance.results import worst_ratio
from attnsuite.conformance.runner import check
from attnsuite.conformance.xfails import Xfails

P = "numpy:tests.plugins.numpy_impls:"
F32 = ["float32"]


def _by_case(results):
    cases: dict[str, list] = {}
    for r in results:
        cases.setdefault(r.case_id, []).append(r)
    return cases


@pytest.fixture(scope="module")
def raw():
    """wrong_key_grad without xfails: the statuses the patterns below change."""
    return _by_case(check([P + "wrong_key_grad"], profile="quick", dtypes=F32).implementations[0].results)


def test_a_case_level_pattern_expects_the_case_to_fail_not_each_check(raw):
    run = check([P + "wrong_key_grad"], profile="quick", dtypes=F32,
                xfails=[f"{P}wrong_key_grad::*  # the key gradient is off"])
    impl = run.implementations[0]
    assert impl.verdict == "pass" and not run.warnings
    failing = [c for c, rs in raw.items() if any(r.status in FAILING for r in rs)]
    passing = [c for c, rs in raw.items()
               if not any(r.status in FAILING for r in rs) and any(r.status == "pass" for r in rs)]
    assert failing and passing
    cases = _by_case(impl.results)
    for case_id in failing:     # failures expected, the checks that pass stay pass: no XPASS
        for before, after in zip(raw[case_id], cases[case_id]):
            assert after.status == {"fail": "xfail", "error": "xfail"}.get(before.status, before.status)
    for case_id in passing:     # a case that passes whole is one XPASS, not one per check
        statuses = [r.status for r in cases[case_id]]
        assert statuses.count("xpass") == 1, statuses
        assert "the case (all its" in next(r for r in cases[case_id] if r.status == "xpass").message


def test_a_check_level_pattern_wins_over_a_case_level_one(raw):
    run = check([P + "wrong_key_grad"], profile="quick", dtypes=F32,
                xfails=[f"{P}wrong_key_grad::*::output  # wrongly expected",
                        f"{P}wrong_key_grad::*  # the whole case"])
    cases = _by_case(run.implementations[0].results)
    passed = [case_id for case_id, rs in raw.items()
              if any(r.check == "output" and r.status == "pass" for r in rs)]
    assert passed
    for case_id in passed:
        output = next(r for r in cases[case_id] if r.check == "output")
        assert output.status == "xpass" and "this check is" in output.message


@pytest.mark.parametrize("how", ["option", "file"])
def test_strict_turns_an_xpass_into_a_failure(tmp_path, capsys, how):
    xfails = tmp_path / "xfails.txt"
    lines = [f"{P}wrong_key_grad::*::grad.*   # known", f"{P}wrong_key_grad::*::output  # stale"]
    xfails.write_text("\n".join(lines + (["xfail_strict = true  # as pytest's"] if how == "file" else [])))
    argv = [P + "wrong_key_grad", "--dtype", "float32", "--xfails", str(xfails), "-q"]
    assert main(argv + (["--xfail-strict"] if how == "option" else [])) == 1
    out = capsys.readouterr().out
    assert "FAIL  " + P + "wrong_key_grad" in out and "XPASS (strict" in out
    # the same file without strictness passes: only the stale output pattern differs
    xfails.write_text("\n".join(lines))
    assert main(argv) == 0


def test_strict_in_the_file_can_be_switched_off_and_is_checked():
    assert Xfails.parse(["xfail_strict = true", "xfail_strict=false"]).strict is False
    assert Xfails.parse(["XFAIL_STRICT = True"]).strict is True
    assert Xfails.coerce(["a::b"], strict=True).strict is True
    for bad in ("torch.fused", "a::b::c::d"):
        with pytest.raises(ValueError, match=r"my-xfails:2: a pattern is IMPL::CASE_ID"):
            Xfails.parse(["# header", f"{bad}  # reason"], "my-xfails")


def test_stale_patterns_are_warned_about_only_for_implementations_in_the_run():
    run = check(["numpy.oracle"], profile="quick", dtypes=F32, xfails=[
        "torch.fused::*::output        # another run's implementation",
        "numpy.*::no-such-case         # names this run's: stale",
        "numpy.oracle::*-float64       # no float64 case in this run: stale",
    ])
    assert len(run.warnings) == 2
    assert "numpy.*::no-such-case" in run.warnings[0] and "numpy.oracle::*-float64" in run.warnings[1]
    assert all("torch.fused" not in w for w in run.warnings)


def test_xpass_lines_are_capped_on_the_terminal(tmp_path, capsys):
    xfails = tmp_path / "xfails.txt"
    xfails.write_text("numpy.oracle::*::*  # everything expected to fail\n")
    assert main(["numpy.oracle", "--dtype", "float32", "--xfails", str(xfails)]) == 0
    out = capsys.readouterr().out
    shown = out.count("XPASS: this check is expected to fail")
    total = int(re.search(r"(\d+) xpass", out).group(1))
    assert total > sanitize.SHOWN_FAILURES_TERMINAL
    assert shown == sanitize.SHOWN_FAILURES_TERMINAL
    assert f"and {total - shown} more XPASS" in out


def test_the_worst_ratio_leaves_expected_failures_out(tmp_path, capsys):
    xfails = tmp_path / "xfails.txt"
    xfails.write_text(f"{P}wrong_scale::*::*  # known: the scale is wrong\n")
    run = check([P + "wrong_scale"], profile="quick", dtypes=F32, xfails=xfails)
    impl = run.implementations[0]
    assert impl.verdict == "pass"
    assert max(r.ratio for r in impl.results if r.ratio is not None) > 1    # the failures are there
    assert worst_ratio(impl.results) <= 1
    assert main([P + "wrong_scale", "--dtype", "float32", "--xfails", str(xfails)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("PASS  "))
    assert float(re.search(r"worst ratio ([0-9.e+-]+)", line).group(1)) <= 1
