"""Run the speed benchmark suite and print one table of targets against measurements.

From the repository root, with the project's venv active::

    python -m benchmarks            # the whole suite (7.7 min on a loaded 2-core machine)
    python -m benchmarks --quick    # smaller sizes, one repeat (about 1 minute)
    python -m benchmarks --no-anchors   # skip PipelineDP / OpenDP-polars (no anchors' venv)

Each benchmark runs as its own process (so that one's memory never counts against
another's peak RSS) and writes JSON under ``benchmarks/.data/suite/``; the anchors
(PipelineDP, OpenDP's polars context) run in their own venv, ``benchmarks/.anchors-venv``,
made by ``bench_throughput.py`` from ``_anchors/requirements.txt`` on first use. Rates and
ratios are of CPU time of the process (the machine may be shared; wall times are in each
benchmark's own output). Benchmarks and their targets (issue 11):

* ``throughput``: 10M events, 200 partitions (``bench_throughput.py``): telemagg >= 0.5x the
  numpy reference (one ``np.unique`` of the users + two ``bincount``) and >= 60x PipelineDP's
  LocalBackend (measured on 1M), on numpy and pandas input; peak RSS <= 3x the input columns;
* ``many_partitions``: 10M events, 1M users, 100,000 event types: >= 3M events/s;
* ``streaming``: 10M events in 20 ``add`` batches <= 2x one ``add`` (``bench_streaming.py``);
* ``ledger``: charge time flat within 2x from 10 to 100,000 recorded charges, on SQLite and,
  when ``TELEMAGG_TEST_POSTGRES_URL`` names a server, PostgreSQL (``bench_ledger.py``);
* ``partitions``: 500,000 public partitions, count + sum, 1M events, end to end >= 100x
  OpenDP's float Laplace sampling rate; raw discrete Laplace >= 20M values/s
  (``bench_partitions.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / ".data" / "suite"

Row = tuple[str, str, str, bool | None]  # what, target, measured, met (None: no target)


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: list[str]
    quick: list[str]
    rows: Callable[[Any], list[Row]]
    anchors: bool = False  # takes --no-anchors


def _mark(met: bool | None) -> str:
    return "" if met is None else ("✓" if met else "✗")


def _rate(m: dict[str, Any]) -> float:
    return float(m["n_events"] / statistics.median(m["cpu_seconds"]))


def throughput_rows(measured: list[dict[str, Any]]) -> list[Row]:
    found = {(m["engine"], m["n_events"]): m for m in measured}
    sizes = sorted({m["n_events"] for m in measured})
    size = sizes[-1]
    label = f"{size / 1e6:g}M events, 200 partitions"
    rows: list[Row] = []
    reference = found.get(("numpy: np.unique(user_id) + 2 bincounts", size))
    pipelinedp = [m for m in measured if m["engine"] == "PipelineDP LocalBackend"]
    for engine, form in (
        ("telemagg (dict of numpy arrays)", "numpy"),
        ("telemagg (pandas DataFrame)", "pandas"),
    ):
        m = found.get((engine, size))
        if m is None:
            continue
        if reference is not None:
            ratio = _rate(m) / _rate(reference)
            rows.append(
                (f"{label}, {form} input ÷ np.unique + 2 bincounts", ">= 0.5x",
                 f"{ratio:.2f}x ({_rate(m) / 1e6:.2f}M events/CPU-s)", ratio >= 0.5)
            )  # fmt: skip
        if pipelinedp:
            anchor = max(pipelinedp, key=lambda p: p["n_events"])
            ratio = _rate(m) / _rate(anchor)
            rows.append(
                (f"{label}, {form} input ÷ PipelineDP LocalBackend"
                 f" ({anchor['n_events'] / 1e6:g}M)", ">= 60x",
                 f"{ratio:.0f}x (PipelineDP {_rate(anchor):,.0f} events/CPU-s)", ratio >= 60)
            )  # fmt: skip
        if m.get("peak_extra_bytes") and m.get("input_bytes"):
            rss = (m["input_bytes"] + m["peak_extra_bytes"]) / m["input_bytes"]
            rows.append(
                (f"{label}, {form} input: peak RSS / input columns", "<= 3x",
                 f"{rss:.2f}x ({m['input_bytes'] / 1e6:,.0f} MB in,"
                 f" +{m['peak_extra_bytes'] / 1e6:,.0f} MB)", rss <= 3.0)
            )  # fmt: skip
    return rows


def many_partitions_rows(measured: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for m in measured:
        if not m["engine"].startswith("telemagg"):
            continue
        form = "numpy" if "numpy" in m["engine"] else "pandas"
        rate = _rate(m)
        rows.append(
            (f"{m['n_events'] / 1e6:g}M events, ~100k partitions, {form} input", ">= 3M events/s",
             f"{rate / 1e6:.2f}M events/CPU-s", rate >= 3e6)
        )  # fmt: skip
    return rows


def streaming_rows(m: dict[str, Any]) -> list[Row]:
    ratio = m["many_cpu"] / m["one_cpu"]
    return [
        (f"{m['events'] / 1e6:g}M events in {m['batches']} add batches ÷ one add", "<= 2x",
         f"{ratio:.2f}x ({m['many_cpu']:.1f} vs {m['one_cpu']:.1f} CPU s)", ratio <= 2.0)
    ]  # fmt: skip


def ledger_rows(measured: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for cell in measured:
        cpu = cell["cpu"]
        spread = max(cpu) / min(cpu)
        backend = cell["backend"].split(" ")[0]
        window = cell["window"] or "no window"
        rows.append(
            (f"ledger charge, {backend}, {window}: {cell['sizes'][0]:,} to"
             f" {cell['sizes'][-1]:,} charges", "within 2x",
             f"{spread:.2f}x ({min(cpu) * 1e3:.2f}-{max(cpu) * 1e3:.2f} ms CPU)", spread <= 2.0)
        )  # fmt: skip
    return rows


def partitions_rows(m: dict[str, Any]) -> list[Row]:
    opendp = m["opendp_laplace_values_per_cpu_second"]
    rows: list[Row] = []
    for keys in ("int", "str"):
        rate = m[f"{keys}_keys_values_per_cpu_second"]
        rows.append(
            (f"{m['partitions']:,} public partitions ({keys} keys), count + sum,"
             f" {m['events'] / 1e6:g}M events ÷ OpenDP float Laplace", ">= 100x",
             f"{rate / opendp:.1f}x ({m[f'{keys}_keys_cpu_seconds']:.2f} CPU s;"
             f" OpenDP {opendp:,.0f} values/CPU-s)", rate >= 100 * opendp)
        )  # fmt: skip
    for key, value in m.items():
        if key.startswith("sampler_scale_"):
            scale = key.removeprefix("sampler_scale_").removesuffix("_values_per_cpu_second")
            rows.append(
                (f"discrete Laplace sampler, scale {scale}, one core", ">= 20M values/s",
                 f"{value / 1e6:.1f}M values/CPU-s", value >= 20e6)
            )  # fmt: skip
    return rows


THROUGHPUT_FULL = ["--sizes", "1000000,10000000", "--repeats", "3", "--pipelinedp-max", "1000000"]
MANY = ["--users", "1000000", "--event-types", "100000", "--no-anchors", "--repeats", "1"]
SUITE = [
    Bench("throughput", "bench_throughput.py", THROUGHPUT_FULL,
          ["--sizes", "1000000", "--repeats", "1"], throughput_rows, anchors=True),
    Bench("many_partitions", "bench_throughput.py", ["--sizes", "10000000", *MANY],
          ["--sizes", "2000000", "--users", "200000", *MANY[2:]], many_partitions_rows),
    Bench("streaming", "bench_streaming.py",
          ["--compare", "20", "--events", "10000000", "--users", "1000000", "--repeats", "1"],
          ["--compare", "20", "--events", "2000000", "--users", "200000", "--repeats", "1"],
          streaming_rows),
    Bench("ledger", "bench_ledger.py",
          ["--no-contention", "--sizes", "10,1000,10000,100000", "--repeats", "30"],
          ["--no-contention", "--sizes", "10,10000", "--repeats", "10"], ledger_rows),
    Bench("partitions", "bench_partitions.py", ["--repeats", "7"],
          ["--repeats", "1", "--sampler-values", "2000000"], partitions_rows),
]  # fmt: skip


def run(bench: Bench, quick: bool, anchors: bool) -> tuple[list[Row], float, str]:
    """Run one benchmark in its own process; its rows, wall seconds and any failure."""
    out = OUT / f"{bench.name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full)]
    command += ["--json", str(out)]
    if bench.anchors and not anchors:
        command.append("--no-anchors")
    print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=HERE.parent)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not out.exists():
        return [], seconds, f"exit code {done.returncode}"
    return bench.rows(json.loads(out.read_text())), seconds, ""


def table(rows: Sequence[Row]) -> str:
    lines = ["| benchmark | target | measured | met |", "|---|---|---|---|"]
    lines += [
        f"| {what} | {target} | {measured} | {_mark(met)} |" for what, target, measured, met in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument(
        "--no-anchors", action="store_true", help="skip PipelineDP and OpenDP-polars"
    )
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    chosen = [b for b in SUITE if not args.only or b.name in args.only.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for bench in chosen:
        found, seconds, failure = run(bench, args.quick, not args.no_anchors)
        if failure:
            rows.append((bench.name, "", f"FAILED ({failure})", False))
        rows += found
        print(f"== {bench.name}: {seconds:.0f} s", flush=True)
    total = time.perf_counter() - started
    sys.path.insert(0, str(HERE))
    from bench_throughput import machine

    print()
    print(machine())
    print(
        f"{'quick' if args.quick else 'full'} suite: {total / 60:.1f} min;"
        f" 1-minute load average at the end: {os.getloadavg()[0]:.1f}"
        " (ratios and rates are of CPU time)"
    )
    print()
    print(table(rows))
    return 0 if all(met is not False for *_, met in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
