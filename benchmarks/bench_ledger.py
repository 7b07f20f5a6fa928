"""Ledger charges per second under contention, SQLite and PostgreSQL.

``--processes`` worker processes (default 8) open the same ledger, wait for a common start,
then call ``Ledger.charge`` in a loop for ``--seconds``; the rate is the number of charges
recorded in that time (read back from the ledger, which also verifies its chain) divided by
the time. Two release shapes: a Laplace-only loss (approximate DP: sums only) and a Gaussian
loss (zCDP: each charge converts the summed rho with OpenDP inside the serialised
transaction). One process alone is measured too, for reference.

Run from the repository root with the project's venv active::

    python benchmarks/bench_ledger.py --postgres-url postgresql://postgres@127.0.0.1:5432/test

PostgreSQL is measured when ``--postgres-url`` or TELEMAGG_TEST_POSTGRES_URL is set; each run
uses its own fresh schema, dropped afterwards. Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path

from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg.ledger import Ledger

LOSSES = {
    "laplace": PrivacyLoss(1e-3, 0.0, 1e-3, 0.0),
    "gaussian": PrivacyLoss(zcdp_to_epsilon(1e-5, 1e-12), 1e-12, 0.0, 0.0, 1e-5),
}
QUERY = {"by": ["event_name"], "metrics": ["count"], "policy": {"privacy_unit": "user_id"}}


def _worker(url: str, shape: str, start: Event, stop_at: float) -> None:
    ledger = Ledger.open(url)
    loss = LOSSES[shape]
    start.wait()
    while time.monotonic() < stop_at:
        ledger.charge(loss, query=QUERY, label="bench")
    ledger.close()


def charges_per_second(url: str, shape: str, processes: int, seconds: float) -> float:
    """Charges recorded per second by ``processes`` workers racing on a fresh ledger."""
    Ledger(url, epsilon=1e9, delta=0.5).close()
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    warmup = 3.0  # spawned workers import telemagg and connect before the start
    stop_at = time.monotonic() + warmup + seconds
    workers = [
        context.Process(target=_worker, args=(url, shape, start, stop_at)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(max(stop_at - seconds - time.monotonic(), 0.0))
    start.set()
    for worker in workers:
        worker.join()
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(f"a worker failed on {url}")
    with Ledger.open(url) as ledger:
        ledger.verify()
        return len(ledger.charges()) / seconds


@contextmanager
def sqlite_ledger() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite:///{Path(directory) / 'bench.db'}"


@contextmanager
def postgres_ledger(base: str) -> Iterator[str]:
    import psycopg

    schema = f"telemagg_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in base else "?"
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def machine() -> str:
    import numpy

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpu.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return (
        f"{model}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--postgres-url", default=os.environ.get("TELEMAGG_TEST_POSTGRES_URL"))
    args = parser.parse_args()

    backends = [("SQLite (WAL, synchronous=FULL)", sqlite_ledger)]
    if args.postgres_url:
        backends.append(("PostgreSQL (advisory lock)", lambda: postgres_ledger(args.postgres_url)))
    rows = []
    for name, make in backends:
        for shape in LOSSES:
            rates = []
            for processes in (1, args.processes):
                with make() as url:
                    rates.append(charges_per_second(url, shape, processes, args.seconds))
            rows.append((name, shape, *rates))
            print(
                f"{name:32} {shape:9} 1 process: {rates[0]:8.0f}/s   "
                f"{args.processes} processes: {rates[1]:8.0f}/s",
                flush=True,
            )

    print(f"\nMachine: {machine()}\n")
    print(f"| backend | release | 1 process | {args.processes} processes |")
    print("|---|---|---:|---:|")
    for name, shape, one, many in rows:
        print(f"| {name} | {shape} | {one:,.0f} charges/s | {many:,.0f} charges/s |")


if __name__ == "__main__":
    main()
