"""``bench.json``: an append-only JSON Lines store, one measurement record per line.

Each record is written with a single ``write`` on a file opened with ``O_APPEND`` and
then fsync'ed, so records from an interrupted run are all complete except, at worst,
the one being written when the process died. ``load`` skips such a torn last line (and
says so), and ``append`` first ends a torn line, so the file never stays unreadable.
Report files next to it are replaced atomically (``attnsuite.files``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

STORE_NAME = "bench.json"


def store_path(location: str | os.PathLike) -> Path:
    """A results directory or a ``bench.json`` file -> the store's path."""
    path = Path(location)
    return path if path.suffix in (".json", ".jsonl") else path / STORE_NAME


def dumps(record: dict[str, Any]) -> str:
    """One record as one line of the store."""
    return json.dumps(record, sort_keys=True, default=_jsonable) + "\n"


def append(location, record: dict[str, Any]) -> None:
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


def load(location) -> list[dict[str, Any]]:
    """Every complete record, in order; a torn or corrupt line is skipped with a warning."""
    path = store_path(location)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no benchmark results here")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: skipping an incomplete record (interrupted write?)", stacklevel=2)
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
