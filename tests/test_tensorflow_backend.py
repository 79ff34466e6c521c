"""What only the TensorFlow adapter (impls/backends/tensorflow.py) promises; the shared
contract is checked for every framework in tests/test_backends.py."""

import numpy as np
import pytest

from conftest import require
from attnsuite.impls import AttentionSpec, Unsupported, init_weights

tb = require("tensorflow")
import tensorflow as tf  # noqa: E402  (after the skip)

WEIGHTS = init_weights(AttentionSpec(d_model=6, num_heads=2), seed=1)
RNG = np.random.default_rng(0)
Q, K, V = (RNG.standard_normal((2, 3, 6)) for _ in range(3))
D_OUT = RNG.standard_normal((2, 3, 6))


@pytest.mark.parametrize("op, dtype", [(tf.math.erfinv, "float16"),     # no CPU kernel
                                       (tf.bitwise.invert, "float32")])  # integers only
def test_an_op_that_cannot_run_the_dtype_is_unsupported_not_a_crash(op, dtype):
    def uses_op(params, query, key, value, mask=None, bias=None):
        return op(query)

    with pytest.raises(Unsupported, match=f"no {dtype} kernel on cpu"):
        tb.forward(uses_op, WEIGHTS, Q, K, V, dtype=dtype)
    with pytest.raises(Unsupported, match=f"no {dtype} kernel on cpu"):
        tb.forward_and_vjp(uses_op, WEIGHTS, Q, K, V, D_OUT, dtype=dtype)


def test_other_errors_pass_through():
    def misshapen(params, query, key, value, mask=None, bias=None):
        return query @ params["wo"][:4]

    with pytest.raises(tf.errors.InvalidArgumentError):
        tb.forward(misshapen, WEIGHTS, Q, K, V, dtype="float32")


def test_gradients_reach_params_through_a_layout_conversion():
    def transposed(params, query, key, value, mask=None, bias=None):
        w = tf.transpose(tf.reshape(params["wq"], (6, 2, 3)), (1, 0, 2))   # (heads, E, d)
        return tf.concat([query @ w[0], query @ w[1]], axis=-1)

    _, grads = tb.forward_and_vjp(transposed, WEIGHTS, Q, K, V, D_OUT, dtype="float64")
    np.testing.assert_allclose(grads["wq"], np.einsum("bli,blo->io", Q, D_OUT), rtol=1e-12)
