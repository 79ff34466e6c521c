"""The key layouts of one attention layer in a checkpoint, and their way to canonical weights
(``attnsuite port``; the conversions themselves are ``attnsuite.impls.convert``'s).

| layout | keys under the prefix | RoPE layout of wq/wk | ``--layer N`` prefix |
|---|---|---|---|
| ``hf-llama`` | ``{q,k,v,o}_proj.{weight,bias}``, torch (out, in) | half | ``model.layers.N.self_attn.`` |
| ``meta-llama`` | ``{wq,wk,wv,wo}.weight`` (Meta's ``consolidated.*.pth``) | interleaved | ``layers.N.attention.`` |
| ``hf-bert`` | ``self.{query,key,value}``, ``output.dense`` | (none) | ``bert.encoder.layer.N.attention.`` |
| ``torch-mha`` | ``nn.MultiheadAttention``: ``in_proj_weight`` (or ``q/k/v_proj_weight``), ``out_proj.weight``, ... | (none) | |
| ``keras`` | a ``.weights.h5``'s ``{query,key,value,output}_dense/vars/{0,1}`` | (none) | |
| ``flax`` | ``{query,key,value,out}/{kernel,bias}`` | (none) | |
| ``canonical`` | ``wq, wk, wv, wo[, bq, bk, bv, bo]`` | (the spec's) | |

A layout with a RoPE layout fixes the spec's ``rope.style`` for its weights: Meta's
checkpoints rotate interleaved pairs, HF's the two halves (HF's conversion script permutes
``wq``/``wk`` between them; ``attnsuite.impls.convert.rope``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from attnsuite.impls.convert import transformers as hf
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import weight_shapes

META = {"q": "wq", "k": "wk", "v": "wv", "o": "wo"}
KERAS_SUBLAYERS = {"q": "query", "k": "key", "v": "value", "o": "output"}
KERAS_VARS = {"w": "0", "b": "1"}       # a Keras 3 .weights.h5 numbers a Dense's variables
FLAX_LAYERS = {"q": "query", "k": "key", "v": "value", "o": "out"}
FLAX_LEAVES = {"w": "kernel", "b": "bias"}
IGNORED_SUFFIXES = ("inv_freq",)        # RoPE caches some checkpoints keep beside the weights


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    key: Callable[[str], str]                     # canonical name -> its key in the layer
    to_canonical: Callable[[AttentionSpec, dict], dict]
    canonical_shape: Callable[[str, tuple], tuple]  # canonical name, stored shape -> its shape
    rope_style: str | None = None
    layer_prefix: str | None = None               # with {N} for --layer
    self_attention: bool = False                  # keys, values and output are d_model wide
    variant: Callable[[dict], "Layout | None"] | None = None   # another key set, by the keys there

    def for_layer(self, layer: dict) -> "Layout":
        """This layout, or its variant that the layer's keys are in."""
        return (self.variant(layer) if self.variant else None) or self


def _linear_key(table: dict[str, str]) -> Callable[[str], str]:
    return lambda name: f"{table[name[1]]}.{'weight' if name[0] == 'w' else 'bias'}"


def _transposed(name: str, shape: tuple) -> tuple:
    return shape[::-1] if name[0] == "w" else shape


def _heads_merged(name: str, shape: tuple) -> tuple:
    """(E, H, d) -> (E, H*d); the output's (H, d, E_o) -> (H*d, E_o); (H, d) -> (H*d,)."""
    if len(shape) == 3:
        return (shape[0], shape[1] * shape[2]) if name != "wo" else (shape[0] * shape[1], shape[2])
    return (shape[0] * shape[1],) if len(shape) == 2 else shape


def _linear(table):
    return lambda spec, state: hf.from_state_dict(spec, state, table)


def _keras(spec, state):
    from attnsuite.impls.convert.keras import SUBLAYERS, keras_to_canonical

    named = {f"{SUBLAYERS[n[1]]}/{'kernel' if n[0] == 'w' else 'bias'}": state[_keras_key(n)]
             for n in weight_shapes(spec)}
    return keras_to_canonical(spec, named)


def _keras_key(name: str) -> str:
    return f"{KERAS_SUBLAYERS[name[1]]}_dense/vars/{KERAS_VARS[name[0]]}"


def _flax(spec, state):
    from attnsuite.impls.convert.flax import from_linen

    tree: dict = {}
    for key, value in state.items():
        layer, _, leaf = key.partition("/")
        tree.setdefault(layer, {})[leaf] = value
    return from_linen(spec, tree)


def _mha_key(name: str) -> str:
    return {"w": "in_proj_weight", "b": "in_proj_bias"}[name[0]] if name[1] != "o" else \
        f"out_proj.{'weight' if name[0] == 'w' else 'bias'}"


def _mha(spec, state):
    from attnsuite.impls.convert.torch import mha_to_canonical, to_numpy

    return to_numpy(mha_to_canonical(spec, state))


def _mha_separate_key(name: str) -> str:
    """nn.MultiheadAttention with kdim or vdim: q/k/v_proj_weight apart, biases still stacked."""
    return f"{name[1]}_proj_weight" if name[0] == "w" and name[1] != "o" else _mha_key(name)


def _mha_separate_shape(name: str, shape: tuple) -> tuple:
    return _transposed(name, shape) if name[0] == "w" else _mha_shape(name, shape)


MHA_SEPARATE = Layout("torch-mha", _mha_separate_key, _mha, _mha_separate_shape)


def _mha_shape(name: str, shape: tuple) -> tuple:
    if name[1] != "o" and name[0] == "w":    # in_proj_weight (3E, E): q, k, v stacked
        return (shape[1], shape[0] // 3)
    if name[1] != "o":
        return (shape[0] // 3,)
    return _transposed(name, shape)


LAYOUTS = {
    "hf-llama": Layout("hf-llama", _linear_key(hf.LLAMA), _linear(hf.LLAMA), _transposed,
                       "half", "model.layers.{N}.self_attn.", True),
    "meta-llama": Layout("meta-llama", _linear_key(META), _linear(META), _transposed,
                         "interleaved", "layers.{N}.attention.", True),
    "hf-bert": Layout("hf-bert", _linear_key(hf.BERT), _linear(hf.BERT), _transposed,
                      None, "bert.encoder.layer.{N}.attention.", True),
    "torch-mha": Layout("torch-mha", _mha_key, _mha, _mha_shape,
                        variant=lambda layer: MHA_SEPARATE if "q_proj_weight" in layer else None),
    "keras": Layout("keras", _keras_key, _keras, _heads_merged),
    "flax": Layout("flax", lambda n: f"{FLAX_LAYERS[n[1]]}/{FLAX_LEAVES[n[0]]}", _flax, _heads_merged),
    "canonical": Layout("canonical", lambda n: n, lambda spec, state: dict(state), lambda n, s: s),
}
NAMES = ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")


def layer_prefix(layout: Layout, layer: int) -> str:
    if layout.layer_prefix is None:
        raise ValueError(f"--layer: layout {layout.name} has no standard key prefix; "
                         f"give --prefix instead")
    return layout.layer_prefix.format(N=layer)


def layer_tensors(tensors: dict, prefix: str, where: str) -> dict:
    """The entries under ``prefix``, the prefix taken off; ValueError when there are none."""
    layer = {k[len(prefix):]: v for k, v in tensors.items()
             if k.startswith(prefix) and not k.endswith(IGNORED_SUFFIXES)}
    if not layer:
        sample = ", ".join(sorted(tensors)[:4]) or "(none)"
        raise ValueError(f"{where}: no key starts with {prefix!r} (its keys begin: {sample}, ...)")
    return layer


def canonical_shapes(layout: Layout, layer: dict) -> dict[str, tuple]:
    """The canonical name -> shape of every weight whose key the layer holds."""
    return {name: layout.canonical_shape(name, tuple(np.shape(layer[layout.key(name)])))
            for name in NAMES if layout.key(name) in layer}


def check_weights_present(layout: Layout, layer: dict, prefix: str, where: str) -> None:
    """wq, wk, wv and wo are there (the spec is read off their shapes)."""
    for name in ("wq", "wk", "wv", "wo"):
        if layout.key(name) not in layer:
            raise ValueError(f"{where}: missing key {prefix + layout.key(name)!r} "
                             f"(layout {layout.name})")


def check_self_attention(layout: Layout, spec: AttentionSpec, layer: dict, prefix: str,
                         where: str) -> None:
    """A layout of a self-attention layer (Llama, BERT) has d_model-wide keys, values and
    output: a stored shape that says otherwise is named, with the shape it should have."""
    if not layout.self_attention:
        return
    plain = weight_shapes(spec.replace(kdim=None, vdim=None, out_dim=None))
    for name in NAMES:
        key = layout.key(name)
        if key in layer and name in plain:
            got = tuple(np.shape(layer[key]))
            expected = layout.canonical_shape(name, plain[name])   # a transpose: its own inverse
            if got != expected:
                raise ValueError(f"{where}: {prefix + key}: shape {got}, expected {expected} for "
                                 f"d_model={spec.E} (layout {layout.name})")


def check_keys(layout: Layout, spec: AttentionSpec, layer: dict, prefix: str, where: str) -> None:
    """Every key the spec needs is there, and no key of the layer is left unread."""
    wanted = {layout.key(name) for name in weight_shapes(spec)}
    missing = sorted(wanted - set(layer))
    if missing:
        raise ValueError(f"{where}: missing key {prefix + missing[0]!r} (layout {layout.name}, "
                         f"for {spec})")
    unread = sorted(set(layer) - wanted)
    if unread:
        raise ValueError(f"{where}: key {prefix + unread[0]!r} is not read by layout "
                         f"{layout.name} for {spec} (a bias where the spec has bias=False, "
                         f"or another layout or prefix?)")


def to_canonical(layout: Layout, spec: AttentionSpec, layer: dict, prefix: str, where: str) -> dict:
    """The layer's tensors -> canonical float64 weights; ValueError naming the key."""
    check_keys(layout, spec, layer, prefix, where)
    try:
        weights = layout.to_canonical(spec, layer)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{where}: {str(exc).strip(chr(39))} (keys under {prefix!r})") from None
    return {name: np.asarray(w, dtype=np.float64) for name, w in weights.items()}
