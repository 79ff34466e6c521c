"""Reports of a run: ``conformance.json``, ``conformance.md``, ``conformance.html`` and
JUnit XML. Every file is written atomically (a temporary file in the same folder, then
``os.replace``): an interrupted run leaves the previous report or none, never half a file.
A run holds a lock on its report folder (``ReportLock``, taken before any work by
``attnsuite check``): a second run into the same folder is refused rather than mixed in.
Messages are kept whole, made safe for each medium by ``attnsuite.sanitize``.

The matrix has one row per implementation and one column per check family (output,
gradients, fully-masked rows, stateless, deterministic, dropout); a cell gives the status,
the worst error ratio (worst error / its bound: above 1 fails) and, apart, how many
checks were unsupported. The fully-masked behaviour matrix says what each implementation
does on rows with no visible key, per dtype.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from attnsuite import sanitize
from attnsuite.files import atomic_write_text
from attnsuite.conformance.cases import DTYPES
from attnsuite.conformance.checks import CheckResult
from attnsuite.conformance.diagnosis import cause_lines
from attnsuite.conformance.results import FAILING, ImplResult, RunResult, worst_ratio

FAMILIES = ("output", "grad", "fully_masked", "stateless", "deterministic", "dropout", "contract", "decode")
SHOWN_FAILURES = sanitize.SHOWN_FAILURES_REPORT
LOCK_NAME = ".conformance.lock"


def family(check: str) -> str:
    return check.split(".")[0]


def _finite(value):
    """JSON has no inf/nan: they become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# JSON

def to_json(run: RunResult) -> dict:
    implementations = []
    for impl in run.implementations:
        implementations.append({
            "name": impl.name, "framework": impl.framework, "kind": impl.kind,
            "verdict": impl.verdict, "reason": impl.reason, "seconds": round(impl.seconds, 3),
            "counts": impl.counts(), "coverage": impl.coverage().to_dict(),
            "diagnosis": impl.diagnosis if impl.verdict == "fail" else None,  # xfails can pass it
            "results": [r.to_dict() for r in impl.results],
        })
    return _finite({
        "implementations": implementations,
        "cases": [{"id": c.id, "tags": list(c.tags), **c.to_dict()} for c in run.cases],
        "environment": run.environment,
        "warnings": run.warnings,
        "interrupted": run.interrupted,
        "shard": run.shard,
        "ok": run.ok,
    })


# ---------------------------------------------------------------------------------------
# The matrices.

def _cell(results: list[CheckResult]) -> str:
    if not results:
        return ""
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    judged = [r for r in results if r.status != "unsupported"]
    unsupported = by_status.get("unsupported", 0)
    if not judged:
        return "unsupported"
    failed = sum(by_status.get(s, 0) for s in FAILING)
    head = f"FAIL {failed}/{len(judged)}" if failed else "pass"
    worst = worst_ratio(judged)
    if worst is not None:
        head += f" (worst {worst:.3g})"
    extra = [f"{by_status[s]} {s}" for s in ("xfail", "xpass") if by_status.get(s)]
    if unsupported:
        extra.append(f"{unsupported} unsupported")
    return head + "".join(f" · {e}" for e in extra)


def matrix(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: implementation, verdict, share judged, one cell per check family,
    seconds."""
    header = ["implementation", "verdict", "judged", *FAMILIES, "seconds"]
    rows = []
    for impl in run.implementations:
        if impl.reason is not None and not impl.results:
            rows.append([impl.name, impl.verdict.upper(), "", *([""] * len(FAMILIES)), ""])
            continue
        cells = [_cell([r for r in impl.results if family(r.check) == f]) for f in FAMILIES]
        rows.append([impl.name, impl.verdict.upper() if impl.verdict != "pass" else "pass",
                     impl.coverage().percent(), *cells, f"{impl.seconds:.1f}"])
    return header, rows


def behaviour_matrix(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Implementation x dtype: what each does on rows with no visible key, over the
    run's cases that have such rows (per case in conformance.json)."""
    dtypes = [d for d in DTYPES if any("fully_masked" in c.tags and c.dtype == d for c in run.cases)]
    header = ["implementation", *dtypes]
    rows = []
    for impl in run.implementations:
        seen: dict[str, list[str]] = {d: [] for d in dtypes}
        for r in impl.results:
            if r.check != "fully_masked":
                continue
            dtype = next(d for d in dtypes if d in r.tags)
            if "behaviour" in r.detail:
                grads = " + NaN grads" if r.detail.get("grads") == "nan" else ""
                text = r.detail["behaviour"] + grads
            else:
                text = r.status
            if text not in seen[dtype]:
                seen[dtype].append(text)
        rows.append([impl.name, *(", ".join(seen[d]) for d in dtypes)])
    return header, rows


def attribution(impl: ImplResult, top: int = 6) -> list[str]:
    """The tags its failures concentrate in: 'mask_random: 4/4 cases failed', ..."""
    judged: dict[str, set] = {}
    failed: dict[str, set] = {}
    for r in impl.results:
        if r.status == "unsupported":
            continue
        for tag in r.tags:
            judged.setdefault(tag, set()).add(r.case_id)
            if r.status in FAILING:
                failed.setdefault(tag, set()).add(r.case_id)
    rated = sorted(((len(failed[t]) / len(judged[t]), len(failed[t]), t) for t in failed), reverse=True)
    return [f"{t}: {len(failed[t])}/{len(judged[t])} cases" for _, _, t in rated[:top]]


# ---------------------------------------------------------------------------------------
# Markdown and HTML

def _md_table(header, rows) -> str:
    esc = sanitize.markdown_inline
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _interrupted_line(run: RunResult) -> list[str]:
    if not run.interrupted:
        return []
    return [f"- INTERRUPTED ({run.interrupted}): a partial report, with what was judged before"]


def _environment_lines(env: dict) -> list[str]:
    suite = env.get("suite", {})
    frameworks = ", ".join(f"{k} {v}" for k, v in env.get("frameworks", {}).items())
    commit = suite.get("commit") or "unknown"
    dirty = " (uncommitted changes)" if suite.get("dirty") else ""
    weights = env.get("weights")
    source = (f"{weights['path']} (sha256 {weights['sha256'][:12]})" if weights
              else "generated per case")
    return [
        *[_input_line(entry) for entry in env.get("inputs", [])],   # attnsuite report: each input's machine
        f"- suite: attnsuite {suite.get('version')} at commit {commit}{dirty}",
        f"- profile {env.get('profile')}, {env.get('cases')} cases, seed {env.get('seed')}, "
        f"device {env.get('device')}, dtypes {env.get('dtypes') or 'all of the profile'}, "
        f"strict fully-masked: {env.get('strict_fully_masked')}",
        f"- weights: {source}",
        f"- frameworks: {frameworks}",
        *_worker_settings_lines(env.get("worker_settings") or {}),
        f"- python {env.get('python')} on {env.get('platform')}, {env.get('time')}",
    ]


def _worker_settings_lines(settings: dict) -> list[str]:
    lines = []
    for framework, variables in settings.items():
        for name, setting in variables.items():
            why = (f"the gate's; set {name} yourself to keep your own"
                   if setting["set_by"] == "attnsuite check" else f"set by {setting['set_by']}")
            lines.append(f"- {framework} workers run with {name}={setting['value']!r} ({why})")
    return lines


def _input_line(env: dict) -> str:
    shard = f" (shard {env['shard']})" if env.get("shard") else ""
    frameworks = ", ".join(f"{k} {v}" for k, v in env.get("frameworks", {}).items())
    commit = (env.get("suite") or {}).get("commit") or "unknown"
    return (f"- merged from {env.get('source')}{shard}: device {env.get('device')}, python "
            f"{env.get('python')} on {env.get('platform')} ({env.get('cpu_count')} CPUs), "
            f"attnsuite at commit {commit}, {env.get('time')}; frameworks: {frameworks}")


def coverage_rows(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Implementation, checks judged of those asked, features no judged check exercised."""
    rows = []
    for impl in run.implementations:
        judged = impl.coverage()
        rows.append([impl.name, f"{judged.judged}/{judged.total} ({judged.percent()})",
                     f"{judged.judged}/{judged.allowed} ({100 * judged.share_of_allowed:.0f}%)",
                     ", ".join(judged.never_judged) or "-"])
    return ["implementation", "checks judged", "of those its framework and factory accept",
            "features never judged"], rows


def _failure_sections(run: RunResult) -> list[tuple[str, list[str], list[str], list[str]]]:
    """(implementation, attribution lines, failure messages, likely cause lines) for each
    that did not pass."""
    sections = []
    for impl in run.implementations:
        messages = []
        if impl.reason:
            messages.append(f"{impl.name}: ERROR: {impl.reason}")
        failures = impl.failures()
        messages += [r.message for r in failures[:SHOWN_FAILURES]]
        if len(failures) > SHOWN_FAILURES:
            messages.append(f"... and {len(failures) - SHOWN_FAILURES} more (conformance.json)")
        xpasses = [r.message for r in impl.results if r.status == "xpass"]
        if len(xpasses) > SHOWN_FAILURES:
            xpasses[SHOWN_FAILURES:] = [f"... and {len(xpasses) - SHOWN_FAILURES} more XPASS "
                                        f"(conformance.json)"]
        if messages or xpasses:
            sections.append((impl.name, attribution(impl) if failures else [], messages + xpasses,
                             cause_lines(impl)))
    return sections


def to_markdown(run: RunResult) -> str:
    verdict = "PASS" if run.ok else "FAIL"
    environment = [sanitize.markdown_inline(line)
                   for line in _interrupted_line(run) + _environment_lines(run.environment)]
    out = [f"# attnsuite conformance: {verdict}", "", *environment, "",
           "Cells: status, worst error ratio (error / bound; above 1 fails), unsupported apart.", "",
           _md_table(*matrix(run)), ""]
    header, rows = behaviour_matrix(run)
    if len(header) > 1:
        out += ["## Rows with no visible key", "",
                "zeros is the spec's rule; uniform: the mean of every value; unmasked: attention "
                "that ignores the mask; nan; other.", "", _md_table(header, rows), ""]
    out += ["## Coverage", "", "A check an implementation declines (unsupported) is not judged.",
            "", _md_table(*coverage_rows(run)), ""]
    for warning in run.warnings:
        out.append(f"> warning: {sanitize.markdown_inline(warning)}")
    for name, tags, messages, cause in _failure_sections(run):
        out += [f"## {sanitize.markdown_inline(name)}", ""]
        if cause:
            out += ["\n\n".join(sanitize.markdown_inline(line) for line in cause), ""]
        if tags:
            out += ["Failures concentrate in: " + sanitize.markdown_inline("; ".join(tags)), ""]
        out += [*sanitize.markdown_block("\n\n".join(messages)), ""]
    return "\n".join(out)


def to_html(run: RunResult) -> str:
    import pandas as pd

    def table(header, rows):
        rows = [[sanitize.terminal(cell) for cell in row] for row in rows]
        return pd.DataFrame(rows, columns=header).to_html(index=False, escape=True, border=0)

    verdict = "PASS" if run.ok else "FAIL"
    parts = [f"<h1>attnsuite conformance: {verdict}</h1>", "<ul>"]
    parts += [f"<li>{sanitize.html(line[2:])}</li>"
              for line in _interrupted_line(run) + _environment_lines(run.environment)]
    parts += ["</ul>", "<p>Cells: status, worst error ratio (error / bound; above 1 fails), "
              "unsupported apart.</p>", table(*matrix(run))]
    header, rows = behaviour_matrix(run)
    if len(header) > 1:
        parts += ["<h2>Rows with no visible key</h2>", table(header, rows)]
    parts += ["<h2>Coverage</h2>", table(*coverage_rows(run))]
    parts += [f"<p><b>warning:</b> {sanitize.html(w)}</p>" for w in run.warnings]
    for name, tags, messages, cause in _failure_sections(run):
        parts.append(f"<h2>{sanitize.html(name)}</h2>")
        if cause:
            parts.append("<p>" + "<br>".join(sanitize.html(line) for line in cause) + "</p>")
        if tags:
            parts.append("<p>Failures concentrate in: " + sanitize.html("; ".join(tags)) + "</p>")
        parts.append("<pre>" + sanitize.html("\n\n".join(messages)) + "</pre>")
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:90%} "
             "td,th{border:1px solid #ccc;padding:3px 6px} pre{background:#f6f6f6;padding:1em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnsuite conformance"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------------------------------
# JUnit XML: one testcase per implementation x case x check.

def _junit_text(r: CheckResult) -> str:
    """The whole message, then the traceback where the implementation raised."""
    trace = r.detail.get("traceback") if isinstance(r.detail, dict) else None
    return sanitize.xml(r.message + (f"\n\n{trace}" if trace else ""))


def _flat_properties(value, prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict as (dotted name, text) pairs; None left out, lists joined by commas."""
    if isinstance(value, dict):
        return [pair for key, item in value.items()
                for pair in _flat_properties(item, f"{prefix}{key}." if isinstance(item, dict)
                                             else f"{prefix}{key}")]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return [(prefix, str(value))]


def to_junit(run: RunResult) -> str:
    """One testsuite per implementation, one testcase per case x check, in the JUnit format
    CI tools read (valid against the Jenkins xunit plugin's schema, tests/data/): per-testcase
    time (its share of its case's time), each suite's timestamp and hostname, and properties
    holding the run's environment and the implementation's coverage."""
    x = sanitize.xml
    env = run.environment
    root = ET.Element("testsuites", name="attnsuite conformance")
    totals = dict.fromkeys(("tests", "failures", "errors"), 0)
    seconds = 0.0
    for impl in run.implementations:
        name = x(impl.name)
        suite = ET.SubElement(root, "testsuite", name=name)
        properties = ET.SubElement(suite, "properties")
        for key, value in (_flat_properties(env, "environment.")
                           + _flat_properties(impl.coverage().to_dict(), "coverage.")):
            ET.SubElement(properties, "property", name=x(key), value=x(value))
        cause = "".join("\n" + line for line in cause_lines(impl))
        counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        if impl.reason is not None:
            case = ET.SubElement(suite, "testcase", classname=name, name="load")
            ET.SubElement(case, "error", message=x(sanitize.one_line(impl.reason))).text = x(impl.reason)
            counts["tests"] += 1
            counts["errors"] += 1
        for r in impl.results:
            case = ET.SubElement(suite, "testcase", classname=name, name=x(f"{r.case_id}::{r.check}"))
            if r.seconds is not None:
                case.set("time", f"{r.seconds:.3f}")
            counts["tests"] += 1
            summary = x(sanitize.one_line(r.message) or r.status)
            if r.status == "fail":
                ET.SubElement(case, "failure", message=summary).text = _junit_text(r) + x(cause)
                counts["failures"] += 1
            elif r.status == "error":
                ET.SubElement(case, "error", message=summary).text = _junit_text(r)
                counts["errors"] += 1
            elif r.status in ("unsupported", "xfail"):
                ET.SubElement(case, "skipped", message=f"{r.status}: {summary}")
                counts["skipped"] += 1
            elif r.status == "xpass":
                ET.SubElement(case, "system-out").text = x(r.message)
        suite.set("time", f"{impl.seconds:.3f}")
        suite.set("timestamp", x(str(env.get("time", ""))))
        suite.set("hostname", x(str(env.get("hostname", ""))))
        seconds += impl.seconds
        for key, value in counts.items():
            suite.set(key, str(value))
            if key in totals:   # the Jenkins schema allows no "skipped" on the root
                totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------------------------------
# Writing, one run per report folder at a time.

class ReportBusy(Exception):
    """Another run holds the report folder."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


class ReportLock:
    """An exclusive lock on a report folder (``flock`` on ``DIR/.conformance.lock``, removed
    when released, and freed by the system when the process ends, however it ends).
    Creating the folder and the lock file also proves that the place is writable, before
    any work."""

    _held: dict[Path, "ReportLock"] = {}

    def __init__(self, directory):
        self.directory = Path(directory)
        self.fd: int | None = None

    def acquire(self) -> "ReportLock":
        """Raise ReportBusy if another run holds it, OSError if the place is not writable."""
        key = self.directory.resolve()
        if key in self._held:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ReportBusy(f"--report {self.directory}: another run is writing a report "
                                 f"there (it holds {path}); wait for it, or choose another "
                                 f"folder") from None
            # The holder before us removes the file as it lets go: make sure ours is the one
            # at the path, or a third run could lock a fresh file beside us.
            if _same_file(fd, path):
                break
            os.close(fd)
        self.fd = fd
        self._held[key] = self
        return self

    def release(self) -> None:
        if self.fd is not None:
            self._held.pop(self.directory.resolve(), None)
            try:
                os.unlink(self.directory / LOCK_NAME)   # while still held: see acquire
            except OSError:
                pass
            os.close(self.fd)        # closing the descriptor frees the lock
            self.fd = None

    def __enter__(self) -> "ReportLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_reports(run: RunResult, directory) -> list[Path]:
    directory = Path(directory)
    files = {
        # Compact: with an indent, json runs its pure-Python encoder, seconds for a few
        # thousand checks (``python -m json.tool`` indents it for reading).
        "conformance.json": json.dumps(to_json(run), separators=(",", ":"), allow_nan=False) + "\n",
        "conformance.md": to_markdown(run),
        "conformance.html": to_html(run),
    }
    paths = []
    with ReportLock(directory):      # already held when ``attnsuite check`` took it first
        for name, text in files.items():
            atomic_write_text(directory / name, text)
            paths.append(directory / name)
    return paths


def write_junit(run: RunResult, path) -> Path:
    atomic_write_text(path, to_junit(run))
    return Path(path)
