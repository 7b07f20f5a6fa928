"""PipelineDP's LocalBackend on the throughput workload (see ../bench_throughput.py).

User-level COUNT, PRIVACY_ID_COUNT and SUM of duration_ms clamped to [0, 60000] by
event_name; each user keeps at most 4 partitions and 2 events per partition; partitions are
selected privately (PipelineDP's default truncated-geometric thresholding); epsilon 1,
delta 1e-6, Laplace noise. Input: a list of (user_id, event_name, duration_ms) tuples,
PipelineDP's natural local input (building it is not timed).
"""

from __future__ import annotations

from typing import Any

import pipeline_dp
from _harness import run

PARAMS = pipeline_dp.AggregateParams(
    metrics=[
        pipeline_dp.Metrics.COUNT,
        pipeline_dp.Metrics.PRIVACY_ID_COUNT,
        pipeline_dp.Metrics.SUM,
    ],
    noise_kind=pipeline_dp.NoiseKind.LAPLACE,
    max_partitions_contributed=4,
    max_contributions_per_partition=2,
    min_value=0.0,
    max_value=60_000.0,
)
EXTRACTORS = pipeline_dp.DataExtractors(
    privacy_id_extractor=lambda row: row[0],
    partition_extractor=lambda row: row[1],
    value_extractor=lambda row: row[2],
)


def prepare(table: Any) -> list[tuple[int, str, float]]:
    return list(
        zip(
            table.column("user_id").to_pylist(),
            table.column("event_name").to_pylist(),
            table.column("duration_ms").to_pylist(),
            strict=True,
        )
    )


def aggregate(rows: list[tuple[int, str, float]], n_events: int) -> int:
    accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=1.0, total_delta=1e-6)
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    result = engine.aggregate(rows, PARAMS, EXTRACTORS)  # public_partitions=None: private
    accountant.compute_budgets()
    return len(list(result))


if __name__ == "__main__":
    from importlib.metadata import version

    engine_version = f"{version('pipeline-dp')} (python-dp {version('python-dp')})"
    run("PipelineDP LocalBackend", engine_version, prepare, aggregate)
