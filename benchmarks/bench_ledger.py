"""Ledger charges per second under contention, and charge time against ledger size.

Part 1 (``--sizes``): the time of one ``Ledger.charge`` on a ledger already holding 10, 1k,
10k and 100k charges (rows written directly with a chain computed by telemagg's own record
code, then verified), with and without a rolling window, median of ``--repeats`` charges.

Part 2 (contention):
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
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path

from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg._storage import open_store
from telemagg.ledger import Ledger
from telemagg.ledger._chain import CHARGE_COLUMNS, CHARGES, Charge, RunningSums, loss_fields

LOSSES = {
    "laplace": PrivacyLoss(1e-3, 0.0, 1e-3, 0.0),
    "gaussian": PrivacyLoss(zcdp_to_epsilon(1e-5, 1e-12), 1e-12, 0.0, 0.0, 1e-5),
}
QUERY = {"by": ["event_name"], "metrics": ["count"], "policy": {"privacy_unit": "user_id"}}


def _worker(url: str, shape: str, ready: Semaphore, start: Event, seconds: float) -> None:
    ledger = Ledger.open(url)
    loss = LOSSES[shape]
    ready.release()
    start.wait()
    stop_at = time.monotonic() + seconds  # CLOCK_MONOTONIC: the same clock in every process
    while time.monotonic() < stop_at:
        ledger.charge(loss, query=QUERY, label="bench")
    ledger.close()


def charges_per_second(url: str, shape: str, processes: int, seconds: float) -> float:
    """Charges recorded per second by ``processes`` workers racing on a fresh ledger.

    The clock starts once every worker has imported telemagg and opened the ledger (which on a
    loaded machine can take several seconds).
    """
    Ledger(url, epsilon=1e9, delta=0.5).close()
    context = multiprocessing.get_context("spawn")
    ready, start = context.Semaphore(0), context.Event()
    workers = [
        context.Process(target=_worker, args=(url, shape, ready, start, seconds))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.acquire()
    start.set()
    for worker in workers:
        worker.join()
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(f"a worker failed on {url}")
    with Ledger.open(url) as ledger:
        ledger.verify()
        return len(ledger.charges()) / seconds


def fill(url: str, count: int, window: str | None) -> None:
    """A fresh ledger holding ``count`` charges up to now, written directly (with a window,
    spread over two windows, so that the window starts in the middle of the chain)."""
    with Ledger(url, epsilon=1e9, delta=0.5, window=window) as ledger:
        budget = ledger._budget
    loss = LOSSES["laplace"]
    # With a window, the charges span two windows: about half count, half are before it.
    span = 2 * budget.window_seconds if budget.window_seconds else count
    step = span / count
    start = datetime.now(UTC) - timedelta(seconds=span + 1)
    previous, running, rows = budget.genesis_hash, RunningSums(), []
    for seq in range(1, count + 1):
        running = running.plus(loss)
        charge = Charge(
            seq,
            start + timedelta(seconds=seq * step),
            *loss_fields(loss),
            QUERY,
            "bench",
            "bench",
            previous,
            "",
            running,
        ).sealed(None)
        rows.append(charge.row())
        previous = charge.hash
    store = open_store(url)
    with store.transaction(write=True) as tx:
        for first in range(0, len(rows), 10_000):
            tx.executemany(
                f"INSERT INTO {CHARGES.name} ({CHARGE_COLUMNS}) "
                f"VALUES ({', '.join('?' for _ in CHARGES.columns)})",
                rows[first : first + 10_000],
            )
        tx.execute(
            "UPDATE telemagg_ledger SET head_hash = ?, charge_count = ?, head_seal = ? "
            "WHERE id = 1",
            (previous, count, budget.seal(None, previous, count)),
        )
    store.close()


def charge_times(url: str, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (this process) seconds of one charge on the ledger at ``url``.

    CPU time leaves out waiting for the disk (fsync) and the server, which on a shared machine
    varies far more than anything the ledger's size could change.
    """
    walls, cpus = [], []
    with Ledger.open(url) as ledger:
        ledger.verify()
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            ledger.charge(LOSSES["laplace"], query=QUERY, label="bench")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


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
    parser.add_argument("--sizes", default="10,1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--no-contention", action="store_true", help="only the size table")
    parser.add_argument("--no-sizes", action="store_true", help="only the contention table")
    parser.add_argument("--postgres-url", default=os.environ.get("TELEMAGG_TEST_POSTGRES_URL"))
    parser.add_argument("--json", type=Path, default=None, help="write the size table here")
    args = parser.parse_args()

    backends = [("SQLite (WAL, synchronous=FULL)", sqlite_ledger)]
    if args.postgres_url:
        backends.append(("PostgreSQL (advisory lock)", lambda: postgres_ledger(args.postgres_url)))

    sizes = [] if args.no_sizes else [int(size) for size in args.sizes.split(",")]
    by_size = []
    for name, make in backends if sizes else []:
        for window in (None, "1d"):
            cells = []
            for size in sizes:
                with make() as url:
                    fill(url, size, window)
                    cells.append(charge_times(url, args.repeats))
            by_size.append((name, window, cells))
            print(
                f"{name:32} window={window}: "
                + "  ".join(f"{w * 1e3:.2f} ms ({c * 1e3:.2f} CPU)" for w, c in cells),
                flush=True,
            )

    if args.json is not None:
        cells_json = [
            {"backend": name, "window": window, "sizes": sizes,
             "wall": [w for w, _ in cells], "cpu": [c for _, c in cells]}
            for name, window, cells in by_size
        ]  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(cells_json, indent=1))

    rows = []
    for name, make in [] if args.no_contention else backends:
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
    if sizes:
        print("| backend | window | " + " | ".join(f"{n:,} charges" for n in sizes) + " |")
        print("|---|---|" + "---:|" * len(sizes))
    for name, window, cells in by_size:
        shown = " | ".join(f"{w * 1e3:.2f} ms ({c * 1e3:.2f} CPU)" for w, c in cells)
        print(f"| {name} | {window or 'none'} | {shown} |")
    if rows:
        print(f"\n| backend | release | 1 process | {args.processes} processes |")
        print("|---|---|---:|---:|")
        for name, shape, one, many in rows:
            print(f"| {name} | {shape} | {one:,.0f} charges/s | {many:,.0f} charges/s |")


if __name__ == "__main__":
    main()
