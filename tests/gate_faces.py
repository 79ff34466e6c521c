"""Helpers for the tests that hold the pytest face to ``attnsuite check``: a pytest plug-in
that records every test's outcome, and the outcomes a conformance.json implies."""

from __future__ import annotations

import json
import os
from pathlib import Path

RECORDER_MODULE = "attnsuite_test_outcomes"
RECORDER = '''
import json, os

outcomes = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        outcomes.setdefault(report.nodeid, outcome)


def pytest_sessionfinish(session):
    with open(os.environ["ATTNSUITE_TEST_OUTCOMES"], "w") as f:
        json.dump(outcomes, f)
'''
# A check's status in attnsuite check, as the plug-in's test reports it.
OUTCOME = {"pass": "passed", "fail": "failed", "error": "failed", "unsupported": "skipped",
           "xfail": "xfailed", "xpass": "xpassed"}


def recorder_env(folder: Path, outcomes: Path, pythonpath: str | None = None) -> dict:
    """The environment of a pytest subprocess that loads the recorder (``-p`` it by
    RECORDER_MODULE) and writes every test's outcome to ``outcomes``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{RECORDER_MODULE}.py").write_text(RECORDER)
    env = dict(os.environ, ATTNSUITE_TEST_OUTCOMES=str(outcomes))
    if pythonpath is None:
        pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), pythonpath]))
    return env


def gate_outcomes(outcomes: Path) -> dict[str, str]:
    """The recorded outcomes of the plug-in's tests (node ids ``attnsuite::...``)."""
    recorded = json.loads(outcomes.read_text())
    return {k: v for k, v in recorded.items() if k.startswith("attnsuite::")}


def expected_outcomes(conformance_json: Path) -> dict[str, str]:
    """What each of the plug-in's tests must report, from ``attnsuite check``'s report."""
    run = json.loads(conformance_json.read_text())
    expected = {}
    for impl in run["implementations"]:
        for r in impl["results"]:
            expected[f"attnsuite::{impl['name']}::{r['case_id']}::{r['check']}"] = OUTCOME[r["status"]]
        expected[f"attnsuite::{impl['name']}::verdict"] = "passed" if impl["verdict"] == "pass" else "failed"
    return expected


def verdicts(conformance_json: Path) -> dict[str, tuple[str, dict]]:
    """Implementation -> (verdict, counts) of a conformance.json."""
    run = json.loads(conformance_json.read_text())
    return {impl["name"]: (impl["verdict"], impl["counts"]) for impl in run["implementations"]}
