"""What only the PyTorch adapter (impls/backends/torch.py) promises; the shared contract
is checked for every framework in tests/test_backends.py."""

import numpy as np

from conftest import require
from attnsuite.impls import AttentionSpec, init_weights

tb = require("torch")
import torch  # noqa: E402  (after the skip)

WEIGHTS = init_weights(AttentionSpec(d_model=6, num_heads=2), seed=1)
RNG = np.random.default_rng(0)
Q, K, V = (RNG.standard_normal((2, 3, 6)) for _ in range(3))


def test_forward_runs_without_grad():
    grad_enabled = []

    def recording(params, query, key, value, mask=None, bias=None, **kwargs):
        grad_enabled.append(torch.is_grad_enabled())
        return query @ params["wq"]

    tb.forward(recording, WEIGHTS, Q, K, V, dtype="float32")
    tb.forward(recording, WEIGHTS, Q, K, V, dtype="float64", training=True, seed=7)
    assert grad_enabled == [False, False]
