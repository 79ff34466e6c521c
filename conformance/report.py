"""Reports of a run: ``conformance.json``, ``conformance.md``, ``conformance.html`` and
JUnit XML. Every file is written atomically (a temporary file in the same folder, then
``os.replace``): an interrupted run leaves the previous report or none, never half a file.

The matrix has one row per implementation and one column per check family (output,
gradients, fully-masked rows, stateless, deterministic, dropout); a cell gives the status,
the worst error ratio (worst error / its bound: above 1 fails) and, apart, how many
checks were unsupported. The fully-masked behaviour matrix says what each implementation
does on rows with no visible key, per dtype.
"""

from __future__ import annotations

import html
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

from attnsuite.files import atomic_write_text
from attnsuite.conformance.cases import DTYPES
from attnsuite.conformance.checks import CheckResult
from attnsuite.conformance.results import FAILING, ImplResult, RunResult

FAMILIES = ("output", "grad", "fully_masked", "stateless", "deterministic", "dropout")
SHOWN_FAILURES = 20


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
            "counts": impl.counts(), "results": [r.to_dict() for r in impl.results],
        })
    return _finite({
        "implementations": implementations,
        "cases": [{"id": c.id, "tags": list(c.tags), **c.to_dict()} for c in run.cases],
        "environment": run.environment,
        "warnings": run.warnings,
        "interrupted": run.interrupted,
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
    ratios = [r.ratio for r in judged if r.ratio is not None]
    if ratios:
        head += f" (worst {max(ratios):.3g})"
    extra = [f"{by_status[s]} {s}" for s in ("xfail", "xpass") if by_status.get(s)]
    if unsupported:
        extra.append(f"{unsupported} unsupported")
    return head + "".join(f" · {e}" for e in extra)


def matrix(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: implementation, verdict, one cell per check family, seconds."""
    header = ["implementation", "verdict", *FAMILIES, "seconds"]
    rows = []
    for impl in run.implementations:
        if impl.reason is not None and not impl.results:
            rows.append([impl.name, impl.verdict.upper(), *([""] * len(FAMILIES)), ""])
            continue
        cells = [_cell([r for r in impl.results if family(r.check) == f]) for f in FAMILIES]
        rows.append([impl.name, impl.verdict.upper() if impl.verdict != "pass" else "pass",
                     *cells, f"{impl.seconds:.1f}"])
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
    def esc(x):
        return str(x).replace("|", "\\|")
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
        f"- suite: attnsuite {suite.get('version')} at commit {commit}{dirty}",
        f"- profile {env.get('profile')}, {env.get('cases')} cases, seed {env.get('seed')}, "
        f"device {env.get('device')}, dtypes {env.get('dtypes') or 'all of the profile'}, "
        f"strict fully-masked: {env.get('strict_fully_masked')}",
        f"- weights: {source}",
        f"- frameworks: {frameworks}",
        f"- python {env.get('python')} on {env.get('platform')}, {env.get('time')}",
    ]


def _failure_sections(run: RunResult) -> list[tuple[str, list[str], list[str]]]:
    """(implementation, attribution lines, failure messages) for each that did not pass."""
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
        if messages or xpasses:
            sections.append((impl.name, attribution(impl) if failures else [], messages + xpasses))
    return sections


def to_markdown(run: RunResult) -> str:
    verdict = "PASS" if run.ok else "FAIL"
    out = [f"# attnsuite conformance: {verdict}", "", *_interrupted_line(run),
           *_environment_lines(run.environment), "",
           "Cells: status, worst error ratio (error / bound; above 1 fails), unsupported apart.", "",
           _md_table(*matrix(run)), ""]
    header, rows = behaviour_matrix(run)
    if len(header) > 1:
        out += ["## Rows with no visible key", "",
                "zeros is the spec's rule; uniform: the mean of every value; unmasked: attention "
                "that ignores the mask; nan; other.", "", _md_table(header, rows), ""]
    for warning in run.warnings:
        out.append(f"> warning: {warning}")
    for name, tags, messages in _failure_sections(run):
        out += [f"## {name}", ""]
        if tags:
            out += ["Failures concentrate in: " + "; ".join(tags), ""]
        out += ["```", *messages, "```", ""]
    return "\n".join(out)


def to_html(run: RunResult) -> str:
    import pandas as pd

    def table(header, rows):
        return pd.DataFrame(rows, columns=header).to_html(index=False, escape=True, border=0)

    verdict = "PASS" if run.ok else "FAIL"
    parts = [f"<h1>attnsuite conformance: {verdict}</h1>", "<ul>"]
    parts += [f"<li>{html.escape(line[2:])}</li>"
              for line in _interrupted_line(run) + _environment_lines(run.environment)]
    parts += ["</ul>", "<p>Cells: status, worst error ratio (error / bound; above 1 fails), "
              "unsupported apart.</p>", table(*matrix(run))]
    header, rows = behaviour_matrix(run)
    if len(header) > 1:
        parts += ["<h2>Rows with no visible key</h2>", table(header, rows)]
    parts += [f"<p><b>warning:</b> {html.escape(w)}</p>" for w in run.warnings]
    for name, tags, messages in _failure_sections(run):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if tags:
            parts.append("<p>Failures concentrate in: " + html.escape("; ".join(tags)) + "</p>")
        parts.append("<pre>" + html.escape("\n\n".join(messages)) + "</pre>")
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:90%} "
             "td,th{border:1px solid #ccc;padding:3px 6px} pre{background:#f6f6f6;padding:1em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnsuite conformance"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------------------------------
# JUnit XML: one testcase per implementation x case x check.

def to_junit(run: RunResult) -> str:
    root = ET.Element("testsuites", name="attnsuite conformance")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for impl in run.implementations:
        suite = ET.SubElement(root, "testsuite", name=impl.name)
        counts = dict.fromkeys(totals, 0)
        if impl.reason is not None:
            case = ET.SubElement(suite, "testcase", classname=impl.name, name="load")
            ET.SubElement(case, "error", message=impl.reason[:200]).text = impl.reason
            counts["tests"] += 1
            counts["errors"] += 1
        for r in impl.results:
            case = ET.SubElement(suite, "testcase", classname=impl.name, name=f"{r.case_id}::{r.check}")
            counts["tests"] += 1
            first_line = r.message.splitlines()[0][:200] if r.message else r.status
            if r.status == "fail":
                ET.SubElement(case, "failure", message=first_line).text = r.message
                counts["failures"] += 1
            elif r.status == "error":
                ET.SubElement(case, "error", message=first_line).text = r.message
                counts["errors"] += 1
            elif r.status in ("unsupported", "xfail"):
                ET.SubElement(case, "skipped", message=f"{r.status}: {first_line}")
                counts["skipped"] += 1
            elif r.status == "xpass":
                ET.SubElement(case, "system-out").text = r.message
        suite.set("time", f"{impl.seconds:.3f}")
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(run: RunResult, directory) -> list[Path]:
    directory = Path(directory)
    files = {
        "conformance.json": json.dumps(to_json(run), indent=1, allow_nan=False) + "\n",
        "conformance.md": to_markdown(run),
        "conformance.html": to_html(run),
    }
    paths = []
    for name, text in files.items():
        atomic_write_text(directory / name, text)
        paths.append(directory / name)
    return paths


def write_junit(run: RunResult, path) -> Path:
    atomic_write_text(path, to_junit(run))
    return Path(path)
