"""The decode check: a cache kept, aligned and reset passes; each way of getting it wrong
fails for its reason."""

from __future__ import annotations

import pytest

from attnsuite.conformance.decode import decode_chunks
from attnsuite.conformance.runner import check

P = "numpy:tests.plugins.decoders:"
WRONG = ["dropped_cache", "oldest_entry_dropped", "never_reset", "window_ignored_while_decoding"]


def test_the_schedule_prefills_then_steps_and_covers_every_token():
    for length in range(1, 20):
        chunks = decode_chunks(length)
        assert chunks[0][0] == 0 and chunks[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        if length >= 5:
            sizes = [b - a for a, b in chunks]
            assert sizes[0] == length // 2 and 1 in sizes and sizes[-1] == 2, (length, sizes)


@pytest.fixture(scope="module")
def decoded():
    run = check(["numpy.oracle", P + "correct", *(P + name for name in WRONG)], profile="default",
                case_filter="*decode*")
    return {impl.name.removeprefix(P): impl for impl in run.implementations}


def test_a_correct_cache_passes(decoded):
    for name in ("numpy.oracle", "correct"):
        results = [r for r in decoded[name].results if r.status != "unsupported"]
        assert results and all(r.status == "pass" for r in results), [r.message for r in results]


@pytest.mark.parametrize("name", WRONG)
def test_a_wrong_cache_fails_the_decode_check(name, decoded):
    failing = decoded[name].failures()
    assert decoded[name].verdict == "fail" and failing
    assert all(r.check == "decode" for r in failing)
    if name == "never_reset":
        assert all("second sequence" in r.message for r in failing), failing[0].message
    if name == "window_ignored_while_decoding":
        assert all("window" in r.tags for r in failing)
        assert any(r.status == "pass" and "window" not in r.tags for r in decoded[name].results)
    if name == "oldest_entry_dropped":
        assert all("[4, 5)" in r.message or "[3, 4)" in r.message for r in failing), failing[0].message


def test_gradients_through_the_cache_are_judged_where_the_framework_differentiates():
    """A cache that detaches what it keeps gives every step's output right: only the
    gradients through it fail, for that reason. NumPy's decoder is judged on its outputs,
    and the result says why its gradients were not taken."""
    pytest.importorskip("torch", reason="torch is not installed: pip install 'attnsuite[torch]'")
    torch_plugin = "torch:tests.plugins.torch_decoders:"
    run = check([torch_plugin + "correct", torch_plugin + "detached_cache", P + "correct"],
                profile="default", case_filter="*causal_tl*decode*")
    correct, detached, numpy_correct = run.implementations
    assert correct.verdict == "pass", [r.message for r in correct.failures()]
    assert all("gradients through the cache" in r.message and "not taken" not in r.message
               for r in correct.results if r.status == "pass")
    failing = detached.failures()
    assert detached.verdict == "fail" and failing
    assert all("through the cache" in r.message and "gradient" in r.message for r in failing)
    assert all("not taken" in r.message for r in numpy_correct.results if r.status == "pass")
