"""Streaming memory: 30M events in 1M-event batches from 200k users into one Aggregator.

The workload of issue 6: ``count`` + ``unit_count`` + ``sum`` of ``duration_ms`` (bounds
[0, 60000]) by ``event_name`` (200 Zipf-popular types), each user bounded to 4 partitions
and 2 events per partition, private partition selection at epsilon 1, delta 1e-6 at the end.
Batches come from ``telemetry_events`` (1M events each, its own seed); its user ids differ
from batch to batch, so each batch's users are mapped onto one fixed population of 200k ids
by activity rank (the busiest user of every batch is the same person), keeping the Zipf skew
across the stream.

Reported: peak RSS of the process (``resource.getrusage``, stdlib: it includes generating
each batch, as a real consumer holds its batch), the RSS and state size after each batch,
and events/s of ``Aggregator.add`` alone and of the whole loop. Target: peak RSS < 1.5 GB.
``--generate-only`` runs the loop without the Aggregator: the RSS that generating the
batches costs by itself.

Run from the repository root with the project's venv active::

    python benchmarks/bench_streaming.py --events 30000000 --batch 1000000 --users 200000

``--compare 20`` instead times the same events fed in 20 ``add`` calls against one ``add``
(issue 11: at most 2x; 10M events, 1M users, 2,000 event types)::

    python benchmarks/bench_streaming.py --events 10000000 --users 1000000 --compare 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

import telemagg as tm
from telemagg import _kernels
from telemagg.datasets import telemetry_events
from telemagg.errors import UntrackedReleaseWarning

# Benchmarks release without a ledger on purpose.
warnings.filterwarnings("ignore", category=UntrackedReleaseWarning)

TARGET_PEAK_BYTES = 1.5e9
TARGET_STREAM_RATIO = 2.0  # issue 11: n add batches cost at most 2x one aggregate
PAGE_BYTES = resource.getpagesize()
METRICS = [tm.count(), tm.unit_count(), tm.sum("duration_ms", bounds=(0, 60_000))]
POLICY = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)


def rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batches(
    n_events: int, batch_size: int, n_users: int, seed: int
) -> Iterator[dict[str, npt.NDArray[np.generic]]]:
    """The stream: ``telemetry_events`` batches whose users are one population of ``n_users``."""
    population = np.random.default_rng(seed).integers(1, 2**62, size=n_users)
    for i, start in enumerate(range(0, n_events, batch_size)):
        size = min(batch_size, n_events - start)
        events = telemetry_events(size, n_users=n_users, seed=seed + 1 + i)
        _, inverse, counts = np.unique(events["user_id"], return_inverse=True, return_counts=True)
        rank = np.empty(counts.size, dtype=np.int64)
        rank[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
        yield {
            "user_id": population[rank[inverse]],
            "event_name": events["event_name"],
            "duration_ms": events["duration_ms"],
        }


@dataclass(frozen=True)
class Step:
    events: int
    state_rows: int
    state_bytes: int
    rss: int


def state_size(agg: tm.Aggregator) -> tuple[int, int]:
    """Rows and bytes the state holds, bounded plus pending (white-box: what memory grows
    with). Reads no column, which would bound the pending rows and change what is timed."""
    state = agg._state
    row_bytes = 8 * (4 + len(agg._numeric) + len(agg._categorical))
    return state.rows_held, state.rows_held * row_bytes


def generate_only(n_events: int, batch_size: int, n_users: int, seed: int) -> str:
    baseline = rss_bytes()
    for batch in batches(n_events, batch_size, n_users, seed):
        del batch
    return (
        f"generating {n_events / 1e6:g}M events alone: peak RSS {_mb(peak_rss_bytes())}"
        f" (after imports {_mb(baseline)})"
    )


def run(n_events: int, batch_size: int, n_users: int, seed: int) -> str:
    baseline = rss_bytes()
    agg = tm.Aggregator(policy=POLICY, by="event_name", metrics=METRICS)
    steps: list[Step] = []
    adding = 0.0
    started = time.perf_counter()
    received = 0
    for batch in batches(n_events, batch_size, n_users, seed):
        t = time.perf_counter()
        agg.add(batch)
        adding += time.perf_counter() - t
        received += batch["user_id"].size
        del batch
        steps.append(Step(received, *state_size(agg), rss_bytes()))
        print(f"  {steps[-1]}", flush=True)
    loop = time.perf_counter() - started
    t = time.perf_counter()
    release = agg.release(epsilon=1.0, delta=1e-6)
    releasing = time.perf_counter() - t
    peak = peak_rss_bytes()
    assert release.accounting.received == n_events, release.accounting
    return report(
        n_events, batch_size, n_users, baseline, peak, steps, adding, loop, releasing, len(release)
    )


def release_in_batches(events: dict[str, npt.NDArray[np.generic]], n_batches: int) -> int:
    """``add`` the events in ``n_batches`` consecutive slices, then release; rows released."""
    agg = tm.Aggregator(policy=POLICY, by="event_name", metrics=METRICS)
    n = events["user_id"].size
    cuts = np.linspace(0, n, n_batches + 1).astype(int)
    for a, b in itertools.pairwise(cuts.tolist()):
        agg.add({name: column[a:b] for name, column in events.items()})
    return len(agg.release(epsilon=1.0, delta=1e-6))


def compare(
    n_events: int,
    n_batches: int,
    n_users: int,
    n_types: int,
    seed: int,
    repeats: int,
    json_path: Path | None = None,
) -> str:
    """Issue 11, item 4: the same events in ``n_batches`` ``add`` calls vs one ``aggregate``
    (one ``add`` of everything); medians of ``repeats`` interleaved runs, wall and CPU."""
    generated = telemetry_events(n_events, n_users=n_users, n_event_types=n_types, seed=seed)
    events = {name: generated[name] for name in ("user_id", "event_name", "duration_ms")}
    del generated
    timings: dict[int, tuple[list[float], list[float]]] = {1: ([], []), n_batches: ([], [])}
    _kernels.warm_up()  # the compiled kernels, if installed: loaded before timing
    release_in_batches({k: v[:20_000] for k, v in events.items()}, 2)  # warm-up
    for _ in range(repeats):
        for batches_ in timings:
            wall, cpu = time.perf_counter(), time.process_time()
            release_in_batches(events, batches_)
            timings[batches_][0].append(time.perf_counter() - wall)
            timings[batches_][1].append(time.process_time() - cpu)
    one_wall, one_cpu = (statistics.median(t) for t in timings[1])
    many_wall, many_cpu = (statistics.median(t) for t in timings[n_batches])
    verdict = "✓" if many_wall <= TARGET_STREAM_RATIO * one_wall else "✗"
    if json_path is not None:
        measured = {"events": n_events, "batches": n_batches, "one_wall": one_wall,
                    "one_cpu": one_cpu, "many_wall": many_wall, "many_cpu": many_cpu}  # fmt: skip
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(measured, indent=1))
    return "\n".join(
        [
            f"{n_events / 1e6:g}M events, {n_users:,} users, {n_types:,} event types;"
            f" policy 4 partitions x 2 events; count + unit_count + sum; median of {repeats}",
            "",
            "| run | wall s | CPU s | events/s (wall) |",
            "|---|---:|---:|---:|",
            f"| one `add` + release | {one_wall:.2f} | {one_cpu:.2f} |"
            f" {n_events / one_wall:,.0f} |",
            f"| {n_batches} `add` batches + release | {many_wall:.2f} | {many_cpu:.2f} |"
            f" {n_events / many_wall:,.0f} |",
            f"| ratio (target <= {TARGET_STREAM_RATIO:g}x) | {many_wall / one_wall:.2f}x"
            f" {verdict} | {many_cpu / one_cpu:.2f}x | |",
        ]
    )


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.0f} MB"


def report(
    n_events: int,
    batch_size: int,
    n_users: int,
    baseline: int,
    peak: int,
    steps: Sequence[Step],
    adding: float,
    loop: float,
    releasing: float,
    released: int,
) -> str:
    verdict = "✓" if peak < TARGET_PEAK_BYTES else "✗"
    shown = sorted({0, 1, 4, 9, len(steps) // 2, len(steps) - 1} & set(range(len(steps))))
    lines = [
        f"{n_events / 1e6:g}M events in {batch_size / 1e6:g}M-event batches from"
        f" {n_users:,} users; policy 4 partitions x 2 events; count + unit_count + sum",
        "",
        "| measure | value |",
        "|---|---|",
        f"| peak RSS (target < {_mb(TARGET_PEAK_BYTES)}) | {_mb(peak)} {verdict} |",
        f"| RSS after imports, before the first batch | {_mb(baseline)} |",
        f"| state held at the end (bounded + pending rows) | {steps[-1].state_rows:,} rows,"
        f" {_mb(steps[-1].state_bytes)} |",
        f"| `Aggregator.add` alone | {n_events / adding:,.0f} events/s ({adding:.1f} s) |",
        f"| whole loop, generating the batches included | {n_events / loop:,.0f} events/s"
        f" ({loop:.1f} s) |",
        f"| `release` (private partition selection) | {releasing:.2f} s, {released} partitions |",
        "",
        "| after batch | events | state rows | state | RSS |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {steps[i].events / 1e6:g}M | {steps[i].state_rows:,} |"
            f" {_mb(steps[i].state_bytes)} | {_mb(steps[i].rss)} |"
            for i in shown
        ),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000_000)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--generate-only", action="store_true", help="no Aggregator")
    parser.add_argument(
        "--compare",
        type=int,
        metavar="BATCHES",
        help="time BATCHES add calls against one add of the same --events (issue 11)",
    )
    parser.add_argument("--event-types", type=int, default=2_000, help="with --compare")
    parser.add_argument("--repeats", type=int, default=3, help="with --compare")
    parser.add_argument("--json", type=Path, default=None, help="with --compare: results")
    args = parser.parse_args(argv)
    if args.compare:
        text = compare(
            args.events,
            args.compare,
            args.users,
            args.event_types,
            args.seed,
            args.repeats,
            args.json,
        )
    else:
        measure = generate_only if args.generate_only else run
        text = measure(args.events, args.batch, args.users, args.seed)
    from bench_throughput import machine  # after measuring: its imports would add to the RSS

    print()
    print(machine())
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    print()
    print(text)


if __name__ == "__main__":
    main()
