"""The benchmark harness: time every implementation of the attention spec the same way.

    sweeps.py       the configurations of the quick / default / long sweeps
    flops.py        the FLOP formula the throughput columns use
    timing.py       first call, warm-up, calibrated timed blocks, statistics
    frameworks/     per-framework timing code (prepare, synchronize, memory, parameters)
    worker.py       one process per framework: measures points, streams JSON records
    runner.py       starts the workers, survives their crashes and time-outs
    environment.py  what machine, software and commit produced a record
    contention.py   how many CPUs other processes took while a point was timed
    store.py        records.jsonl: run headers, environments once, point records with samples
    report.py       bench.csv / .md / .html and the PNG plots, from one or more stores
    significance.py Mann-Whitney U and a bootstrap interval of the ratio of medians
    compare.py      baseline against candidate: a verdict per point
    interleaved.py  two implementations timed in alternation in one process
    pytest_json.py  pytest-benchmark's JSON read as records (for compare)
    cli.py          ``attnsuite bench`` and ``attnsuite report``
"""
