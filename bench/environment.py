"""What produced a measurement: machine, CPU, GPU, software versions, suite commit.

``collect()`` runs in the parent process and imports no framework; the suite's commit,
the package versions and the platform come from ``attnsuite.environment``, the collector
the gate's reports use too. Each worker adds what only the imported framework can tell
(threads, precision flags, device name) under ``"framework"``.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

from attnsuite import environment as suite_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
# Environment variables that change what a framework does (threads, allocators, kernels).
RELEVANT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                "KERAS_BACKEND", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "TF_CPP_MIN_LOG_LEVEL",
                "TORCH_CUDNN_SDPA_DEPRIORITIZED", "JAX_ENABLE_X64")


def _run(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """One dict per NVIDIA GPU (read-only nvidia-smi query), [] when there is none."""
    out = _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
               "--format=csv,noheader")
    if not out:
        return []
    keys = ("name", "driver", "memory", "max_sm_clock", "power_limit")
    return [dict(zip(keys, (field.strip() for field in line.split(",")))) for line in out.splitlines()]


@functools.lru_cache(maxsize=None)
def collect(machine: str | None = None) -> dict[str, object]:
    """The environment shared by every record of one run (cached: it does not change)."""
    basics = suite_environment.platform_info()
    return {
        "machine": machine or socket.gethostname(),
        "platform": basics["platform"],
        "python": basics["python"],
        "cpu": cpu_model(),
        "cpu_count": basics["cpu_count"],
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpus": gpus(),
        "versions": suite_environment.versions(),
        "git": suite_environment.git_commit(),
        "env_vars": {k: os.environ[k] for k in RELEVANT_ENV if k in os.environ},
    }
