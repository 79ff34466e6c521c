"""Our TensorFlow attention: the classic Keras ``MultiHeadAttention`` layer, complete and correct.

Two paths over the same projections (SPEC section 3), in the (B, L, heads, d) layout so
that splitting and merging heads is a reshape:

- ``attention``: every step of the formula written out in TensorFlow ops. It is the body
  of the Keras layer ``MultiHeadAttention`` and of the ``explicit`` factory.
- ``fused_attention``: the per-head core on ``keras.ops.dot_product_attention``, the
  attention op TensorFlow offers (TensorFlow has no fused attention kernel of its own; on
  its backend the op is einsum + softmax, which XLA can fuse). What the op cannot express
  falls back to ``attention``: softcap (it refuses ``attn_logits_soft_cap`` off JAX-TPU)
  and dropout (it has none). The op is given everything else: GQA, bias, scale, and any
  mask other than plain top-left causal as a boolean mask.

A query row with no visible key gives zeros, with zero gradient, on both paths.
float16 and bfloat16 tensors are stored in their dtype but contracted in float32, as
sound low-precision kernels do: TensorFlow's CPU einsum would accumulate in 16 bits.
"""

from __future__ import annotations

import functools
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: quiet start-up logging

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from attnsuite.impls.errors import Unsupported  # noqa: E402
from attnsuite.impls.spec import AttentionSpec  # noqa: E402
from attnsuite.impls.weights import weight_shapes  # noqa: E402


# ---------------------------------------------------------------------------------------
# The steps of the formula.

def _check_mask_and_bias(mask, bias) -> None:
    for name, t in (("mask", mask), ("bias", bias)):
        if t is not None and t.shape.rank not in (2, 4):
            raise ValueError(f"{name}: must have rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k), got "
                             f"shape {tuple(t.shape)}; rank 3 is ambiguous when B == H")
    if mask is not None and mask.dtype != tf.bool:
        raise ValueError(f"mask: must be boolean (True = may attend), got dtype {mask.dtype.name}")


# The dtype each 16-bit dtype is contracted in.
_ACCUMULATE = {tf.float16: tf.float32, tf.bfloat16: tf.float32}


def _widen(*tensors):
    """Tensors in their accumulation dtype (unchanged unless 16-bit)."""
    return [tf.cast(t, _ACCUMULATE.get(t.dtype, t.dtype)) for t in tensors]


def _einsum(equation: str, a, b):
    """``tf.einsum`` accumulated in float32 for 16-bit inputs, rounded once to their dtype."""
    return tf.cast(tf.einsum(equation, *_widen(a, b)), a.dtype)


def _project(spec: AttentionSpec, params, x, name: str):
    """x @ w + b for projection ``name`` ("q", "k", "v" or "o"), rounded once."""
    wide_x, w = _widen(x, params["w" + name])
    y = tf.einsum("bli,io->blo", wide_x, w)
    if spec.bias:
        y = y + _widen(params["b" + name])[0]
    return tf.cast(y, x.dtype)


def _split_heads(x, heads: int):
    """(B, L, heads*d) -> (B, L, heads, d)."""
    shape = tf.shape(x)
    return tf.reshape(x, [shape[0], shape[1], heads, -1])


def _project_heads(spec: AttentionSpec, params, query, key, value):
    """Q (B, L_q, H, d_k), K (B, L_k, H_kv, d_k), V (B, L_k, H_kv, d_v)."""
    return (_split_heads(_project(spec, params, query, "q"), spec.H),
            _split_heads(_project(spec, params, key, "k"), spec.H_kv),
            _split_heads(_project(spec, params, value, "v"), spec.H_kv))


def _share_kv_heads(x, group_size: int):
    """(B, L, H_kv, d) -> (B, L, H, d): query head h reads key/value head h // group_size."""
    return x if group_size == 1 else tf.repeat(x, group_size, axis=2)


def _output(spec: AttentionSpec, params, heads):
    """(B, L_q, H, d_v) -> concat_h(O_h) @ wo + bo, (B, L_q, E_o)."""
    shape = tf.shape(heads)
    return _project(spec, params, tf.reshape(heads, [shape[0], shape[1], -1]), "o")


def structural_visibility(spec: AttentionSpec, L_q, L_k):
    """(L_q, L_k) bool from the causal and window rules, or None when the spec has neither."""
    if spec.causal is None and spec.window is None:
        return None
    i = tf.range(L_q)[:, None]
    if spec.causal == "bottom_right":
        i = i + (L_k - L_q)
    offset = tf.range(L_k)[None, :] - i        # j - i', with i' shifted by the alignment
    rules = []
    if spec.causal is not None:
        rules.append(offset <= 0)
    if spec.window is not None:
        left, right = spec.window
        rules += [offset >= -left, offset <= right]
    return functools.reduce(tf.logical_and, rules)


def _visibility(spec: AttentionSpec, mask, L_q, L_k):
    """The user mask combined with the structural rules (rank 2 or 4), or None: all visible."""
    structural = structural_visibility(spec, L_q, L_k)
    if mask is None or structural is None:
        return structural if mask is None else mask
    return tf.logical_and(mask, structural)


def _masked_softmax(logits, visible):
    """Softmax over the visible keys of each row; a row with no visible key is all zeros.

    Hidden logits become the dtype's lowest finite value rather than -inf, so that no
    inf - inf appears; an empty row then comes out uniform and is zeroed, its gradient
    with it.
    """
    if visible is None:
        return tf.nn.softmax(logits, axis=-1)
    probs = tf.nn.softmax(tf.where(visible, logits, logits.dtype.min), axis=-1)
    return tf.where(visible, probs, 0.0)


def _dropout(probs, rate: float, seed: int | None):
    """Zero each weight with probability ``rate`` and scale the rest by 1 / (1 - rate).

    Stateless: one seed gives one mask. ``seed=None`` draws a fresh one.
    """
    if seed is None:
        seed = random.getrandbits(31)
    draws = tf.random.stateless_uniform(tf.shape(probs), seed=tf.constant([seed, 0], tf.int64))
    return tf.where(draws >= rate, probs / (1.0 - rate), 0.0)


def attention(spec: AttentionSpec, params, query, key, value, mask=None, bias=None,
              training=False, seed=None):
    """SPEC section 3, step by step. ``params`` are the canonical weights as tensors."""
    _check_mask_and_bias(mask, bias)
    q, k, v = _project_heads(spec, params, query, key, value)
    k, v = _share_kv_heads(k, spec.group_size), _share_kv_heads(v, spec.group_size)

    logits = spec.logit_scale * _einsum("bqhd,bkhd->bhqk", q, k)        # (B, H, L_q, L_k)
    if spec.softcap is not None:
        logits = spec.softcap * tf.tanh(logits / spec.softcap)
    if bias is not None:
        logits = logits + bias

    visible = _visibility(spec, mask, tf.shape(query)[1], tf.shape(key)[1])
    probs = _masked_softmax(logits, visible)
    if training and spec.dropout > 0:
        probs = _dropout(probs, spec.dropout, seed)

    heads = _einsum("bhqk,bkhd->bqhd", probs, v)                        # (B, L_q, H, d_v)
    return _output(spec, params, heads)


# ---------------------------------------------------------------------------------------
# The fused path.

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
    has_key = tf.transpose(tf.reduce_any(visible, axis=-1), [0, 2, 1])[..., None]  # (b, L_q, h, 1)
    return tf.where(has_key, heads, 0.0)


def fused_attention(spec: AttentionSpec, params, query, key, value, mask=None, bias=None,
                    training=False, seed=None):
    """SPEC section 3 with the per-head core on ``keras.ops.dot_product_attention``."""
    if spec.softcap is not None or (training and spec.dropout > 0):
        return attention(spec, params, query, key, value, mask, bias, training, seed)
    _check_mask_and_bias(mask, bias)
    q, k, v = _project_heads(spec, params, query, key, value)
    if spec.H_kv == 1 < spec.H:  # the TF op repeats key/value heads only when 1 < H_kv < H
        k, v = _share_kv_heads(k, spec.H), _share_kv_heads(v, spec.H)

    dtype = q.dtype
    q, k, v = _widen(q, k, v)   # the op's einsums would accumulate 16-bit inputs in 16 bits
    # The op casts the scale to its logits' dtype; a Python float would go through float32
    # on the way (a 1e-8 error in every float64 logit), so it gets the scale in that dtype.
    scale = tf.constant(spec.logit_scale, q.dtype)
    if mask is None and spec.causal == "top_left" and spec.window is None:
        # The op's own causal rule is top-left (a lower-triangular band).
        heads = keras.ops.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=True)
    else:
        visible = _visibility(spec, mask, tf.shape(query)[1], tf.shape(key)[1])
        heads = keras.ops.dot_product_attention(q, k, v, bias=bias, mask=visible, scale=scale)
        if visible is not None:
            heads = _zero_empty_rows(heads, visible)
    return _output(spec, params, tf.cast(heads, dtype))


# ---------------------------------------------------------------------------------------
# The Keras layer and the factories (SPEC section 5).

class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention as a Keras layer, configured by an ``AttentionSpec``.

    Its weights are the canonical ones (``x @ W``), named as in the spec: ``wq``, ``wk``,
    ``wv``, ``wo`` and, with bias, ``bq``, ``bk``, ``bv``, ``bo``, in that order.
    ``fused=True`` computes with ``fused_attention`` instead of ``attention``.

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
        compute = fused_attention if self.fused else attention
        return compute(self.spec, params, query, key, value, attention_mask, attention_bias,
                       bool(training), seed)

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


def explicit(spec: AttentionSpec):
    """Every step of the formula in TensorFlow ops (the body of ``MultiHeadAttention``)."""

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        return attention(spec, params, query, key, value, mask, bias, training, seed)

    return fn


def fused(spec: AttentionSpec):
    """The per-head core on ``keras.ops.dot_product_attention`` (explicit where it cannot)."""
    _require_tensorflow_keras("tensorflow.fused")

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        return fused_attention(spec, params, query, key, value, mask, bias, training, seed)

    return fn
