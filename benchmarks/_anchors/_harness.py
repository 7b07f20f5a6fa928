"""What every engine's timing shares: warm up, time the runs; for anchors, read the workload.

An anchor script runs inside benchmarks/.anchors-venv (never the project's venv) as
``python <anchor>.py --data events.parquet --repeats 3`` and prints one JSON object on its
last stdout line: ``{"engine", "version", "n_events", "seconds": [...], "cpu_seconds": [...],
"output_rows"}`` (``cpu_seconds``: CPU time of the process, all threads: on a shared machine
it is what the engine itself spent, while wall time also counts waiting for the CPU).
Converting the parquet file into the engine's favourite input form is not timed; the DP
aggregation from that in-memory input to the released table is. bench_throughput.py times
telemagg and ``np.unique`` with the same :func:`time_runs`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

WARMUP_ROWS = 20_000

Aggregate = Callable[[Any, int], int]  # (input, n_events) -> rows of output


def time_runs(
    aggregate: Aggregate, data: Any, warmup: Any, n_events: int, repeats: int
) -> dict[str, Any]:
    """Run once on ``warmup`` (imports, caches), then time ``repeats`` runs on ``data``.

    Returns ``seconds`` (wall) and ``cpu_seconds`` per run, and ``output_rows`` of the last.
    """
    aggregate(warmup, min(n_events, WARMUP_ROWS))
    seconds, cpu_seconds = [], []
    output_rows = 0
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        output_rows = aggregate(data, n_events)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "output_rows": output_rows}


def run(engine: str, version: str, prepare: Callable[[Any], Any], aggregate: Aggregate) -> None:
    """Command line of an anchor script: time ``aggregate(prepare(parquet table))``."""
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=f"Time {engine} on a telemagg workload.")
    parser.add_argument("--data", required=True, help="parquet: user_id, event_name, duration_ms")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    table = pq.read_table(args.data)
    n_events = table.num_rows
    warmup = prepare(table.slice(0, WARMUP_ROWS))
    data = prepare(table)
    del table
    timings = time_runs(aggregate, data, warmup, n_events, args.repeats)
    print(json.dumps({"engine": engine, "version": version, "n_events": n_events, **timings}))
