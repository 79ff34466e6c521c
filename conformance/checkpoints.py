"""Checkpoints as users have them, read into one flat ``{key: array}`` (``attnsuite port``).

| what | read with | keys |
|---|---|---|
| ``.pt``, ``.pth``, ``.bin`` (a PyTorch ``state_dict``) | ``torch.load(weights_only=True)`` | ``model.layers.0.self_attn.q_proj.weight``; nested dicts joined with "." |
| ``.safetensors`` | ``safetensors`` | as stored |
| ``.h5`` (a Keras ``.weights.h5``) | ``h5py`` | dataset paths, ``layers/multi_head_attention/query_dense/vars/0`` |
| ``.msgpack`` (flax params, ``flax.serialization.to_bytes``) | ``flax.serialization`` | the tree's path joined with "/", ``params/query/kernel`` |
| ``.npz`` | NumPy, no pickles | as stored |
| a folder (an HF checkpoint) | ``model.safetensors`` (or its shards' index) or ``pytorch_model.bin`` | as stored; ``config.json`` gives the spec (``hf_spec_fields``) |

Meta's ``consolidated.*.pth`` is a PyTorch file; the ``params.json`` beside it gives the spec
(``meta_spec_fields``).

Every failure is a ValueError naming the file; the library a format needs is named when it
is missing (``safetensors`` is in the ``test`` and ``ecosystem`` extras).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

META_PARAMS = "params.json"     # beside Meta's consolidated.*.pth
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
# config.json's "model_type"s whose attention is LlamaAttention's: q/k/v/o_proj, half-style
# RoPE, causal. Others (Qwen2's biases on q/k/v only, Qwen3's norms of q and k) are refused
# by name rather than read as something they are not.
LLAMA_LIKE = ("llama", "mistral")


def _flatten(tree, sep: str, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):    # a torch tensor (bfloat16, which NumPy lacks, as float32)
        value = value.detach().cpu()
        value = value.float() if str(value.dtype) == "torch.bfloat16" else value
        return value.numpy()
    return np.asarray(value)


def _torch(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state_dict")
    return {k: _numpy(v) for k, v in _flatten(state, ".").items() if hasattr(v, "shape")}


def _safetensors(path: Path) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ValueError("reading .safetensors needs the safetensors package "
                         "(pip install 'attnsuite[ecosystem]')") from None
    return load_file(str(path))


def _keras_h5(path: Path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _flax_msgpack(path: Path) -> dict:
    from flax.serialization import msgpack_restore

    tree = msgpack_restore(path.read_bytes())
    if not isinstance(tree, dict):
        raise ValueError(f"holds a {type(tree).__name__}, not a tree of params")
    return {k: np.asarray(v) for k, v in _flatten(tree, "/").items()}


def _npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


READERS: dict[str, tuple[str, Callable[[Path], dict]]] = {
    ".pt": ("a PyTorch state_dict", _torch), ".pth": ("a PyTorch state_dict", _torch),
    ".bin": ("a PyTorch state_dict", _torch),
    ".safetensors": ("safetensors", _safetensors),
    ".h5": ("a Keras .weights.h5", _keras_h5),
    ".msgpack": ("flax msgpack params", _flax_msgpack),
    ".npz": ("a NumPy .npz", _npz),
}


def _hf_files(folder: Path, prefix: str) -> list[Path]:
    """The weight files of an HF checkpoint folder that hold keys under ``prefix``."""
    index = folder / HF_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({f for key, f in weight_map.items() if key.startswith(prefix)})
        return [folder / f for f in files] or [folder / sorted(set(weight_map.values()))[0]]
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise ValueError(f"holds none of {', '.join(HF_WEIGHT_FILES + (HF_INDEX,))}")


def read_tensors(path, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of a checkpoint file or HF folder, by key (``prefix`` picks an HF
    folder's shards); ValueError naming the file, the format and what went wrong."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    files = _hf_files(path, prefix) if path.is_dir() else [path]
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        suffix = file.suffix.lower()
        if suffix not in READERS:
            raise ValueError(f"{file}: unknown checkpoint format {suffix or '(no suffix)'!r} "
                             f"(one of {', '.join(READERS)}, or an HF checkpoint folder)")
        what, reader = READERS[suffix]
        try:
            tensors.update(reader(file))
        except ValueError as exc:
            raise ValueError(f"{file}: cannot read it as {what}: {exc}") from None
        except Exception as exc:
            raise ValueError(f"{file}: cannot read it as {what}: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return tensors


# ---------------------------------------------------------------------------------------
# The spec of an HF checkpoint folder, from its config.json.

def _rope_theta(config: dict, where: str) -> float:
    parameters = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{where}: rope_parameters.rope_type {kind!r} scales RoPE's frequencies, "
                         f"which the spec does not have (only plain 'default' RoPE)")
    theta = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    return float(theta)


def hf_spec_fields(folder) -> dict:
    """AttentionSpec fields from an HF checkpoint folder's config.json (Llama-like models:
    causal bottom-right, half-style RoPE over ``partial_rotary_factor`` of each head)."""
    where = f"{Path(folder) / CONFIG}"
    try:
        config = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: cannot read it: {exc}") from None
    model_type = config.get("model_type")
    if model_type not in LLAMA_LIKE:
        raise ValueError(f"{where}: model_type {model_type!r} is not one whose attention this "
                         f"reads ({', '.join(LLAMA_LIKE)}); give --layout and --spec instead")
    for field in ("hidden_size", "num_attention_heads"):
        if not isinstance(config.get(field), int):
            raise ValueError(f"{where}: {field} missing or not an int (got {config.get(field)!r})")
    if config.get("sliding_window") is not None:
        raise ValueError(f"{where}: sliding_window {config['sliding_window']!r} is not read; "
                         f"give --spec with the window instead")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = {"style": "half", "theta": _rope_theta(config, where)}
    factor = config.get("partial_rotary_factor", 1.0)
    if factor != 1.0:
        rope["rotary_dim"] = int(head_dim * factor)
    return {"d_model": config["hidden_size"], "num_heads": heads,
            "num_kv_heads": config.get("num_key_value_heads") or heads, "head_dim": head_dim,
            "bias": bool(config.get("attention_bias", False)), "causal": "bottom_right",
            "rope": rope}


def has_meta_params(checkpoint) -> bool:
    """A file with Meta's ``params.json`` beside it (a ``consolidated.*.pth``)."""
    path = Path(checkpoint)
    return path.is_file() and (path.parent / META_PARAMS).is_file()


def meta_spec_fields(checkpoint) -> dict:
    """AttentionSpec fields from the ``params.json`` beside a Meta checkpoint (``dim``,
    ``n_heads``, ``n_kv_heads``, ``rope_theta``; causal bottom-right, interleaved RoPE), or
    {} when there is none."""
    path = Path(checkpoint).parent / META_PARAMS
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it: {exc}") from None
    for field in ("dim", "n_heads"):
        if not isinstance(params.get(field), int):
            raise ValueError(f"{path}: {field} missing or not an int (got {params.get(field)!r})")
    if params.get("use_scaled_rope"):
        raise ValueError(f"{path}: use_scaled_rope scales RoPE's frequencies, which the spec "
                         f"does not have (only plain RoPE)")
    return {"d_model": params["dim"], "num_heads": params["n_heads"],
            "num_kv_heads": params.get("n_kv_heads") or params["n_heads"], "bias": False,
            "causal": "bottom_right",
            "rope": {"style": "interleaved", "theta": float(params.get("rope_theta", 10000.0))}}
