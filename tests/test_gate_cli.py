"""``attnsuite check``: exit status, reports, JUnit XML, xfails and usage errors, through
the real command line (implementations judged in worker processes)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from attnsuite.cli import main as attnsuite_main
from attnsuite.conformance.cli import main

P = "numpy:tests.plugins.numpy_impls:"
BROKEN_IMPORT = "numpy:tests.plugins.broken_import:factory"
MIXED = ["numpy.oracle", P + "raises", BROKEN_IMPORT, P + "wrong_key_grad", P + "nan_fully_masked"]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One run of the gate over a mix of good and bad implementations, with every output."""
    folder = tmp_path_factory.mktemp("gate")
    xfails = folder / "xfails.txt"
    xfails.write_text(f"{P}wrong_key_grad::*::grad.key   # off by 1%, known\n"
                      f"{P}wrong_key_grad::*::grad.query # self-attention sums it in\n"
                      f"{P}wrong_key_grad::*::grad.memory # key-is-value sums it in\n"
                      "jax.nothing::*                    # not in the run: no warning\n"
                      "numpy.oracle::no-such-case        # matches nothing\n")
    argv = [*MIXED, "--report", str(folder / "report"), "--junit-xml", str(folder / "junit.xml"),
            "--xfails", str(xfails), "--dtype", "float32"]
    return folder, main(argv)


def test_exit_1_when_any_fails_or_errors_and_others_still_judged(mixed_run):
    folder, code = mixed_run
    assert code == 1
    report = json.loads((folder / "report" / "conformance.json").read_text())
    verdicts = {impl["name"]: impl["verdict"] for impl in report["implementations"]}
    assert verdicts == {"numpy.oracle": "pass", P + "raises": "fail", BROKEN_IMPORT: "error",
                        P + "wrong_key_grad": "pass", P + "nan_fully_masked": "fail"}


def test_json_report_schema(mixed_run):
    folder, _ = mixed_run
    text = (folder / "report" / "conformance.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert [impl["name"] for impl in report["implementations"]] == MIXED
    for impl in report["implementations"]:
        assert {"name", "verdict", "reason", "results", "counts", "framework"} <= set(impl)
        for r in impl["results"]:
            assert {"case_id", "check", "status", "message", "tags", "ratio"} <= set(r)
            assert r["status"] in ("pass", "fail", "error", "unsupported", "xfail", "xpass")
    broken = report["implementations"][2]
    assert "attnsuite_no_such_dependency" in broken["reason"]
    env = report["environment"]
    for key in ("suite", "frameworks", "device", "seed", "profile", "time", "python", "platform"):
        assert key in env, key
    assert env["suite"]["version"] and "commit" in env["suite"] and env["frameworks"]["numpy"]
    assert (env["profile"], env["seed"], env["device"]) == ("quick", 0, "cpu")
    assert env["dtypes"] == ["float32"]
    judged = {r["case_id"] for r in report["implementations"][0]["results"]}
    assert {c["id"] for c in report["cases"]} == judged
    assert any("numpy.oracle::no-such-case" in w for w in report["warnings"])
    assert not any("jax.nothing" in w for w in report["warnings"])


def test_markdown_and_html_show_the_matrices(mixed_run):
    folder, _ = mixed_run
    markdown = (folder / "report" / "conformance.md").read_text()
    html = (folder / "report" / "conformance.html").read_text()
    for text in (markdown, html):
        for piece in ("implementation", "output", "grad", "fully_masked", "dropout",
                      "numpy.oracle", "unsupported", "Rows with no visible key", "nan + NaN grads"):
            assert piece in text, piece
    assert "| numpy.oracle | pass |" in markdown
    assert html.lstrip().startswith("<!DOCTYPE html>") and "<table" in html
    assert "boom: this implementation always raises" in markdown


def test_junit_xml_has_one_testcase_per_implementation_case_and_check(mixed_run):
    folder, _ = mixed_run
    report = json.loads((folder / "report" / "conformance.json").read_text())
    root = ET.parse(folder / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == MIXED
    for impl in report["implementations"]:
        suite = suites[impl["name"]]
        cases = suite.findall("testcase")
        statuses = [r["status"] for r in impl["results"]]
        load_error = 1 if impl["reason"] else 0
        assert len(cases) == int(suite.get("tests")) == len(statuses) + load_error
        assert int(suite.get("failures")) == statuses.count("fail")
        assert len(suite.findall("testcase/failure")) == statuses.count("fail")
        assert int(suite.get("errors")) == statuses.count("error") + load_error
        assert int(suite.get("skipped")) == statuses.count("unsupported") + statuses.count("xfail")
        names = {c.get("name") for c in cases}
        assert {f"{r['case_id']}::{r['check']}" for r in impl["results"]} <= names
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites.values())


def test_xfails_in_the_report(mixed_run):
    folder, _ = mixed_run
    report = json.loads((folder / "report" / "conformance.json").read_text())
    wrong = report["implementations"][3]
    statuses = {r["status"] for r in wrong["results"] if r["check"] == "grad.key"}
    assert statuses == {"xfail"}


def test_exit_0_and_quiet_output(capsys):
    assert main(["numpy.oracle", "--case", "mha2-E8-B2-Lq5-Lk5-float64"]) == 0
    out = capsys.readouterr().out
    assert "PASS  numpy.oracle" in out and "1 of 1 implementations pass" in out
    assert main(["numpy.oracle", "-q", "--case", "mha2-E8-B2-Lq5-Lk5-float64"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "PASS: 1 of 1 implementations pass (1 cases, profile quick)"]


def test_reproduce_line_reruns_exactly_the_failing_case(capsys):
    assert main([P + "wrong_key_grad", "--dtype", "float32", "-q"]) == 1
    out = capsys.readouterr().out
    repro = next(line for line in out.splitlines() if "reproduce: attnsuite check" in line)
    argv = repro.split("reproduce: attnsuite check ")[1].split()
    assert main(argv + ["-q"]) == 1
    again = capsys.readouterr().out
    case_id = argv[argv.index("--case") + 1]
    assert f":: {case_id} ::" in again and "(1 cases, profile quick)" in again


@pytest.mark.parametrize("argv, text", [
    ([], "required"),
    (["no.such.impl"], "no implementation of that name"),
    (["numpy:only_two"], "FRAMEWORK:module.path:factory"),
    (["cobol:some.module:factory"], "unknown framework"),
    (["numpy.oracle", "--profile", "huge"], "invalid choice"),
    (["numpy.oracle", "--dtype", "float8"], "unknown dtype"),
    (["numpy.oracle", "--case", "no-such-case"], "not in the catalog"),
    (["numpy.oracle", "--xfails", "/no/such/xfails.txt"], "xfails"),
    (["numpy.oracle", "--seed", "x"], "invalid int"),
])
def test_usage_errors_exit_2(argv, text, capsys):
    assert main(argv) == 2
    assert text in capsys.readouterr().err


def test_attnsuite_dispatches_check():
    assert attnsuite_main(["check", "numpy.oracle", "-q", "--case", "mha2-E8-B2-Lq5-Lk5-float32"]) == 0
    assert attnsuite_main(["check", "--profile"]) == 2


def test_generated_cases_run_from_the_cli_and_reproduce_by_id(capsys):
    from attnsuite.conformance import cli
    from attnsuite.conformance.cases import catalog, generated_cases

    assert cli.main(["numpy.oracle", "--profile", "quick", "--generated", "4", "--seed", "7"]) == 0
    assert f"({len(catalog('quick')) + 4} cases, profile quick)" in capsys.readouterr().out
    one = generated_cases(4, 7)[2]
    assert cli.main(["numpy.oracle", "--case", one.id]) == 0
    assert "(1 cases, profile quick)" in capsys.readouterr().out
    assert cli.main(["numpy.oracle", "--generated", "-3"]) == 2
