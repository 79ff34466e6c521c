"""The tolerance rule (SPEC section 6), written in one place.

Every comparison is against the float64 oracle computed on the same inputs the
implementation got (inputs and weights rounded to the case's dtype, then promoted).

float64 and float32: ordinary closeness scaled to the tensor. Element i passes when

    |actual_i - expected_i| <= atol * max|expected| + rtol * |expected_i|

  float64: atol = rtol = 1e-10. Correct float64 code lands near 1e-15 (worst ratio
           7e-4 over the default profile); a path that computes in float32 lands near
           1e-7 and fails by 190x to 4000x.
  float32: atol = rtol = 1e-4. Correct float32 code lands near 1e-6 even on the
           stress cases (logits near 133; worst ratio 0.014 for torch and NumPy code);
           a bug of 1e-3 relative fails by 5x or more.

float16 and bfloat16: FlashAttention's rule. The baseline is the plain computation in
that dtype (``attnsuite.impls.oracle.forward/vjp(..., precision=dtype)``, every intermediate
rounded: a matrix product once, as float32 accumulation gives it; a bias gradient, a sum
over every row of the batch, at every partial sum, as XLA's reductions in the dtype do,
``oracle._low_precision_sum``); with err = max|x - expected| over the tensor, a result passes when

    err(actual) <= k * err(baseline) + ulp * max|expected|

  k = 3 for the output and 5 for gradients (the backward is longer); ulp is one unit in
  the last place at 1.0 (float16: 2**-10, bfloat16: 2**-7), a rounding floor for a
  baseline that happens to land exactly. Sound PyTorch and TensorFlow kernels land at
  ratios below 0.5; a wrong logit scale fails.

Gradients are held to the scale of the case's gradients, not only their own:
the absolute terms above use max(max|expected|, ``scale_floor``), the largest gradient of the
case (``gradient_scale``; ``compare_gradient`` applies the whole rule). The error of a gradient is set by the size of the
terms that meet in it, so a gradient that is tiny (saturated softmax) or zero in the math
(a window of one key) is otherwise judged on its rounding noise. The key-projection bias's
gradient (``bk``) is zero in the math for every input (softmax cancels it): it is held to
the absolute bound alone (``absolute=True``), without a relative term.

NaN or Inf where the oracle is finite always fails. Each result names the worst element:
its index, both values, absolute and relative error, and its bound.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from attnsuite.impls.backends import DTYPES

# (atol, rtol) for the ordinary rule.
CLOSENESS = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-4, 1e-4),
}
# The FlashAttention rule: (k for the output, k for gradients, ulp floor).
BASELINE_RULE = {
    "float16": (3.0, 5.0, 2.0 ** -10),
    "bfloat16": (3.0, 5.0, 2.0 ** -7),
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The verdict on one tensor, with its worst element."""
    ok: bool
    ratio: float                  # worst error / its bound: <= 1 passes, inf for NaN/Inf/shape
    rule: str                     # the rule, with its numbers, in words
    index: tuple[int, ...] | None = None
    actual: float | None = None
    expected: float | None = None
    abs_err: float | None = None
    rel_err: float | None = None
    bound: float | None = None
    problem: str | None = None    # "shape", "non-finite", or None for a numeric comparison

    def describe(self) -> str:
        """One line: the worst element, both values, the errors and the bound."""
        if self.problem == "shape" or self.index is None:
            return self.rule
        where = f"[{', '.join(map(str, self.index))}]"
        line = (f"worst element {where}: got {self.actual:.9g}, expected {self.expected:.9g}, "
                f"|err| {self.abs_err:.3g}, rel {self.rel_err:.3g}")
        if self.problem == "non-finite":
            return line + " (non-finite where the oracle is finite)"
        verb = "<=" if self.ok else ">"
        return f"{line} {verb} bound {self.bound:.3g} ({self.rule}), ratio {self.ratio:.3g}"

    def worst(self) -> dict:
        """The worst element and the rule, for reports (the verdict and ratio live elsewhere)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("ok", "ratio")}


def _element(index, actual, expected) -> dict:
    a, e = float(actual[index]), float(expected[index])
    err = abs(a - e)
    rel = err / abs(e) if e != 0 else (0.0 if err == 0 else math.inf)
    return {"index": tuple(int(i) for i in index), "actual": a, "expected": e,
            "abs_err": err, "rel_err": rel}


def compare(actual, expected, dtype: str, *, baseline=None, gradient: bool = False,
            scale_floor: float = 0.0, absolute: bool = False, valid=None) -> Comparison:
    """Judge ``actual`` against the float64 oracle's ``expected``.

    ``baseline``: the plain low-precision result (required for float16/bfloat16).
    ``gradient``: use the looser factor of the baseline rule.
    ``scale_floor``: the absolute terms use max(max|expected|, scale_floor).
    ``absolute``: ``expected`` is zero in the math: no relative term.
    ``valid``: a bool array broadcastable to the shape: only these elements are judged
    (rows with no visible key are left out this way).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(False, math.inf, f"shape {actual.shape}, expected {expected.shape}",
                          problem="shape")
    valid = np.ones(expected.shape, bool) if valid is None else np.broadcast_to(valid, expected.shape)
    if not valid.any():
        return Comparison(True, 0.0, "nothing to compare")

    bad = valid & ~np.isfinite(actual) & np.isfinite(expected)
    if bad.any():
        index = tuple(np.argwhere(bad)[0])
        return Comparison(False, math.inf, "finite", **_element(index, actual, expected),
                          bound=0.0, problem="non-finite")

    err = np.where(valid, np.abs(actual - expected), 0.0)
    scale = max(float(np.max(np.abs(expected), where=valid, initial=0.0)), scale_floor)
    if dtype in CLOSENESS:
        atol, rtol = CLOSENESS[dtype]
        rtol = 0.0 if absolute else rtol
        bound = atol * scale + rtol * np.abs(expected)
        rule = f"{dtype}: {atol:g}*{scale:.3g}" + ("" if absolute else f" + {rtol:g}*|ref|")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(err == 0, 0.0, err / bound)
        index = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
        worst_bound = float(bound[index])
    else:
        if baseline is None:
            raise ValueError(f"compare: {dtype} needs the plain {dtype} baseline")
        k_out, k_grad, ulp = BASELINE_RULE[dtype]
        k = k_grad if gradient else k_out
        baseline = np.asarray(baseline, dtype=np.float64)
        base_err = float(np.max(np.abs(baseline - expected), where=valid, initial=0.0))
        worst_bound = k * base_err + ulp * scale
        rule = f"{dtype}: {k:g}*baseline err {base_err:.3g} + {ulp:g}*{scale:.3g}"
        index = np.unravel_index(int(np.argmax(err)), err.shape)
        ratios = err / worst_bound if worst_bound > 0 else np.where(err == 0, 0.0, math.inf)
    worst = _element(index, actual, expected)
    ratio = float(ratios[index])
    return Comparison(bool(ratio <= 1.0), ratio, rule, **worst, bound=worst_bound)


# Gradients zero in the math for every input: held to the absolute bound alone.
ZERO_IN_THE_MATH = ("bk",)


def gradient_scale(grads: dict) -> float:
    """The largest element of a case's gradients: the floor of each one's absolute term."""
    return max(float(np.abs(g).max(initial=0.0)) for g in grads.values())


def compare_gradient(name: str, actual, expected, dtype: str, *, scale: float,
                     baseline=None) -> Comparison:
    """``compare`` with the gradient rule (module docstring): the baseline rule's looser factor,
    the case's ``scale`` (``gradient_scale``) as floor, no relative term where zero in the math."""
    return compare(actual, expected, dtype, baseline=baseline, gradient=True, scale_floor=scale,
                   absolute=name in ZERO_IN_THE_MATH)
