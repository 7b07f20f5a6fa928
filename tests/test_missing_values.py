"""Missing values leave only the metrics on their column; NaN when a mean has no data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies import event_rows, policies
from tests.test_intervals import ExactValues

import telemagg as tm
from telemagg._aggregator import Randomness
from telemagg._plan import measurement_specs, present_count_spec
from telemagg._state import State
from telemagg.testing import seeded

METRICS = [
    tm.count(),
    tm.unit_count(),
    tm.sum("x", bounds=(0, 100)),
    tm.mean("x", bounds=(0, 100)),
    tm.variance("x", bounds=(0, 100)),
    tm.histogram("x", bins=[0, 50, 100]),
    tm.quantiles("x", [0.5], bounds=(0, 100)),
]


def exact_release(data: dict[str, Any], policy: tm.Policy, metrics: list[Any]) -> tm.Release:
    """The release without noise (white-box): the exact bounded values (at a large epsilon,
    so that the NaN rule of means, which reads the plan, lets small partitions through)."""
    agg = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(0))
    agg.add(data)
    agg._randomness = Randomness(agg._randomness.sampling_key, ExactValues())
    return agg.release(epsilon=90.0, partitions=sorted(set(data["event"].tolist())))


def test_a_missing_value_counts_for_count_and_unit_count_but_not_for_its_metrics() -> None:
    data = {
        "user": np.arange(8),
        "event": np.asarray(["a"] * 8, dtype=object),
        "x": np.array([10.0, np.nan, 30.0, np.inf, -np.inf, 50.0, np.nan, 70.0]),
    }
    policy = tm.Policy(privacy_unit="user")
    table = exact_release(data, policy, METRICS).to_dict()
    assert table["count"][0] == 8  # every event, missing values included
    assert table["unit_count"][0] == 8
    assert table["sum_x"][0] == pytest.approx(160.0)  # +-inf are missing, not clamped
    assert table["mean_x"][0] == pytest.approx(40.0)  # over the 4 present values
    assert table["variance_x"][0] == pytest.approx(np.var([10.0, 30.0, 50.0, 70.0]))
    assert table["histogram_x"][0] == [3.0, 1.0]  # (0, 50], (50, 100]


def test_accounting_says_per_metric_how_many_values_were_missing() -> None:
    data = {
        "user": np.arange(6),
        "event": np.asarray(["a", "a", "b", "b", "b", "c"], dtype=object),
        "x": np.array([1.0, np.nan, np.nan, 2.0, np.nan, 3.0]),
        "y": np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan]),
    }
    metrics = [tm.count(), tm.mean("x", bounds=(0, 10)), tm.sum("y", bounds=(0, 10))]
    release = tm.aggregate(
        data,
        by="event",
        metrics=metrics,
        policy=tm.Policy(privacy_unit="user"),
        epsilon=1.0,
        partitions=["a", "b"],  # c's event is dropped as not_public_partition
        randomness=seeded(1),
    )
    assert release.accounting.aggregated == 5
    assert release.accounting.missing_values == {"mean_x": 3, "sum_y": 0}
    assert "non_finite_value" not in release.accounting.dropped
    assert "missing_values" not in release.metadata_json()


def test_the_plan_never_depends_on_whether_values_are_missing() -> None:
    """A mean measures its own count of present values always, so the measurements and
    the budget split are the same with or without missing values in the data."""
    rng = np.random.default_rng(0)
    clean = {
        "user": np.arange(400),
        "event": np.asarray(["a", "b"], dtype=object)[rng.integers(0, 2, 400)],
        "x": rng.uniform(0, 100, 400),
    }
    dirty = {**clean, "x": np.where(rng.random(400) < 0.3, np.nan, clean["x"])}

    def plan(data: dict[str, Any]) -> dict[str, Any]:
        release = tm.aggregate(
            data,
            by="event",
            metrics=METRICS,
            policy=tm.Policy(privacy_unit="user"),
            epsilon=1.0,
            partitions=["a", "b"],
            randomness=seeded(2),
        )
        return {k: v for k, v in release.metadata.items() if k != "created_at"}

    assert plan(clean) == plan(dirty)
    measurements = {
        c["measurement"] for m in plan(clean)["metrics"].values() for c in m["components"]
    }
    assert "count(x)" in measurements  # the present-value count, beside "count"
    assert "count" in measurements


def test_a_mean_with_too_few_values_is_nan_with_its_rule_in_the_metadata() -> None:
    rng = np.random.default_rng(1)
    data = {
        "user": np.arange(3001),
        "event": np.asarray(["big"] * 3000 + ["tiny"], dtype=object),
        "x": rng.uniform(0, 100, 3001),
    }
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.count(), tm.mean("x", bounds=(0, 100)), tm.variance("x", bounds=(0, 100))],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=0.5,
        partitions=["big", "tiny"],
        randomness=seeded(3),
    )
    table = release.to_pandas(intervals=0.95)
    big, tiny = table.iloc[0], table.iloc[1]
    assert 40 < big["mean_x"] < 60
    for column in ("mean_x", "mean_x_low", "mean_x_high", "variance_x", "variance_x_low"):
        assert math.isnan(tiny[column])
    rule = release.metadata["metrics"]["mean_x"]["insufficient_data"]
    assert rule["value"] == "NaN"
    assert "noisy count of present 'x' values" in rule["rule"]
    count, centred = release.metrics["mean_x"].components
    expected = max(1.0, 2 * count["stddev"], centred["stddev"] / 50.0)  # half-width 50
    assert rule["min_noisy_count"] == pytest.approx(expected)


@given(rows=event_rows(), policy=policies, missing=st.data())
@settings(max_examples=60, deadline=None)
def test_exact_metrics_ignore_exactly_the_missing_values(
    rows: dict[str, np.ndarray], policy: tm.Policy, missing: st.DataObject
) -> None:
    """Without noise: count is over all bounded events; sum and mean over present ones."""
    if rows["user"].size == 0:
        return
    mask = np.asarray(
        missing.draw(
            st.lists(st.booleans(), min_size=rows["value"].size, max_size=rows["value"].size)
        )
    )
    data = {**rows, "value": np.where(mask, np.nan, rows["value"])}
    metrics = [tm.count(), tm.sum("value", bounds=(0, 100), resolution=1.0)]
    agg = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(0))
    agg.add(data)
    state = agg._state
    agg._randomness = Randomness(agg._randomness.sampling_key, ExactValues())
    keys = [k[0] for k in agg._partitions.keys]
    table = agg.release(epsilon=1.0, partitions=keys).to_dict()
    present = np.isfinite(state.numeric["value"])
    for i in range(len(keys)):
        rows_i = state.partition == i
        assert table["count"][i] == np.count_nonzero(rows_i)
        expected = np.rint(np.clip(state.numeric["value"][rows_i & present], 0, 100)).sum()
        assert table["sum_value"][i] == expected


@given(rows=event_rows(), policy=policies, missing=st.data())
@settings(max_examples=60, deadline=None)
def test_present_counts_move_by_at_most_linf_when_a_unit_is_added(
    rows: dict[str, np.ndarray], policy: tm.Policy, missing: st.DataObject
) -> None:
    n = rows["user"].size
    mask = np.asarray(missing.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    values = np.where(mask, np.nan, rows["value"])
    extra = missing.draw(st.integers(0, policy.max_contributions))
    spec = present_count_spec(policy, "value")

    def state(x: np.ndarray) -> State:
        zeros = np.zeros(x.size, np.uint64)
        return State(
            unit_id=zeros,
            partition=np.zeros(x.size, np.int64),
            pair_key=zeros,
            event_priority=zeros,
            numeric={"value": x},
            categorical={},
        )

    before = spec.compute(state(values), 1)
    after = spec.compute(state(np.concatenate([values, np.full(extra, 5.0)])), 1)
    assert 0 <= int(after[0, 0] - before[0, 0]) <= spec.partition_l1
    assert spec.partition_l1 == policy.max_contributions


def test_mean_and_variance_each_name_their_present_count() -> None:
    policy = tm.Policy(privacy_unit="u")
    for metric in (tm.mean("x", bounds=(0, 1)), tm.variance("x", bounds=(0, 1))):
        assert measurement_specs(metric, policy)[0].key == "count(x)"
