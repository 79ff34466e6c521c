"""The case catalog: seeded, reproducible, and named by the features it combines.

A ``Case`` is one call of an implementation: a spec, the shapes, a dtype, the mask and
additive-bias kinds, a stress kind, and the checks to run on it. Its id spells the
feature combination, ONNX style (``gqa4_2-E16-causal_br-B2-Lq5-Lk9-mask_random-float32``),
and its seed is derived from the id, so a case id alone reproduces the inputs
(``attnsuite check IMPL --case ID``). Its tags name the features, so that a failure can
be attributed.

Profiles: ``quick`` (one implementation in seconds) is contained in ``default`` (every
feature in float32 and float64, the common ones in float16 and bfloat16 too) which is
contained in ``full`` (every recipe in every dtype it allows, plus larger shapes).
``case_strategy`` draws generated cases for hypothesis, shrinking towards the smallest
spec and shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Iterable

import numpy as np

from attnsuite.impls import init_weights
from attnsuite.conformance.case_ids import parse_case_id
from attnsuite.conformance.pairwise import covering_array
from attnsuite.impls.backends import DTYPES
from attnsuite.impls.calling import FORMS
from attnsuite.impls.oracle import rounding, structural_mask, visibility
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights

PROFILES = ("quick", "default", "full")
DEFAULT_PROFILE = "quick"        # what `attnsuite check` runs unless told
MASK_KINDS = ("none", "all_visible", "batch", "head", "key_padding", "random", "2d",
              "fully_masked_rows")
BIAS_KINDS = ("random", "alibi", "2d")
STRESS_KINDS = ("large_logits", "masked_huge_values")
NUMERIC = ("output", "grads")
BEHAVIOUR = ("stateless", "deterministic", "dropout", "contract", "decode")
BEHAVIOUR_TAGS = {"stateless": "stateless", "deterministic": "deterministic",
                  "dropout": "dropout_training", "contract": "contract", "decode": "decode"}

# A plain exp() overflows above log(max finite): the large-logit stress goes 1.5x past it.
OVERFLOW_LOGIT = {"float64": math.log(np.finfo(np.float64).max),
                  "float32": math.log(np.finfo(np.float32).max),
                  "float16": math.log(np.finfo(np.float16).max)}
# Values behind masked keys: large enough that any weight leaking onto them shows,
# small enough that the value projection stays finite in the dtype.
HUGE_VALUE = {"float64": 1e8, "float32": 1e6, "float16": 1e3, "bfloat16": 1e6}


def _number(x: float) -> str:
    return f"{x:g}"


def spec_tokens(spec: AttentionSpec) -> list[str]:
    """The id tokens of a spec: head layout and model size, then each non-default field."""
    s = spec
    if s.H == 1:
        layout = "h1"
    elif s.H_kv == 1:
        layout = f"mqa{s.H}"
    elif s.H_kv < s.H:
        layout = f"gqa{s.H}_{s.H_kv}"
    else:
        layout = f"mha{s.H}"
    tokens = [layout, f"E{s.E}"]
    if s.head_dim is not None and (s.head_dim != s.E // s.H or s.E % s.H):
        tokens.append(f"dk{s.d_k}")
    if s.d_v != s.d_k:
        tokens.append(f"dv{s.d_v}")
    if s.E_k != s.E:
        tokens.append(f"kdim{s.E_k}")
    if s.E_v != s.E:
        tokens.append(f"vdim{s.E_v}")
    if s.E_o != s.E:
        tokens.append(f"out{s.E_o}")
    if not s.bias:
        tokens.append("nobias")
    if s.scale is not None:
        tokens.append(f"scale{_number(s.scale)}")
    if s.causal:
        tokens.append({"top_left": "causal_tl", "bottom_right": "causal_br"}[s.causal])
    if s.window is not None:
        tokens.append(f"win{s.window[0]}_{s.window[1]}")
    if s.softcap is not None:
        tokens.append(f"softcap{_number(s.softcap)}")
    if s.dropout:
        tokens.append(f"dropout{_number(s.dropout)}")
    if s.rope is not None:
        tokens.append(f"rope_{s.rope.style}" + (f"{_number(s.rope.theta)}" if s.rope.theta != 10000.0 else "")
                      + (f"_r{s.rotary_dim}" if s.rotary_dim != s.d_k else ""))
    return tokens


def spec_tags(spec: AttentionSpec) -> list[str]:
    s = spec
    tags = []
    if s.H == 1:
        tags.append("one_head")
    elif s.H_kv == 1:
        tags.append("mqa")
    elif s.H_kv < s.H:
        tags.append("gqa")
        if s.group_size >= 3:
            tags.append("gqa_group3plus")
    else:
        tags.append("mha")
    if s.H >= 8:
        tags.append("many_heads")
    if s.d_v != s.d_k:
        tags.append("value_head_dim")
    if s.head_dim is not None and s.head_dim != s.E // s.H:
        tags.append("head_dim")
    if s.is_cross:
        tags.append("cross")
    if s.E_o != s.E:
        tags.append("out_dim")
    tags.append("proj_bias" if s.bias else "no_proj_bias")
    if s.scale is not None:
        tags.append("custom_scale")
    if s.causal:
        tags.append(f"causal_{s.causal}")
    if s.window is not None:
        tags.append("window")
    if s.softcap is not None:
        tags.append("softcap")
    if s.dropout:
        tags.append("dropout")
    if s.rope is not None:
        tags += ["rope", f"rope_{s.rope.style}"] + (["rope_partial"] if s.rotary_dim < s.d_k else [])
    return tags


@dataclasses.dataclass(frozen=True)
class Case:
    """One call: what it runs, on which shapes and dtype, and which checks judge it."""
    spec: AttentionSpec
    B: int
    L_q: int
    L_k: int
    dtype: str
    mask: str = "none"                    # one of MASK_KINDS
    bias: str | None = None               # additive bias: None or one of BIAS_KINDS
    seed: int = 0
    form: str = "qkv"                     # the call form (attnsuite.impls.calling.FORMS)
    stress: str | None = None             # None or one of STRESS_KINDS
    checks: tuple[str, ...] = NUMERIC     # NUMERIC or one of BEHAVIOUR
    generated: bool = False               # drawn by hypothesis (its seed joins the id)
    id: str = dataclasses.field(init=False, compare=False)
    tags: tuple[str, ...] = dataclasses.field(init=False, compare=False)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"Case.dtype: one of {DTYPES}, got {self.dtype!r}")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"Case.mask: one of {MASK_KINDS}, got {self.mask!r}")
        if self.bias is not None and self.bias not in BIAS_KINDS:
            raise ValueError(f"Case.bias: None or one of {BIAS_KINDS}, got {self.bias!r}")
        if self.stress is not None and self.stress not in STRESS_KINDS:
            raise ValueError(f"Case.stress: None or one of {STRESS_KINDS}, got {self.stress!r}")
        if self.form not in FORMS:
            raise ValueError(f"Case.form: one of {FORMS}, got {self.form!r}")
        if self.form == "self" and (self.spec.is_cross or self.L_q != self.L_k):
            raise ValueError("Case.form: 'self' needs E == kdim == vdim and L_q == L_k")
        if self.form == "self" and self.stress is not None:
            raise ValueError("Case.stress: the stress inputs need the query apart from key and value")
        if self.form == "kv" and self.spec.E_k != self.spec.E_v:
            raise ValueError("Case.form: 'kv' needs kdim == vdim (one tensor is key and value)")
        if self.stress == "masked_huge_values" and self.mask != "key_padding":
            raise ValueError("Case.stress: masked_huge_values needs mask='key_padding'")
        if self.checks != NUMERIC and (len(self.checks) != 1 or self.checks[0] not in BEHAVIOUR):
            raise ValueError(f"Case.checks: {NUMERIC} or one of {BEHAVIOUR}, got {self.checks!r}")
        object.__setattr__(self, "id", self._make_id())
        object.__setattr__(self, "tags", self._make_tags())

    def _make_id(self) -> str:
        tokens = (["gen"] if self.generated else []) + spec_tokens(self.spec)
        tokens += [f"B{self.B}", f"Lq{self.L_q}", f"Lk{self.L_k}"]
        if self.mask != "none":
            tokens.append(f"mask_{self.mask}")
        if self.bias:
            tokens.append(f"bias_{self.bias}")
        if self.stress:
            tokens.append(f"stress_{self.stress}")
        if self.form != "qkv":
            tokens.append(self.form)
        if self.checks != NUMERIC:
            tokens.append(self.checks[0])
        tokens.append(self.dtype)
        if self.generated:
            tokens.append(f"seed{self.seed}")
        return "-".join(tokens)

    @property
    def has_fully_masked_rows(self) -> bool:
        """Some query row sees no key (by the mask kind or by the causal/window rules)."""
        structural = structural_mask(self.spec, self.L_q, self.L_k)
        return self.mask == "fully_masked_rows" or not structural.any(axis=-1).all()

    def _make_tags(self) -> tuple[str, ...]:
        tags = spec_tags(self.spec)
        tags.append("batch1" if self.B == 1 else "batched")
        if 1 in (self.L_q, self.L_k):
            tags.append("length1")
        if self.L_q % 2 or self.L_k % 2:
            tags.append("odd_length")
        if self.L_q != self.L_k:
            tags.append("lq_lt_lk" if self.L_q < self.L_k else "lq_gt_lk")
        if max(self.L_q, self.L_k) > 256:
            tags.append("long")
        if self.L_k > 128 and self.L_k % 128:
            tags.append("long_keys")      # a last partial block of keys in 128-key tiles
        tags.append(f"mask_{self.mask}")
        if self.has_fully_masked_rows:
            tags.append("fully_masked")
        if self.bias:
            tags += ["bias", f"bias_{self.bias}"]
        if self.stress:
            tags.append(f"stress_{self.stress}")
        tags.append(f"form_{self.form}")
        if self.form == "self":
            tags.append("self_attention")
        if self.checks != NUMERIC:
            tags.append(BEHAVIOUR_TAGS[self.checks[0]])
        tags.append(self.dtype)
        return tuple(dict.fromkeys(tags))

    @property
    def self_attention(self) -> bool:
        return self.form == "self"

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)

    def in_form(self, form: str, seed: int = 0) -> "Case":
        """This case as a call in ``form``, for an implementation that takes only that form.

        "self": one tensor of the keys' length (L_q = L_k), key and value sized like the
        query; "kv": the value sized like the key, since one tensor is both. Everything
        else (spec fields, mask and bias kinds, checks, dtype; the stress, outside the self
        form) stays, and the case
        gets its own id and a seed derived from it (``seed`` as in ``catalog``).
        """
        if form == self.form:
            return self
        spec, L_q, stress = self.spec, self.L_q, self.stress
        if form == "self":   # the stresses need the query apart from key and value
            spec, L_q, stress = spec.replace(kdim=None, vdim=None), self.L_k, None
        elif form == "kv":
            spec = spec.replace(vdim=spec.kdim)
        moved = self.replace(spec=spec, L_q=L_q, form=form, stress=stress, seed=0)
        return moved if self.generated else moved.replace(seed=_catalog_seed(moved.id, seed))

    def describe(self) -> str:
        """Everything needed to rebuild the inputs, in one line."""
        return (f"{self.spec}; B={self.B} L_q={self.L_q} L_k={self.L_k} {self.dtype} "
                f"mask={self.mask} bias={self.bias or 'none'} stress={self.stress or 'none'} "
                f"form={self.form} seed={self.seed}")

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        data["spec"] = self.spec.to_dict()
        data["checks"] = list(self.checks)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Case":
        data = dict(data)
        data["spec"] = AttentionSpec.from_dict(data["spec"])
        data["checks"] = tuple(data["checks"])
        return cls(**data)

    def materialize(self, weights: dict | None = None) -> "CaseData":
        return materialize(self, weights)


# ---------------------------------------------------------------------------------------
# Inputs, generated from the seed and rounded to the case's dtype.

@dataclasses.dataclass
class CaseData:
    """The arrays of one case, float64 but already rounded to the case's dtype: the
    implementation and the oracle see exactly the same numbers."""
    case: Case
    weights: dict[str, np.ndarray]
    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    mask: np.ndarray | None
    bias: np.ndarray | None
    d_out: np.ndarray
    fully_masked: np.ndarray        # (B, L_q) bool: rows where no head sees any key


def _ensure_visible(mask: np.ndarray, structural: np.ndarray, rng) -> np.ndarray:
    """Unmask one structurally visible key in every row the mask would leave empty
    (``structural`` is broadcast to the mask's shape)."""
    mask = mask.copy()
    empty = ~(mask & structural).any(axis=-1) & structural.any(axis=-1)
    for index in map(tuple, np.argwhere(empty)):
        mask[index][rng.choice(np.flatnonzero(structural[index]))] = True
    return mask


def _make_mask(kind, B, H, L_q, L_k, structural, rng) -> np.ndarray | None:
    shapes = {"batch": (B, 1, L_q, L_k), "head": (1, H, L_q, L_k), "random": (B, H, L_q, L_k),
              "2d": (L_q, L_k), "fully_masked_rows": (B, 1, L_q, L_k)}
    if kind == "none":
        return None
    if kind == "all_visible":
        return np.ones((B, H, L_q, L_k), bool)
    if kind == "key_padding":
        # Trailing keys padded; a batch keeps more keys until no row loses its last one.
        mask = np.zeros((B, 1, 1, L_k), bool)
        for b in range(B):
            keep = int(rng.integers(max(1, L_k // 2), L_k)) if L_k > 1 else 1
            while not ((structural[:, :keep].any(-1)) | ~structural.any(-1)).all():
                keep += 1
            mask[b, 0, 0, :keep] = True
        return mask
    mask = _ensure_visible(rng.random(shapes[kind]) < 0.7, np.broadcast_to(
        structural, shapes[kind][:-2] + structural.shape), rng)
    if kind == "fully_masked_rows":
        for b in range(B):
            rows = rng.choice(L_q, size=max(1, L_q // 3), replace=False)
            mask[b, 0, rows, :] = False
    return mask


def _make_bias(kind, B, H, L_q, L_k, rng) -> np.ndarray | None:
    if kind is None:
        return None
    if kind == "random":
        return rng.standard_normal((B, H, L_q, L_k))
    if kind == "2d":
        return rng.standard_normal((L_q, L_k))
    # ALiBi: a per-head slope times the distance between the (bottom-right aligned) positions.
    slopes = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
    distance = np.abs(np.arange(L_q)[:, None] + (L_k - L_q) - np.arange(L_k)[None, :])
    return (-slopes[:, None, None] * distance)[None]


def extreme_visible_logit(spec, weights, query, key, mask=None) -> float:
    """The visible logit (scale * Q_h K_g^T) of largest magnitude, with its sign."""
    def heads(x, letter, n):
        y = x @ weights["w" + letter] + (weights["b" + letter] if spec.bias else 0.0)
        return y.reshape(x.shape[0], x.shape[1], n, -1)
    q = heads(query, "q", spec.H)
    k = np.repeat(heads(key, "k", spec.H_kv), spec.group_size, axis=2)
    logits = spec.logit_scale * np.einsum("bqhd,bkhd->bhqk", q, k)
    visible = visibility(spec, query.shape[0], query.shape[1], key.shape[1], mask)
    logits = np.where(visible, logits, 0.0).ravel()
    return float(logits[np.argmax(np.abs(logits))])


def materialize(case: Case, weights: dict | None = None) -> CaseData:
    """The case's arrays: weights from ``init_weights(spec, seed)`` unless given."""
    s, B, L_q, L_k = case.spec, case.B, case.L_q, case.L_k
    rngs = [np.random.default_rng(seq) for seq in np.random.SeedSequence(case.seed).spawn(4)]
    inputs_rng, mask_rng, bias_rng, d_out_rng = rngs
    weights = init_weights(s, seed=case.seed) if weights is None else dict(weights)
    check_weights(s, weights)
    query = inputs_rng.standard_normal((B, L_q, s.E))
    key = inputs_rng.standard_normal((B, L_k, s.E_k))
    value = inputs_rng.standard_normal((B, L_k, s.E_v))
    if case.form == "self":
        key = value = query
    elif case.form == "kv":
        key = value
    structural = structural_mask(s, L_q, L_k)
    mask = _make_mask(case.mask, B, s.H, L_q, L_k, structural, mask_rng)
    bias = _make_bias(case.bias, B, s.H, L_q, L_k, bias_rng)
    d_out = d_out_rng.standard_normal((B, L_q, s.E_o))

    if case.stress == "large_logits":
        # Scale (and maybe flip) the query so that the visible logit of largest magnitude
        # becomes positive and 1.5x past exp()'s overflow.
        target = 1.5 * OVERFLOW_LOGIT.get(case.dtype, OVERFLOW_LOGIT["float32"])
        query = query * (target / extreme_visible_logit(s, weights, query, key, mask))
    if case.stress == "masked_huge_values":
        padded = ~mask[:, 0, 0, :]                         # (B, L_k): masked for every query
        value = np.where(padded[:, :, None], HUGE_VALUE[case.dtype], value)
    r = rounding(case.dtype)
    weights = {name: r(np.asarray(w, dtype=np.float64)) for name, w in weights.items()}
    query = r(query)
    if case.form == "self":
        key = value = query
    elif case.form == "kv":
        key = value = r(value)   # after the stress on masked values, which the key shares
    else:
        key, value = r(key), r(value)
    bias = None if bias is None else r(bias)
    has_key = visibility(s, B, L_q, L_k, mask).any(axis=-1)          # (B, H, L_q)
    fully_masked = ~has_key.any(axis=1)
    partial = ~has_key.all(axis=1) & ~fully_masked
    if partial.any():  # a cotangent on `out` cannot be zeroed for some heads only
        raise AssertionError(f"{case.id}: a row is empty for some heads but not all")
    return CaseData(case, weights, query, key, value, mask, bias, r(d_out), fully_masked)


# ---------------------------------------------------------------------------------------
# The catalog.

F32 = ("float32",)
F32_64 = ("float32", "float64")
HALF = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A case without its dtype and seed; the profile decides which dtypes it runs in."""
    spec: AttentionSpec
    B: int
    L_q: int
    L_k: int
    mask: str = "none"
    bias: str | None = None
    stress: str | None = None
    form: str = "qkv"
    checks: tuple[str, ...] = NUMERIC
    profile: str = "default"              # the smallest profile that holds it
    quick: tuple[str, ...] = F32          # its dtypes in the quick profile
    default: tuple[str, ...] = F32        # its dtypes in the default profile (with the quick ones)
    only: tuple[str, ...] | None = None   # its dtypes in the default and full profiles, if set

    def allowed_dtypes(self) -> tuple[str, ...]:
        if self.checks in (("contract",), ("decode",)):   # both judged in every dtype
            return DTYPES
        if self.checks != NUMERIC:
            return F32_64
        if self.stress == "large_logits":
            # bfloat16's logits near 133 are spaced by 1: its plain computation is noise.
            return ("float64", "float32", "float16")
        return DTYPES

    def dtypes(self, profile: str) -> tuple[str, ...]:
        if self.only is not None:
            return () if profile == "quick" else self.only
        if profile == "full":
            return self.allowed_dtypes()
        wanted = set(self.quick) | (set(self.default) if profile == "default" else set())
        return tuple(d for d in DTYPES if d in wanted and d in self.allowed_dtypes())


def _recipes() -> list[Recipe]:
    """Quick: every family of feature once, small. Default: each feature on its own and
    in the combinations that break ports, float64 where a path could lose precision and
    the half types where a kernel could. Full: every dtype, larger shapes."""
    S, R = AttentionSpec, Recipe
    base = S(8, 2)
    gqa_br = S(16, 4, num_kv_heads=2, causal="bottom_right")
    cross = S(8, 2, kdim=6, vdim=10, head_dim=4, value_head_dim=6, out_dim=5, scale=0.3)
    q, ALL = "quick", DTYPES
    return [
        R(base, 2, 5, 5, profile=q, quick=ALL, default=ALL),
        R(gqa_br, 2, 5, 9, mask="random", profile=q, default=ALL),
        R(S(16, 4, num_kv_heads=1, causal="top_left"), 2, 7, 3, mask="key_padding", profile=q,
          default=F32_64),
        R(cross, 1, 1, 7, profile=q, default=ALL),
        R(S(8, 2, window=(2, 1), softcap=2.0), 2, 6, 6, bias="alibi", profile=q, default=ALL),
        R(gqa_br, 2, 6, 3, profile=q, default=ALL),                  # rows before the diagonal
        R(base, 2, 5, 6, mask="fully_masked_rows", profile=q, default=F32_64),
        R(S(8, 1, bias=False), 2, 3, 4, mask="2d", profile=q),
        R(S(8, 2, dropout=0.3), 2, 4, 5, profile=q, default=F32_64),  # inference: no dropout
        R(base, 2, 5, 5, stress="large_logits", profile=q, quick=F32_64, default=ALL),
        R(base, 2, 4, 6, mask="key_padding", stress="masked_huge_values", profile=q, default=ALL),
        R(base, 2, 5, 5, form="self", profile=q, default=F32_64),
        R(base, 2, 4, 4, checks=("stateless",), profile=q),
        R(gqa_br, 2, 4, 6, mask="random", checks=("deterministic",), profile=q),
        R(S(16, 1, bias=False, dropout=0.3), 8, 128, 16, checks=("dropout",), profile=q),
        # Decoding with a cache, step by step against the causal pass (conformance/decode.py).
        R(S(16, 4, num_kv_heads=2, causal="bottom_right"), 2, 9, 9, form="self",
          checks=("decode",), profile=q, default=ALL),
        # The paths real layers take: key and value as one tensor, query heads in groups of
        # three, a square (asymmetric) rank-2 mask, a last partial block of 128 keys.
        R(S(8, 2, kdim=6, vdim=6), 2, 4, 6, form="kv", profile=q),
        R(S(24, 6, num_kv_heads=2, causal="top_left"), 2, 5, 5, profile=q),
        R(base, 2, 5, 5, mask="2d", profile=q),
        R(base, 1, 3, 150, profile=q),
        R(base, 2, 4, 5, mask="random", bias="random", checks=("contract",), profile=q,
          quick=F32_64, default=ALL),
        R(base, 2, 4, 5, mask="key_padding", checks=("contract",), profile=q),   # layers without a bias
        # default
        R(S(32, 8), 2, 4, 6, default=F32_64),
        R(S(12, 3, head_dim=5), 2, 5, 4),
        R(S(8, 2, value_head_dim=6), 2, 4, 5),
        R(S(8, 2, kdim=5, vdim=7), 2, 3, 6, mask="batch"),
        R(S(8, 2, out_dim=3), 2, 4, 4),
        R(S(16, 4, num_kv_heads=2, bias=False), 2, 5, 5, mask="head"),
        R(S(8, 2, scale=2.0), 2, 5, 5, mask="random", default=F32_64),
        R(base, 3, 7, 11),
        R(base, 1, 257, 257, mask="key_padding"),
        R(base, 2, 5, 7, mask="all_visible"),
        R(base, 2, 5, 7, mask="batch"),
        R(base, 2, 5, 7, mask="head"),
        R(base, 2, 5, 7, mask="random", default=F32_64),
        R(S(8, 2, causal="top_left"), 2, 4, 7, mask="random"),
        R(S(8, 2, causal="top_left"), 2, 7, 4),
        R(S(8, 2, causal="bottom_right"), 2, 4, 7, default=ALL),
        R(S(8, 2, causal="bottom_right"), 2, 7, 4, mask="random", default=F32_64),
        R(S(8, 2, causal="bottom_right", window=(3, 0)), 2, 6, 9, mask="key_padding", default=F32_64),
        R(S(8, 2, window=(1, 2)), 2, 5, 8, mask="random"),
        R(S(8, 2, window=(0, 0)), 1, 4, 4),
        R(base, 2, 5, 7, bias="random", mask="random", default=F32_64),
        R(base, 2, 5, 7, bias="2d"),
        R(S(8, 2, softcap=1.5), 2, 5, 7, bias="random", default=ALL),
        R(S(16, 4, num_kv_heads=1, bias=False, causal="top_left"), 2, 6, 6, mask="fully_masked_rows",
          default=F32_64),
        R(S(16, 4, num_kv_heads=2, causal="bottom_right"), 2, 6, 6, mask="random",
          stress="large_logits", default=F32_64),
        R(S(16, 4, num_kv_heads=2), 2, 4, 7, mask="key_padding", stress="masked_huge_values"),
        R(S(8, 2, causal="top_left"), 2, 6, 6, mask="random", form="self"),
        R(S(16, 4, num_kv_heads=2, causal="bottom_right", dropout=0.5), 2, 5, 7, mask="random"),
        R(S(16, 4, num_kv_heads=1, kdim=6, vdim=10), 2, 4, 6, checks=("stateless",)),
        R(S(16, 4, num_kv_heads=2, causal="bottom_right", window=(3, 0), rope={"style": "half"}),
          2, 9, 9, form="self", checks=("decode",), default=F32_64),
        R(S(24, 3, causal="bottom_right", rope={"style": "interleaved", "rotary_dim": 4, "theta": 500.0}),
          1, 7, 7, form="self", checks=("decode",)),
        R(S(16, 4, num_kv_heads=2, causal="top_left"), 2, 8, 8, form="self", checks=("decode",)),
        R(S(8, 2, causal="top_left"), 1, 6, 6, checks=("decode",), default=F32_64),
        # RoPE in the quick profile (impls/broken: the RoPE and cache bugs): partial,
        # interleaved, the queries end-aligned, keys far enough (300) to show angles
        # computed in float16; then decoding it through a sliding window.
        R(S(16, 4, num_kv_heads=2, head_dim=8, causal="bottom_right",
            rope={"style": "interleaved", "rotary_dim": 6}), 1, 5, 300, profile=q, default=F32_64),
        R(S(16, 4, num_kv_heads=2, head_dim=8, causal="bottom_right", window=(4, 0),
            rope={"style": "half", "rotary_dim": 6}), 1, 12, 12, form="self", checks=("decode",), profile=q),
        R(S(8, 2, kdim=6, vdim=10, causal="top_left", window=(2, 0)), 2, 7, 7, checks=("decode",)),
        # RoPE in a full pass (output and gradients): both styles, partial rotary_dim, the
        # queries end-aligned with the keys (L_q < L_k, L_q > L_k: negative positions), and
        # every call form; 16-bit on head size 8.
        R(S(16, 4, num_kv_heads=2, causal="bottom_right", rope={"style": "half"}), 2, 5, 9,
          default=F32_64),
        R(S(24, 3, rope={"style": "interleaved", "rotary_dim": 4, "theta": 500.0}), 2, 6, 4,
          mask="random"),
        R(S(16, 2, kdim=12, vdim=12, rope={"style": "half", "rotary_dim": 4}), 2, 3, 7, form="kv"),
        R(S(16, 4, num_kv_heads=1, causal="top_left", rope={"style": "interleaved"}), 2, 6, 6,
          form="self", default=F32_64),
        R(S(32, 4, num_kv_heads=2, causal="top_left", rope={"style": "half", "rotary_dim": 6}),
          2, 8, 8, default=HALF),
        # Head size 8 and even lengths: shapes that GPU kernels (cuDNN's, FlashAttention's)
        # take, so that a GPU run judges them in the half types, not a fallback. The cases
        # above mostly have head size 4 or odd lengths, which those kernels decline.
        R(S(16, 2), 2, 8, 8, default=HALF),
        R(S(16, 2, causal="top_left"), 2, 8, 8, default=HALF),
        R(S(16, 2, causal="top_left", window=(3, 0)), 2, 8, 8, default=HALF),
        R(S(16, 4, num_kv_heads=2, causal="top_left"), 2, 8, 12, mask="key_padding", default=HALF),
        R(S(16, 2), 2, 6, 8, bias="random", default=HALF),
        R(S(16, 2), 2, 6, 8, mask="fully_masked_rows", default=HALF),
        # full: larger shapes and every feature at once.
        R(S(64, 8, head_dim=8), 2, 64, 64, mask="random", profile="full"),
        R(S(48, 8, num_kv_heads=2, value_head_dim=4, out_dim=40, causal="bottom_right",
            window=(8, 0), softcap=3.0), 2, 33, 47, mask="key_padding", bias="alibi", profile="full"),
        R(S(24, 6, num_kv_heads=3, kdim=20, vdim=12, scale=0.5, causal="top_left"), 3, 17, 13,
          mask="fully_masked_rows", bias="random", profile="full"),
        R(S(32, 4, num_kv_heads=1), 1, 300, 300, mask="random", profile="full"),
    ]


# The default profile also holds every pair of these feature values (a covering array of
# strength 2, conformance/pairwise.py), so no interaction is left to hand-picking.
PAIRWISE_FACTORS = {
    # heads: (H, H_kv); "gqa3" has group size 3 with 2 key/value heads.
    "heads": {"mha": (2, 2), "gqa": (4, 2), "gqa3": (6, 2), "mqa": (4, 1)},
    "mask": {"none": "none", "2d": "2d", "random": "random", "key_padding": "key_padding"},
    "bias": {"none": None, "2d": "2d", "random": "random"},
    "causal": {"none": None, "top_left": "top_left", "bottom_right": "bottom_right"},
    "window": {"none": None, "window": (2, 1)},
    "softcap": {"none": None, "softcap": 2.0},
    "form": {form: form for form in FORMS},
    "dtype": {dtype: dtype for dtype in DTYPES},
    # lengths: (L_q, L_k); "long" passes 128 keys and is no multiple of 64 (a last
    # partial block in tiled kernels); "one" is a single query, as in a decoding step.
    "lengths": {"lt": (5, 9), "gt": (9, 5), "eq": (6, 6), "one": (1, 7), "long": (150, 150)},
}


def _pairwise_allowed(row: dict) -> bool:
    """Self-attention passes one tensor: its lengths are equal."""
    return not (row.get("form") == "self" and row.get("lengths") not in (None, "eq", "long"))


@functools.cache
def pairwise_recipes(seed: int = 0) -> tuple[Recipe, ...]:
    """The default profile's covering array of PAIRWISE_FACTORS, one recipe per row."""
    factors = {name: list(levels) for name, levels in PAIRWISE_FACTORS.items()}
    recipes = []
    for row in covering_array(factors, _pairwise_allowed, seed=seed):
        level = {name: PAIRWISE_FACTORS[name][row[name]] for name in factors}
        H, H_kv = level["heads"]
        spec = AttentionSpec(16, H, num_kv_heads=H_kv if H_kv != H else None, head_dim=8,
                             causal=level["causal"], window=level["window"],
                             softcap=level["softcap"])
        L_q, L_k = level["lengths"]
        recipes.append(Recipe(spec, 2 if L_k < 128 else 1, L_q, L_k, mask=level["mask"],
                              bias=level["bias"], form=level["form"], only=(level["dtype"],)))
    return tuple(recipes)


def case_levels(case: Case) -> dict[str, str]:
    """The PAIRWISE_FACTORS levels a case holds (None where it holds none of them)."""
    def level(name, value):
        return next((k for k, v in PAIRWISE_FACTORS[name].items() if v == value), None)
    s = case.spec
    return {"heads": level("heads", (s.H, s.H_kv)), "mask": level("mask", case.mask),
            "bias": level("bias", case.bias), "causal": level("causal", s.causal),
            "window": level("window", s.window), "softcap": level("softcap", s.softcap),
            "form": case.form, "dtype": case.dtype,
            "lengths": level("lengths", (case.L_q, case.L_k))}


def _catalog_seed(case_id: str, seed: int) -> int:
    return (zlib.crc32(case_id.encode()) + 1_000_003 * seed) % 2 ** 32


def catalog(profile: str = "default", dtypes: Iterable[str] | None = None, seed: int = 0,
            spec: AttentionSpec | None = None) -> list[Case]:
    """The cases of a profile, in a stable order, each seeded from its id and ``seed``.

    ``spec``: run the catalog on this spec instead of each recipe's own (``--weights``):
    its sizes and its causal/window/softcap/dropout fields stay, the recipes contribute
    shapes, dtypes, masks, biases, stress and behaviour checks, and cases that collapse
    onto the same id are kept once. The dropout probe keeps its own spec.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile: one of {PROFILES}, got {profile!r}")
    level = PROFILES.index(profile)
    wanted = None if dtypes is None else set(dtypes)
    unknown = (wanted or set()) - set(DTYPES)
    if unknown:
        raise ValueError(f"dtypes: {sorted(unknown)} not among {DTYPES}")
    cases: dict[str, Case] = {}
    for recipe in _recipes() + list(pairwise_recipes()):
        if PROFILES.index(recipe.profile) > level:
            continue
        recipe_spec = recipe.spec
        if spec is not None and recipe.checks != ("dropout",):
            if (recipe.form == "self" and spec.is_cross) or (recipe.form == "kv" and spec.E_k != spec.E_v):
                continue
            recipe_spec = spec
        for dtype in recipe.dtypes(profile):
            if wanted is not None and dtype not in wanted:
                continue
            case = Case(recipe_spec, recipe.B, recipe.L_q, recipe.L_k, dtype, recipe.mask,
                        recipe.bias, 0, recipe.form, recipe.stress, recipe.checks)
            cases.setdefault(case.id, case.replace(seed=_catalog_seed(case.id, seed)))
    return list(cases.values())


_ID_KINDS = {"mask": MASK_KINDS, "bias": BIAS_KINDS, "stress": STRESS_KINDS, "forms": FORMS,
             "checks": BEHAVIOUR, "dtypes": DTYPES}


def case_from_id(case_id: str, seed: int = 0) -> Case:
    """The case an id spells (conformance/case_ids.py): a catalog case in any profile or
    call form, or a generated one; ValueError saying which token it cannot read."""
    case = Case(**parse_case_id(case_id, _ID_KINDS))
    if case.id != case_id:   # e.g. a token out of the canonical order
        raise ValueError(f"case id {case_id!r} reads back as {case.id!r}")
    return case if case.generated else case.replace(seed=_catalog_seed(case.id, seed))


def find_case(case_id: str, seed: int = 0, spec: AttentionSpec | None = None) -> Case:
    """The case with this id: from the catalog (on ``spec`` for --weights), else read from
    the id itself; ValueError naming near ids."""
    full = catalog("full", seed=seed, spec=spec)
    for case in full:
        if case.id == case_id:
            return case
    try:
        return case_from_id(case_id, seed)
    except ValueError as exc:
        import difflib
        near = difflib.get_close_matches(case_id, [c.id for c in full], 3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"case {case_id!r} is not in the catalog and {exc}{hint}") from exc


# ---------------------------------------------------------------------------------------
# Generated cases (hypothesis): every draw shrinks towards the smallest, plainest case.

def _draw_case(pick, dtypes: tuple[str, ...], max_len: int) -> Case:
    """A generated case, each choice made by ``pick`` (``integers(lo, hi)``, ``choice(seq)``,
    ``boolean()``), whose first options are the plainest: hypothesis shrinks towards them."""
    def maybe(draw):
        return draw() if pick.boolean() else None

    H_kv = pick.integers(1, 3)
    H = H_kv * pick.integers(1, 3)
    d_k = pick.integers(1, 5)
    explicit_head_dim = pick.boolean()
    E = pick.integers(1, 12) if explicit_head_dim else H * d_k
    small = lambda: pick.integers(1, 6)  # noqa: E731
    spec = AttentionSpec(
        d_model=E, num_heads=H, num_kv_heads=H_kv if H_kv != H else None,
        head_dim=d_k if explicit_head_dim else None,
        kdim=maybe(small), vdim=maybe(small), value_head_dim=maybe(small), out_dim=maybe(small),
        bias=not pick.boolean(),
        scale=maybe(lambda: pick.choice([0.25, 0.5, 2.0])),
        causal=pick.choice([None, "top_left", "bottom_right"]),
        window=maybe(lambda: (pick.integers(0, 4), pick.integers(0, 4))),
        softcap=maybe(lambda: pick.choice([1.0, 3.0])),
    )
    L_q = pick.integers(1, max_len)
    forms = [f for f in FORMS if (f != "self" or not spec.is_cross) and (f != "kv" or spec.E_k == spec.E_v)]
    form = pick.choice(forms)
    L_k = L_q if form == "self" else pick.integers(1, max_len)
    return Case(spec, pick.integers(1, 3), L_q, L_k, pick.choice(dtypes),
                mask=pick.choice(MASK_KINDS), bias=maybe(lambda: pick.choice(BIAS_KINDS)),
                seed=pick.integers(0, 2 ** 32 - 1), form=form, generated=True)


class _RandomPick:
    """``_draw_case``'s choices from a seeded NumPy generator (``attnsuite check --generated``)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integers(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def boolean(self) -> bool:
        return bool(self.rng.integers(2))


def generated_cases(n: int, seed: int = 0, dtypes: Iterable[str] = ("float64", "float32"),
                    max_len: int = 9) -> list[Case]:
    """``n`` generated cases, the same for the same ``seed``; each id carries its own seed,
    so ``--case ID`` reproduces it alone."""
    pick = _RandomPick(seed)
    return [_draw_case(pick, tuple(dtypes), max_len) for _ in range(n)]


def case_strategy(dtypes: Iterable[str] = ("float64", "float32"), max_len: int = 9):
    """A hypothesis strategy of numeric ``Case``s with ``generated=True``."""
    from hypothesis import strategies as st

    class HypothesisPick:
        def __init__(self, draw):
            self.draw = draw

        def integers(self, lo, hi):
            return self.draw(st.integers(lo, hi))

        def choice(self, options):
            return self.draw(st.sampled_from(options))

        def boolean(self):
            return self.draw(st.booleans())

    return st.composite(lambda draw: _draw_case(HypothesisPick(draw), tuple(dtypes), max_len))()
