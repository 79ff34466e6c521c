"""Expected failures: a file of ``PATTERN  # reason`` lines.

PATTERN is matched (``fnmatch``, case-sensitive) against ``IMPL::CASE_ID::CHECK``, IMPL
as named on the command line. A failure it matches is reported as xfail; a check it
matches that passes is reported as xpass (flagged, not failed: the entry can go). A
pattern that matches nothing is warned about. Blank lines and ``#`` lines are skipped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Iterable

from attnsuite.conformance.checks import FAILING, CheckResult


@dataclasses.dataclass
class Xfail:
    pattern: str
    reason: str
    where: str              # "FILE:LINE", for warnings
    matched: int = 0


class Xfails:
    def __init__(self, entries: Iterable[Xfail] = ()):
        self.entries = list(entries)

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "<xfails>") -> "Xfails":
        entries = []
        for number, line in enumerate(lines, 1):
            pattern, _, reason = line.partition("#")
            pattern = pattern.strip()
            if not pattern:
                continue
            if len(pattern.split()) != 1:
                raise ValueError(f"{source}:{number}: one pattern per line, then '# reason' "
                                 f"(got {line.strip()!r})")
            entries.append(Xfail(pattern, reason.strip() or "no reason given", f"{source}:{number}"))
        return cls(entries)

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
    def coerce(cls, value) -> "Xfails":
        """None, an Xfails, a path, or an iterable of lines."""
        if value is None:
            return cls()
        if isinstance(value, Xfails):
            return value
        if isinstance(value, (str, Path)):
            return cls.load(value)
        return cls.parse(value)

    def match(self, impl: str, result: CheckResult) -> Xfail | None:
        key = f"{impl}::{result.case_id}::{result.check}"
        for entry in self.entries:
            if fnmatch.fnmatchcase(key, entry.pattern):
                entry.matched += 1
                return entry
        return None

    def apply(self, impl: str, result: CheckResult) -> CheckResult:
        entry = self.match(impl, result)
        if entry is None or result.status == "unsupported":
            return result
        if result.status in FAILING:
            return dataclasses.replace(result, status="xfail",
                                       message=f"XFAIL ({entry.reason}): {result.message}")
        return dataclasses.replace(result, status="xpass", message=(
            f"XPASS: expected to fail by {entry.pattern!r} ({entry.where}: {entry.reason}), "
            f"but passes: {result.message}"))

    def unmatched(self) -> list[str]:
        return [f"{e.where}: xfail pattern {e.pattern!r} matches no check of this run"
                for e in self.entries if not e.matched]
