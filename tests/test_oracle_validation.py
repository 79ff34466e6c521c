"""Bad arguments to the oracle raise ValueError naming the argument and the shapes
(never a broadcasting error from inside NumPy)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

SPEC = AttentionSpec(6, 2, kdim=4, vdim=5)  # E=6, E_k=4, E_v=5, H=2
B, L_q, L_k = 2, 3, 4
RNG = np.random.default_rng(0)
GOOD = {
    "query": RNG.standard_normal((B, L_q, 6)),
    "key": RNG.standard_normal((B, L_k, 4)),
    "value": RNG.standard_normal((B, L_k, 5)),
    "mask": np.ones((L_q, L_k), dtype=bool),
    "bias": np.zeros((B, 1, L_q, L_k)),
    "d_out": RNG.standard_normal((B, L_q, 6)),
}
WEIGHTS = init_weights(SPEC)


def _without(weights, name):
    return {n: w for n, w in weights.items() if n != name}


# Each row: what replaces the good argument, and the fragments the message must hold.
BAD = [
    ("query-rank-2", {"query": np.zeros((L_q, 6))}, ["query", "(B, L, 6)", "(3, 6)"]),
    ("query-features", {"query": np.zeros((B, L_q, 5))}, ["query", "(B, L, 6)", "(2, 3, 5)"]),
    ("key-features", {"key": np.zeros((B, L_k, 6))}, ["key", "(B, L, 4)", "(2, 4, 6)"]),
    ("value-features", {"value": np.zeros((B, L_k, 4))}, ["value", "(B, L, 5)", "(2, 4, 4)"]),
    ("batch-mismatch", {"key": np.zeros((1, L_k, 4)), "value": np.zeros((1, L_k, 5))},
     ["batch", "(2, 3, 6)", "(1, 4, 4)", "(1, 4, 5)"]),
    ("key-value-lengths", {"value": np.zeros((B, L_k + 1, 5))},
     ["key, value", "(2, 4, 4)", "(2, 5, 5)"]),
    ("mask-rank-3", {"mask": np.ones((B, L_q, L_k), dtype=bool)}, ["mask", "rank", "(2, 3, 4)"]),
    ("bias-rank-3", {"bias": np.zeros((2, L_q, L_k))}, ["bias", "rank", "(2, 3, 4)"]),
    ("mask-does-not-broadcast", {"mask": np.ones((L_q, L_k + 1), dtype=bool)},
     ["mask", "(3, 5)", "(2, 2, 3, 4)"]),
    ("mask-wrong-batch", {"mask": np.ones((3, 1, L_q, L_k), dtype=bool)},
     ["mask", "(3, 1, 3, 4)", "(2, 2, 3, 4)"]),
    ("bias-does-not-broadcast", {"bias": np.zeros((1, 3, L_q, L_k))},
     ["bias", "(1, 3, 3, 4)", "(2, 2, 3, 4)"]),
    ("mask-not-bool", {"mask": np.ones((L_q, L_k))}, ["mask", "bool", "float64"]),
    ("bias-not-float", {"bias": np.zeros((L_q, L_k), dtype=np.int64)}, ["bias", "float", "int64"]),
    ("weight-shape", {"weights": WEIGHTS | {"wq": np.zeros((6, 5))}}, ["wq", "(6, 6)", "(6, 5)"]),
    ("weight-missing", {"weights": _without(WEIGHTS, "wo")}, ["missing", "wo"]),
]


def _call(function, overrides):
    args = GOOD | overrides
    weights = args.pop("weights", WEIGHTS)
    if function is oracle.vjp:
        return function(SPEC, weights, args["query"], args["key"], args["value"], args["d_out"],
                        args["mask"], args["bias"])
    return function(SPEC, weights, args["query"], args["key"], args["value"], args["mask"], args["bias"])


def test_the_good_arguments_pass():
    for function in (oracle.forward, oracle.attention_probs, oracle.vjp):
        _call(function, {})


@pytest.mark.parametrize("function", [oracle.forward, oracle.attention_probs, oracle.vjp],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("overrides, fragments", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_argument_raises_value_error_naming_it(function, overrides, fragments):
    with pytest.raises(ValueError) as info:
        _call(function, overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_a_weight_the_spec_does_not_have():
    spec = SPEC.replace(bias=False)
    weights = init_weights(spec) | {"bq": np.zeros(6)}
    with pytest.raises(ValueError, match=re.escape("unexpected ['bq']")):
        oracle.forward(spec, weights, GOOD["query"], GOOD["key"], GOOD["value"])


def test_d_out_of_the_wrong_shape():
    with pytest.raises(ValueError, match=re.escape("d_out: expected shape (2, 3, 6), got (2, 3, 5)")):
        oracle.vjp(SPEC, WEIGHTS, GOOD["query"], GOOD["key"], GOOD["value"], np.zeros((B, L_q, 5)))
