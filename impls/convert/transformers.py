"""Canonical weights <-> HF transformers state dicts, both ways.

Each layout maps a canonical projection letter to the ``nn.Linear`` that holds it, named
as in the module's ``state_dict()``: ``weight`` (out, in), applied as ``x @ weight.T``,
and ``bias`` (out,). Head h is the rows ``[h*d, (h+1)*d)``, the canonical columns, so
every weight is transposed and every bias copied: exact, and differentiable on tensors.

- ``BERT``: ``BertAttention`` (``bert.encoder.layer.N.attention.`` in a checkpoint): the
  ``self`` attention's ``query``/``key``/``value`` and ``output.dense`` (its LayerNorm and
  residual are not attention and not converted).
- ``LLAMA``: ``LlamaAttention`` (``model.layers.N.self_attn.``): ``q_proj``, ``k_proj``,
  ``v_proj``, ``o_proj`` (biases with ``attention_bias=True``).
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights, weight_shapes

BERT = {"q": "self.query", "k": "self.key", "v": "self.value", "o": "output.dense"}
LLAMA = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_LEAF = {"w": "weight", "b": "bias"}


def _key(name: str, layout: dict[str, str]) -> str:
    return f"{layout[name[1]]}.{_LEAF[name[0]]}"


def to_state_dict(spec: AttentionSpec, weights, layout: dict[str, str]) -> dict:
    """Canonical weights (NumPy arrays or tensors) -> the layout's state dict, same type."""
    check_weights(spec, weights)
    return {_key(name, layout): weights[name].T if name[0] == "w" else weights[name]
            for name in weight_shapes(spec)}


def from_state_dict(spec: AttentionSpec, state, layout: dict[str, str]) -> dict[str, np.ndarray]:
    """A state dict in the layout (tensors or arrays; extra keys ignored) -> canonical NumPy."""
    weights = {}
    for name, shape in weight_shapes(spec).items():
        key = _key(name, layout)
        value = state.get(key)
        value = None if value is None else _numpy(value)
        want = shape[::-1] if name[0] == "w" else shape
        if value is None or value.shape != want:
            raise ValueError(f"{key}: expected shape {want} for {spec}, "
                             f"got {None if value is None else value.shape}")
        weights[name] = value.T if name[0] == "w" else value
    return weights


def submodule(state: dict, prefix: str) -> dict:
    """The entries under ``prefix.`` with the prefix taken off (one module's own state)."""
    start = len(prefix) + 1
    return {key[start:]: value for key, value in state.items() if key.startswith(prefix + ".")}


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not needed otherwise
        value = value.detach().cpu()
    return np.asarray(value)
