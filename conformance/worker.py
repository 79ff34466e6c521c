"""The subprocess end of ``runner.judge_isolated``: ``python -m attnsuite.conformance.worker``.

Reads one JSON job on stdin (implementation names, case dicts, options, weights path)
and writes one JSON line per event to the original stdout. Whatever the implementations
print goes to stderr, so it cannot corrupt the stream.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    job = json.load(sys.stdin)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # stray prints land on stderr
    sys.path.insert(0, os.getcwd())

    from attnsuite.conformance.cases import Case
    from attnsuite.conformance.checks import Options
    from attnsuite.conformance.runner import judge_in_process
    from attnsuite.conformance.weights import load_weights

    cases = [Case.from_dict(c) for c in job["cases"]]
    weights = load_weights(job["weights"]) if job["weights"] else None
    for event, index, payload in judge_in_process(job["names"], cases, Options(**job["options"]),
                                                  weights):
        if event == "result":
            payload = payload.to_dict()
        protocol.write(json.dumps([event, index, payload]) + "\n")
    protocol.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
