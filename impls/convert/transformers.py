"""Canonical weights <-> HF transformers attention layers' own (``nn.Linear``: weight (out, in)).

``llama_state_dict`` gives the ``q_proj``/``k_proj``/``v_proj``/``o_proj`` entries of a
``LlamaAttention`` (and of the layers that copy it: Mistral, Qwen2, ...), ``from_llama``
reads them back; both exact, and differentiable (a transpose) for torch tensors, so an
adapter can build the layer's weights from canonical ``params`` inside ``fn``. A key
prefix (``model.layers.0.self_attn.``) reads one layer out of a whole checkpoint.
"""

from __future__ import annotations

PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}


def _transpose(w):
    return w.T


def llama_state_dict(weights: dict, prefix: str = "") -> dict:
    """Canonical (``x @ W``) weights -> ``{prefix}q_proj.weight`` (out, in), biases as they are."""
    state = {}
    for letter, module in PROJECTIONS.items():
        state[f"{prefix}{module}.weight"] = _transpose(weights["w" + letter])
        if "b" + letter in weights:
            state[f"{prefix}{module}.bias"] = weights["b" + letter]
    return state


def from_llama(state: dict, prefix: str = "") -> dict:
    """The inverse of ``llama_state_dict``: a LlamaAttention state dict -> canonical weights."""
    weights = {}
    for letter, module in PROJECTIONS.items():
        weights["w" + letter] = _transpose(state[f"{prefix}{module}.weight"])
        if f"{prefix}{module}.bias" in state:
            weights["b" + letter] = state[f"{prefix}{module}.bias"]
    return weights
