"""What ``attnsuite list`` probed, kept on disk until something that can change it changes.

Probing imports every framework (seconds each); the answer only changes when the code or
the machine does. An entry's cached probe is used only while all of these are as they
were when it was probed:

- its key (``machine_key``, ``entry_key``): the entry (name, framework, target, environment), attnsuite's
  version, the Python interpreter, the installed distributions (the names of the
  ``*.dist-info``/``*.egg-info`` folders on the import path, which carry the versions:
  any install, upgrade or removal re-probes everything), the environment variables that
  steer the frameworks and their devices (``ENV_PREFIXES``, ``PYTHONPATH``), the host
  name and its GPU device nodes; for a plug-in, the current directory (where its module
  is found);
- the contents of every source file the probing worker had loaded by the end of that
  entry's probe (``loaded_sources``), except the standard library's (the interpreter
  stands for it) and the installed distributions' (their versions stand for them):
  attnsuite's own files and the plug-in's module are always hashed, wherever they are.

Anything else a factory reads (a data file, a module it failed to import) is not
tracked: ``attnsuite list --refresh`` probes again. A cache file that cannot be read or
does not match is ignored, never an error; files are replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import site
import socket
import sys
import sysconfig
from pathlib import Path

from attnsuite.files import atomic_write_text, cache_home
from attnsuite.impls.entry import Entry

FORMAT = 1                      # bump when the file's layout or the probe's meaning changes
CACHE_DIR_VARIABLE = "ATTNSUITE_CACHE_DIR"
ENV_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "JAX_", "XLA_", "TF_", "KERAS_",
                "TORCH_", "PYTORCH_", "HF_", "TRANSFORMERS_")
SUITE_TOP = "attnsuite"


def cache_dir() -> Path:
    """``$ATTNSUITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/attnsuite``, else ``~/.cache/attnsuite``."""
    explicit = os.environ.get(CACHE_DIR_VARIABLE)
    return Path(explicit) if explicit else cache_home()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plugin_top(entry: Entry) -> str | None:
    return entry.target.partition(":")[0].partition(".")[0] if entry.kind == "plugin" else None


def _installed() -> str:
    """One digest of the distribution folders on the import path (names carry versions)."""
    names = set()
    for folder in sys.path:
        try:
            names.update(n for n in os.listdir(folder or ".") if n.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
    return _digest("\n".join(sorted(names)).encode())


def _device_nodes() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev") if n.startswith(("nvidia", "kfd", "accel")))
    except OSError:
        return []


def _version() -> str:
    from attnsuite.cli import version
    return version()


def machine_key() -> dict:
    """What can change any entry's probe, source files aside (module docstring)."""
    return {
        "format": FORMAT,
        "attnsuite": _version(),
        "python": [sys.version, sys.executable, sys.prefix],
        "installed": _installed(),
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(ENV_PREFIXES) or k == "PYTHONPATH"},
        "host": [socket.gethostname(), _device_nodes()],
    }


def entry_key(entry: Entry, machine: dict) -> dict:
    """``machine`` plus the entry itself (and, for a plug-in, where its module is found)."""
    key = dict(machine, entry=[entry.name, entry.framework, entry.target, entry.kind,
                               [list(kv) for kv in entry.env]])
    if entry.kind == "plugin":
        key["cwd"] = os.getcwd()
    return _as_json(key)


class SourceHashes:
    """File digests, each file read at most once (many entries share attnsuite's files)."""

    def __init__(self):
        self._known: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._known:
            try:
                self._known[path] = _digest(Path(path).read_bytes())
            except OSError:
                self._known[path] = None
        return self._known[path]


def _installed_roots() -> tuple[str, ...]:
    """Folders whose files the interpreter's or a distribution's version stands for."""
    paths = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    roots = set()
    for path in filter(None, paths):
        for form in (os.path.abspath(path), os.path.realpath(path)):
            roots.add(form.rstrip(os.sep) + os.sep)
    return tuple(roots)


def loaded_sources(entry: Entry, hashes: SourceHashes) -> dict[str, str] | None:
    """{path: digest} of the source files loaded in this process that no version stands for
    (module docstring); None when one cannot be read (the probe is then not cached)."""
    tracked_tops = {SUITE_TOP, _plugin_top(entry)}
    roots = _installed_roots()
    sources = {}
    for name, module in list(sys.modules.items()):
        try:
            path = module.__dict__.get("__file__")
        except Exception:   # a lazy module of some library that refuses introspection
            continue
        if not isinstance(path, str):
            continue
        path = os.path.abspath(path)
        if path.startswith(roots) and name.partition(".")[0] not in tracked_tops:
            continue
        digest = hashes(path)
        if digest is None:
            return None
        sources[path] = digest
    return dict(sorted(sources.items()))


class ProbeCache:
    """One JSON file per entry under ``folder``: its key, its sources and its probe."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._hashes = SourceHashes()
        self._machine: dict | None = None     # once per listing: it reads the import path

    def key(self, entry: Entry) -> dict:
        if self._machine is None:
            self._machine = machine_key()
        return entry_key(entry, self._machine)

    def path(self, entry: Entry) -> Path:
        return self.folder / "list" / f"{_digest(entry.name.encode())[:32]}.json"

    def load(self, entry: Entry) -> dict | None:
        """The cached probe of ``entry``, or None: none, unreadable, or anything changed."""
        try:
            stored = json.loads(self.path(entry).read_text(encoding="utf-8"))
            if stored["key"] != self.key(entry):
                return None
            if any(self._hashes(path) != digest for path, digest in stored["sources"].items()):
                return None
            result = stored["result"]
            if result["status"] == "ok" and isinstance(result["features"], dict):
                return result
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass    # no file, or not one this version wrote: probe again
        return None

    def store(self, entry: Entry, result: dict, sources: dict[str, str]) -> None:
        """Keep ``result`` for ``entry``; a folder that cannot be written is an OSError."""
        record = {"key": self.key(entry), "sources": sources, "result": result}
        atomic_write_text(self.path(entry), json.dumps(record, indent=1))


def _as_json(value):
    """``value`` as it reads back from JSON (tuples become lists), to compare with a file."""
    return json.loads(json.dumps(value))
