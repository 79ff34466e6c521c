"""Every implementation the suite knows by name, and plug-in resolution (SPEC section 5).

A name is either one the suite registers itself (``torch.fused``, ``numpy.oracle``, ...)
or a plug-in written ``FRAMEWORK:module.path:factory``. Resolution imports nothing
until asked, so listing works with no framework installed.

A plug-in's module is found in the current directory, as with ``python -m``, but without
letting that directory shadow anything: only the plug-in's own top-level module or
package is taken from there (unless the standard library has that name), and the
directory joins the import path last, for the plug-in's own helper modules. A ``json.py``
or an ``impls/`` beside the user's plug-in stays out of the way.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from typing import Callable

from attnsuite.impls.backends import FRAMEWORKS, framework_status
from attnsuite.impls.broken import BROKEN
from attnsuite.impls.entry import Entry
from attnsuite.impls.errors import PluginError
from attnsuite.impls.kernels import KERNELS


def _e(name, framework, target, description, kind="ours", **env):
    return Entry(name, framework, target, description, kind, tuple(sorted(env.items())))


REGISTRY: tuple[Entry, ...] = (
    _e("numpy.oracle", "numpy", "attnsuite.impls.oracle:factory", "the float64 NumPy oracle", "oracle"),
    # Ours: an explicit path that reads like the math, and a fused path on the fastest kernel.
    _e("torch.explicit", "torch", "attnsuite.impls.ours.torch:explicit", "ours, explicit math"),
    _e("torch.fused", "torch", "attnsuite.impls.ours.torch:fused", "ours, on scaled_dot_product_attention"),
    _e("tensorflow.explicit", "tensorflow", "attnsuite.impls.ours.tensorflow:explicit", "ours, explicit math",
       KERAS_BACKEND="tensorflow"),
    _e("tensorflow.fused", "tensorflow", "attnsuite.impls.ours.tensorflow:fused", "ours, on keras.ops.dot_product_attention",
       KERAS_BACKEND="tensorflow"),
    _e("jax.explicit", "jax", "attnsuite.impls.ours.jax:explicit", "ours, explicit math"),
    _e("jax.fused", "jax", "attnsuite.impls.ours.jax:fused", "ours, on jax.nn.dot_product_attention"),
    # Each framework's built-in layers, with their real semantics.
    _e("torch.nn.MultiheadAttention", "torch", "attnsuite.impls.builtin.torch:multihead_attention",
       "torch.nn.MultiheadAttention", "builtin"),
    _e("torch.sdpa", "torch", "attnsuite.impls.builtin.torch:sdpa",
       "canonical projections + F.scaled_dot_product_attention", "builtin"),
    _e("keras.tensorflow.MultiHeadAttention", "tensorflow", "attnsuite.impls.builtin.keras:multi_head_attention",
       "keras.layers.MultiHeadAttention, TensorFlow backend", "builtin", KERAS_BACKEND="tensorflow"),
    _e("keras.jax.MultiHeadAttention", "jax", "attnsuite.impls.builtin.keras:multi_head_attention",
       "keras.layers.MultiHeadAttention, JAX backend", "builtin", KERAS_BACKEND="jax"),
    _e("keras.torch.MultiHeadAttention", "torch", "attnsuite.impls.builtin.keras:multi_head_attention",
       "keras.layers.MultiHeadAttention, PyTorch backend", "builtin", KERAS_BACKEND="torch"),
    _e("jax.nn.dot_product_attention", "jax", "attnsuite.impls.builtin.jax:dot_product_attention",
       "canonical projections + jax.nn.dot_product_attention", "builtin"),
    _e("jax.nn.dot_product_attention.cudnn", "jax", "attnsuite.impls.builtin.jax:dot_product_attention_cudnn",
       'canonical projections + jax.nn.dot_product_attention(implementation="cudnn"), GPU only',
       "builtin"),
    _e("flax.linen.MultiHeadDotProductAttention", "jax", "attnsuite.impls.builtin.flax:linen_mha",
       "flax.linen.MultiHeadDotProductAttention", "builtin"),
    _e("flax.nnx.MultiHeadAttention", "jax", "attnsuite.impls.builtin.flax:nnx_mha",
       "flax.nnx.MultiHeadAttention", "builtin"),
    # The ecosystem's layers (pip install 'attnsuite[ecosystem]'; absent: unsupported, with why).
    _e("equinox.nn.MultiheadAttention", "jax", "attnsuite.impls.builtin.equinox:multihead_attention",
       "equinox.nn.MultiheadAttention, vmapped over the batch", "builtin"),
    _e("haiku.MultiHeadAttention", "jax", "attnsuite.impls.builtin.haiku:multi_head_attention",
       "haiku's hk.MultiHeadAttention under hk.transform", "builtin"),
    _e("transformers.BertSelfAttention.eager", "torch", "attnsuite.impls.builtin.transformers:bert_self_attention_eager",
       'HF BertSelfAttention + BertSelfOutput.dense, attn_implementation="eager"; self form', "builtin"),
    _e("transformers.BertSelfAttention.sdpa", "torch", "attnsuite.impls.builtin.transformers:bert_self_attention_sdpa",
       'HF BertSelfAttention + BertSelfOutput.dense, attn_implementation="sdpa"; self form', "builtin"),
    _e("transformers.LlamaAttention.eager", "torch", "attnsuite.impls.builtin.transformers:llama_attention_eager",
       'HF LlamaAttention (its RoPE for a half-style spec), attn_implementation="eager"; self form', "builtin"),
    _e("transformers.LlamaAttention.sdpa", "torch", "attnsuite.impls.builtin.transformers:llama_attention_sdpa",
       'HF LlamaAttention (its RoPE for a half-style spec), attn_implementation="sdpa"; self form', "builtin"),
)


def all_entries(include_broken: bool = False, include_kernels: bool = False) -> list[Entry]:
    """The registry, plus the broken catalog (``attnsuite.impls.broken``) and the attention cores
    of the kernel benchmark (``attnsuite.impls.kernels``) when asked."""
    entries = list(REGISTRY)
    if include_broken:
        entries += list(BROKEN)
    if include_kernels:
        entries += list(KERNELS)
    return entries


def find_entry(name: str) -> Entry:
    """The Entry for a registered name or a ``FRAMEWORK:module.path:factory`` plug-in."""
    if ":" in name:
        return parse_plugin(name)
    for entry in all_entries(include_broken=name.startswith("broken."),
                             include_kernels=name.startswith("core.")):
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in REGISTRY)
    raise PluginError(f"{name!r}: no implementation of that name (known: {known}; "
                      f"or write FRAMEWORK:module.path:factory)")


def parse_plugin(name: str) -> Entry:
    parts = name.split(":")
    if len(parts) != 3 or not all(parts):
        raise PluginError(f"{name!r}: a plug-in is written FRAMEWORK:module.path:factory")
    framework, module, attr = parts
    if framework not in FRAMEWORKS:
        raise PluginError(f"{name!r}: unknown framework {framework!r} (one of {', '.join(FRAMEWORKS)})")
    return Entry(name, framework, f"{module}:{attr}", f"plug-in {module}:{attr}", "plugin")


def load_factory(entry: Entry) -> Callable:
    """Import the entry's factory; every failure is a one-line PluginError."""
    available, reason = framework_status(entry.framework)
    if not available:
        raise PluginError(f"{entry.name}: framework {entry.framework!r} is not available: {reason}")
    module_name, attr = entry.target.split(":")
    try:
        module = _import(module_name)
    except Exception as exc:  # the module's own error, whatever it is
        raise PluginError(f"{entry.name}: module {module_name!r} does not import: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise PluginError(f"{entry.name}: module {module_name!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise PluginError(f"{entry.name}: {entry.target} is a {type(factory).__name__}, not a callable factory")
    return factory


def _import(module_name: str):
    """Import a plug-in's module, its top-level package from the current directory if it
    is there (see the module docstring)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    top = module_name.partition(".")[0]
    if top not in sys.modules and top not in sys.stdlib_module_names:
        spec = importlib.machinery.PathFinder.find_spec(top, [here])
        if spec is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(module_name)


def resolve(name: str) -> tuple[Entry, Callable]:
    entry = find_entry(name)
    return entry, load_factory(entry)
