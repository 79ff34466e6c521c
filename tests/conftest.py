"""Shared test helpers: a missing framework is a skip with the reason, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from attnsuite.impls.backends import framework_status, load_backend
from attnsuite.impls.spec import AttentionSpec


def require(framework: str):
    """Skip the calling test (or module, at import time) unless ``framework`` is installed."""
    available, reason = framework_status(framework)
    if not available:
        pytest.skip(reason, allow_module_level=True)
    return load_backend(framework)


def make_inputs(spec: AttentionSpec, B: int = 2, L_q: int = 5, L_k: int | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Unit-normal query/key/value and a cotangent for ``spec``, seeded."""
    L_k = L_q if L_k is None else L_k
    rng = np.random.default_rng(seed)
    return {
        "query": rng.standard_normal((B, L_q, spec.E)),
        "key": rng.standard_normal((B, L_k, spec.E_k)),
        "value": rng.standard_normal((B, L_k, spec.E_v)),
        "d_out": rng.standard_normal((B, L_q, spec.E_o)),
    }
