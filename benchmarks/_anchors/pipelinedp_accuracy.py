"""PipelineDP's LocalBackend on the accuracy workload (see ../bench_accuracy.py).

Reads the events (parquet: user_id, the partition columns, the value column) and a JSON
configuration (partition columns, value column, bounds, percentiles, contribution bounds,
epsilon, delta, repetitions, and ``"tune": true`` to let PipelineDP choose max_partitions
privately, as its pip package can, see :func:`tuned_bounds`); runs PipelineDP's COUNT,
MEAN and PERCENTILE metrics with Laplace noise and private partition selection once per
repetition, and prints one JSON object on its last stdout line: ``{"engine", "version",
"runs": [[[key..., count, mean, p...], ...], ...], "tuned": [[l0, linf], ...]}``.
PipelineDP's utility-analysis tuning (``parameter_tuning``) is not in its pip package.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pipeline_dp
import pyarrow.parquet as pq


def tuned_bounds(rows: list[tuple[Any, ...]], config: dict[str, Any]) -> tuple[int, int]:
    """PipelineDP's own private choice of max_partitions (``DPEngine.
    calculate_private_contribution_bounds``, an exponential mechanism; the pip package
    tunes only this one, and only for COUNT), at the same tuning share of epsilon as
    telemagg's; max_contributions stays the configured one."""
    share = config["tuning_share"]
    accountant = pipeline_dp.NaiveBudgetAccountant(
        total_epsilon=config["epsilon"] * share, total_delta=0.0
    )
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    params = pipeline_dp.CalculatePrivateContributionBoundsParams(
        aggregation_noise_kind=pipeline_dp.NoiseKind.LAPLACE,
        aggregation_eps=config["epsilon"] * (1 - share),
        aggregation_delta=config["delta"],
        calculation_eps=config["epsilon"] * share,
        max_partitions_contributed_upper_bound=100,
    )
    partitions = sorted({row[1] for row in rows})  # every operator: public in this data
    result = engine.calculate_private_contribution_bounds(rows, params, extractors(), partitions)
    accountant.compute_budgets()
    bounds = next(iter(result))
    return int(bounds.max_partitions_contributed), int(config["max_contributions"])


def extractors() -> Any:
    return pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda row: row[0],
        partition_extractor=lambda row: row[1],
        value_extractor=lambda row: row[2],
    )


def release_once(rows: list[tuple[Any, ...]], config: dict[str, Any]) -> list[list[Any]]:
    """One DP release; rows are (user_id, partition key tuple, value)."""
    percentiles = [100.0 * level for level in config["levels"]]
    params = pipeline_dp.AggregateParams(
        metrics=[
            pipeline_dp.Metrics.COUNT,
            pipeline_dp.Metrics.MEAN,
            *(pipeline_dp.Metrics.PERCENTILE(p) for p in percentiles),
        ],
        noise_kind=pipeline_dp.NoiseKind.LAPLACE,
        max_partitions_contributed=config["max_partitions"],
        max_contributions_per_partition=config["max_contributions"],
        min_value=float(config["bounds"][0]),
        max_value=float(config["bounds"][1]),
    )
    accountant = pipeline_dp.NaiveBudgetAccountant(
        total_epsilon=config["epsilon"], total_delta=config["delta"]
    )
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    result = engine.aggregate(rows, params, extractors())  # public_partitions=None: private
    accountant.compute_budgets()
    out = []
    for key, metrics in result:
        values = metrics._asdict()
        quantiles = [values[name] for name in values if name.startswith("percentile_")]
        out.append([*key, values["count"], values["mean"], *quantiles])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="PipelineDP on the accuracy workload.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True, help="JSON, see bench_accuracy.py")
    args = parser.parse_args()
    config = json.loads(args.config)
    table = pq.read_table(args.data)
    keys = list(zip(*(table.column(c).to_pylist() for c in config["by"]), strict=True))
    rows = list(
        zip(
            table.column("user_id").to_pylist(),
            keys,
            table.column(config["column"]).to_pylist(),
            strict=True,
        )
    )
    runs, tuned = [], []
    for _ in range(config["repetitions"]):
        if config.get("tune"):
            l0, linf = tuned_bounds(rows, config)
            config = {**config, "max_partitions": l0, "max_contributions": linf}
            config["epsilon"] = config["epsilon"] * (1 - config["tuning_share"])
            tuned.append([l0, linf])
        runs.append(release_once(rows, config))

    from importlib.metadata import version

    engine_version = f"{version('pipeline-dp')} (python-dp {version('python-dp')})"
    print(
        json.dumps(
            {
                "engine": "PipelineDP LocalBackend",
                "version": engine_version,
                "runs": runs,
                "tuned": tuned,
            }
        )
    )


if __name__ == "__main__":
    main()
