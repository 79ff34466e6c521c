"""``records.jsonl``: the harness's append-only JSON Lines store.

One line per JSON object, three kinds (``"type"``):

- ``run``: written once when a run stores its first record: ``run_id``, ``started``,
  ``format`` and the run's environment (``env``: machine, CPU, versions, commit, ...).
- ``env``: what one run's framework processes add to that environment (the framework's
  own threads, version, device; the environment variables it got), once per distinct
  addition, under an ``env_id`` its records name.
- ``point``: one measurement record (``attnsuite.bench.records``), with its raw samples
  and its ``run_id``; no environment of its own.

``load`` hands back the point records with their environment joined again
(``record["env"]``), so readers see one self-contained dict per point. Stores of the
first format (``bench.json``, the environment inside every record, no samples) are read
as they are. pytest-benchmark's JSON is another format: ``load`` refuses it in one line
(``attnsuite.bench.pytest_json`` reads it for ``bench compare``).

Each line is written with a single ``write`` on a file opened with ``O_APPEND`` and then
fsync'ed, so lines from an interrupted run are all complete except, at worst, the one
being written when the process died. ``load`` skips such a torn line (and says where),
and ``append`` first ends a torn line, so the file never stays unreadable. A line that is
JSON but not a record is an error naming its file and line (``StoreError``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

STORE_NAME = "records.jsonl"
LEGACY_NAME = "bench.json"  # the first format's name (also what pytest-benchmark users often pick)
FORMAT = 2
REQUIRED = ("impl", "pass", "status")
NUMERIC_WHEN_OK = ("median_s", "q1_s", "q3_s")


class StoreError(ValueError):
    """A file that is not a harness store, or a line that is not a record: one line, with where."""


def store_path(location: str | os.PathLike) -> Path:
    """A results directory or a store file -> the file new records go to."""
    path = Path(location)
    return path if path.suffix in (".json", ".jsonl") else path / STORE_NAME


def read_paths(location) -> list[Path]:
    """The files a results directory holds records in: a ``bench.json`` of the first format
    (older runs), then ``records.jsonl``; or the one file named."""
    path = Path(location)
    if path.suffix in (".json", ".jsonl"):
        candidates = [path]
    else:
        candidates = [path / LEGACY_NAME, path / STORE_NAME]
    found = [p for p in candidates if p.exists()]
    if not found:
        raise FileNotFoundError(f"{store_path(location)}: no benchmark results here")
    return found


def dumps(record: dict[str, Any]) -> str:
    """One object as one line of the store."""
    return json.dumps(record, sort_keys=True, default=_jsonable) + "\n"


def append(location, record: dict[str, Any]) -> None:
    """Append one line (any of the three kinds) to the store at ``location``."""
    path = store_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps(record)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _ends_torn(path):
            line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_torn(path: Path) -> bool:
    """True when the file's last byte is not a newline (a write was cut short)."""
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


def _jsonable(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run_header(run_id: str, env: dict[str, Any]) -> dict[str, Any]:
    return {"type": "run", "format": FORMAT, "run_id": run_id, "env": env,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


class RunWriter:
    """Writes one run's records: its header first, each environment once.

    A record handed in with an ``env`` is stored without it: what differs from the run's
    environment goes into an ``env`` line (written the first time it is seen) that the
    record names by ``env_id``. ``emit`` takes each line's object (``for_store`` appends
    them to a store).
    """

    def __init__(self, emit: Callable[[dict], None], run_id: str, env: dict[str, Any]):
        self.emit, self.run_id, self.env = emit, run_id, env
        self.env_ids: dict[str, str] = {}
        self.started = False

    @classmethod
    def for_store(cls, location, run_id: str, env: dict[str, Any]) -> "RunWriter":
        return cls(lambda obj: append(location, obj), run_id, env)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record``; return it as ``load`` will give it back (environment joined)."""
        if not self.started:
            self.emit(run_header(self.run_id, self.env))
            self.started = True
        line = {k: v for k, v in record.items() if k != "env"}
        line["type"] = "point"
        extra = {k: v for k, v in (record.get("env") or {}).items() if self.env.get(k) != v}
        if extra:
            text = json.dumps(extra, sort_keys=True, default=_jsonable)
            if text not in self.env_ids:
                self.env_ids[text] = f"e{len(self.env_ids) + 1}"
                self.emit({"type": "env", "run_id": self.run_id, "env_id": self.env_ids[text], "env": extra})
            line["env_id"] = self.env_ids[text]
        self.emit(line)
        return dict({k: v for k, v in line.items() if k not in ("type", "env_id")}, env={**self.env, **extra})


def text_of(records: list[dict[str, Any]]) -> str:
    """The text of a store holding ``records`` (as ``load`` returns them): each run's
    header and environments once. A run's environment is what all its records share."""
    by_run: dict[str, list[dict]] = {}
    for record in records:
        by_run.setdefault(record.get("run_id") or "?", []).append(record)
    lines: list[str] = []
    for run_id, run_records in by_run.items():
        envs = [r.get("env") or {} for r in run_records]
        common = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
        writer = RunWriter(lambda obj: lines.append(dumps(obj)), run_id, common)
        for record in run_records:
            writer.append(record)
    return "".join(lines)


# --- reading ----------------------------------------------------------------------------

def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise StoreError(f"{where}: not a benchmark record (no {', '.join(missing)})")
    if record["status"] == "ok":
        for field in NUMERIC_WHEN_OK:
            value = record.get(field)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0):
                raise StoreError(f"{where}: {field}: expected a positive number, got {value!r}")
        samples = record.get("samples_s")
        if samples is not None and not (isinstance(samples, list) and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                for s in samples)):
            raise StoreError(f"{where}: samples_s: expected a list of positive numbers")


def is_pytest_benchmark(path: Path) -> bool:
    """pytest-benchmark's ``--benchmark-json`` file: one indented object with ``benchmarks``."""
    try:
        with open(path) as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith("{") and ('"benchmarks"' in head or '"machine_info"' in head)


def load(location) -> list[dict[str, Any]]:
    """Every complete point record, in order, each with its environment (``env``)."""
    return [record for path in read_paths(location) for record in _load_file(path)]


def _load_file(path: Path) -> list[dict[str, Any]]:
    if is_pytest_benchmark(path):
        raise StoreError(f"{path}: a pytest-benchmark file, not a harness store "
                         f"(`attnsuite bench compare` reads it; reports come from `attnsuite bench --out DIR`)")
    runs: dict[str, dict] = {}
    envs: dict[tuple, dict] = {}
    records = []
    with open(path, errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{where}: skipping an incomplete record (interrupted write?)", stacklevel=2)
                continue
            kind = obj.get("type", "point") if isinstance(obj, dict) else "point"
            if kind == "run":
                runs[obj.get("run_id")] = obj.get("env") or {}
            elif kind == "env":
                envs[obj.get("run_id"), obj.get("env_id")] = obj.get("env") or {}
            elif kind == "point":
                _check_record(obj, where)
                if "env" not in obj:  # this format: join the run's environment
                    obj.pop("type", None)
                    env_id = obj.pop("env_id", None)
                    obj["env"] = {**runs.get(obj.get("run_id"), {}), **envs.get((obj.get("run_id"), env_id), {})}
                records.append(obj)
            else:
                raise StoreError(f"{where}: unknown line type {kind!r}")
    return records


def load_many(locations: Iterable) -> list[dict[str, Any]]:
    """Records of several stores, each once (the same store may be named twice)."""
    seen, records = set(), []
    for location in locations:
        for record in load(location):
            key = record.get("record_id") or id(record)
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records
