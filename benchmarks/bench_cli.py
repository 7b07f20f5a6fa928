"""``telemagg aggregate`` over a large Parquet file: time, CPU time and peak memory.

Writes ``--events`` synthetic telemetry events (``telemagg.datasets.telemetry_events``,
seed 2024, in row groups of 1M) to ``benchmarks/.data/cli_<n>.parquet`` once, then runs the
command line on it in a child process, and reports the child's wall time, CPU time (user +
system) and peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), beside the file's size and
the size of its columns in memory, and beside the same query run the other way: the whole
file read into memory and passed to ``tm.aggregate`` in one call (also in a child process),
and a child that only imports telemagg, pyarrow and rich (the floor). The query is the
README's: per ``event_name``, count, mean and quantiles of latency, 4 partitions and
2 events per partition per user, epsilon 1, delta 1e-6.

Run from the repository root with the project's venv active::

    python benchmarks/bench_cli.py [--events 5000000] [--users N]
"""

from __future__ import annotations

import argparse
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


def events_file(n: int, users: int | None) -> Path:
    """The benchmark's Parquet file, written once (1M-event row groups)."""
    path = ROOT / "benchmarks" / ".data" / f"cli_{n}_{users or 'default'}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    events = telemetry_events(n, n_users=users, seed=2024)
    table = pa.table({k: v for k, v in events.items() if k != "timestamp"})
    pq.write_table(table, path, row_group_size=1_000_000)
    return path


WHOLE = """
import sys, pyarrow.parquet as pq, telemagg as tm
from telemagg._metric_spec import parse_metrics
table = pq.read_table(sys.argv[1])
tm.aggregate(table, by=["event_name"], policy=tm.Policy(privacy_unit="user_id",
    max_partitions=4, max_contributions=2), metrics=parse_metrics(["count",
    "mean(duration_ms, 0, 60000)", "quantiles(latency_ms, 0.5 0.9 0.99, 1, 60000, log)"]),
    epsilon=1.0, delta=1e-6)
"""
FLOOR = "import telemagg, pyarrow.dataset, pyarrow.parquet, rich.progress"


# A child's ru_maxrss counts the pages it shares with its parent right after fork, so each
# run is started by a small wrapper process, which reports its own child's peak.
WRAP = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def child(argv: list[str]) -> tuple[float, float, float]:
    """Wall time, CPU time (s) and peak RSS (MiB) of one run in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAP, sys.executable, *argv],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    rss_kib, cpu = done.stdout.split()
    return wall, float(cpu), int(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: one per 20 events")
    args = parser.parse_args()
    path = events_file(args.events, args.users)
    in_memory = pq.read_table(path).nbytes
    mib = 1024 * 1024
    size = f"{path.stat().st_size / mib:,.0f} MiB"
    users = f"{args.users:,}" if args.users else "one per 20 events"
    print(
        f"{args.events:,} events, users: {users}; file {size};"
        f" columns in memory {in_memory / mib:,.0f} MiB"
    )
    print("| run | wall | CPU | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    runs = [("import only (floor)", ["-c", FLOOR])]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "release.parquet")
        runs.append(
            ("telemagg aggregate (chunks)", ["-m", "telemagg.cli", "aggregate", str(path),
                                             *COMMAND, "--out", out])
        )  # fmt: skip
        runs.append(("read whole + tm.aggregate", ["-c", WHOLE, str(path)]))
        for name, argv in runs:
            wall, cpu, rss = child(argv)
            print(f"| {name} | {wall:.1f} s | {cpu:.1f} s | {rss:,.0f} MiB |")


if __name__ == "__main__":
    main()
