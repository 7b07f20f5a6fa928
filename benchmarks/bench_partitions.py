"""Many public partitions, end to end, against OpenDP's sampling rate; the raw sampler rate.

Issue 11: telemetry released by many keys at once. The workload: ``--events`` events (1M)
from 200,000 users over ``--partitions`` public partitions (500,000; integer keys, and
string keys ``"p0"``, ``"p1"``, ...; ``str-fresh``: the same strings, the events' as
objects of their own, as read from a file rather than built from the partition list), each
user bounded to 4 partitions and 2 events per partition, ``count`` + ``sum`` of a value in
[0, 10], epsilon 1, every public partition
released (so 2 noisy values per partition). Timed from the events and the partition list in
memory to the released table (``Aggregator(partitions=...)``, ``add``, ``release``), in CPU
seconds of the process (the machine may be shared).

Anchors, measured in the same run: OpenDP's float Laplace sampler (``make_laplace`` on a
vector of float64, the noise of a float-valued release) in noisy values per CPU-second; the
target is telemagg's end-to-end rate >= 100x that. And the raw sampler: telemagg's exact
discrete Laplace (``_samplers.discrete_laplace`` with bits from the OS CSPRNG) in values per
CPU-second on one core, target >= 20M.

Run from the repository root with the project's venv active::

    python benchmarks/bench_partitions.py --json benchmarks/.data/partitions.json
    python benchmarks/bench_partitions.py --keys int,str-fresh --no-anchors  # telemagg only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import telemagg as tm
from telemagg import _kernels, _samplers
from telemagg.errors import UntrackedReleaseWarning

TARGET_VS_OPENDP = 100.0
TARGET_SAMPLER_RATE = 20e6
METRICS = [tm.count(), tm.sum("value", bounds=(0, 10))]
POLICY = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)


def workload(n_events: int, n_partitions: int, keys: str, seed: int) -> tuple[dict[str, Any], Any]:
    """Events and the public partitions (integer or string keys)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, n_partitions, n_events)
    if keys in ("str", "str-fresh"):
        names = np.array([f"p{i}" for i in range(n_partitions)], dtype=object)
        column, partitions = names[codes], names
        if keys == "str-fresh":  # new objects: the events' strings are not the listed ones
            column = np.array(["".join(("p", v[1:])) for v in column.tolist()], dtype=object)
    else:
        column, partitions = codes, np.arange(n_partitions)
    events = {
        "user_id": rng.integers(0, 200_000, n_events),
        "key": column,
        "value": rng.random(n_events) * 10,
    }
    return events, partitions


def release(events: dict[str, Any], partitions: Any) -> int:
    agg = tm.Aggregator(policy=POLICY, by="key", metrics=METRICS, partitions=partitions)
    agg.add(events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrackedReleaseWarning)
        return len(agg.release(epsilon=1.0).to_dict()["key"])


def cpu_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return statistics.median(times)


def opendp_laplace_rate(n: int, repeats: int) -> float:
    """OpenDP's float Laplace sampler: noisy values per CPU-second (a vector of ``n``)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    laplace = dp.m.make_laplace(*space, scale=1.0)
    data = [0.0] * n
    laplace(data[:100])  # warm-up
    return n / cpu_seconds(lambda: laplace(data), repeats)


def sampler_rate(n: int, scale: float, repeats: int) -> float:
    """telemagg's exact discrete Laplace, OS CSPRNG bits: values per CPU-second."""
    source = _samplers.SystemBits()
    _samplers.discrete_laplace(1000, scale, source)  # warm-up: tables for this scale
    return n / cpu_seconds(lambda: _samplers.discrete_laplace(n, scale, source), repeats)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--opendp-values", type=int, default=200_000)
    parser.add_argument("--sampler-values", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keys", default="int,str", help="comma-separated: int, str, str-fresh")
    parser.add_argument("--no-anchors", action="store_true", help="skip OpenDP and the sampler")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"events": args.events, "partitions": args.partitions}
    results["compiled_kernels"] = _kernels.warm_up()  # loaded before timing, as at a start
    print(f"compiled bounding kernels: {results['compiled_kernels']}")
    noisy_values = 2 * args.partitions  # count and sum of every public partition
    release(*workload(20_000, 1_000, "int", args.seed))  # warm-up: imports, tables
    for keys in args.keys.split(","):
        events, partitions = workload(args.events, args.partitions, keys, args.seed)
        seconds = cpu_seconds(lambda e=events, p=partitions: release(e, p), args.repeats)
        results[f"{keys}_keys_cpu_seconds"] = seconds
        results[f"{keys}_keys_values_per_cpu_second"] = noisy_values / seconds
        print(f"{keys} keys: {seconds:.2f} CPU s, {noisy_values / seconds:,.0f} values/CPU-s")
    if args.no_anchors:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
        return
    results["opendp_laplace_values_per_cpu_second"] = opendp_laplace_rate(
        args.opendp_values, args.repeats
    )
    print(f"OpenDP float Laplace: {results['opendp_laplace_values_per_cpu_second']:,.0f}/CPU-s")
    for scale in (1.0, 1000.0):
        rate = sampler_rate(args.sampler_values, scale, args.repeats)
        results[f"sampler_scale_{scale:g}_values_per_cpu_second"] = rate
        print(f"discrete Laplace, scale {scale:g}: {rate:,.0f} values/CPU-s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
