"""How much of a profile an implementation was judged on: part of its verdict.

An implementation may decline a case (``Unsupported``); the checks of that case are then
not judged. A PASS earned on 3 of 100 cases says far less than one earned on all of them,
so every report shows the share of the profile's checks that were judged and the
features (case tags) that no judged check exercised. Below ``LOW_COVERAGE`` the run warns;
``--min-coverage`` turns a share below it into a failure.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

LOW_COVERAGE = 0.5


@dataclasses.dataclass(frozen=True)
class Coverage:
    judged: int                      # checks that ran to a verdict
    total: int                       # checks the profile asked of this implementation
    never_judged: tuple[str, ...]    # case tags that no judged check carries

    @property
    def share(self) -> float:
        return self.judged / self.total if self.total else 0.0

    def percent(self) -> str:
        return f"{100 * self.share:.0f}%"

    def describe(self) -> str:
        text = f"{self.percent()} of {self.total} checks judged"
        if self.never_judged:
            text += "; never judged: " + ", ".join(self.never_judged)
        return text

    def to_dict(self) -> dict:
        return {"judged": self.judged, "total": self.total, "share": round(self.share, 4),
                "never_judged": list(self.never_judged)}


def coverage(results: Iterable) -> Coverage:
    """The coverage of an implementation's CheckResults."""
    results = list(results)
    judged = [r for r in results if r.status != "unsupported"]
    seen = {tag for r in judged for tag in r.tags}
    asked = dict.fromkeys(tag for r in results for tag in r.tags)
    return Coverage(len(judged), len(results), tuple(t for t in asked if t not in seen))
