"""A tiny randomly initialised HF Llama saved locally (nothing is downloaded), and two ports of
its first attention layer for ``attnsuite port``: Meta's original layout, and a wrong one.

    python examples/tiny_llama.py OUT_DIR

writes
- ``OUT_DIR/tiny-llama/``: ``save_pretrained`` of a 2-layer Llama (hidden 32, 4 heads, 2 key/value
  heads, head_dim 8), ``config.json`` + ``model.safetensors``;
- ``OUT_DIR/tiny-llama-meta/``: layer 0's attention as Meta's checkpoints hold it
  (``consolidated.00.pth`` with ``layers.0.attention.wq.weight`` ..., wq/wk in the interleaved
  RoPE layout, and ``params.json``);
- ``OUT_DIR/tiny-llama-unpermuted/``: an HF folder made from that Meta checkpoint by renaming
  the keys only, forgetting the wq/wk permutation that HF's conversion script does.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from attnsuite.impls.convert.rope import half_to_interleaved
from attnsuite.impls.convert.transformers import LLAMA, from_state_dict, submodule
from attnsuite.impls.spec import AttentionSpec

CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              # Larger than Llama's 0.02, so that the attention weights are far from uniform
              # and a wrong RoPE shows well above float32 rounding.
              initializer_range=0.2)
HF_LAYER = "model.layers.0.self_attn"
META_LAYER = "layers.0.attention"
META_NAMES = {"q": "wq", "k": "wk", "v": "wv", "o": "wo"}


def save_tiny_llama(folder, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(folder)
    return Path(folder)


def layer0_meta(hf_folder) -> dict:
    """Layer 0's canonical weights, permuted into Meta's interleaved RoPE layout."""
    c = CONFIG
    spec = AttentionSpec(c["hidden_size"], c["num_attention_heads"],
                         num_kv_heads=c["num_key_value_heads"], bias=False, rope={"style": "half"})
    state = load_file(str(Path(hf_folder) / "model.safetensors"))
    return half_to_interleaved(from_state_dict(spec, submodule(state, HF_LAYER), LLAMA), spec)


def _torch_weights(weights: dict, prefix: str, names: dict) -> dict:
    """Canonical (in, out) -> torch (out, in) weights under ``prefix.<name>.weight``."""
    return {f"{prefix}.{names[n[1]]}.weight": torch.tensor(weights[n].T.copy())
            for n in ("wq", "wk", "wv", "wo")}


def save_meta(hf_folder, folder) -> Path:
    """Meta's layout: ``consolidated.00.pth`` and ``params.json``; returns the checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = CONFIG
    params = {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"],
              "n_heads": c["num_attention_heads"], "n_kv_heads": c["num_key_value_heads"],
              "vocab_size": c["vocab_size"], "norm_eps": 1e-6, "rope_theta": 10000.0}
    (folder / "params.json").write_text(json.dumps(params, indent=2))
    torch.save(_torch_weights(layer0_meta(hf_folder), META_LAYER, META_NAMES),
               folder / "consolidated.00.pth")
    return folder / "consolidated.00.pth"


def save_unpermuted(hf_folder, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(hf_folder) / "config.json", folder / "config.json")
    save_file(_torch_weights(layer0_meta(hf_folder), HF_LAYER, LLAMA), str(folder / "model.safetensors"))
    return folder


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    hf = save_tiny_llama(out / "tiny-llama")
    meta = save_meta(hf, out / "tiny-llama-meta")
    save_unpermuted(hf, out / "tiny-llama-unpermuted")
    print(f"wrote {hf}, {meta}, {out / 'tiny-llama-unpermuted'}")
