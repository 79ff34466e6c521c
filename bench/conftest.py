"""pytest-benchmark wiring for ``pytest bench/`` (never part of plain ``pytest``: testpaths
is ``tests``).

Keras picks its backend at import, once per process: the TensorFlow backend unless the
caller chose another, and the Keras entries of the other backends are skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from attnsuite.bench import environment  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=("cpu", "gpu"),
                     help="device for the attention benchmarks (default cpu)")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add what pytest-benchmark does not record: GPUs, framework versions, commit."""
    env = environment.collect()
    machine_info.update(attnsuite={k: env[k] for k in ("cpu", "cpus_usable", "gpus", "versions", "git")})
