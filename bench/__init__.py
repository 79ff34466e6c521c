"""The benchmark harness: time every implementation of the attention spec the same way.

    sweeps.py       the configurations of the quick / default / long sweeps
    flops.py        the FLOP formula the throughput columns use
    timing.py       first call, warm-up, calibrated timed blocks, statistics
    frameworks/     per-framework timing code (prepare, synchronize, memory, parameters)
    worker.py       one process per framework: measures points, streams JSON records
    runner.py       starts the workers, survives their crashes and time-outs
    environment.py  what machine, software and commit produced a record
    store.py        bench.json, an append-only JSON Lines file of records
    report.py       bench.csv / .md / .html and the PNG plots, from one or more stores
    compare.py      regressions between two stores
    cli.py          ``attnsuite bench`` and ``attnsuite report``
"""
