"""Adapters that run each framework's built-in attention layers behind the suite's contract."""

import math

from attnsuite.impls.spec import AttentionSpec


def scale_is_default(spec: AttentionSpec) -> bool:
    """The spec's logit scale is 1/sqrt(d_k), the only one most layers have."""
    return spec.scale is None or math.isclose(spec.scale, 1 / math.sqrt(spec.d_k))
