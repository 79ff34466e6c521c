"""Trained weights for ``--weights``: a file of canonical weights plus the spec they serve.

Format: ``.npz`` (arrays under the canonical names ``wq, wk, wv, wo[, bq, bk, bv, bo]``
and a string array ``spec`` holding the spec as JSON) or ``.safetensors`` (the same
tensors, the spec JSON under the metadata key ``spec``). ``save_weights`` writes both.

The spec must give ``num_heads``; every size it leaves out is read off the shapes:
d_model, kdim and vdim from the rows of wq, wk, wv; head_dim = columns(wq) / H;
num_kv_heads = columns(wk) / head_dim; value_head_dim = columns(wv) / num_kv_heads;
out_dim from the columns of wo; bias from whether bq is present. Sizes the spec does
give must agree with the shapes. Causal, window, softcap, scale and dropout come from
the spec only (they are not in the shapes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights, weight_shapes

SPEC_KEY = "spec"


def save_weights(path, spec: AttentionSpec, weights: dict) -> None:
    check_weights(spec, weights)
    path = Path(path)
    arrays = {name: np.asarray(w) for name, w in weights.items()}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
                  metadata={SPEC_KEY: json.dumps(spec.to_dict())})
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays, **{SPEC_KEY: np.array(json.dumps(spec.to_dict()))})


def _read(path: Path) -> tuple[dict, dict | None]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
        text = metadata.get(SPEC_KEY)
    else:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        text = str(arrays.pop(SPEC_KEY)) if SPEC_KEY in arrays else None
    try:
        spec = None if text is None else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the {SPEC_KEY!r} entry is not JSON: {exc}") from exc
    return arrays, spec


def infer_spec(fields: dict, arrays: dict) -> AttentionSpec:
    """The spec's missing sizes, read off the weight shapes (see the module docstring)."""
    if "num_heads" not in fields:
        raise ValueError("the spec must give num_heads (the shapes only tell H * head_dim)")
    missing = [n for n in ("wq", "wk", "wv", "wo") if n not in arrays]
    if missing:
        raise ValueError(f"missing weights {missing}")
    H = fields["num_heads"]
    (E, q_cols), (E_k, k_cols), (E_v, v_cols), (_, E_o) = (
        np.shape(arrays[n]) for n in ("wq", "wk", "wv", "wo"))
    d_k = fields.get("head_dim") or q_cols // H
    H_kv = fields.get("num_kv_heads") or max(1, k_cols // max(d_k, 1))
    inferred = {"d_model": E, "kdim": E_k, "vdim": E_v, "out_dim": E_o, "head_dim": d_k,
                "num_kv_heads": H_kv, "value_head_dim": v_cols // H_kv, "bias": "bq" in arrays}
    data = dict(fields)
    for name, value in inferred.items():
        data.setdefault(name, value)
    # Keep defaults implicit, so the spec (and the case ids) read as the user would write them.
    spec = AttentionSpec.from_dict(data)
    plain = {"kdim": spec.E, "vdim": spec.E, "out_dim": spec.E, "num_kv_heads": spec.H,
             "head_dim": spec.E // spec.H if spec.E % spec.H == 0 else None,
             "value_head_dim": spec.d_k}
    changes = {n: None for n, default in plain.items()
               if n not in fields and getattr(spec, n) == default}
    return spec.replace(**changes)


def load_weights(path) -> tuple[AttentionSpec, dict[str, np.ndarray]]:
    """(spec, float64 weights) from a file; ValueError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--weights {path}: no such file")
    try:
        arrays, fields = _read(path)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"--weights {path}: cannot read it as {path.suffix or 'npz'}: {exc}") from exc
    if fields is None:
        raise ValueError(f"--weights {path}: no {SPEC_KEY!r} entry; write the file with "
                         f"attnsuite.conformance.weights.save_weights(path, spec, weights)")
    try:
        spec = infer_spec(fields, arrays)
        weights = {name: np.asarray(arrays[name], dtype=np.float64) for name in arrays}
        check_weights(spec, weights)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--weights {path}: {exc}") from exc
    return spec, {name: weights[name] for name in weight_shapes(spec)}
