"""Regressions between two stores: ``attnsuite bench compare OLD NEW [--threshold 0.1]``.

Points are matched on machine, implementation, compile mode, pass and configuration;
where a store holds a point several times its latest record counts. A point regresses
when its new median is more than ``threshold`` (a fraction) slower than the old one,
or when it was measured before and no longer is (status no longer ``ok``).
"""

from __future__ import annotations

import dataclasses

from attnsuite.bench import store
from attnsuite.bench.report import CONFIG_COLUMNS

KEY = ("machine", "impl", "compile", "pass", *CONFIG_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Change:
    key: dict
    old: dict
    new: dict
    threshold: float

    @property
    def ratio(self) -> float | None:
        if self.old.get("status") == "ok" and self.new.get("status") == "ok":
            return self.new["median_s"] / self.old["median_s"]
        return None

    @property
    def regressed(self) -> bool:
        if self.old.get("status") == "ok" and self.new.get("status") != "ok":
            return True
        return self.ratio is not None and self.ratio > 1 + self.threshold

    @property
    def improved(self) -> bool:
        return self.ratio is not None and self.ratio < 1 / (1 + self.threshold)


def _latest(records: list[dict]) -> dict[tuple, dict]:
    latest: dict[tuple, dict] = {}
    for record in sorted(records, key=lambda r: r.get("timestamp") or ""):
        latest[tuple(record.get(k) for k in KEY)] = record
    return latest


def compare(old_location, new_location, threshold: float = 0.1) -> list[Change]:
    """Every point present in both stores, as a ``Change``."""
    if threshold < 0:
        raise ValueError(f"threshold: must be >= 0, got {threshold}")
    old, new = _latest(store.load(old_location)), _latest(store.load(new_location))
    return [Change(dict(zip(KEY, key)), old[key], new[key], threshold)
            for key in old if key in new]
