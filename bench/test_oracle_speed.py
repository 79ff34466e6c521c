"""How long the float64 oracle takes for one conformance case at a realistic size: its
forward and its vjp, as the NumPy adapter calls them. A pytest-benchmark measurement, not
a timed assertion.

    python -m pytest bench/test_oracle_speed.py
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

B, L, E, H = 4, 512, 512, 8


def test_oracle_forward_and_vjp(benchmark):
    spec = AttentionSpec(d_model=E, num_heads=H)
    weights = init_weights(spec, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, E))
    d_out = rng.standard_normal((B, L, E))

    def forward_and_vjp():
        return oracle.forward(spec, weights, x, x, x), oracle.vjp(spec, weights, x, x, x, d_out)

    benchmark.extra_info.update(
        what="oracle.forward + oracle.vjp, float64, self-attention, no mask",
        batch=B, length=L, spec=spec.to_dict())
    out, grads = benchmark.pedantic(forward_and_vjp, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (B, L, E)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
