"""A port judged as a pair: the target's outputs against the source's, on the same inputs,
and, where they disagree, which RoPE mistake of the port explains it (``attnsuite port``).

Each side was judged against the oracle on its own (spec, weights); here the outputs they
gave (``judging.output_file``) are compared with each other. Agreement uses the gate's
tolerance rule with the source's output in the oracle's place and twice the bound: each
side may be off the oracle by one bound. Rows with no visible key are left out (what an
implementation puts there is its own choice, SPEC 7).

The diagnosis recomputes the target's layer with the float64 oracle under each change a
port gets wrong, and says which one reproduces what was seen (``RETRIES``):

- ``wq_wk_permutation``: the source's outputs are the target's layer with wq/wk permuted
  between the RoPE layouts (``impls/convert/rope.py``): the checkpoint's wq/wk are in the
  other layout (Meta's interleaved vs HF's half), equivalently its RoPE style is the other;
- ``target_rope_style``: the target's outputs are its layer with the other RoPE style;
- ``rope_not_applied``: the target's (or the source's) outputs are the layer without RoPE.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from attnsuite.conformance import tolerance
from attnsuite.conformance.cases import Case, CaseData
from attnsuite.conformance.checks import CheckResult
from attnsuite.impls import oracle
from attnsuite.impls.convert.rope import half_to_interleaved, interleaved_to_half
from attnsuite.impls.spec import AttentionSpec

SLACK = 2.0             # agreement bound: twice the gate's (each side within one of the oracle)
CHECK = "output.agrees_with_source"
MAX_DIAGNOSED = 8       # failing cases the diagnosis recomputes
OTHER_STYLE = {"half": "interleaved", "interleaved": "half"}


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a port: its spec, canonical float64 weights and where they came from."""
    spec: AttentionSpec
    weights: dict
    where: str


def _baseline(data: CaseData) -> np.ndarray | None:
    """The plain low-precision computation the float16/bfloat16 rule measures against."""
    dtype = data.case.dtype
    if dtype not in tolerance.BASELINE_RULE:
        return None
    return oracle.forward(data.case.spec, data.weights, data.query, data.key, data.value,
                          data.mask, data.bias, precision=dtype)


def agree(actual, expected, data: CaseData):
    """(ok, ratio against the doubled bound, max |actual - expected| over rows with keys)."""
    valid = ~data.fully_masked[..., None]
    comparison = tolerance.compare(actual, expected, data.case.dtype, baseline=_baseline(data),
                                   valid=valid)
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return False, float("inf"), float("inf")
    diff = np.abs(np.where(valid, actual - expected, 0.0))
    max_diff = float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf")
    ratio = comparison.ratio / SLACK
    return bool(ratio <= 1.0), ratio, max_diff


def compare_case(source_case: Case, target_case: Case, target: Side, source_out, target_out,
                 source_name: str, target_name: str) -> CheckResult:
    """The agreement check of one case (``CHECK``), both outputs given or not."""
    missing = [n for n, out in ((source_name, source_out), (target_name, target_out)) if out is None]
    if missing:
        return CheckResult(target_case.id, CHECK, "unsupported",
                           f"no output of {' and '.join(missing)} on this case to compare "
                           f"(unsupported or raised: see its own results)", target_case.tags)
    data = target_case.materialize(target.weights)
    ok, ratio, max_diff = agree(target_out, source_out, data)
    text = (f"{target_name} vs {source_name} on the same inputs: max |diff| {max_diff:.3g}, "
            f"ratio {ratio:.3g} of twice the gate's {target_case.dtype} bound")
    if not ok:
        text = (f"port: {target_name} :: {target_case.id} :: {CHECK}: FAIL\n  {text}\n"
                f"  source case: {source_case.id}")
    return CheckResult(target_case.id, CHECK, "pass" if ok else "fail", text, target_case.tags,
                       ratio, {"max_abs_diff": max_diff})


# ---------------------------------------------------------------------------------------
# The diagnosis: the port's RoPE mistakes, each recomputed with the oracle.

def _swap_style(spec: AttentionSpec) -> AttentionSpec:
    rope = dict(spec.rope.to_dict(), style=OTHER_STYLE[spec.rope.style])
    return spec.replace(rope=rope)


def _forward(spec: AttentionSpec, data: CaseData, permute=None) -> np.ndarray:
    """The oracle on the case's inputs and weights (as rounded to its dtype), under ``spec``."""
    weights = data.weights if permute is None else permute(data.weights, spec)
    return oracle.forward(spec, weights, data.query, data.key, data.value, data.mask, data.bias)


PERMUTATIONS = {"half": interleaved_to_half, "interleaved": half_to_interleaved}  # into that style
LAYOUT_NAMES = {"half": "half (HF)", "interleaved": "interleaved (Meta)"}


def _permutation_text(style: str, permute) -> str:
    """What it means that ``permute`` of the target's wq/wk reproduces the source, when the
    target's RoPE is ``style``."""
    other = OTHER_STYLE[style]
    if permute is PERMUTATIONS[style]:     # the target got wq/wk laid out for the other style
        return (f"RoPE: the checkpoint's wq/wk (as the target gets them) look like the "
                f"{LAYOUT_NAMES[other]} RoPE layout while the target's RoPE is {style}-style "
                f"(RoPE style {other} vs {style}): permute them ({permute.__name__}, in "
                f"attnsuite.impls.convert.rope)")
    return (f"RoPE: the source's wq/wk are the target's permuted by {permute.__name__}: the "
            f"source reads its weights with the other RoPE style (RoPE style {other} vs "
            f"{style}): check the layout and rope.style of the source checkpoint")


def _retries(target: Side) -> list[tuple[str, str, str, Callable]]:
    """(id, explanation, whose output it explains, (data -> the output under the change))."""
    spec = target.spec
    if spec.rope is None:
        return []
    style = spec.rope.style
    swapped, plain = _swap_style(spec), spec.replace(rope=None)
    permutations = [("wq_wk_permutation", _permutation_text(style, permute), "source",
                     lambda data, permute=permute: _forward(spec, data, permute))
                    for permute in (PERMUTATIONS[style], PERMUTATIONS[OTHER_STYLE[style]])]
    return permutations + [
        ("target_rope_style", f"RoPE style {OTHER_STYLE[style]} vs {style}: the target rotates "
         f"{OTHER_STYLE[style]} pairs where the spec says {style}", "target",
         lambda data: _forward(swapped, data)),
        ("rope_not_applied", "RoPE not applied: the target's output is the layer without "
         "rotary embedding (it ignores spec.rope)", "target", lambda data: _forward(plain, data)),
        ("source_rope_not_applied", "RoPE not applied by the source: its output is the layer "
         "without rotary embedding", "source", lambda data: _forward(plain, data)),
    ]


def diagnose(failing: list[tuple[Case, np.ndarray, np.ndarray]], target: Side) -> list[dict]:
    """For (target case, source output, target output) of failing cases: the RoPE mistakes
    that explain them, best first, in ``conformance.diagnosis``'s format."""
    examined = failing[:MAX_DIAGNOSED]
    found = []
    for rid, explanation, whose, recompute in _retries(target):
        explained, worst, max_err = [], 0.0, 0.0
        for case, source_out, target_out in examined:
            data = case.materialize(target.weights)
            seen = source_out if whose == "source" else target_out
            ok, ratio, diff = agree(seen, recompute(data), data)
            if ok:
                explained.append(case.id)
                worst, max_err = max(worst, ratio), max(max_err, diff)
        if explained:
            found.append({"id": rid, "explanation": explanation, "match": "exact",
                          "checks": ["output"], "cases_explained": len(explained),
                          "cases_failing": len(examined), "max_err": max_err,
                          "worst_ratio": worst, "note": "", "cases": explained})
    found.sort(key=lambda d: -d["cases_explained"])
    return found
