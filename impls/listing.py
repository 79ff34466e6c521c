"""``attnsuite list``: every registered implementation, whether it can run here, and which
spec features its factory accepts.

Features are probed by calling each factory on a small spec per feature: a factory that
raises ``Unsupported`` does not support it (the table's --wide form says why). The call-time
inputs a factory declares (``call_inputs``: an additive bias, mask layouts, dropout when
training) are features too, read from the declaration. Probing
imports the framework, so the implementations are probed in one subprocess per framework
(``probe_groups``), all at once. A probe is kept on disk (``probe_cache``) until the code,
the installed distributions or the machine change; ``--refresh`` probes again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import shutil
import sys
import textwrap

from attnsuite.impls.backends import framework_status
from attnsuite.impls.calling import declares_decoding, inputs_of
from attnsuite.impls.errors import PluginError, Unsupported
from attnsuite.impls.entry import Entry, process_groups
from attnsuite.impls.probe_cache import ProbeCache, SourceHashes, cache_dir, loaded_sources
from attnsuite.impls.registry import all_entries, find_entry, load_factory
from attnsuite.impls.spec import AttentionSpec
from attnsuite.processes import Exit, Worker, exit_status, interrupt_on_sigterm, worker_channel, worker_env

NARROW_WIDTH = 100      # the default table fits this many columns
WIDE_WIDTH = 200        # --wide, off a terminal
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
    "rope": {"rope": {"style": "half"}},
    "rope_interleaved": {"rope": {"style": "interleaved", "rotary_dim": 2}},
}
# Decoding (SPEC 5) is what the fn of a causal spec declares, not a spec field.
DECODE_PROBE = {"causal": "top_left"}
# A mask of each layout (impls.calling.MASK_LAYOUTS), for the call inputs a factory declares.
MASK_PROBE_SHAPES = {"rank2": (3, 5), "rank4": (2, 1, 3, 5), "per_head": (2, 4, 3, 5)}
INPUT_FEATURES = ("additive_bias", *(f"mask_{layout}" for layout in MASK_PROBE_SHAPES))


def _supports(factory, fields: dict, check=lambda fn: True):
    """True, or why not: the factory's Unsupported reason, the error it raised, or
    ``check(fn)``'s answer on the fn it built."""
    try:
        fn = factory(AttentionSpec(**_BASE, **fields))
    except Unsupported as exc:
        return str(exc) or "unsupported"
    except Exception as exc:  # a broken factory is reported, not fatal
        return f"error: {type(exc).__name__}: {exc}"
    return check(fn)


def probe(entry: Entry) -> dict:
    """{"status": "ok"|"error", "reason": ..., "features": {feature: True | "why not"}}."""
    try:
        factory = load_factory(entry)
    except PluginError as exc:
        return {"status": "error", "reason": str(exc), "features": {}}
    features = {feature: _supports(factory, fields) for feature, fields in FEATURE_PROBES.items()}
    features["decode"] = _supports(factory, DECODE_PROBE, lambda fn: declares_decoding(fn) or
                                   "fn declares no decoding (fn.init_cache, fn.decode)")
    if features["mha"] is True:
        features.update(_declared_inputs(factory, entry.name, features["dropout"]))
    else:   # no fn is built at all: no input it takes
        features.update(dict.fromkeys(INPUT_FEATURES, features["mha"]))
    return {"status": "ok", "reason": None, "features": features}


def _declared_inputs(factory, name: str, dropout) -> dict:
    """The call-time inputs the factory declares (``call_inputs``), as features: these are
    arguments of fn, not spec fields, so no spec can probe them."""
    try:
        inputs = inputs_of(factory, name)
    except PluginError as exc:
        return {feature: f"error: {exc}" for feature in INPUT_FEATURES}
    declared = {"additive_bias": inputs.declines(None, bias=True, training=False)}
    for layout, shape in MASK_PROBE_SHAPES.items():
        declared[f"mask_{layout}"] = inputs.declines(shape, bias=False, training=False)
    if dropout is True:    # the spec accepted; does fn apply it when training?
        declared["dropout"] = inputs.declines(None, bias=False, training=True)
    return {feature: why or True for feature, why in declared.items()}


def probe_groups(entries: list[Entry]) -> list[tuple[dict[str, str], list[Entry]]]:
    """(environment, entries) per probing process, as the gate groups them (``process_groups``)."""
    return [(env, [entries[i] for i in members]) for env, members in process_groups(entries)]


def _probe_in_worker(names: list[str]) -> dict[str, dict]:
    """The worker's answer: each probe, with the source files loaded by its end
    (``"sources"``, for the cache; None when the probe must not be cached)."""
    hashes = SourceHashes()
    answer = {}
    for name in names:
        entry = find_entry(name)
        result = probe(entry)
        result["sources"] = loaded_sources(entry, hashes) if result["status"] == "ok" else None
        answer[name] = result
    return answer


def _probe_group(env: dict[str, str], entries: list[Entry], started: list) -> dict[str, dict]:
    """Probe ``entries`` in one worker with ``env`` (added to ``started`` while it runs)."""
    job = {"names": [e.name for e in entries]}
    with Worker("attnsuite.impls.listing", job, worker_env(env), args=("--probe",)) as worker:
        started.append(worker)
        answer = worker.receive()
        if not isinstance(answer, Exit):
            return answer
    reason = f"probe process failed ({answer.describe()}): {answer.last_line()}"
    return {e.name: {"status": "error", "reason": reason, "features": {}} for e in entries}


def cached_and_unprobed(entries: list[Entry], cache: ProbeCache | None,
                        refresh: bool = False) -> tuple[dict[str, dict], list[Entry]]:
    """({name: result} of what needs no worker: a framework that is not installed, a cached
    probe that still holds, unless ``refresh``), and the entries left to probe."""
    known: dict[str, dict] = {}
    unprobed = []
    for entry in entries:
        ok, reason = framework_status(entry.framework)
        if not ok:
            known[entry.name] = {"status": "unavailable", "reason": reason, "features": {}, "cached": False}
            continue
        hit = None if cache is None or refresh else cache.load(entry)
        if hit is not None:
            known[entry.name] = dict(hit, cached=True)
        else:
            unprobed.append(entry)
    return known, unprobed


def collect(entries: list[Entry], cache: ProbeCache | None = None, refresh: bool = False,
            announce=lambda unprobed: None) -> dict[str, dict]:
    """Every entry's result (with ``"cached"``: whether it came from ``cache``); what is left
    to probe (``cached_and_unprobed``; ``announce``d first) is probed by groups
    (``probe_groups``) in parallel, each in its own worker, so that the frameworks' imports
    overlap instead of adding up; each fresh probe is stored in ``cache``."""
    results, unprobed = cached_and_unprobed(entries, cache, refresh)
    announce(unprobed)
    groups = probe_groups(unprobed)
    if groups:
        started: list[Worker] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
            try:
                for probed in pool.map(lambda group: _probe_group(*group, started), groups):
                    results.update(probed)
            except BaseException:   # Ctrl-C, SIGTERM: no worker outlives the listing
                for worker in started:
                    worker.kill()
                raise
    for entry in unprobed:
        result = results[entry.name]
        sources = result.pop("sources", None)
        if cache is not None and sources is not None:
            try:
                cache.store(entry, result, sources)
            except OSError as exc:  # a read-only home: the listing itself is still right
                print(f"attnsuite list: the probes are not cached ({exc})", file=sys.stderr)
                cache = None
        result["cached"] = False
    return {entry.name: results[entry.name] for entry in entries}


def provenance(results: dict[str, dict]) -> str:
    """The footnote that says which rows were probed now and which came from the cache."""
    cached = [name for name, result in results.items() if result.get("cached")]
    probed = [name for name, result in results.items()
              if not result.get("cached") and result["status"] != "unavailable"]
    if not cached:
        return f"probed now: {len(probed)}"
    if not probed:
        return f"probed now: 0; from the cache: all {len(cached)}; attnsuite list --refresh probes again"
    named = probed if len(probed) <= len(cached) else cached     # the shorter list is named
    return "; ".join([
        f"probed now: {len(probed)}" + (f" ({', '.join(probed)})" if named is probed else ""),
        f"from the cache: {len(cached)}" + (f" ({', '.join(cached)})" if named is cached else ""),
        "attnsuite list --refresh probes again"])


def _status(result: dict) -> str:
    """One cell: whether it runs here, and how many of the probed features it supports."""
    if result["status"] != "ok":
        return f"no: {result['reason']}"
    features = result["features"]
    supported = sum(ok is True for ok in features.values())
    if supported == len(features):
        return f"yes, every feature ({supported})"
    return f"yes, {supported} of {len(features)} features"


def _why_not(features: dict) -> str:
    return "; ".join(f"{f}: {why}" for f, why in features.items() if why is not True)


def table_text(entries: list[Entry], results: dict[str, dict], wide: bool = False,
               width: int = NARROW_WIDTH) -> str:
    """The table as text, ``width`` columns at most: name, framework, kind and status; with
    ``wide``, also the features supported and, for the others, why not."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="attnsuite implementations", show_lines=wide)
    columns = ["name", "framework", "kind", "status"] + (["supports", "not supported (why)"] if wide else [])
    for column in columns:
        table.add_column(column, overflow="fold")
    for entry in entries:
        result = results[entry.name]
        row = [entry.name, entry.framework, entry.kind, _status(result)]
        if wide:
            features = result["features"]
            row += [", ".join(f for f, ok in features.items() if ok is True), _why_not(features)]
        table.add_row(*(Text(cell) for cell in row))   # Text: no markup ("[torch]" stays)
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    if not wide:
        console.print(Text("attnsuite list --wide: the features each supports, and why not the others"))
    return console.file.getvalue()


def _announce(unprobed: list[Entry]) -> None:
    if unprobed:
        frameworks = sorted({e.framework for e in unprobed})
        print(f"attnsuite list: probing {len(unprobed)} implementations, one process per framework "
              f"({', '.join(frameworks)}), in parallel", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnsuite list", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="implementations to list (default: all registered)")
    parser.add_argument("--broken", action="store_true", help="include the catalog of broken implementations")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--wide", action="store_true",
                        help="every column: the features each supports, and why not the others")
    parser.add_argument("--refresh", action="store_true",
                        help="probe every implementation again, ignoring (and renewing) the cache")
    parser.add_argument("--no-cache", action="store_true",
                        help="probe every implementation, neither reading nor writing the cache "
                             "(default folder: $ATTNSUITE_CACHE_DIR, else $XDG_CACHE_HOME/attnsuite, "
                             "else ~/.cache/attnsuite)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # internal: a worker
    args = parser.parse_args(argv)
    if args.probe:
        job, emit = worker_channel()
        emit(_probe_in_worker(job["names"]))
        return 0
    try:
        entries = [find_entry(n) for n in args.names] if args.names else all_entries(args.broken)
    except PluginError as exc:
        print(f"attnsuite list: {exc}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else ProbeCache(cache_dir())
    try:
        with interrupt_on_sigterm():    # the probing workers end with this process
            results = collect(entries, cache, args.refresh, _announce)
    except KeyboardInterrupt as exc:
        print("attnsuite list: interrupted", file=sys.stderr)
        return exit_status(exc)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        terminal = shutil.get_terminal_size(fallback=(0, 0)).columns if sys.stdout.isatty() else 0
        width = (terminal or WIDE_WIDTH) if args.wide else min(terminal or NARROW_WIDTH, NARROW_WIDTH)
        sys.stdout.write(table_text(entries, results, args.wide, width))
        print(textwrap.fill(provenance(results), width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
