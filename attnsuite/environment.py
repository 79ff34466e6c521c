"""What a run ran on: the suite's commit, the packages' versions, Python, the platform.

The one collector of these for the gate's reports (``conformance.runner.environment``) and
the benchmark's records (``bench.environment.collect``, which adds what only timing needs:
CPU model, GPUs, load, thread variables). It imports no framework: versions come from
package metadata.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

from attnsuite.processes import SUITE_ROOT

PACKAGES = ("attnsuite", "numpy", "ml_dtypes", "torch", "tensorflow", "tensorflow-cpu", "keras",
            "jax", "jaxlib", "flax", "pandas", "pytest-benchmark")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SUITE_ROOT), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def uncommitted_changes() -> list[str] | None:
    """The tracked files that differ from the suite's commit; None outside a checkout."""
    if not (SUITE_ROOT / "pyproject.toml").is_file():   # installed: no repository to ask
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    # Each line is "XY path"; _git strips the output, so the first may have lost a blank X.
    return None if status is None else [line.split(maxsplit=1)[1] for line in status.splitlines()]


@functools.lru_cache(maxsize=None)
def git_commit() -> dict[str, object]:
    """The suite's commit and whether tracked files differ from it (None outside a checkout)."""
    if not (SUITE_ROOT / "pyproject.toml").is_file():
        return {"commit": None, "dirty": None}
    changes = uncommitted_changes()
    return {"commit": _git("rev-parse", "HEAD") or None,
            "dirty": None if changes is None else bool(changes)}


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages=PACKAGES) -> dict[str, str]:
    """Installed version of each package (the absent ones left out)."""
    return {p: v for p in packages if (v := version(p)) is not None}


def platform_info() -> dict[str, object]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}
