"""OpenDP's polars Context on the throughput workload (see ../bench_throughput.py).

The privacy unit is the user (``identifier="user_id"``, one identifier per person); each
user is truncated to 2 rows per event_name and 4 event_names, then ``dp.len()``,
``n_unique(user_id)`` and the sum of duration_ms clamped to [0, 60000] are released per
event_name with private key selection; epsilon 1, delta 1e-6 (Laplace noise).

Public descriptors OpenDP needs for a float sum: a margin bounding the rows (``max_length``,
the data set size) and the number of event names (``max_groups``, the 200 the product
defines). ``truncate_num_groups(keep="first")``: the default ``keep="sample"`` fails in
OpenDP 0.16 with its pinned polars 1.36.1 and a single grouping column (DuplicateError:
"multiple fields with name 'event_name'"); "first" does the same amount of work.
Input: a polars DataFrame (built from the parquet file, not timed).
"""

from __future__ import annotations

from typing import Any

import opendp.prelude as dp
import polars as pl
from _harness import run

dp.enable_features("contrib")
N_EVENT_TYPES = 200


def prepare(table: Any) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def aggregate(frame: pl.DataFrame, n_events: int) -> int:
    context = dp.Context.compositor(
        data=frame.lazy(),
        privacy_unit=dp.unit_of(contributions=1, identifier=pl.col("user_id")),
        privacy_loss=dp.loss_of(epsilon=1.0, delta=1e-6),
        split_evenly_over=1,
        margins=[
            dp.polars.Margin(max_length=n_events),
            dp.polars.Margin(
                by=[pl.col("event_name")], max_length=n_events, max_groups=N_EVENT_TYPES
            ),
        ],
    )
    query = (
        context.query()
        .truncate_per_group(2, by=[pl.col("event_name")])
        .truncate_num_groups(4, by=[pl.col("event_name")], keep="first")
        .group_by("event_name")
        .agg(
            dp.len(signed=False),
            pl.col("user_id").dp.n_unique(signed=False),
            pl.col("duration_ms").fill_nan(0.0).fill_null(0.0).dp.sum((0.0, 60_000.0)),
        )
    )
    return query.release().collect().height


if __name__ == "__main__":
    from importlib.metadata import version

    run(
        "OpenDP polars Context",
        f"{version('opendp')} (polars {pl.__version__})",
        prepare,
        aggregate,
    )
