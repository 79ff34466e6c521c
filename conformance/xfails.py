"""Expected failures: a file of ``PATTERN  # reason`` lines, as array-api-tests' xfails.

PATTERN (``fnmatch``, case-sensitive; IMPL as named on the command line) has one of two
levels:

- ``IMPL::CASE_ID``: the case as a whole is expected to fail. Its failing checks are
  xfail, its passing checks stay pass; a case none of whose checks fails is one xpass
  (reported on its first judged check), not one per check.
- ``IMPL::CASE_ID::CHECK``: that check is expected to fail: xfail when it fails, xpass
  when it passes. A check-level pattern wins over a case-level one.

An xpass is flagged, not failed (the entry can go), unless the run is strict
(``--xfail-strict``, or a line ``xfail_strict = true`` in the file): then it fails, as
pytest's ``xfail_strict``. A pattern that matches nothing in the run is warned about when
its IMPL part names an implementation of the run (a file shared by several runs names
others). Blank lines and ``#`` lines are skipped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path
from typing import Iterable, Sequence

from attnsuite.conformance.checks import FAILING, CheckResult

LEVELS = {1: "case", 2: "check"}            # "::" in the pattern -> its level
_STRICT = re.compile(r"xfail_strict\s*=\s*(true|false)", re.IGNORECASE)


@dataclasses.dataclass
class Xfail:
    pattern: str
    reason: str
    where: str              # "FILE:LINE", for warnings
    matched: int = 0

    @property
    def level(self) -> str:
        return LEVELS[self.pattern.count("::")]

    @property
    def impl_pattern(self) -> str:
        return self.pattern.split("::")[0]


class Xfails:
    def __init__(self, entries: Iterable[Xfail] = (), strict: bool = False):
        self.entries = list(entries)
        self.strict = strict

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "<xfails>") -> "Xfails":
        entries, strict = [], False
        for number, line in enumerate(lines, 1):
            pattern, _, reason = line.partition("#")
            pattern = pattern.strip()
            if not pattern:
                continue
            if setting := _STRICT.fullmatch(pattern):
                strict = setting.group(1).lower() == "true"
                continue
            if len(pattern.split()) != 1:
                raise ValueError(f"{source}:{number}: one pattern per line, then '# reason' "
                                 f"(got {line.strip()!r})")
            if pattern.count("::") not in LEVELS:
                raise ValueError(f"{source}:{number}: a pattern is IMPL::CASE_ID or "
                                 f"IMPL::CASE_ID::CHECK (got {pattern!r})")
            entries.append(Xfail(pattern, reason.strip() or "no reason given", f"{source}:{number}"))
        return cls(entries, strict)

    @classmethod
    def load(cls, path) -> "Xfails":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"--xfails {path}: {exc.strerror or exc}") from exc
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start} of the line)") from None
            if b"\0" in line:
                raise ValueError(f"{path}:{number}: a NUL character; an xfails file is text")
        return cls.parse(data.decode("utf-8").split("\n"), str(path))

    @classmethod
    def coerce(cls, value, strict: bool = False) -> "Xfails":
        """None, an Xfails, a path, or an iterable of lines; ``strict`` makes it strict
        whatever the file says."""
        if value is None:
            xfails = cls()
        elif isinstance(value, Xfails):
            xfails = value
        elif isinstance(value, (str, Path)):
            xfails = cls.load(value)
        else:
            xfails = cls.parse(value)
        xfails.strict = xfails.strict or strict
        return xfails

    def _first(self, level: str, key: str) -> Xfail | None:
        return next((e for e in self.entries if e.level == level and fnmatch.fnmatchcase(key, e.pattern)),
                    None)

    def _xpass(self, entry: Xfail, result: CheckResult, what: str) -> CheckResult:
        strict = " (strict: an unexpected pass fails)" if self.strict else ""
        return dataclasses.replace(result, status="fail" if self.strict else "xpass", message=(
            f"XPASS{strict}: {what} expected to fail by {entry.pattern!r} ({entry.where}: "
            f"{entry.reason}), but passes: {result.message}"))

    def apply_case(self, impl: str, results: Sequence[CheckResult]) -> list[CheckResult]:
        """The checks of one case of ``impl``, with the expected failures applied."""
        out = []
        case_entry = self._first("case", f"{impl}::{results[0].case_id}") if results else None
        case_failed = any(r.status in FAILING for r in results)
        xpass_due = case_entry is not None and not case_failed
        if case_entry is not None:
            case_entry.matched += 1
        for r in results:
            entry = self._first("check", f"{impl}::{r.case_id}::{r.check}")
            if entry is not None:
                entry.matched += 1
            elif case_entry is not None:
                entry = case_entry
            if entry is None or r.status == "unsupported":
                out.append(r)
            elif r.status in FAILING:
                out.append(dataclasses.replace(r, status="xfail",
                                               message=f"XFAIL ({entry.reason}): {r.message}"))
            elif entry.level == "check":
                out.append(self._xpass(entry, r, "this check is"))
            elif xpass_due:     # the case-level entry: one xpass for the whole case
                xpass_due = False
                out.append(self._xpass(entry, r, f"the case (all its {len(results)} checks) is"))
            else:
                out.append(r)
        return out

    def apply(self, impl: str, result: CheckResult) -> CheckResult:
        """One check on its own (a case-level pattern then judges it as a case of one check)."""
        return self.apply_case(impl, [result])[0]

    def unmatched(self, impls: Iterable[str] | None = None) -> list[str]:
        """Warnings for the patterns that matched nothing, of those whose IMPL part names
        one of ``impls`` (all of them when None)."""
        names = None if impls is None else list(impls)
        return [f"{e.where}: xfail pattern {e.pattern!r} matches no check of this run"
                for e in self.entries if not e.matched
                and (names is None or any(fnmatch.fnmatchcase(n, e.impl_pattern) for n in names))]
