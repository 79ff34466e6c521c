"""The pytest face of the gate, a plugin registered through the ``pytest11`` entry point:

    pytest --attnsuite-impl torch:mypkg.attention:make --attnsuite-profile quick \\
           [--attnsuite-xfails FILE] [--attnsuite-xfail-strict] [--attnsuite-report DIR]
           [--junit-xml FILE]

collects one test per implementation x case x check, and one ``IMPL::verdict`` test per
implementation (the gate's verdict: an implementation that errors, or is judged on
nothing, fails there). It is ``attnsuite check`` underneath: ``runner.check`` judges in
worker processes with the same judging, xfails and coverage, and ``--attnsuite-report``
writes the same conformance.json/.md/.html. The judging runs once, at collection (the
checks an implementation gets depend on the call forms it takes, known only once it is
loaded), so ``--collect-only`` judges too; each test then reports its check's result:
pass, fail with the gate's message, skip (unsupported), xfail, or XPASS (a failure with
``--attnsuite-xfail-strict``, as ``attnsuite check --xfail-strict``).

Without ``--attnsuite-impl`` the plugin does nothing: it is loaded in every pytest
session of whoever installed attnsuite, so this module imports only pytest until then.
"""

from __future__ import annotations

import pytest

_GATE = pytest.StashKey["_Gate"]()
ITEM_PREFIX = "attnsuite"


def pytest_addoption(parser):
    group = parser.getgroup("attnsuite", "attnsuite conformance gate (attnsuite check as tests)")
    group.addoption("--attnsuite-impl", action="append", default=[], metavar="IMPL",
                    help="implementation to judge: a registered name or FRAMEWORK:module.path:factory "
                         "(found from the current directory); repeatable. Without it the plugin is off")
    group.addoption("--attnsuite-profile", default="quick", metavar="PROFILE",
                    help="quick (the default), default (every feature) or full")
    group.addoption("--attnsuite-dtype", action="append", metavar="D[,D]",
                    help="only these dtypes; repeatable")
    group.addoption("--attnsuite-case", action="append", metavar="PATTERN",
                    help="only this case id or fnmatch pattern; repeatable")
    group.addoption("--attnsuite-xfails", metavar="FILE",
                    help="expected failures: lines 'PATTERN  # reason' over IMPL::CASE_ID::CHECK")
    group.addoption("--attnsuite-xfail-strict", action="store_true",
                    help="an unexpected pass of an xfail pattern fails (as pytest's xfail_strict)")
    group.addoption("--attnsuite-report", metavar="DIR",
                    help="write DIR/conformance.json, .md and .html")
    group.addoption("--attnsuite-device", default="cpu", choices=("cpu", "gpu"))
    group.addoption("--attnsuite-seed", type=int, default=0, metavar="N",
                    help="shifts every case's seed (default 0)")
    group.addoption("--attnsuite-generated", type=int, default=0, metavar="N",
                    help="also N generated cases, drawn from the seed")
    group.addoption("--attnsuite-weights", metavar="FILE",
                    help="trained weights (see attnsuite.conformance.weights)")


class _Gate:
    """One run of the gate for this pytest session: its options, lock and result."""

    def __init__(self, config):
        option = config.getoption
        self.names = list(dict.fromkeys(option("--attnsuite-impl")))
        dtypes = [d.strip() for group in option("--attnsuite-dtype") or () for d in group.split(",")]
        self.kwargs = dict(profile=option("--attnsuite-profile"), dtypes=dtypes or None,
                           device=option("--attnsuite-device"), seed=option("--attnsuite-seed"),
                           case_filter=option("--attnsuite-case"), xfails=option("--attnsuite-xfails"),
                           xfail_strict=option("--attnsuite-xfail-strict"),
                           weights_path=option("--attnsuite-weights"),
                           generated=option("--attnsuite-generated"))
        self.report_dir = option("--attnsuite-report")
        self.lock = None
        self.run = None
        self.written: list = []

    def validate(self) -> None:
        """Every usage error before anything runs (as ``attnsuite check``): pytest's exit 4."""
        from attnsuite.conformance import report
        from attnsuite.conformance.runner import select_cases
        from attnsuite.conformance.weights import load_weights
        from attnsuite.conformance.xfails import Xfails
        from attnsuite.impls.registry import find_entry

        k = self.kwargs
        try:
            for name in self.names:
                find_entry(name)
            spec = load_weights(k["weights_path"])[0] if k["weights_path"] else None
            select_cases(k["profile"], k["dtypes"], k["case_filter"], k["seed"], spec, k["generated"])
            k["xfails"] = Xfails.coerce(k["xfails"], k["xfail_strict"])
            if self.report_dir:
                self.lock = report.ReportLock(self.report_dir).acquire()
        except (ValueError, report.ReportBusy) as exc:
            raise pytest.UsageError(f"attnsuite: {exc}") from None
        except OSError as exc:
            raise pytest.UsageError(f"--attnsuite-report {self.report_dir}: cannot write there: "
                                    f"{exc.strerror or exc}") from None

    def judge(self):
        from attnsuite.conformance import report
        from attnsuite.conformance.runner import check

        self.run = check(self.names, isolate=True, **self.kwargs)
        if self.report_dir:
            self.written = report.write_reports(self.run, self.report_dir)
        if self.run.interrupted:     # Ctrl-C while judging: the partial report is written; stop
            raise KeyboardInterrupt(f"attnsuite: interrupted ({self.run.interrupted})")
        return self.run

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def pytest_configure(config):
    if not config.getoption("--attnsuite-impl", None):
        return
    if config.getoption("numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError("--attnsuite-impl: the gate judges in worker processes of its own; run "
                                "it without pytest-xdist's -n (each xdist worker would judge the whole run)")
    gate = _Gate(config)
    gate.validate()
    config.stash[_GATE] = gate


def pytest_unconfigure(config):
    gate = config.stash.get(_GATE, None)
    if gate is not None:
        gate.release()


@pytest.hookimpl(tryfirst=True)     # before -k and -m deselect
def pytest_collection_modifyitems(session, config, items):
    gate = config.stash.get(_GATE, None)
    if gate is None:
        return
    run = gate.judge()
    node = _GateNode.from_parent(session, name=ITEM_PREFIX, nodeid=ITEM_PREFIX)
    items.extend(node.items_for(run))


def pytest_terminal_summary(terminalreporter, config):
    gate = config.stash.get(_GATE, None)
    if gate is None or gate.run is None:
        return
    from attnsuite import sanitize

    run = gate.run
    terminalreporter.section("attnsuite")
    for warning in run.warnings:
        terminalreporter.write_line(f"warning: {sanitize.terminal(warning)}")
    for path in gate.written:
        terminalreporter.write_line(f"wrote {path}")
    passed = sum(impl.verdict == "pass" for impl in run.implementations)
    terminalreporter.write_line(f"{'PASS' if run.ok else 'FAIL'}: {passed} of {len(run.implementations)} "
                                f"implementations pass ({len(run.cases)} cases, profile "
                                f"{run.environment['profile']})")


class _GateNode(pytest.Collector):
    """The parent of the gate's tests: node ids ``attnsuite::IMPL::CASE_ID::CHECK``."""

    def collect(self):
        return self.items_for(self.config.stash[_GATE].run)

    def items_for(self, run) -> list[pytest.Item]:
        items = []
        for impl in run.implementations:
            for result in impl.results:
                name = f"{impl.name}::{result.case_id}::{result.check}"
                items.append(CheckItem.from_parent(self, name=name, impl=impl, result=result))
            items.append(VerdictItem.from_parent(self, name=f"{impl.name}::verdict", impl=impl))
        return items


class _GateItem(pytest.Item):
    def __init__(self, *, impl, result=None, **kwargs):
        super().__init__(**kwargs)
        self.impl, self.result = impl, result

    def reportinfo(self):
        return self.path, None, f"{ITEM_PREFIX}::{self.name}"


class CheckItem(_GateItem):
    """One check of one case: its result as the gate judged it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        r = self.result
        if r.status == "xpass":    # passing under an xfail mark: pytest's XPASS
            self.add_marker(pytest.mark.xfail(reason=r.message, strict=False))
        if r.ratio is not None:
            self.user_properties.append(("attnsuite.ratio", r.ratio))

    def runtest(self):
        from attnsuite import sanitize
        from attnsuite.conformance.results import FAILING

        r = self.result
        if r.status in FAILING:
            pytest.fail(sanitize.terminal(r.message), pytrace=False)
        if r.status == "unsupported":
            pytest.skip(f"unsupported: {sanitize.one_line(r.message)}")
        if r.status == "xfail":
            pytest.xfail(sanitize.one_line(r.message))


class VerdictItem(_GateItem):
    """The implementation's verdict: fails unless it passed (as ``attnsuite check``'s exit status)."""

    def runtest(self):
        from attnsuite import sanitize
        from attnsuite.conformance.diagnosis import cause_lines

        impl = self.impl
        if impl.verdict == "pass":
            return
        counts = ", ".join(f"{n} {s}" for s, n in sorted(impl.counts().items())) or "nothing judged"
        lines = [f"{impl.verdict.upper()} {impl.name}: {counts}, {impl.coverage().percent()} judged"]
        lines += [impl.reason] if impl.reason else []
        lines += cause_lines(impl)
        pytest.fail(sanitize.terminal("\n".join(lines)), pytrace=False)
