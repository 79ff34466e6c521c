"""``keras.layers.MultiHeadAttention`` (Keras 3) behind the suite's contract, on whatever
backend ``KERAS_BACKEND`` selects: ``fn`` receives that framework's tensors.

Each feature goes through the layer's own option, so the suite sees the layer's real
behaviour:

- causal (either alignment) -> ``use_causal_mask=True``, which is top-left: with
  L_q != L_k a bottom-right spec gets the layer's top-left answer;
- window (left, right) -> ``sliding_window=w`` (where this Keras has it), the band
  |i - j| < w around the unshifted diagonal: it expresses a symmetric window
  (w - 1, w - 1), and with causal any (w - 1, right);
- mask -> ``attention_mask`` (B, L_q, L_k), True = attend: one mask for every head;
- dropout -> the layer's ``dropout``, its seed generator set from ``seed``.

What it cannot express at all raises ``Unsupported``: GQA/MQA, a custom scale (it always
uses 1/sqrt(key_dim)), softcap, rotary positions, an additive bias, a per-head mask, an
asymmetric window without causal.

Observed behaviour (Keras 3.15; tests/test_keras_builtin.py holds it):

- fully masked rows: with dropout 0 the layer runs ``keras.ops.dot_product_attention``,
  which fills hidden logits with a large negative number, so on all three backends an
  empty row is the average of every value ("uniform"); with dropout > 0 it runs its own
  masked softmax, which zeroes hidden weights ("zeros"). Gradients stay finite.
- float64 with dropout 0: on TensorFlow the op casts the Python-float scale
  1/sqrt(key_dim) through float32, so float64 results carry a ~1e-8 error unless that
  scale is exact in float32 (key_dim 1, 4, 16, ...); on JAX and PyTorch the op's
  results are float32-accurate only (~1e-7). With dropout > 0 every backend is float64-accurate.
- JAX backend, dropout 0: ``value_dim != key_dim`` fails inside Keras (its fallback
  reshapes the value heads to the key head size).

The weights are converted from the canonical ``params`` inside ``fn`` with
``keras.ops.reshape`` and handed to ``layer.stateless_call``, so autodiff reaches the
canonical weights through the conversion.
"""

from __future__ import annotations

import inspect
import math
import random

import keras

from attnsuite.impls.calling import call_inputs
from attnsuite.impls.convert.keras import canonical_to_keras, in_layer_order
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.spec import AttentionSpec

_HAS_SLIDING_WINDOW = "sliding_window" in inspect.signature(
    keras.layers.MultiHeadAttention.__init__).parameters


def _sliding_window(spec: AttentionSpec) -> int | None:
    """Keras' ``sliding_window`` for the spec's window, or Unsupported."""
    if spec.window is None:
        return None
    left, right = spec.window
    if not _HAS_SLIDING_WINDOW:
        raise Unsupported(f"keras {keras.__version__} MultiHeadAttention has no sliding_window")
    if spec.causal is None and left != right:
        raise Unsupported(f"keras' sliding_window is symmetric (|i - j| < w); window={spec.window} "
                          f"is not, and without causal nothing cuts its right side")
    return left + 1


def _check_spec(spec: AttentionSpec) -> None:
    reasons = []
    if spec.H_kv != spec.H:
        reasons.append(f"one key/value head per query head (num_kv_heads={spec.H_kv} != "
                       f"num_heads={spec.H}; GQA is keras.layers.GroupedQueryAttention)")
    default_scale = 1 / math.sqrt(spec.d_k)
    if spec.scale is not None and not math.isclose(spec.scale, default_scale, rel_tol=1e-15):
        reasons.append(f"the logit scale is always 1/sqrt(key_dim) (scale={spec.scale})")
    if spec.softcap is not None:
        reasons.append("no logit softcap")
    if spec.rope is not None:
        reasons.append("no rotary positions option (the projections are inside the layer)")
    if reasons:
        raise Unsupported("keras.layers.MultiHeadAttention has " + "; ".join(reasons))


def _attention_mask(mask, batch: int, L_q: int, L_k: int):
    """The suite's rank-2 or rank-4 mask as Keras' (B, L_q, L_k), or Unsupported."""
    if mask is None:
        return None
    if len(mask.shape) == 4:
        if mask.shape[1] != 1:
            raise Unsupported(f"keras.layers.MultiHeadAttention takes one mask for all heads; "
                              f"got a per-head mask of shape {tuple(mask.shape)}")
        mask = keras.ops.squeeze(mask, axis=1)
    return keras.ops.broadcast_to(mask, (batch, L_q, L_k))


# Declared, so that the gate declines those cases up front (calling.call_inputs); fn still
# raises Unsupported for them, for a caller that does not read the declaration.
@call_inputs(bias=False, masks=("rank2", "rank4"))
def multi_head_attention(spec: AttentionSpec):
    """SPEC section 5 factory for ``keras.layers.MultiHeadAttention`` on the current backend."""
    _check_spec(spec)
    sliding_window = _sliding_window(spec)
    options = dict(num_heads=spec.H, key_dim=spec.d_k, value_dim=spec.d_v, output_shape=spec.E_o,
                   use_bias=spec.bias, dropout=spec.dropout,
                   # Any seed: fn sets the generator's state from its own. Without one, Keras
                   # on PyTorch ignores that state and draws from torch's global RNG.
                   seed=0,
                   # Placeholders: fn always passes the canonical weights.
                   kernel_initializer="zeros", bias_initializer="zeros")
    if sliding_window is not None:
        options["sliding_window"] = sliding_window
    layers = {}  # one built layer per dtype: Keras casts inputs to the layer's dtype

    def layer_for(dtype: str):
        if dtype not in layers:
            layer = keras.layers.MultiHeadAttention(**options, dtype=dtype)
            layer.build((None, None, spec.E), (None, None, spec.E_v), (None, None, spec.E_k))
            layers[dtype] = layer
        return layers[dtype]

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        if bias is not None:
            raise Unsupported("keras.layers.MultiHeadAttention has no additive attention bias")
        layer = layer_for(keras.backend.standardize_dtype(query.dtype))
        batch, L_q, L_k = query.shape[0], query.shape[1], key.shape[1]
        weights = canonical_to_keras(spec, params, reshape=keras.ops.reshape)
        state = [v.value for v in layer.non_trainable_variables]
        if training and spec.dropout > 0:  # the only state: the dropout seed generator's
            if seed is None:
                seed = random.getrandbits(31)
            (seed_state,) = layer.non_trainable_variables
            state = [keras.ops.convert_to_tensor([seed, 0], dtype=seed_state.dtype)]
        out, _ = layer.stateless_call(
            in_layer_order(layer, weights, layer.trainable_variables), state,
            query, value, key,
            attention_mask=_attention_mask(mask, batch, L_q, L_k),
            use_causal_mask=spec.causal is not None,
            training=bool(training))
        return out

    return fn
