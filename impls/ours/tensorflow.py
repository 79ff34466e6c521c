"""Our TensorFlow attention (SPEC section 3), following the contract in ``attnsuite.impls.ours``.
Heads are (B, L, heads, d), so that splitting and merging them is a reshape.

- ``explicit``: every step of the formula written out in TensorFlow ops;
- ``fused``: the per-head core on ``keras.ops.dot_product_attention``, the attention op
  TensorFlow offers (TensorFlow has no fused attention kernel of its own; on its backend
  the op is einsum + softmax, which XLA can fuse). What the op cannot express falls back
  to the explicit core: softcap (it refuses ``attn_logits_soft_cap`` off JAX-TPU) and
  dropout (it has none). The op is given everything else: GQA, bias, scale, and any mask
  other than plain top-left causal as a boolean mask.

``MultiHeadAttention`` is the classic Keras layer, complete and correct, computing either.
float16 and bfloat16 tensors are contracted in float32 (``attnsuite.impls.ops.tensorflow``).
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: quiet start-up logging

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from attnsuite.impls.errors import Unsupported  # noqa: E402
from attnsuite.impls.ops.tensorflow import (check_mask_and_bias, length, output, project,  # noqa: E402
                                            rope_qk, visibility, widen)
from attnsuite.impls.oracle import structural_rows_with_keys  # noqa: E402
from attnsuite.impls.spec import AttentionSpec  # noqa: E402
from attnsuite.impls.weights import weight_shapes  # noqa: E402

__all__ = ["project", "visibility", "masked_softmax", "dropout", "explicit_attention",
           "fused_attention", "project_qkv", "attention_fn", "decoding", "explicit", "fused",
           "MultiHeadAttention"]


def masked_softmax(logits, visible):
    """Softmax over the visible keys of each row; a row with no visible key is all zeros.

    Hidden logits become the dtype's lowest finite value rather than -inf, so that no
    inf - inf appears; an empty row then comes out uniform and is zeroed, its gradient
    with it.
    """
    if visible is None:
        return tf.nn.softmax(logits, axis=-1)
    probs = tf.nn.softmax(tf.where(visible, logits, logits.dtype.min), axis=-1)
    return tf.where(visible, probs, 0.0)


def dropout(probs, rate: float, seed: int | None):
    """Zero each weight with probability ``rate`` and scale the rest by 1 / (1 - rate).

    Stateless: one seed gives one mask. ``seed=None`` draws a fresh one.
    """
    if seed is None:
        seed = random.getrandbits(31)
    draws = tf.random.stateless_uniform(tf.shape(probs), seed=tf.constant([seed, 0], tf.int64))
    return tf.where(draws >= rate, probs / (1.0 - rate), 0.0)


def _share_kv_heads(x, group_size: int):
    """(B, L, H_kv, d) -> (B, L, H_kv * group_size, d): query head h reads key/value head
    h // group_size."""
    return x if group_size == 1 else tf.repeat(x, group_size, axis=2)


def _einsum(equation: str, a, b):
    """``tf.einsum`` accumulated in float32 for 16-bit inputs, rounded once to their dtype."""
    return tf.cast(tf.einsum(equation, *widen(a, b)), a.dtype)


def explicit_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                       seed=None):
    """(B, L_q, H, d_k), (B, L_k, H_kv, d_k), (B, L_k, H_kv, d_v) -> (B, L_q, H, d_v)."""
    k = _share_kv_heads(k, spec.group_size)                             # (B, L_k, H, d_k)
    v = _share_kv_heads(v, spec.group_size)                             # (B, L_k, H, d_v)
    logits = spec.logit_scale * _einsum("bqhd,bkhd->bhqk", q, k)        # (B, H, L_q, L_k)
    if spec.softcap is not None:
        logits = spec.softcap * tf.tanh(logits / spec.softcap)
    if bias is not None:
        logits = logits + bias
    probs = masked_softmax(logits, visibility(spec, length(q), length(k), mask))
    if dropout_rate:
        probs = dropout(probs, dropout_rate, seed)
    return _einsum("bhqk,bkhd->bqhd", probs, v)                         # (B, L_q, H, d_v)


def _require_tensorflow_keras(what: str, error=Unsupported) -> None:
    if keras.backend.backend() != "tensorflow":
        raise error(f"{what} runs Keras on TensorFlow tensors, but this process has "
                    f"KERAS_BACKEND={keras.backend.backend()!r} (set it to 'tensorflow')")


def _zero_empty_rows(heads, visible):
    """Zero the (B, L_q, H, d_v) output of every query row that sees no key.

    ``keras.ops.dot_product_attention`` (TF backend) replaces hidden logits with a large
    negative number, so such a row comes out as the average of all values.
    """
    if visible.shape.rank == 2:
        visible = visible[None, None]
    has_key = tf.transpose(tf.reduce_any(visible, axis=-1), [0, 2, 1])[..., None]  # (B|1, L_q, H|1, 1)
    return tf.where(has_key, heads, 0.0)


def fused_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                    seed=None):
    """What ``explicit_attention`` computes, the core on ``keras.ops.dot_product_attention``."""
    if spec.softcap is not None or dropout_rate:
        return explicit_attention(spec, q, k, v, mask, bias, dropout_rate, seed)
    if spec.H_kv == 1 < spec.H:  # the TF op repeats key/value heads only when 1 < H_kv < H
        k, v = _share_kv_heads(k, spec.H), _share_kv_heads(v, spec.H)  # (B, L_k, H, d)

    dtype = q.dtype
    q, k, v = widen(q, k, v)   # the op's einsums would accumulate 16-bit inputs in 16 bits
    # The op casts the scale to its logits' dtype; a Python float would go through float32
    # on the way (a 1e-8 error in every float64 logit), so it gets the scale in that dtype.
    scale = tf.constant(spec.logit_scale, q.dtype)
    L_q, L_k = length(q), length(k)
    static = isinstance(L_q, int) and isinstance(L_k, int)
    if mask is None and spec.window is None and (
            spec.causal == "top_left" or (spec.causal == "bottom_right" and static and L_q == L_k)):
        # The op's own causal rule is top-left (a lower-triangular band); bottom-right
        # agrees with it where L_q == L_k.
        heads = keras.ops.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=True)
    else:
        visible = visibility(spec, L_q, L_k, mask)
        heads = keras.ops.dot_product_attention(q, k, v, bias=bias, mask=visible, scale=scale)
        rows_all_see_keys = (mask is None and static
                             and structural_rows_with_keys(spec, L_q, L_k).all())
        if visible is not None and not rows_all_see_keys:
            heads = _zero_empty_rows(heads, visible)
    return tf.cast(heads, dtype)                                        # (B, L_q, H, d_v)


def project_qkv(spec: AttentionSpec, params, query, key, value, start=0):
    """Q (B, L_q, H, d_k), K (B, L_k, H_kv, d_k), V (B, L_k, H_kv, d_v): projected, Q and K
    rotated at their positions (``start`` tokens before these: a decoding step's cache)."""
    q, k = rope_qk(spec, project(spec, params, query, "q"), project(spec, params, key, "k"), start)
    return q, k, project(spec, params, value, "v")


def attention_fn(spec: AttentionSpec, core):
    """The SPEC 5 ``fn`` around an attention core (``explicit_attention`` or
    ``fused_attention``), with ``fn.init_cache`` and ``fn.decode`` on the same core."""
    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        check_mask_and_bias(mask, bias)
        q, k, v = project_qkv(spec, params, query, key, value)
        heads = core(spec, q, k, v, mask, bias, spec.dropout if training else 0.0, seed)
        return output(spec, params, heads)                             # (B, L_q, E_o)
    fn.init_cache, fn.decode = decoding(spec, core)
    return fn


def decoding(spec: AttentionSpec, core):
    """(init_cache, decode) of the decoding protocol (``attnsuite.conformance.decode``).
    The cache is {"key", "value"}: the projected (and rotated) keys and values so far,
    (B, L, H_kv, d); each step returns a new one, so a ``tf.GradientTape`` around the
    steps reaches every step's inputs through it. New queries are the last of the keys
    so far: the causal rule is bottom-right, and the window counts from there."""
    step_spec = spec.replace(causal="bottom_right") if spec.causal else spec

    def init_cache(params, batch_size: int) -> dict:
        dtype = params["wk"].dtype
        return {"key": tf.zeros([batch_size, 0, spec.H_kv, spec.d_k], dtype),
                "value": tf.zeros([batch_size, 0, spec.H_kv, spec.d_v], dtype)}

    def decode(params, cache, query, key, value):
        q, k, v = project_qkv(spec, params, query, key, value, start=length(cache["key"]))
        cache = {"key": tf.concat([cache["key"], k], axis=1),
                 "value": tf.concat([cache["value"], v], axis=1)}
        heads = core(step_spec, q, cache["key"], cache["value"])         # (B, L_new, H, d_v)
        return output(spec, params, heads), cache

    return init_cache, decode


def explicit(spec: AttentionSpec):
    """Every step of the formula in TensorFlow ops (the body of ``MultiHeadAttention``)."""
    return attention_fn(spec, explicit_attention)


def fused(spec: AttentionSpec):
    """The per-head core on ``keras.ops.dot_product_attention`` (explicit where it cannot)."""
    _require_tensorflow_keras("tensorflow.fused")
    return attention_fn(spec, fused_attention)


# ---------------------------------------------------------------------------------------
# The Keras layer.

class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention as a Keras layer, configured by an ``AttentionSpec``.

    Its weights are the canonical ones (``x @ W``), named as in the spec: ``wq``, ``wk``,
    ``wv``, ``wo`` and, with bias, ``bq``, ``bk``, ``bv``, ``bo``, in that order.
    ``fused=True`` computes with ``fused_attention`` instead of ``explicit_attention``.

    ``layer(query, key=None, value=None, attention_mask=None, attention_bias=None,
    training=None, seed=None)``: key defaults to query and value to key (self-attention);
    ``attention_mask`` is boolean, True = may attend, and is not named ``mask`` so that
    Keras does not fill it with a padding mask of the inputs.
    """

    def __init__(self, spec: AttentionSpec, fused: bool = False, **kwargs):
        _require_tensorflow_keras("attnsuite.impls.ours.tensorflow.MultiHeadAttention", RuntimeError)
        super().__init__(**kwargs)
        self.spec = spec
        self.fused = fused
        self.canonical = {
            name: self.add_weight(shape=shape, name=name,
                                  initializer="glorot_uniform" if name.startswith("w") else "zeros")
            for name, shape in weight_shapes(spec).items()
        }
        self.built = True  # every shape comes from the spec: nothing is left to build

    def call(self, query, key=None, value=None, attention_mask=None, attention_bias=None,
             training=None, seed=None):
        key = query if key is None else key
        value = key if value is None else value
        params = {name: variable.value for name, variable in self.canonical.items()}
        fn = attention_fn(self.spec, fused_attention if self.fused else explicit_attention)
        return fn(params, query, key, value, attention_mask, attention_bias, bool(training), seed)

    @classmethod
    def from_canonical(cls, spec: AttentionSpec, weights, **kwargs) -> "MultiHeadAttention":
        """A layer holding the canonical NumPy ``weights`` (kwargs: ``fused``, dtype, name)."""
        layer = cls(spec, **kwargs)
        for name, variable in layer.canonical.items():
            variable.assign(weights[name])
        return layer

    def to_canonical(self) -> dict:
        """The canonical weights, as NumPy arrays."""
        return {name: keras.ops.convert_to_numpy(v) for name, v in self.canonical.items()}

    def get_config(self) -> dict:
        return {**super().get_config(), "spec": self.spec.to_dict(), "fused": self.fused}

    @classmethod
    def from_config(cls, config: dict) -> "MultiHeadAttention":
        config = dict(config)
        return cls(AttentionSpec.from_dict(config.pop("spec")), **config)

