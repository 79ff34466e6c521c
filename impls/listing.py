"""``attnsuite list``: every registered implementation, whether it can run here, and which
spec features its factory accepts.

Features are probed by calling each factory on a small spec per feature: a factory that
raises ``Unsupported`` does not support it. Probing imports the framework, so each group
of implementations that shares a process key (framework + environment, e.g. Keras's
backend) is probed in a subprocess of its own.
"""

from __future__ import annotations

import argparse
import json
import sys

from attnsuite.impls.backends import framework_status
from attnsuite.impls.errors import PluginError, Unsupported
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import all_entries, find_entry, load_factory
from attnsuite.impls.spec import AttentionSpec
from attnsuite.processes import Exit, Worker, exit_status, interrupt_on_sigterm, worker_channel, worker_env

_BASE = dict(d_model=16, num_heads=4)
FEATURE_PROBES: dict[str, dict] = {
    "mha": {},
    "gqa": {"num_kv_heads": 2},
    "mqa": {"num_kv_heads": 1},
    "cross": {"kdim": 12, "vdim": 8},
    "value_head_dim": {"value_head_dim": 6},
    "out_dim": {"out_dim": 10},
    "no_bias": {"bias": False},
    "scale": {"scale": 0.3},
    "causal_top_left": {"causal": "top_left"},
    "causal_bottom_right": {"causal": "bottom_right"},
    "window": {"window": (2, 1)},
    "softcap": {"softcap": 5.0},
    "dropout": {"dropout": 0.1},
}


def probe(entry: Entry) -> dict:
    """{"status": "ok"|"error", "reason": ..., "features": {feature: True | "why not"}}."""
    try:
        factory = load_factory(entry)
    except PluginError as exc:
        return {"status": "error", "reason": str(exc), "features": {}}
    features = {}
    for feature, fields in FEATURE_PROBES.items():
        try:
            factory(AttentionSpec(**_BASE, **fields))
            features[feature] = True
        except Unsupported as exc:
            features[feature] = str(exc) or "unsupported"
        except Exception as exc:  # a broken factory is reported, not fatal
            features[feature] = f"error: {type(exc).__name__}: {exc}"
    return {"status": "ok", "reason": None, "features": features}


def _probe_group(entries: list[Entry]) -> dict[str, dict]:
    """Probe entries that share a process key in one worker with their environment."""
    job = {"names": [e.name for e in entries]}
    with Worker("attnsuite.impls.listing", job, worker_env(dict(entries[0].env)),
                args=("--probe",)) as worker:
        answer = worker.receive()
        if not isinstance(answer, Exit):
            return answer
    reason = f"probe process failed ({answer.describe()}): {answer.last_line()}"
    return {e.name: {"status": "error", "reason": reason, "features": {}} for e in entries}


def collect(entries: list[Entry]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        available, reason = framework_status(entry.framework)
        if available:
            groups.setdefault(entry.process_key, []).append(entry)
        else:
            results[entry.name] = {"status": "unavailable", "reason": reason, "features": {}}
    for group in groups.values():
        results.update(_probe_group(group))
    return results


def _print_table(entries: list[Entry], results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="attnsuite implementations", show_lines=False)
    for column in ("name", "framework", "kind", "available", "supports", "not supported"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        result = results[entry.name]
        features = result["features"]
        supported = [f for f, ok in features.items() if ok is True]
        missing = [f for f, ok in features.items() if ok is not True]
        available = "yes" if result["status"] == "ok" else f"no: {result['reason']}"
        table.add_row(entry.name, entry.framework, entry.kind, available,
                      ", ".join(supported), ", ".join(missing))
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnsuite list", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="implementations to list (default: all registered)")
    parser.add_argument("--broken", action="store_true", help="include the catalog of broken implementations")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # internal: a worker
    args = parser.parse_args(argv)
    if args.probe:
        job, emit = worker_channel()
        emit({name: probe(find_entry(name)) for name in job["names"]})
        return 0
    try:
        entries = [find_entry(n) for n in args.names] if args.names else all_entries(args.broken)
    except PluginError as exc:
        print(f"attnsuite list: {exc}", file=sys.stderr)
        return 2
    try:
        with interrupt_on_sigterm():    # the probing workers end with this process
            results = collect(entries)
    except KeyboardInterrupt as exc:
        print("attnsuite list: interrupted", file=sys.stderr)
        return exit_status(exc)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(entries, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
