"""The shape of one measurement record (a ``point`` line of ``records.jsonl``).

A record is one implementation × configuration × compile mode × pass. Its ``status``
is ``ok`` (timed), ``unsupported`` (the implementation or framework declined the case),
``unavailable`` (framework not installed), ``error`` (it raised, or is not written yet),
``oom``, ``timeout`` (killed past the point's time limit), ``over_budget`` (skipped: a
smaller size predicts it would not fit), or ``crashed`` (its process died). Only ``ok``
records carry timings: the statistics and the raw per-call times of every timed block
(``samples_s``), which ``bench compare`` tests, and the machine's load average
when the point was done. The records of an interleaved run (``attnsuite.bench.interleaved``)
also carry their ``role`` (baseline or candidate) and ``looks`` (how many times the run
could look at the samples before it stopped), and keep the samples in round order: sample
i of the baseline and sample i of the candidate are the two blocks of round i, a pair.
A record is built with its environment
(``env``); the store keeps that once per run (``attnsuite.bench.store.RunWriter``).
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

from attnsuite.bench.sweeps import Point

STATUSES = ("ok", "unsupported", "unavailable", "error", "oom", "timeout", "over_budget", "crashed")


def new_record(point: Point, pass_: str, status: str, *, run_id: str, env: dict[str, Any],
               framework: str, kind: str | None = None, reason: str | None = None,
               **measured: Any) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
    return {
        "record_id": uuid.uuid4().hex,
        "run_id": run_id,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": env.get("machine"),
        "impl": point.impl,
        "framework": framework,
        "kind": kind,
        "compile": point.compile,
        "pass": pass_,
        **point.config.to_dict(),
        "status": status,
        "reason": reason,
        # How busy the machine was around this point (``bench compare`` distrusts a
        # comparison across an oversubscribed machine): the 1-minute load average.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **measured,
        "env": env,
    }
