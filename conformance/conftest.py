"""The pytest face of the gate: ``pytest conformance --impl IMPL [--impl ...]``.

One test per implementation x case (its checks together; a failure shows the same
message as ``attnsuite check``), so pytest's own ``--junit-xml``, ``-k`` and ``-x`` work
as usual. ``--generated N`` adds a hypothesis test per implementation: N generated cases,
shrunk to a minimal failing spec and shape when one fails.
"""

from __future__ import annotations

import pytest

from attnsuite.conformance.cases import DTYPES, PROFILES


def pytest_addoption(parser):
    group = parser.getgroup("attnsuite", "attnsuite conformance")
    group.addoption("--impl", action="append", default=[], metavar="IMPL",
                    help="implementation to judge (registered name or FRAMEWORK:module:factory); "
                         "repeatable; default numpy.oracle")
    group.addoption("--profile", choices=PROFILES, default="quick")
    group.addoption("--dtype", action="append", choices=DTYPES, help="only these dtypes; repeatable")
    group.addoption("--device", choices=("cpu", "gpu"), default="cpu")
    group.addoption("--weights", metavar="FILE", help="trained weights (see conformance/weights.py)")
    group.addoption("--case", action="append", metavar="ID", help="case id or fnmatch pattern")
    group.addoption("--seed", type=int, default=0)
    group.addoption("--strict-fully-masked", action="store_true")
    group.addoption("--generated", type=int, default=0, metavar="N",
                    help="hypothesis examples per implementation (default 0: off)")


def _names(config) -> list[str]:
    return config.getoption("--impl") or ["numpy.oracle"]


def pytest_generate_tests(metafunc):
    from attnsuite.conformance.runner import select_cases
    from attnsuite.conformance.weights import load_weights

    config = metafunc.config
    if "impl_name" not in metafunc.fixturenames:
        return
    if "case" not in metafunc.fixturenames:
        metafunc.parametrize("impl_name", _names(config))
        return
    weights = config.getoption("--weights")
    try:
        spec = load_weights(weights)[0] if weights else None
        cases = select_cases(config.getoption("--profile"), config.getoption("--dtype"),
                             config.getoption("--case"), config.getoption("--seed"), spec)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    # Case-major, so that consecutive tests share the case's oracle results.
    pairs = [(name, case) for case in cases for name in _names(config)]
    metafunc.parametrize(("impl_name", "case"), pairs,
                         ids=[f"{name}::{case.id}" for name, case in pairs])
