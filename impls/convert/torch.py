"""Canonical weights <-> PyTorch state dicts, both ways.

Torch stores a linear map as ``weight`` of shape (out, in) applied as ``x @ weight.T``;
the canonical layout is ``x @ W`` with W of shape (in, out), so every weight is
transposed on the way. Every function takes NumPy arrays or tensors and returns
tensors built with differentiable ops only (transpose, cat, split): an adapter may call
them inside ``fn`` and gradients reach the canonical ``params``. ``to_numpy`` exports.

Two targets:

- ``torch.nn.MultiheadAttention``: ``in_proj_weight`` (3E, E) stacks q, k, v when
  kdim == vdim == E, else ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``;
  ``in_proj_bias`` (3E,) stacks the three biases either way; ``out_proj.{weight,bias}``.
- our ``attnsuite.impls.ours.torch.MultiHeadAttention``: one ``nn.Linear`` per projection,
  ``{q,k,v,out}_proj.{weight,bias}``.
"""

from __future__ import annotations

import numpy as np
import torch

from attnsuite.impls.spec import AttentionSpec

# Canonical projection letter -> our Module's nn.Linear attribute.
MODULE_LAYERS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def to_numpy(tensors: dict) -> dict[str, np.ndarray]:
    """Tensors -> NumPy arrays of the same dtype (bfloat16, which NumPy lacks, as float32)."""
    def export(t):
        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return {name: export(t) for name, t in tensors.items()}


# ---------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention

def mha_layout_problems(spec: AttentionSpec) -> list[str]:
    """Why nn.MultiheadAttention's weights cannot hold ``spec``'s (empty when they can)."""
    problems = []
    if spec.H_kv != spec.H:
        problems.append(f"one key/value head per query head only (num_kv_heads={spec.H_kv}, "
                        f"num_heads={spec.H})")
    if spec.d_k * spec.H != spec.E:
        problems.append(f"head size is d_model / num_heads only (head_dim={spec.d_k}, "
                        f"d_model={spec.E}, num_heads={spec.H})")
    if spec.d_v != spec.d_k:
        problems.append(f"value heads are as wide as query heads only "
                        f"(value_head_dim={spec.d_v}, head_dim={spec.d_k})")
    if spec.E_o != spec.E:
        problems.append(f"output size is d_model only (out_dim={spec.E_o}, d_model={spec.E})")
    return problems


def _check_mha(spec: AttentionSpec) -> None:
    problems = mha_layout_problems(spec)
    if problems:
        raise ValueError(f"nn.MultiheadAttention cannot hold {spec}: " + "; ".join(problems))


def mha_packs_qkv(spec: AttentionSpec) -> bool:
    """nn.MultiheadAttention's ``_qkv_same_embed_dim``: one stacked in_proj_weight."""
    return spec.E_k == spec.E and spec.E_v == spec.E


def canonical_to_mha(spec: AttentionSpec, weights: dict) -> dict[str, torch.Tensor]:
    """Canonical weights -> an nn.MultiheadAttention(batch_first=True) state dict."""
    _check_mha(spec)
    w = {name: _tensor(array) for name, array in weights.items()}
    if mha_packs_qkv(spec):
        state = {"in_proj_weight": torch.cat([w["wq"].T, w["wk"].T, w["wv"].T])}
    else:
        state = {f"{name}_proj_weight": w["w" + name].T for name in "qkv"}
    if spec.bias:
        state["in_proj_bias"] = torch.cat([w["bq"], w["bk"], w["bv"]])
    state["out_proj.weight"] = w["wo"].T
    if spec.bias:
        state["out_proj.bias"] = w["bo"]
    return state


def mha_to_canonical(spec: AttentionSpec, state: dict) -> dict[str, torch.Tensor]:
    """An nn.MultiheadAttention state dict -> canonical weights (in canonical order)."""
    _check_mha(spec)
    s = {name: _tensor(array) for name, array in state.items()}
    if mha_packs_qkv(spec):
        wq, wk, wv = (part.T for part in s["in_proj_weight"].split(spec.E))
    else:
        wq, wk, wv = (s[f"{name}_proj_weight"].T for name in "qkv")
    weights = {"wq": wq, "wk": wk, "wv": wv, "wo": s["out_proj.weight"].T}
    if spec.bias:
        bq, bk, bv = s["in_proj_bias"].split(spec.E)
        weights.update({"bq": bq, "bk": bk, "bv": bv, "bo": s["out_proj.bias"]})
    return weights


# ---------------------------------------------------------------------------------------
# impls.ours.torch.MultiHeadAttention

def canonical_to_module(weights: dict) -> dict[str, torch.Tensor]:
    """Canonical weights -> our Module's state dict (nn.Linear (out, in) weights)."""
    state = {}
    for letter, layer in MODULE_LAYERS.items():
        state[f"{layer}.weight"] = _tensor(weights["w" + letter]).T
        if "b" + letter in weights:
            state[f"{layer}.bias"] = _tensor(weights["b" + letter])
    return state


def module_to_canonical(state: dict) -> dict[str, torch.Tensor]:
    """Our Module's state dict (or its named parameters) -> canonical weights."""
    weights = {"w" + letter: _tensor(state[f"{layer}.weight"]).T
               for letter, layer in MODULE_LAYERS.items()}
    weights.update({"b" + letter: _tensor(state[f"{layer}.bias"])
                    for letter, layer in MODULE_LAYERS.items() if f"{layer}.bias" in state})
    return weights
