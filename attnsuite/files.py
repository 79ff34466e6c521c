"""Atomic file replacement, shared by the conformance reports and the benchmark reports;
and where attnsuite keeps its caches (``cache_home``).

The data goes to a temporary file in the target's own folder (``os.replace`` is atomic
only within one file system), is fsync'ed, then renamed over the target: a reader, or a
run interrupted at any point, sees the old file or the new one, never part of either.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would make a report private
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode(encoding))


def _umask() -> int:
    """The process umask: reading it means setting it, so it is set straight back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_home() -> Path:
    """attnsuite's folder in the user's cache: ``$XDG_CACHE_HOME/attnsuite``, else
    ``~/.cache/attnsuite`` (the gate's JAX compile cache, ``attnsuite list``'s probes)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnsuite"
