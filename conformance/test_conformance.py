"""One test per implementation x case (see conformance/conftest.py for the options)."""

from __future__ import annotations

import functools

import pytest

from attnsuite.conformance.checks import Options, judge_case, reference
from attnsuite.conformance.runner import FAILING, load_subject
from attnsuite.conformance.weights import load_weights


class Session:
    """What the tests of one pytest run share: loaded implementations, oracle results."""

    def __init__(self, config):
        self.options = Options(config.getoption("--device"),
                               config.getoption("--strict-fully-masked"),
                               config.getoption("--weights"), config.getoption("--seed"))
        weights = config.getoption("--weights")
        self.weights = load_weights(weights) if weights else None
        self.subjects: dict[str, object] = {}

    def subject(self, name):
        if name not in self.subjects:
            try:
                self.subjects[name] = load_subject(name, self.options.device)
            except Exception as exc:
                self.subjects[name] = str(exc)
        subject = self.subjects[name]
        if isinstance(subject, str):
            if "process of its own" in subject:
                pytest.skip(subject)
            pytest.fail(subject, pytrace=False)
        return subject

    @functools.lru_cache(maxsize=4)
    def reference(self, case):
        weights = None
        if self.weights is not None and case.spec == self.weights[0]:
            weights = self.weights[1]
        return reference(case, weights, self.options.strict_fully_masked)

    def judge(self, name, case) -> list:
        """The case's results; a failing or erroring check fails the test with its message."""
        subject = self.subject(name)
        case = subject.case_for(case, self.options.seed)   # in a call form it takes
        results = judge_case(subject, case, self.reference(case), self.options)
        failures = [r.message for r in results if r.status in FAILING]
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)
        return results


@pytest.fixture(scope="session")
def session(request):
    return Session(request.config)


def test_case(session, impl_name, case):
    results = session.judge(impl_name, case)
    if all(r.status == "unsupported" for r in results):
        pytest.skip(f"unsupported: {results[0].message}")


def test_generated(session, impl_name, request):
    examples = request.config.getoption("--generated")
    if not examples:
        pytest.skip("generated cases are off (--generated N turns them on)")
    from hypothesis import HealthCheck, given, settings

    from attnsuite.conformance.cases import case_strategy

    dtypes = request.config.getoption("--dtype") or ("float64", "float32")

    # Hypothesis's example database (.hypothesis/) replays a past falsifying case first.
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=case_strategy(dtypes))
    def judge(case):
        print(f"case {case.id}: reproduce with --case {case.id}")  # pytest shows it on failure
        session.judge(impl_name, case)      # an unsupported case is simply not a failure

    judge()
