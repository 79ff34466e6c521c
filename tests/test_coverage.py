"""Coverage is part of the verdict: how much of the profile an implementation was judged on."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from attnsuite.conformance import cli, report
from attnsuite.conformance.checks import CheckResult
from attnsuite.conformance.coverage import coverage
from attnsuite.conformance.runner import check

PICKY = "numpy:tests.plugins.forms:picky"


def _result(status, *tags):
    return CheckResult("case", "output", status, "", tags)


def test_share_and_features_never_judged():
    judged = coverage([_result("pass", "gqa", "float32"), _result("unsupported", "causal", "float32"),
                       _result("fail", "float32"), _result("unsupported", "window")])
    assert (judged.judged, judged.total) == (2, 4)
    assert judged.never_judged == ("causal", "window")
    assert judged.describe() == "50% of 4 checks judged; never judged: causal, window"


def test_the_share_of_what_the_factory_accepts_counts_only_fn_declining_against_it():
    results = [_result("pass", "float32"), _result("pass", "float32"),
               CheckResult("a", "output", "unsupported", "factory: no grouped-query attention", ()),
               CheckResult("b", "output", "unsupported", "the layer takes a rank-2 mask", ())]
    judged = coverage(results)
    assert (judged.judged, judged.allowed, judged.total) == (2, 3, 4)
    assert judged.share == 0.5 and round(judged.share_of_allowed, 4) == 0.6667
    assert "(67% of the 3 in cases its framework and factory accept)" in judged.describe()
    assert judged.to_dict()["share_of_allowed"] == 0.6667


def test_a_case_declined_up_front_says_so_in_the_result():
    run = check([PICKY], profile="quick")
    declined = [r for r in run.implementations[0].results if r.status == "unsupported"]
    assert declined and all(r.message.startswith(("factory: ", "framework: numpy runs")) for r in declined)
    judged = run.implementations[0].coverage()
    assert judged.allowed == judged.total - len(declined) and judged.share_of_allowed == 1.0


def test_a_pass_on_a_small_share_warns_and_min_coverage_fails_it():
    run = check(["numpy.oracle", PICKY], profile="quick")
    oracle_impl, picky = run.implementations
    assert picky.verdict == "pass" and picky.coverage().share < 0.5
    assert "causal_top_left" in picky.coverage().never_judged
    assert [w for w in run.warnings if w.startswith(PICKY) and "passed, but on only" in w]
    assert not [w for w in run.warnings if w.startswith("numpy.oracle ")]

    strict = check([PICKY], profile="quick", min_coverage=0.9)
    assert strict.implementations[0].verdict == "fail"
    assert "below --min-coverage 90%" in strict.implementations[0].reason


def test_every_report_shows_coverage(tmp_path):
    run = check(["numpy.oracle", PICKY], profile="quick")
    report.write_reports(run, tmp_path)
    data = json.loads((tmp_path / "conformance.json").read_text())
    shares = {i["name"]: i["coverage"]["share"] for i in data["implementations"]}
    assert shares[PICKY] < 0.5 < shares["numpy.oracle"]
    markdown = (tmp_path / "conformance.md").read_text().replace("\\", "")   # Markdown escapes
    assert "## Coverage" in markdown and "causal_top_left" in markdown
    assert "Coverage" in (tmp_path / "conformance.html").read_text()
    suites = ET.fromstring(report.to_junit(run)).findall("testsuite")
    properties = {s.get("name"): {p.get("name"): p.get("value") for p in s.iter("property")}
                  for s in suites}
    assert float(properties[PICKY]["coverage.share"]) == shares[PICKY]


def test_min_coverage_must_be_a_percentage(capsys):
    for bad in ("150", "-1", "nan", "half"):
        assert cli.main(["numpy.oracle", "--min-coverage", bad]) == 2, bad
        assert "percentage" in capsys.readouterr().err
