"""`AttentionSpec`: the configuration of one multi-head attention layer (SPEC section 1).

The fields hold what the user wrote (``None`` where a default applies); the resolved
sizes are the properties named as in the spec's notation: ``E``, ``E_k``, ``E_v``,
``H``, ``H_kv``, ``d_k``, ``d_v``, ``E_o``, ``logit_scale`` and ``group_size``.
Every invalid combination raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")
ROPE_STYLES = ("half", "interleaved")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(field: str, message: str, value: Any) -> None:
    raise ValueError(f"AttentionSpec.{field}: {message} (got {value!r})")


@dataclasses.dataclass(frozen=True)
class RoPE:
    """Rotary position embedding (SPEC 2): the first ``rotary_dim`` features of each query
    and key head rotated, pairwise, by angle position * theta ** (-2m / rotary_dim).

    style: "half" pairs feature m with m + rotary_dim/2 (GPT-NeoX, HF Llama);
        "interleaved" pairs 2m with 2m + 1 (GPT-J, Meta's original Llama checkpoints).
    rotary_dim: None for the whole head (d_k).
    """
    style: str
    theta: float = 10000.0
    rotary_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default}


def _rope(value: Any, d_k: int) -> RoPE | None:
    """``value`` (None, a RoPE or a mapping of its fields) validated against the head size."""
    if value is None:
        return None
    if isinstance(value, RoPE):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        _fail("rope", "must be None or a mapping {style, theta, rotary_dim}", value)
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(RoPE)})
    if unknown:
        _fail("rope", f"unknown key(s) {unknown}; the keys are style, theta, rotary_dim", value)
    if value.get("style") not in ROPE_STYLES:
        _fail("rope", f"'style' must be one of {ROPE_STYLES}", value)
    theta = value.get("theta", 10000.0)
    if not _is_real(theta) or not math.isfinite(theta) or theta <= 0:
        _fail("rope", "'theta' must be a finite number > 0", value)
    rotary_dim = value.get("rotary_dim")
    width = d_k if rotary_dim is None else rotary_dim
    if not _is_int(width) or width <= 0 or width % 2 or width > d_k:
        what = f"'rotary_dim' (default d_k={d_k})" if rotary_dim is None else "'rotary_dim'"
        _fail("rope", f"{what} must be an even int in [2, d_k={d_k}]", value)
    return RoPE(value["style"], float(theta), rotary_dim)


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    d_model: int
    num_heads: int
    kdim: int | None = None
    vdim: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    value_head_dim: int | None = None
    out_dim: int | None = None
    bias: bool = True
    scale: float | None = None
    causal: str | None = None
    window: tuple[int, int] | None = None
    softcap: float | None = None
    dropout: float = 0.0
    rope: RoPE | Mapping | None = None

    def __post_init__(self) -> None:
        for field in ("d_model", "num_heads"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                _fail(field, "must be a positive int", value)
        for field in ("kdim", "vdim", "num_kv_heads", "head_dim", "value_head_dim", "out_dim"):
            value = getattr(self, field)
            if value is not None and (not _is_int(value) or value <= 0):
                _fail(field, "must be None or a positive int", value)
        if self.head_dim is None and self.d_model % self.num_heads:
            _fail("head_dim", f"left out, so d_model={self.d_model} must be divisible by "
                  f"num_heads={self.num_heads}", self.head_dim)
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            _fail("num_kv_heads", f"must divide num_heads={self.num_heads}", self.num_kv_heads)
        if not isinstance(self.bias, bool):
            _fail("bias", "must be True or False", self.bias)
        if self.scale is not None and (not _is_real(self.scale) or not math.isfinite(self.scale)
                                       or self.scale <= 0):
            _fail("scale", "must be None or a finite number > 0", self.scale)
        if self.causal is not None and self.causal not in CAUSAL_ALIGNMENTS:
            _fail("causal", f"must be None or one of {CAUSAL_ALIGNMENTS}", self.causal)
        if self.window is not None:
            window = self.window
            if (not isinstance(window, (tuple, list)) or len(window) != 2
                    or not all(_is_int(w) and w >= 0 for w in window)):
                _fail("window", "must be None or a pair (left, right) of ints >= 0", window)
            object.__setattr__(self, "window", tuple(window))
        if self.softcap is not None and (not _is_real(self.softcap)
                                         or not math.isfinite(self.softcap) or self.softcap <= 0):
            _fail("softcap", "must be None or a finite number > 0", self.softcap)
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            _fail("dropout", "must be a number in [0, 1)", self.dropout)
        object.__setattr__(self, "rope", _rope(self.rope, self.d_k))

    # Resolved sizes, in the spec's notation.
    @property
    def E(self) -> int:
        return self.d_model

    @property
    def E_k(self) -> int:
        return self.kdim if self.kdim is not None else self.d_model

    @property
    def E_v(self) -> int:
        return self.vdim if self.vdim is not None else self.d_model

    @property
    def H(self) -> int:
        return self.num_heads

    @property
    def H_kv(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def group_size(self) -> int:
        """Consecutive query heads that share one key/value head."""
        return self.H // self.H_kv

    @property
    def d_k(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

    @property
    def d_v(self) -> int:
        return self.value_head_dim if self.value_head_dim is not None else self.d_k

    @property
    def E_o(self) -> int:
        return self.out_dim if self.out_dim is not None else self.d_model

    @property
    def logit_scale(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.d_k)

    @property
    def rotary_dim(self) -> int:
        """Features of each query/key head that RoPE rotates (0 without RoPE)."""
        if self.rope is None:
            return 0
        return self.rope.rotary_dim if self.rope.rotary_dim is not None else self.d_k

    @property
    def is_cross(self) -> bool:
        return self.kdim is not None or self.vdim is not None

    def replace(self, **changes: Any) -> "AttentionSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what a user would write)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                if isinstance(value, tuple):
                    value = list(value)
                elif isinstance(value, RoPE):
                    value = value.to_dict()
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttentionSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AttentionSpec: unknown field(s) {unknown}")
        data = dict(data)
        if isinstance(data.get("window"), list):
            data["window"] = tuple(data["window"])
        return cls(**data)

    def __str__(self) -> str:
        return "AttentionSpec(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"
