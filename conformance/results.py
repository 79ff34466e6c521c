"""What a run found: ``ImplResult`` per implementation, ``RunResult`` for the run."""

from __future__ import annotations

import dataclasses
import signal

from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import FAILING, CheckResult
from attnsuite.conformance.coverage import Coverage, coverage


def worst_ratio(results) -> float | None:
    """The worst error ratio of the judged checks, expected failures (xfail) left out."""
    return max((r.ratio for r in results if r.ratio is not None and r.status not in ("unsupported", "xfail")),
               default=None)


@dataclasses.dataclass
class ImplResult:
    name: str                               # as given
    framework: str | None = None
    kind: str | None = None                 # oracle | ours | builtin | broken | plugin
    verdict: str = "pass"                   # pass | fail | error | untested
    reason: str | None = None               # why "error" or "untested": the load failure, a dead worker
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0                    # spent judging its cases (imports not counted)
    diagnosis: list[dict] | None = None     # the likely bugs of a failing one (conformance/diagnosis.py)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in FAILING]

    def coverage(self) -> Coverage:
        return coverage(self.results)

    def finish(self, min_coverage: float | None = None) -> None:
        """The verdict; ``min_coverage`` (a share, 0 to 1): judged on less fails."""
        judged = self.coverage()
        if self.reason is not None:
            self.verdict = "error"
        elif self.failures():
            self.verdict = "fail"
        elif min_coverage is not None and 0 < judged.share < min_coverage:
            self.verdict = "fail"
            self.reason = (f"judged on {judged.describe()}, below --min-coverage "
                           f"{100 * min_coverage:.0f}%")
        elif all(r.status == "unsupported" for r in self.results):
            # Nothing judged is no pass (as pytest exits 5 when no test ran): a gate that
            # declined every case must not turn green.
            self.verdict = "untested"
            why = self.results[0].message if self.results else "no case selected"
            self.reason = f"nothing judged: every case unsupported ({why})"
        else:
            self.verdict = "pass"


@dataclasses.dataclass
class RunResult:
    implementations: list[ImplResult]
    cases: list[Case]
    environment: dict
    warnings: list[str] = dataclasses.field(default_factory=list)
    interrupted: str | None = None          # the signal that ended the run early ("SIGINT", "SIGTERM")
    shard: dict | None = None               # --shard K/N: index, count, positions, cases_total, selection

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(impl.verdict == "pass" for impl in self.implementations)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + signal.Signals[self.interrupted]
        return 0 if self.ok else 1
