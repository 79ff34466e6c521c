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

import io
import json
import zipfile
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


# Limits on what a file may make the suite read, checked before any array is loaded.
SPEC_MAX_BYTES = 64 * 2**10
# An archive may expand this much in all without question; beyond it, only when it is not
# compressed more than ``MAX_COMPRESSION`` times (trained weights hardly compress at all,
# a zip bomb compresses a thousandfold).
ARCHIVE_FREE_BYTES = 256 * 2**20
MAX_COMPRESSION = 50
SIZE_FIELDS = ("d_model", "num_heads", "kdim", "vdim", "num_kv_heads", "head_dim",
               "value_head_dim", "out_dim")


def _spec_fields(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the {SPEC_KEY!r} entry is not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise ValueError(f"the {SPEC_KEY!r} entry must be a JSON object of spec fields, "
                         f"got {type(fields).__name__}")
    for name in SIZE_FIELDS:
        value = fields.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"spec.{name}: must be a positive int (got {value!r})")
    return fields


def _check_dtype(name: str, dtype) -> None:
    if np.dtype(dtype).kind not in "fiu":
        raise ValueError(f"weights[{name!r}]: dtype {dtype} is not a real number type")


class _Archive:
    """A ``.npz`` read member by member: headers (shape, dtype) first, each member's declared
    size checked against what its header says and the archive's total against its size on
    disk, so that no array is loaded before the spec's shapes are known to fit."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.members = {info.filename.removesuffix(".npy"): info for info in self.zip.infolist()}
        total = sum(info.file_size for info in self.members.values())
        packed = max(path.stat().st_size, 1)
        if total > ARCHIVE_FREE_BYTES and total > MAX_COMPRESSION * packed:
            raise ValueError(f"its members declare {total} bytes uncompressed from {packed} on "
                             f"disk (over {MAX_COMPRESSION}x): refused as a zip bomb")

    def spec_text(self) -> str | None:
        info = self.members.get(SPEC_KEY)
        if info is None:
            return None
        if info.file_size > SPEC_MAX_BYTES:
            raise ValueError(f"the {SPEC_KEY!r} entry declares {info.file_size} bytes "
                             f"(at most {SPEC_MAX_BYTES})")
        data = self.zip.read(info)
        return str(np.lib.format.read_array(io.BytesIO(data), allow_pickle=False))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for name, info in self.members.items():
            if name == SPEC_KEY:
                continue
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                header = f.tell()
            _check_dtype(name, dtype)
            expected = header + int(np.prod(shape, dtype=object)) * dtype.itemsize
            if info.file_size != expected:
                raise ValueError(f"weights[{name!r}]: the archive declares {info.file_size} "
                                 f"bytes, its header says {expected}")
            shapes[name] = tuple(shape)
        return shapes

    def arrays(self, names) -> dict[str, np.ndarray]:
        with np.load(self.path, allow_pickle=False) as f:
            return {name: f[name] for name in names}

    def close(self) -> None:
        self.zip.close()


class _Safetensors:
    """A ``.safetensors`` file: shapes and dtypes from its header, tensors loaded on demand."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        self.file = safe_open(str(path), framework="numpy")
        self.handle = self.file.__enter__()

    def spec_text(self) -> str | None:
        return (self.handle.metadata() or {}).get(SPEC_KEY)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for name in self.handle.keys():
            piece = self.handle.get_slice(name)
            dtype = piece.get_dtype()
            if not dtype.upper().startswith(("F", "I", "U", "BF")):
                raise ValueError(f"weights[{name!r}]: dtype {dtype} is not a real number type")
            shapes[name] = tuple(piece.get_shape())
        return shapes

    def arrays(self, names) -> dict[str, np.ndarray]:
        return {name: self.handle.get_tensor(name) for name in names}

    def close(self) -> None:
        self.file.__exit__(None, None, None)


def infer_spec(fields: dict, shapes: dict[str, tuple[int, ...]]) -> AttentionSpec:
    """The spec's missing sizes, read off the weight shapes (see the module docstring)."""
    if "num_heads" not in fields:
        raise ValueError("the spec must give num_heads (the shapes only tell H * head_dim)")
    missing = [n for n in ("wq", "wk", "wv", "wo") if n not in shapes]
    if missing:
        raise ValueError(f"missing weights {missing}")
    for name in ("wq", "wk", "wv", "wo"):
        if len(shapes[name]) != 2:
            raise ValueError(f"weights[{name!r}]: expected a 2-D array, got shape {shapes[name]}")
    H = fields["num_heads"]
    (E, q_cols), (E_k, k_cols), (E_v, v_cols), (_, E_o) = (
        shapes[n] for n in ("wq", "wk", "wv", "wo"))
    d_k = fields.get("head_dim") or q_cols // H
    H_kv = fields.get("num_kv_heads") or max(1, k_cols // max(d_k, 1))
    inferred = {"d_model": E, "kdim": E_k, "vdim": E_v, "out_dim": E_o, "head_dim": d_k,
                "num_kv_heads": H_kv, "value_head_dim": v_cols // H_kv, "bias": "bq" in shapes}
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


def _check_finite(weights: dict[str, np.ndarray]) -> None:
    for name, w in weights.items():
        bad = ~np.isfinite(w)
        if bad.any():
            first = [int(i) for i in np.argwhere(bad)[0]]
            raise ValueError(f"weights[{name!r}]: {int(bad.sum())} of {w.size} values are NaN "
                             f"or Inf (the first at {first})")


def _read(path: Path) -> tuple[AttentionSpec, dict[str, np.ndarray]]:
    """Header, spec and shapes first; the arrays only once they are known to be the spec's."""
    source = _Safetensors(path) if path.suffix == ".safetensors" else _Archive(path)
    try:
        fields = _spec_fields(source.spec_text())
        if fields is None:
            raise ValueError(f"no {SPEC_KEY!r} entry; write the file with "
                             f"attnsuite.conformance.weights.save_weights(path, spec, weights)")
        shapes = source.shapes()
        spec = infer_spec(fields, shapes)
        # Names and shapes, before anything is loaded (broadcast views hold no memory).
        check_weights(spec, {name: np.broadcast_to(0.0, shape) for name, shape in shapes.items()})
        arrays = source.arrays(weight_shapes(spec))
    finally:
        source.close()
    weights = {name: np.asarray(a, dtype=np.float64) for name, a in arrays.items()}
    check_weights(spec, weights)
    _check_finite(weights)
    return spec, weights


def load_weights(path) -> tuple[AttentionSpec, dict[str, np.ndarray]]:
    """(spec, float64 weights) from a file; ValueError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--weights {path}: no such file")
    try:
        return _read(path)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"--weights {path}: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"--weights {path}: cannot read it as {path.suffix or 'npz'}: "
                         f"{type(exc).__name__}: {exc}") from exc
