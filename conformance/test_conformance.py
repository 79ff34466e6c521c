"""One test per implementation x case (see conformance/conftest.py for the options)."""

from __future__ import annotations

import functools

import pytest

from attnsuite.conformance import judging
from attnsuite.conformance.checks import Options
from attnsuite.conformance.results import FAILING
from attnsuite.conformance.weights import load_weights


class Session:
    """What the tests of one pytest run share: loaded implementations, oracle results."""

    def __init__(self, config):
        weights_path = config.getoption("--weights")
        self.options = Options(config.getoption("--device"),
                               config.getoption("--strict-fully-masked"),
                               weights_path, config.getoption("--seed"))
        self.trained_weights = load_weights(weights_path) if weights_path else None
        self.subjects: dict[str, object] = {}

    def subject(self, name):
        if name not in self.subjects:
            try:
                self.subjects[name] = judging.load_subject(name, self.options.device)
            except Exception as exc:
                self.subjects[name] = exc
        subject = self.subjects[name]
        if isinstance(subject, judging.BackendConflict):
            pytest.skip(str(subject))
        if isinstance(subject, Exception):
            pytest.fail(str(subject).strip() or type(subject).__name__, pytrace=False)
        return subject

    @functools.lru_cache(maxsize=4)
    def reference(self, case):
        return judging.case_reference(case, self.trained_weights, self.options)

    def judge(self, name, case) -> list:
        """The case's results; a failing or erroring check fails the test with its message."""
        subject = self.subject(name)
        case = subject.case_for(case, self.options.seed)   # in a call form it takes
        results = judging.judge(subject, case, self.reference(case), self.options)
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
