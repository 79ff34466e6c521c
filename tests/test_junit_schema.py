"""The gate's JUnit XML as CI tools read it: valid against the Jenkins xunit plugin's JUnit
schema (tests/data/jenkins-xunit-junit-10.xsd, checked by a real validator, lxml), with
per-testcase time, each suite's timestamp and hostname, and the run's environment and
coverage as properties."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
from lxml import etree   # the test extra (pyproject.toml) installs it

from attnsuite.conformance import report
from attnsuite.conformance.runner import check

SCHEMA = Path(__file__).parent / "data" / "jenkins-xunit-junit-10.xsd"
P = "numpy:tests.plugins.numpy_impls:"
# A pass, failures, an error (raises), a load error, unsupported cases, an xfail and xpasses.
IMPLS = ["numpy.oracle", P + "wrong_key_grad", P + "raises", "numpy:tests.plugins.broken_import:factory",
         P + "unsupported_gqa", P + "wrong_scale"]
XFAILS = [f"{P}wrong_key_grad::*::grad.*  # off by 1%, known"]


@pytest.fixture(scope="module")
def schema():
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


@pytest.fixture(scope="module")
def junit():
    run = check(IMPLS, profile="quick", dtypes=["float32"], xfails=XFAILS, diagnose=False)
    statuses = {r.status for impl in run.implementations for r in impl.results}
    assert {"pass", "fail", "error", "unsupported", "xfail", "xpass"} <= statuses, statuses
    return run, etree.fromstring(report.to_junit(run).encode())


def test_the_junit_file_is_valid_against_the_jenkins_schema(schema, junit):
    _, root = junit
    assert schema.validate(root), schema.error_log


def test_the_schema_rejects_what_it_should(schema, junit):
    """The validator is real: the old root attribute, a suite without its counts and a
    malformed suite time are each rejected."""
    _, root = junit
    for spoil in (lambda r: r.set("skipped", "3"),
                  lambda r: r.find("testsuite").attrib.pop("failures"),
                  lambda r: r.find("testsuite").set("time", "1.2 s")):
        spoiled = etree.fromstring(etree.tostring(root))
        spoil(spoiled)
        assert not schema.validate(spoiled)


def test_every_testcase_has_its_time_and_they_add_up_to_the_suites(junit):
    run, root = junit
    for impl, suite in zip(run.implementations, root.findall("testsuite")):
        assert suite.get("name") == impl.name
        cases = [c for c in suite.findall("testcase") if c.get("name") != "load"]
        assert len(cases) == len(impl.results)
        times = [float(c.get("time")) for c in cases]
        assert all(t >= 0 for t in times)
        # each time is rounded to the millisecond
        assert math.isclose(sum(times), float(suite.get("time")), abs_tol=1e-3 * (len(times) + 1))
    judged = root.find(f"testsuite[@name='{IMPLS[0]}']")
    assert float(judged.get("time")) > 0
    assert math.isclose(float(root.get("time")), sum(i.seconds for i in run.implementations), abs_tol=2e-3)


def test_suites_carry_timestamp_hostname_environment_and_coverage(junit):
    run, root = junit
    for impl, suite in zip(run.implementations, root.findall("testsuite")):
        assert suite.get("timestamp") == run.environment["time"]
        assert suite.get("hostname") == socket.gethostname()
        props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
        assert props["environment.frameworks.numpy"] == run.environment["frameworks"]["numpy"]
        assert props["environment.suite.version"] == run.environment["suite"]["version"]
        assert props["environment.profile"] == "quick" and props["environment.dtypes"] == "float32"
        assert props["environment.seed"] == "0"
        coverage = impl.coverage()
        assert props["coverage.judged"] == str(coverage.judged)
        assert props["coverage.total"] == str(coverage.total)


def test_root_counts_add_up_and_skipped_stays_on_the_suites(junit):
    _, root = junit
    suites = root.findall("testsuite")
    assert "skipped" not in root.attrib
    for key in ("tests", "failures", "errors"):
        assert int(root.get(key)) == sum(int(s.get(key)) for s in suites)
    unsupported = root.find(f"testsuite[@name='{IMPLS[4]}']")
    assert int(unsupported.get("skipped")) == len(unsupported.findall("testcase/skipped")) > 0
