"""pytest-benchmark's ``--benchmark-json`` files, read as harness records for ``bench compare``.

Each of ``benchmarks[]`` becomes one ``ok`` record: the implementation, pass and
configuration from its ``extra_info`` where the test put them there
(``bench/test_attention_speed.py`` does), else its test name; the machine is
``machine_info.node``. The raw samples are ``stats.data``, present only when pytest ran
with ``--benchmark-save-data``; without them a comparison says ``uncertain`` (no samples).
pytest-benchmark keeps no ``stable`` flag.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from attnsuite.bench.compare import CONFIG_KEY
from attnsuite.bench.store import StoreError

STATS = {"median_s": "median", "q1_s": "q1", "q3_s": "q3", "min_s": "min", "max_s": "max",
         "mean_s": "mean", "stdev_s": "stddev", "runs": "rounds"}


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a truncated file?") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise StoreError(f"{path}: not a pytest-benchmark file (no benchmarks list)")
    machine = (data.get("machine_info") or {}).get("node")
    when = data.get("datetime")
    run_id = "pytest-benchmark " + str(when or (data.get("commit_info") or {}).get("id") or path.name)
    return [_record(bench, f"{path}: benchmarks[{i}]", machine, run_id, when)
            for i, bench in enumerate(data["benchmarks"])]


def _record(bench, where: str, machine, run_id: str, when) -> dict:
    if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
        raise StoreError(f"{where}: no stats")
    stats, extra = bench["stats"], bench.get("extra_info") or {}
    record = {"machine": machine, "run_id": run_id, "timestamp": when, "status": "ok", "stable": None,
              "impl": extra.get("impl") or bench.get("fullname") or bench.get("name"),
              "compile": extra.get("compile"), "pass": extra.get("pass"),
              **{k: extra.get(k) for k in CONFIG_KEY}}
    for field, name in STATS.items():
        value = stats.get(name)
        if field in ("median_s", "q1_s", "q3_s") and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise StoreError(f"{where}: stats.{name}: expected a number, got {value!r}")
        record[field] = value
    samples = stats.get("data")
    if samples is not None:
        if not (isinstance(samples, list) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in samples)):
            raise StoreError(f"{where}: stats.data: expected a list of numbers")
        record["samples_s"] = samples
    return record
