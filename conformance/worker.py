"""The subprocess end of ``conformance.pool``: ``python -P -m attnsuite.conformance.worker``.

Reads one JSON job on stdin (implementation names, case dicts, options, the weights path,
the case each implementation starts at) and writes one JSON line per event of
``judging.judge_in_process`` (see ``attnsuite.processes.worker_channel``).
"""

from __future__ import annotations

import sys

from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import Options
from attnsuite.conformance.judging import judge_in_process
from attnsuite.conformance.weights import load_weights
from attnsuite.processes import worker_channel


def main() -> int:
    job, emit = worker_channel()
    cases = [Case.from_dict(c) for c in job["cases"]]
    trained_weights = load_weights(job["weights_path"]) if job["weights_path"] else None
    for event, index, payload in judge_in_process(job["names"], cases, Options(**job["options"]),
                                                  trained_weights, job["first_case"]):
        if event == "result":
            payload = payload.to_dict()
        emit([event, index, payload])
    return 0


if __name__ == "__main__":
    sys.exit(main())
