"""Dask throughput: ``telemagg.dask.aggregate`` on 1 and 2 workers vs the local engine.

The workload of bench_throughput.py (issue 2), 10M events by default: user-level ``count``
+ ``unit_count`` + ``sum`` of ``duration_ms`` (bounds [0, 60000]) by ``event_name``, each
user bounded to 4 partitions x 2 events, private partition selection, epsilon 1, delta
1e-6. The events are written once as parquet files (``--files`` of them, in time order, so
every file holds most users, as a day of logs split by hour would), and every engine starts
from those files:

* local: ``pd.read_parquet`` + ``tm.aggregate`` in this process (both timed, and shown apart);
* Dask: ``dd.read_parquet`` + ``telemagg.dask.aggregate`` on a ``distributed.LocalCluster``
  of 1 and 2 single-threaded worker processes (the client and scheduler share the machine);
* Dask with ``shuffle_by_unit=True``: what the optional shuffle by unit costs, given that it
  is an optimisation and not needed for correctness.

Each Dask run is made twice: with the workers' default environment, where dask.distributed
sets ``MALLOC_TRIM_THRESHOLD_=65536`` (glibc then returns freed memory to the OS at once and
stops raising its mmap threshold, so every large numpy temporary is fresh pages), and with
that variable left unset (``distributed.nanny.pre-spawn-environ`` without it).

Median and best of ``--repeats`` runs after a warm-up on a small file set (worker imports),
wall time and the CPU time of every process involved (client, scheduler, workers): on a
shared machine the wall time moves with other load, the CPU time much less. Run from
the repository root with the project's venv active::

    python benchmarks/bench_dask.py --events 10000000 --files 20 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dask
import dask.dataframe as dd
import distributed
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import telemagg as tm
import telemagg.dask as tm_dask
from telemagg.datasets import telemetry_events

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
METRICS = [tm.count(), tm.unit_count(), tm.sum("duration_ms", bounds=(0, 60_000))]
POLICY = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)
QUERY = {"by": "event_name", "metrics": METRICS, "policy": POLICY, "epsilon": 1.0, "delta": 1e-6}
PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def worker_environments() -> dict[str, dict[str, object]]:
    """Dask's default worker environment, and the same without ``MALLOC_TRIM_THRESHOLD_``."""
    default = dict(dask.config.get(PRE_SPAWN_ENVIRON))
    return {
        f"{MALLOC_TRIM}={default.get(MALLOC_TRIM)} (dask default)": default,
        f"{MALLOC_TRIM} unset": {k: v for k, v in default.items() if k != MALLOC_TRIM},
    }


def write_files(n_events: int, n_files: int, seed: int) -> Path:
    """The workload as ``n_files`` parquet files of consecutive rows (time order)."""
    folder = DATA / f"dask-{n_events}-{n_files}files-seed{seed}"
    if folder.exists():
        return folder
    events = telemetry_events(n_events, seed=seed)
    table = pa.table(
        {
            "user_id": pa.array(events["user_id"]),
            "event_name": pa.array(events["event_name"], type=pa.string()),
            "duration_ms": pa.array(events["duration_ms"]),
        }
    )
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows = -(-n_events // n_files)
    for i in range(n_files):
        pq.write_table(table.slice(i * rows, rows), partial / f"part-{i:03d}.parquet")
    partial.rename(folder)
    return folder


def local_run(folder: Path) -> dict[str, float]:
    started = time.perf_counter()
    frame = pd.read_parquet(folder)
    read = time.perf_counter()
    tm.aggregate(frame, **QUERY)
    return {"read": read - started, "aggregate": time.perf_counter() - read}


def dask_run(folder: Path) -> dict[str, float]:
    tm_dask.aggregate(dd.read_parquet(folder), **QUERY)
    return {}


def dask_run_shuffled(folder: Path) -> dict[str, float]:
    tm_dask.aggregate(dd.read_parquet(folder), shuffle_by_unit=True, **QUERY)
    return {}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def all_cpu_seconds() -> float:
    """CPU time of this process (client and, in a LocalCluster, scheduler) and of every Dask
    worker: the cost of a run, which other work on the machine barely changes."""
    try:
        client = distributed.get_client()
    except ValueError:  # no cluster: the local engine
        return cpu_seconds()
    return cpu_seconds() + sum(client.run(cpu_seconds).values())


def timed(run: Callable[[Path], dict[str, float]], folder: Path) -> dict[str, float]:
    cpu = all_cpu_seconds()
    started = time.perf_counter()
    parts = run(folder)
    total = time.perf_counter() - started
    return {**parts, "total": total, "cpu": all_cpu_seconds() - cpu}


def median_times(
    run: Callable[[Path], dict[str, float]], folder: Path, warmup: Path, repeats: int
) -> dict[str, float]:
    timed(run, warmup)
    runs = [timed(run, folder) for _ in range(repeats)]
    times = {part: statistics.median(r[part] for r in runs) for part in runs[0]}
    times["best"] = min(r["total"] for r in runs)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    folder = write_files(args.events, args.files, args.seed)
    load_before = os.getloadavg()[0]
    warmup = write_files(200_000, 4, args.seed)
    rows: list[tuple[str, dict[str, float]]] = []
    local = median_times(local_run, folder, warmup, args.repeats)
    rows.append(("local engine (tm.aggregate), 1 process", local))
    print(f"  local: {local}", flush=True)
    for n_workers in args.workers:
        for environment, environ in worker_environments().items():
            with (
                dask.config.set({PRE_SPAWN_ENVIRON: environ}),
                distributed.LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                ) as cluster,
                distributed.Client(cluster),
            ):
                for label, run in (
                    ("telemagg.dask", dask_run),
                    ("telemagg.dask, shuffle_by_unit=True", dask_run_shuffled),
                ):
                    times = median_times(run, folder, warmup, args.repeats)
                    rows.append((f"{label}, {n_workers} worker(s), {environment}", times))
                    print(f"  {rows[-1]}", flush=True)

    load_after = os.getloadavg()[0]
    from bench_throughput import machine

    print()
    print(machine())
    print(
        f"dask {distributed.__version__}; 1-minute load average {load_before:.1f} before,"
        f" {load_after:.1f} after (other work on the machine)"
    )
    print()
    print(
        f"{args.events / 1e6:g}M events in {args.files} parquet files; median and best of"
        f" {args.repeats} runs"
    )
    print()
    print(
        "| engine | events/s (median) | seconds: median (read + aggregate) | best |"
        " CPU seconds, all processes | events per CPU second |"
    )
    print("|---|---|---|---|---|---|")
    for label, times in rows:
        parts = f" ({times['read']:.1f} + {times['aggregate']:.1f})" if "read" in times else ""
        print(
            f"| {label} | {args.events / times['total']:,.0f} | {times['total']:.1f}{parts}"
            f" | {times['best']:.1f} | {times['cpu']:.1f} | {args.events / times['cpu']:,.0f} |"
        )


if __name__ == "__main__":
    main()
