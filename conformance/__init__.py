"""The conformance gate: every implementation judged against the float64 oracle.

- ``cases``: the seeded case catalog (profiles quick, default, full) and a hypothesis strategy;
- ``tolerance``: the comparison rule of SPEC section 6, in one place;
- ``checks``: one implementation on one case -> ``CheckResult``s (output, gradients,
  rows with no visible key, stateless, deterministic, dropout);
- ``runner``: ``check(impls, profile=...)``, the Python API: cases, environment, verdicts;
- ``results``: ``ImplResult``, ``RunResult``; ``judging``: loading and judging in this
  process (what a worker, ``check(isolate=False)`` and the pytest face run); ``pool``: the
  worker processes (``worker`` their end), restarted past a crash or a time-out;
- ``report``: conformance.json/.md/.html and JUnit XML, written atomically;
- ``weights``: the ``--weights`` file format; ``xfails``: the ``--xfails`` file format;
- ``cli``: ``attnsuite check``; ``pytest_plugin``: the pytest face (``pytest --attnsuite-impl``).
"""
