"""How much of a profile an implementation was judged on: part of its verdict.

An implementation may decline a case (``Unsupported``); the checks of that case are then
not judged. A PASS earned on 3 of 100 cases says far less than one earned on all of them,
so every report shows the share of the profile's checks that were judged and the
features (case tags) that no judged check exercised. Below ``LOW_COVERAGE`` the run warns;
``--min-coverage`` turns a share below it into a failure.

It also tells apart two ways of declining. The framework lacking the case's dtype, or the
factory declining its spec, call form or dtype, states what the layer has ("no
grouped-query attention"); ``fn`` declining a case it was built for (a mask layout, the
gradients, an input it cannot take) is a hole in what it claims. ``allowed`` counts the
checks of the cases the framework and the factory accepted, and the share of those judged
says how much of the layer's own claim was checked.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

LOW_COVERAGE = 0.5
# How a result declined up front, before fn ran, begins its message (conformance.checks).
DECLINED_BY_FRAMEWORK, DECLINED_BY_FACTORY = "framework: ", "factory: "


@dataclasses.dataclass(frozen=True)
class Coverage:
    judged: int                      # checks that ran to a verdict
    total: int                       # checks the profile asked of this implementation
    never_judged: tuple[str, ...]    # case tags that no judged check carries
    allowed: int | None = None       # checks of the cases accepted up front (None: total)

    @property
    def share(self) -> float:
        return self.judged / self.total if self.total else 0.0

    @property
    def share_of_allowed(self) -> float:
        allowed = self.total if self.allowed is None else self.allowed
        return self.judged / allowed if allowed else 0.0

    def percent(self) -> str:
        return f"{100 * self.share:.0f}%"

    def describe(self) -> str:
        text = f"{self.percent()} of {self.total} checks judged"
        if self.allowed is not None and self.allowed < self.total:
            text += (f" ({100 * self.share_of_allowed:.0f}% of the {self.allowed} in cases "
                     f"its framework and factory accept)")
        if self.never_judged:
            text += "; never judged: " + ", ".join(self.never_judged)
        return text

    def to_dict(self) -> dict:
        return {"judged": self.judged, "total": self.total, "share": round(self.share, 4),
                "allowed": self.total if self.allowed is None else self.allowed,
                "share_of_allowed": round(self.share_of_allowed, 4),
                "never_judged": list(self.never_judged)}


def coverage(results: Iterable) -> Coverage:
    """The coverage of an implementation's CheckResults."""
    results = list(results)
    judged = [r for r in results if r.status != "unsupported"]
    seen = {tag for r in judged for tag in r.tags}
    asked = dict.fromkeys(tag for r in results for tag in r.tags)
    up_front = (DECLINED_BY_FRAMEWORK, DECLINED_BY_FACTORY)
    declined = sum(r.status == "unsupported" and r.message.startswith(up_front) for r in results)
    return Coverage(len(judged), len(results), tuple(t for t in asked if t not in seen),
                    len(results) - declined)
