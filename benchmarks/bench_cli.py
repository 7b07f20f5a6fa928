"""``telemagg aggregate`` over a large Parquet file: time, CPU time and peak memory.

Writes ``--events`` synthetic telemetry events (``telemagg.datasets.telemetry_events``,
seed 2024, in row groups of 1M) to ``benchmarks/.data/cli_<n>.parquet`` once, then runs the
command line on it in a child process, and reports the child's wall time, CPU time (user +
system) and peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), beside the file's size and
the size of its columns in memory (what reading it whole would take at least). The query
is the README's: per ``event_name``, count, mean and quantiles of latency, 4 partitions and
2 events per partition per user, epsilon 1, delta 1e-6.

Run from the repository root with the project's venv active::

    python benchmarks/bench_cli.py [--events 5000000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemagg.datasets import telemetry_events

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [
    "--by", "event_name",
    "--metric", "count",
    "--metric", "mean(duration_ms, 0, 60000)",
    "--metric", "quantiles(latency_ms, 0.5 0.9 0.99, 1, 60000, log)",
    "--privacy-unit", "user_id",
    "--max-partitions", "4", "--max-contributions", "2",
    "--epsilon", "1", "--delta", "1e-6", "--quiet",
]  # fmt: skip


def events_file(n: int) -> Path:
    """The benchmark's Parquet file, written once (1M-event row groups)."""
    path = ROOT / "benchmarks" / ".data" / f"cli_{n}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    events = telemetry_events(n, seed=2024)
    table = pa.table({k: v for k, v in events.items() if k != "timestamp"})
    pq.write_table(table, path, row_group_size=1_000_000)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    args = parser.parse_args()
    path = events_file(args.events)
    in_memory = pq.read_table(path).nbytes
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "release.parquet"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "telemagg.cli", "aggregate", str(path), *COMMAND,
             "--out", str(out)],
            check=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = pq.read_metadata(out).num_rows
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mib = 1024 * 1024
    print("| events | file | columns in memory | wall | CPU | peak RSS | partitions |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {args.events:,} | {path.stat().st_size / mib:,.0f} MiB | {in_memory / mib:,.0f} MiB"
        f" | {wall:.1f} s | {cpu:.1f} s | {after.ru_maxrss / 1024:,.0f} MiB | {rows} |"
    )


if __name__ == "__main__":
    main()
