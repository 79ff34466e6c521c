"""Weight converters: canonical <-> ``keras.layers.MultiHeadAttention``, and canonical <->
our Keras layer (``attnsuite.impls.ours.tensorflow.MultiHeadAttention``).

Keras names each weight by its sublayer and keeps heads on their own axis:

| Keras weight | shape | canonical |
|---|---|---|
| ``query/kernel`` | (E, H, d_k) | ``wq`` (E, H*d_k) |
| ``query/bias`` | (H, d_k) | ``bq`` (H*d_k,) |
| ``key/kernel``, ``key/bias`` | (E_k, H, d_k), (H, d_k) | ``wk``, ``bk`` |
| ``value/kernel``, ``value/bias`` | (E_v, H, d_v), (H, d_v) | ``wv``, ``bv`` |
| ``attention_output/kernel`` | (H, d_v, E_o) | ``wo`` (H*d_v, E_o) |
| ``attention_output/bias`` | (E_o,) | ``bo`` |

Head h owns columns [h*d, (h+1)*d) in both layouts, so every conversion is a reshape
(row-major, exact). ``reshape`` defaults to NumPy's; pass ``keras.ops.reshape`` to convert
framework tensors differentiably. Keras has one key/value head per query head, so
these converters need ``H_kv == H``.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import weight_shapes

# Canonical projection -> Keras sublayer name.
SUBLAYERS = {"q": "query", "k": "key", "v": "value", "o": "attention_output"}


def keras_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
    """Keras weight name -> shape, for a spec Keras can hold."""
    if spec.H_kv != spec.H:
        raise ValueError(f"keras.layers.MultiHeadAttention has one key/value head per query head; "
                         f"{spec} has num_kv_heads={spec.H_kv} != num_heads={spec.H}")
    H, d_k, d_v = spec.H, spec.d_k, spec.d_v
    shapes = {
        "query/kernel": (spec.E, H, d_k),
        "key/kernel": (spec.E_k, H, d_k),
        "value/kernel": (spec.E_v, H, d_v),
        "attention_output/kernel": (H, d_v, spec.E_o),
    }
    if spec.bias:
        shapes.update({"query/bias": (H, d_k), "key/bias": (H, d_k), "value/bias": (H, d_v),
                       "attention_output/bias": (spec.E_o,)})
    return shapes


def _keras_name(canonical_name: str) -> str:
    kind = "kernel" if canonical_name[0] == "w" else "bias"
    return f"{SUBLAYERS[canonical_name[1]]}/{kind}"


def canonical_to_keras(spec: AttentionSpec, weights, reshape=np.reshape) -> dict:
    """Canonical weights -> Keras MultiHeadAttention weights by name ("query/kernel", ...)."""
    shapes = keras_shapes(spec)
    return {_keras_name(name): reshape(weights[name], shapes[_keras_name(name)])
            for name in weight_shapes(spec)}


def keras_to_canonical(spec: AttentionSpec, keras_weights, reshape=np.reshape) -> dict:
    """Keras MultiHeadAttention weights by name -> canonical weights."""
    keras_shapes(spec)  # the same check on H_kv
    return {name: reshape(keras_weights[_keras_name(name)], shape)
            for name, shape in weight_shapes(spec).items()}


def _name_in_layer(layer, variable) -> str:
    """"query/kernel" for the variable whose path is "<layer name>/query/kernel"."""
    return variable.path.removeprefix(layer.name + "/")


def in_layer_order(layer, named: dict, variables=None) -> list:
    """``named`` (Keras weight name -> array) as a list in the order of ``variables``
    (default ``layer.weights``: the order of ``set_weights``; pass
    ``layer.trainable_variables`` for ``stateless_call``)."""
    variables = layer.weights if variables is None else variables
    return [named[_name_in_layer(layer, v)] for v in variables]


def load_keras(layer, spec: AttentionSpec, weights) -> None:
    """Load canonical weights into a built Keras MultiHeadAttention, as a user would."""
    layer.set_weights(in_layer_order(layer, canonical_to_keras(spec, weights)))


def read_keras(layer, spec: AttentionSpec) -> dict:
    """The canonical weights of a built Keras MultiHeadAttention, as NumPy arrays."""
    named = {_name_in_layer(layer, v): w for v, w in zip(layer.weights, layer.get_weights())}
    return keras_to_canonical(spec, named)


# Our Keras layer keeps the canonical layout under the canonical names, in the order of
# `weight_shapes`: its `get_weights()` list is the canonical weights in that order.

def canonical_to_ours(spec: AttentionSpec, weights) -> list:
    """Canonical weights -> the list that our layer's ``set_weights`` takes."""
    return [weights[name] for name in weight_shapes(spec)]


def ours_to_canonical(spec: AttentionSpec, layer_weights) -> dict:
    """The list from our layer's ``get_weights()`` -> canonical weights."""
    names = list(weight_shapes(spec))
    if len(layer_weights) != len(names):
        raise ValueError(f"expected {len(names)} weights {names} for {spec}, "
                         f"got {len(layer_weights)}")
    return dict(zip(names, layer_weights))
