"""Throughput of one user-level DP release: telemagg vs PipelineDP vs OpenDP vs ``np.unique``.

The workload of issue 2, item 13: user-level ``count`` + ``unit_count`` + ``sum`` of
``duration_ms`` clamped to [0, 60000], by ``event_name`` (200 event types, Zipf-popular),
one user per ~20 events with Zipf-skewed activity (``telemagg.datasets.telemetry_events``),
each user bounded to 4 partitions and 2 events per partition, private partition selection,
epsilon 1, delta 1e-6. Engines, each timed from its favourite in-memory input to the released
table (median of ``--repeats`` runs after a warm-up on 20k rows), in wall-clock time and in
CPU time of the process (all threads; steadier than wall time on a shared machine):

* telemagg ``tm.aggregate`` on a dict of numpy arrays, and on a pandas DataFrame;
* the numpy reference of issue 11: one ``np.unique`` of the user column (with its inverse)
  and two ``np.bincount`` over it (events and summed ``duration_ms`` per user);
* PipelineDP's LocalBackend (list of row tuples) and OpenDP's polars ``Context`` (polars
  DataFrame): anchors, run in their own venv (benchmarks/.anchors-venv, created here from
  ``_anchors/requirements.txt``) so their pins never touch the project's. They read the
  workload from benchmarks/.data/ as parquet and report JSON timings.

Run from the repository root with the project's venv active::

    python benchmarks/bench_throughput.py --sizes 1000000,10000000 --repeats 3

Targets (issue 11): telemagg >= 60x PipelineDP and >= 0.5x the numpy reference, on numpy
and pandas inputs; peak RSS <= 3x the input columns. ``--event-types 100000 --users
1000000`` gives the many-partitions workload (target >= 3M events/s at 10M events).
After the timed runs, one more run of each telemagg input measures the peak RSS it adds
(Linux: the peak is reset through ``/proc/self/clear_refs`` first).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _anchors._harness import WARMUP_ROWS, Aggregate, time_runs

import telemagg as tm
from telemagg import _kernels
from telemagg.datasets import telemetry_events
from telemagg.errors import UntrackedReleaseWarning

# Benchmarks release without a ledger on purpose.
warnings.filterwarnings("ignore", category=UntrackedReleaseWarning)

HERE = Path(__file__).resolve().parent
ANCHORS = HERE / "_anchors"
ANCHORS_VENV = HERE / ".anchors-venv"
DATA = HERE / ".data"
COLUMNS = ("user_id", "event_name", "duration_ms")
TARGET_VS_PIPELINEDP = 60.0
TARGET_VS_UNIQUE = 0.5
TARGET_RSS_OVER_INPUT = 3.0

TELEMAGG_NUMPY = "telemagg (dict of numpy arrays)"
TELEMAGG_PANDAS = "telemagg (pandas DataFrame)"
NP_UNIQUE = "numpy: np.unique(user_id) + 2 bincounts"
PIPELINEDP = "PipelineDP LocalBackend"
OPENDP = "OpenDP polars Context"
ANCHOR_SCRIPTS = {OPENDP: "opendp_polars.py", PIPELINEDP: "pipelinedp_local.py"}


@dataclass(frozen=True)
class Measurement:
    engine: str
    version: str
    n_events: int
    seconds: list[float]
    cpu_seconds: list[float]
    output_rows: int
    peak_extra_bytes: int | None = None  # peak RSS a run adds (telemagg only)
    input_bytes: int | None = None

    @property
    def events_per_second(self) -> float:
        """Wall-clock rate of the median run."""
        return self.n_events / statistics.median(self.seconds)

    @property
    def events_per_cpu_second(self) -> float:
        """Rate per second of CPU time (all threads) of the median run."""
        return self.n_events / statistics.median(self.cpu_seconds)


def telemagg_release(events: Any, n_events: int) -> int:
    """The workload through ``tm.aggregate``; returns the number of released partitions."""
    release = tm.aggregate(
        events,
        by=["event_name"],
        metrics=[tm.count(), tm.unit_count(), tm.sum("duration_ms", bounds=(0, 60_000))],
        policy=tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2),
        epsilon=1.0,
        delta=1e-6,
    )
    return len(release.to_pandas())


def numpy_reference(events: dict[str, np.ndarray], n_events: int) -> int:
    """One pass touching every user: np.unique of the user column and two bincounts."""
    users, inverse = np.unique(events["user_id"], return_inverse=True)
    np.bincount(inverse, minlength=users.size)
    np.bincount(inverse, weights=events["duration_ms"], minlength=users.size)
    return int(users.size)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field))
    return int(line.split()[1]) * 1024


def peak_extra_bytes(aggregate: Aggregate, data: Any, n_events: int) -> int | None:
    """Peak RSS one run adds to what the process held before it (Linux only)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS:")
    aggregate(data, n_events)
    return _status_bytes("VmHWM:") - before


def input_bytes(events: dict[str, np.ndarray]) -> int:
    """Bytes of the input columns (object columns: their pointers and distinct strings)."""
    total = 0
    for column in events.values():
        total += column.nbytes
        if column.dtype == object:
            total += sum(sys.getsizeof(v) for v in set(column[:100_000].tolist()))
    return total


def anchors_python() -> Path:
    """The anchors' interpreter; creates or updates their venv when the requirements change."""
    requirements = ANCHORS / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    marker = ANCHORS_VENV / "requirements.sha256"
    python = ANCHORS_VENV / "bin" / "python"
    if marker.exists() and marker.read_text() == digest and python.exists():
        return python
    print(f"setting up the anchors' venv in {ANCHORS_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(ANCHORS_VENV)], check=True)
    install = [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    subprocess.run(install, check=True)
    marker.write_text(digest)
    return python


def write_workload(
    n_events: int, seed: int, n_users: int | None, n_types: int
) -> tuple[dict[str, np.ndarray], Path]:
    """The workload's columns in memory and as parquet for the anchors."""
    generated = telemetry_events(n_events, seed=seed, n_users=n_users, n_event_types=n_types)
    events = {name: generated[name] for name in COLUMNS}
    table = pa.table(
        {
            "user_id": pa.array(events["user_id"]),
            "event_name": pa.array(events["event_name"], type=pa.string()),
            "duration_ms": pa.array(events["duration_ms"]),
        }
    )
    DATA.mkdir(exist_ok=True)
    path = DATA / f"throughput-{n_events}-{n_users}-{n_types}-seed{seed}.parquet"
    pq.write_table(table, path)
    return events, path


def measure_in_process(
    engine: str, version: str, aggregate: Aggregate, data: Any, warmup: Any, repeats: int
) -> Measurement:
    n_events = len(data["user_id"])
    return Measurement(
        engine, version, n_events, **time_runs(aggregate, data, warmup, n_events, repeats)
    )


def measure_anchor(python: Path, engine: str, path: Path, repeats: int) -> Measurement:
    script = ANCHORS / ANCHOR_SCRIPTS[engine]
    command = [str(python), str(script), "--data", str(path), "--repeats", str(repeats)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(**result)


def measure_size(
    n_events: int,
    seed: int,
    repeats: int,
    python: Path | None,
    with_pipelinedp: bool,
    workload: tuple[int | None, int],
) -> list[Measurement]:
    events, path = write_workload(n_events, seed, *workload)
    frame = pd.DataFrame(events)
    head = {name: column[:WARMUP_ROWS] for name, column in events.items()}
    version = tm.__version__
    size = input_bytes(events)
    measured = [
        measure_in_process(NP_UNIQUE, np.__version__, numpy_reference, events, head, repeats),
        replace(
            measure_in_process(TELEMAGG_NUMPY, version, telemagg_release, events, head, repeats),
            peak_extra_bytes=peak_extra_bytes(telemagg_release, events, n_events),
            input_bytes=size,
        ),
        replace(
            measure_in_process(
                TELEMAGG_PANDAS, version, telemagg_release, frame, frame.iloc[:WARMUP_ROWS], repeats
            ),
            peak_extra_bytes=peak_extra_bytes(telemagg_release, frame, n_events),
            input_bytes=size,
        ),
    ]
    if python is not None:
        measured.append(measure_anchor(python, OPENDP, path, repeats))
        if with_pipelinedp:
            measured.append(measure_anchor(python, PIPELINEDP, path, repeats))
    for measurement in measured:
        print(
            f"  {measurement.engine}: {measurement.events_per_second:,.0f} events/s, "
            f"{measurement.events_per_cpu_second:,.0f} events/CPU-s",
            flush=True,
        )
    return measured


def _millions(n_events: int) -> str:
    return f"{n_events / 1e6:g}M"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def report(measured: Sequence[Measurement], sizes: Sequence[int]) -> str:
    """Markdown tables: rates per engine and size, then telemagg's ratios to the targets.

    Ratios are of wall-clock rates, with the ratio of CPU-time rates in parentheses.
    """
    found = {(m.engine, m.n_events): m for m in measured}
    engines = list(dict.fromkeys(m.engine for m in measured))

    def rates(engine: str, n_events: int) -> list[str]:
        if (engine, n_events) not in found:
            return ["not run", ""]
        m = found[engine, n_events]
        return [f"{m.events_per_second:,.0f}", f"{m.events_per_cpu_second:,.0f}"]

    rates_table = _table(
        [
            "engine",
            *(f"{_millions(n)}: {kind}" for n in sizes for kind in ("events/s", "events/CPU-s")),
            "rows out",
        ],
        [
            [
                engine,
                *(cell for n in sizes for cell in rates(engine, n)),
                " / ".join(
                    str(found[engine, n].output_rows) for n in sizes if (engine, n) in found
                ),
            ]
            for engine in engines
        ],
    )

    pipelinedp_sizes = [n for n in sizes if (PIPELINEDP, n) in found]
    notes: list[str] = []

    def reference(engine: str, n_events: int) -> tuple[Measurement | None, str]:
        if (engine, n_events) in found:
            return found[engine, n_events], ""
        if engine == PIPELINEDP and pipelinedp_sizes:
            largest = max(pipelinedp_sizes)
            notes.append(
                f"† PipelineDP was measured up to {_millions(largest)} events "
                "(--pipelinedp-max); larger sizes are compared with its rate there."
            )
            return found[engine, largest], " †"
        return None, ""

    def ratio_cell(engine: str, versus: str, n_events: int, target: float | None) -> str:
        denominator, mark = reference(versus, n_events)
        if (engine, n_events) not in found or denominator is None:
            return "n/a"
        m = found[engine, n_events]
        wall = m.events_per_second / denominator.events_per_second
        cpu = m.events_per_cpu_second / denominator.events_per_cpu_second
        verdict = "" if target is None else (" ✓" if wall >= target else " ✗")
        return f"{wall:.3g}x ({cpu:.3g}x){mark}{verdict}"

    comparisons: list[tuple[str, str, float | None]] = [
        (TELEMAGG_NUMPY, PIPELINEDP, TARGET_VS_PIPELINEDP),
        (TELEMAGG_PANDAS, PIPELINEDP, TARGET_VS_PIPELINEDP),
        (TELEMAGG_NUMPY, NP_UNIQUE, TARGET_VS_UNIQUE),
        (TELEMAGG_PANDAS, NP_UNIQUE, TARGET_VS_UNIQUE),
        (TELEMAGG_NUMPY, OPENDP, None),
    ]
    ratios_table = _table(
        ["ratio: wall (CPU)", *(_millions(n) for n in sizes), "target"],
        [
            [
                f"{engine} ÷ {versus}",
                *(ratio_cell(engine, versus, n, target) for n in sizes),
                "" if target is None else f">= {target:g}x",
            ]
            for engine, versus, target in comparisons
        ],
    )
    memory_rows = [
        [
            f"{m.engine}, {_millions(m.n_events)}",
            f"{m.input_bytes / 1e6:,.0f} MB",
            f"{m.peak_extra_bytes / 1e6:,.0f} MB",
            _rss_ratio(m),
        ]
        for m in measured
        if m.peak_extra_bytes is not None and m.input_bytes
    ]
    memory_table = _table(
        [
            "run",
            "input columns",
            "peak RSS added by the run",
            f"(input + added) / input (target <= {TARGET_RSS_OVER_INPUT:g}x)",
        ],
        memory_rows,
    )
    return "\n".join(
        [*rates_table, "", *ratios_table, "", *memory_table, "", *dict.fromkeys(notes)]
    )


def _rss_ratio(m: Measurement) -> str:
    assert m.peak_extra_bytes is not None
    assert m.input_bytes
    ratio = (m.input_bytes + m.peak_extra_bytes) / m.input_bytes
    return f"{ratio:.2f}x {'✓' if ratio <= TARGET_RSS_OVER_INPUT else '✗'}"


def machine() -> str:
    """CPU, cores, memory and interpreter versions, for the README's Machine section."""
    cpu = _first_line_with(["lscpu"], "Model name:") or platform.processor()
    memory_kib = _first_line_with(["cat", "/proc/meminfo"], "MemTotal:").removesuffix(" kB")
    memory = f"{int(memory_kib) / 2**20:.1f} GiB memory" if memory_kib.isdigit() else ""
    return (
        f"CPU: {cpu}; {os.cpu_count()} cores; {memory}\n"
        f"Python {platform.python_version()} ({platform.system()} {platform.release()}), "
        f"numpy {np.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}; "
        f"bounding: {kernels_used()}"
    )


def kernels_used() -> str:
    """Which bounding kernels run: the compiled ones (loaded before timing, as a service
    would at start: ``_kernels.warm_up``) or numpy's."""
    if not _kernels.warm_up():
        return "numpy (numba absent or TELEMAGG_KERNELS=numpy)"
    import numba

    return f"numba {numba.__version__} kernels"


def _first_line_with(command: list[str], prefix: str) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    found = (line for line in output.splitlines() if line.startswith(prefix))
    return next((line.removeprefix(prefix).strip() for line in found), "")


def _sizes(text: str) -> list[int]:
    return [int(float(size)) for size in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_sizes, default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--pipelinedp-max",
        type=int,
        default=None,
        help="run PipelineDP only up to this many events (it is slow); default: every size",
    )
    parser.add_argument("--no-anchors", action="store_true", help="telemagg and np.unique only")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--users", type=int, default=None, help="default: one per 20 events")
    parser.add_argument("--event-types", type=int, default=200, help="partitions")
    parser.add_argument("--json", type=Path, default=DATA / "throughput.json")
    args = parser.parse_args(argv)
    print(f"bounding: {kernels_used()}", flush=True)

    python = None if args.no_anchors else anchors_python()
    measured: list[Measurement] = []
    for n_events in args.sizes:
        print(f"{n_events:,} events", flush=True)
        with_pipelinedp = args.pipelinedp_max is None or n_events <= args.pipelinedp_max
        measured += measure_size(
            n_events,
            args.seed,
            args.repeats,
            python,
            with_pipelinedp,
            (args.users, args.event_types),
        )

    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps([asdict(m) for m in measured], indent=1))
    versions = dict.fromkeys(f"{m.engine} {m.version}" for m in measured)
    print()
    print(machine())
    print("versions: " + "; ".join(versions))
    print()
    print(report(measured, args.sizes))


if __name__ == "__main__":
    main()
