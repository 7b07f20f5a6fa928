"""Telemetry metrics: quantiles (specs), histogram, top_k (policy specs, _plan measurements,
release). Quantile mechanics: tests/test_quantiles.py."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stats import assert_release_noise
from tests.strategies import event_rows, policies

import telemagg as tm
from telemagg import _mechanisms as mech
from telemagg._aggregator import Randomness
from telemagg.policy import exponential_buckets, histogram, quantiles, top_k
from telemagg.testing import seeded

ONE_EACH = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=1)


def one_event_per_user(values: np.ndarray, n_partitions: int) -> dict[str, np.ndarray]:
    """``values`` split evenly over partitions 0..n-1, every event its own user."""
    return {
        "user": np.arange(values.size),
        "event": np.arange(values.size) % n_partitions,
        "value": values,
    }


def by_event(events: Any, metrics: list[Any], **options: Any) -> tm.Release:
    """``tm.aggregate`` by ``event``; defaults: ONE_EACH, epsilon 1, delta 1e-6."""
    settings: dict[str, Any] = {"policy": ONE_EACH, "epsilon": 1.0, "delta": 1e-6, **options}
    return tm.aggregate(events, by="event", metrics=metrics, **settings)


class RecordingNoise:
    """Seeded noise that also records every draw (input, output, scale): white-box checks
    that the noise a measurement received is the noise its report claims."""

    seeded = True

    def __init__(self, seed: int) -> None:
        self._inner = mech.SeededNoise(seed)
        self.draws: list[tuple[np.ndarray, np.ndarray, float]] = []

    def laplace(self, values: np.ndarray, scale: float) -> np.ndarray:
        out = self._inner.laplace(values, scale)
        self.draws.append((values, out, scale))
        return out

    def gaussian(self, values: np.ndarray, scale: float) -> np.ndarray:
        out = self._inner.gaussian(values, scale)
        self.draws.append((values, out, scale))
        return out

    def threshold(self, keys: Any, counts: Any, plan: mech.ThresholdPlan) -> Any:
        return self._inner.threshold(keys, counts, plan)

    def bernoulli(self, probabilities: np.ndarray) -> np.ndarray:
        return self._inner.bernoulli(probabilities)


def recording(seed: int) -> tuple[Randomness, RecordingNoise]:
    base = seeded(seed)
    noise = RecordingNoise(seed)
    return Randomness(base.sampling_key, noise, base.seed_sequence), noise


# --------------------------------------------------------------------------- declarations


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: quantiles("x", [0.5, 1.0], bounds=(0, 1)), r"levels must each be in \(0, 1\)"),
        (lambda: quantiles("x", [0.0, 0.5], bounds=(0, 1)), r"levels must each be in \(0, 1\)"),
        (lambda: quantiles("x", [0.9, 0.5], bounds=(0, 1)), "levels must be sorted"),
        (lambda: quantiles("x", [0.5, 0.5], bounds=(0, 1)), "levels must not repeat"),
        (lambda: quantiles("x", [], bounds=(0, 1)), "levels must name at least one"),
        (lambda: quantiles("x", 0.5, bounds=(0, 1)), "levels must be a sequence"),
        (lambda: quantiles("x", [0.5], bounds=(1, 0)), "bounds must satisfy lower < upper"),
        (
            lambda: quantiles("x", [0.5], bounds=(0, 10), scale="log"),
            r"bounds must have lower > 0 when scale='log'.*got \(0.0, 10.0\)",
        ),
        (lambda: quantiles("x", [0.5], bounds=(1, 2), scale="ln"), "scale must be 'linear'"),
        (lambda: quantiles("x", [0.5], bounds=(1, 2), bins=1), r"bins must be an integer in"),
        (lambda: histogram("x", bins=[0, 10, 10]), r"bins must be strictly increasing"),
        (lambda: histogram("x", bins=[5]), "bins must have between 2"),
        (lambda: histogram("x", bins=[0, math.nan]), "bins must be finite"),
        (lambda: top_k("code", k=0), r"k must be an integer in \[1, 1000\]; got 0"),
        (lambda: top_k("code", k=2.5), "k must be an integer"),
        (lambda: exponential_buckets(0, 10), "0 < lower < upper"),
        (lambda: exponential_buckets(1, 10, scale=21), r"scale must be an integer in \[-10, 20\]"),
        (lambda: exponential_buckets(1e-300, 1e300, scale=8), "more than 4096"),
    ],
)
def test_bad_declarations_are_config_errors_naming_the_problem(make, message) -> None:
    with pytest.raises(tm.ConfigError, match=message):
        make()


def test_output_names_and_name_override() -> None:
    q = quantiles("latency_ms", [0.05, 0.5, 0.999], bounds=(1, 10), scale="log", name="lat")
    assert q.output_names == ("p5_lat", "p50_lat", "p99_9_lat")
    assert top_k("code", k=3, name="codes").output_names == ("codes", "codes_count")
    assert histogram("x", bins=[0, 1]).output_names == ("histogram_x",)
    with pytest.raises(tm.ConfigError, match="unique names; 'x' appears twice"):
        tm.Aggregator(
            policy=ONE_EACH, by="event", metrics=[quantiles("x", [0.5], (0, 1)), tm.count(name="x")]
        )


def test_quantiles_of_a_non_numeric_column_is_a_schema_error() -> None:
    events = {"user": [1, 2], "event": ["a", "b"], "code": ["E1", "E2"]}
    with pytest.raises(tm.SchemaError, match="column 'code' must be numeric"):
        by_event(events, [quantiles("code", [0.5], bounds=(0, 1))])


def test_top_k_needs_delta_even_with_public_partitions() -> None:
    events = {"user": [1, 2], "event": ["a", "b"], "code": ["E1", "E2"]}
    with pytest.raises(tm.ConfigError, match="delta must be > 0 for top_k"):
        by_event(events, [top_k("code", k=1)], partitions=["a", "b"], delta=0.0)


@given(
    lower=st.floats(1e-3, 1e3),
    ratio=st.floats(1.01, 1e4),
    scale=st.integers(-2, 5),
)
def test_exponential_buckets_cover_the_range_on_opentelemetry_boundaries(
    lower: float, ratio: float, scale: int
) -> None:
    upper = lower * ratio
    edges = np.asarray(exponential_buckets(lower, upper, scale=scale))
    assert edges[0] <= lower * (1 + 1e-9)
    assert edges[-1] >= upper * (1 - 1e-9)
    indices = np.log2(edges) * 2.0**scale  # OpenTelemetry: edge i is base**i, base = 2**2**-scale
    np.testing.assert_allclose(indices, np.round(indices), atol=1e-6)
    np.testing.assert_array_equal(np.diff(np.round(indices)), 1.0)


# --------------------------------------------------------------------------- histogram


@settings(max_examples=40, deadline=None)
@given(
    rows=event_rows(),
    policy=policies,
    edges=st.lists(st.floats(-100, 200), min_size=2, max_size=12, unique=True),
)
def test_histogram_counts_are_non_negative_with_one_count_per_bucket(rows, policy, edges) -> None:
    edges = sorted(edges)
    release = by_event(
        rows,
        [histogram("value", bins=edges)],
        policy=policy,
        epsilon=0.3,
        partitions=["a", "b", "z"],
        randomness=seeded(4),
    )
    for counts in release.to_dict()["histogram_value"]:
        assert len(counts) == len(edges) - 1
        assert min(counts) >= 0.0


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_histogram_noise_has_the_reported_scale_and_values_clamp_into_end_buckets(noise) -> None:
    n_partitions = 1500
    # every partition: 40 events at -5 (below the edges), 40 at 5, 40 at 50, 40 at 500
    values = np.tile(np.repeat([-5.0, 5.0, 50.0, 500.0], 40), n_partitions)
    events = {
        "user": np.arange(values.size),
        "event": np.repeat(np.arange(n_partitions), 160),
        "value": values,
    }
    release = by_event(
        events,
        [histogram("value", bins=[0, 10, 100])],
        partitions=list(range(n_partitions)),
        noise=noise,
        randomness=seeded(6),
    )
    counts = np.array(release.to_dict()["histogram_value"].tolist())
    report = release.metrics["histogram_value"]
    assert counts.shape == (n_partitions, 2)
    # -5 clamps into the first bucket, 500 into the last: exact counts are 80 and 80
    assert_release_noise((counts - 80.0).ravel(), report)
    assert report.sensitivity == 1.0
    assert report.components[0]["bins"] == 2


def test_histogram_bucket_edges_are_upper_inclusive() -> None:
    events = {
        "user": np.arange(3000),
        "event": np.zeros(3000, int),
        "value": np.repeat([10.0], 3000),
    }
    release = by_event(
        events,
        [histogram("value", bins=[0, 10, 20])],
        epsilon=5.0,
        partitions=[0],
        randomness=seeded(1),
    )
    first, second = release.to_dict()["histogram_value"][0]
    assert first > 2900
    assert second < 100  # 10 belongs to (0, 10]


# --------------------------------------------------------------------------- top_k


def coded_events(counts: dict[str, int], partitions: int, offset: int = 0) -> dict[str, Any]:
    """Each partition gets ``counts[v]`` events of value v, every event its own user."""
    per_partition = np.concatenate([np.full(n, v, dtype=object) for v, n in counts.items()])
    codes = np.tile(per_partition, partitions)
    return {
        "user": offset + np.arange(codes.size),
        "event": np.repeat(np.arange(partitions), per_partition.size),
        "code": codes,
    }


def test_top_k_releases_frequent_values_in_order_and_never_rare_ones() -> None:
    counts = {"E_TIMEOUT": 900, "E_NETWORK": 600, "0x80070005": 300, "E_RARE": 3}
    events = coded_events(counts, partitions=3)
    events["code"][::50] = None  # missing codes are not values
    release = by_event(
        events,
        [top_k("code", k=10), top_k("code", k=2, name="top2")],
        epsilon=2.0,
        randomness=seeded(9),
    )
    table = release.to_dict()
    for values, numbers, two in zip(
        table["top_code"], table["top_code_count"], table["top2"], strict=True
    ):
        assert values == ["E_TIMEOUT", "E_NETWORK", "0x80070005"]
        assert numbers == sorted(numbers, reverse=True)
        assert two == ["E_TIMEOUT", "E_NETWORK"]
    report = release.metrics["top_code_count"]
    assert report is release.metrics["top_code"]
    assert report.mechanism == "laplace_threshold"
    assert report.delta > 0
    assert report.components[0]["keys_per_unit"] == 1
    assert release.delta <= 1e-6
    assert release.epsilon <= 2.0


def test_top_k_counts_have_the_reported_noise_and_threshold() -> None:
    policy = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3)
    n_partitions = 1500
    events = coded_events({"A": 501}, partitions=n_partitions)
    events["user"] = events["user"] // 3  # three events per user, all in one partition
    release = by_event(
        events,
        [top_k("code", k=1)],
        policy=policy,
        partitions=list(range(n_partitions)),
        randomness=seeded(10),
    )
    report = release.metrics["top_code"]
    component = report.components[0]
    # a unit changes at most L0 * Linf = 6 (partition, value) keys, each by <= 3, 6 in all
    assert component["keys_per_unit"] == 6
    assert report.sensitivity == 6.0
    assert component["scale"] == pytest.approx(6.0, rel=1e-6)
    assert report.stddev == pytest.approx(mech.discrete_laplace_stddev(6.0), rel=1e-6)
    assert component["threshold"] < 501 - 8 * report.stddev  # every key passes
    counts = np.array([c[0] for c in release.to_dict()["top_code_count"]])
    assert counts.size == n_partitions
    assert_release_noise(counts - 501.0, report)


def test_top_k_values_keep_their_identity_across_batches_and_merged_shards() -> None:
    """Each batch and shard codes values locally; the release must name the right ones."""
    policy = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=2)
    metrics = [top_k("code", k=2)]
    first = coded_events({"E1": 400, "E2": 200}, partitions=2)
    second = coded_events({"E3": 300, "E2": 100}, partitions=2, offset=10**6)
    third = coded_events({"E4": 350}, partitions=2, offset=2 * 10**6)
    agg = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(12))
    agg.add(first)
    agg.add(second)
    shard = agg.spawn()
    shard.add(third)
    agg.merge(shard)
    release = agg.release(epsilon=4.0, delta=1e-6, partitions=[0, 1])
    for values, counts in zip(
        release.to_dict()["top_code"], release.to_dict()["top_code_count"], strict=True
    ):
        assert values == ["E1", "E4"]  # E1 400, E4 350, E2 and E3 300 each
        assert counts[0] == pytest.approx(400, abs=40)
        assert counts[1] == pytest.approx(350, abs=40)


def test_every_metric_with_a_multi_column_by_and_every_output_format() -> None:
    from telemagg.datasets import telemetry_events

    events = telemetry_events(60_000, seed=4)
    metrics = [
        tm.count(),
        quantiles("latency_ms", [0.5, 0.9, 0.99], bounds=(1, 10_000), scale="log"),
        histogram("latency_ms", bins=exponential_buckets(1, 10_000, scale=0)),
        top_k("event_name", k=3),
    ]
    release = tm.aggregate(
        events,
        by=["app_version", "os"],
        metrics=metrics,
        policy=tm.Policy(privacy_unit="user_id", max_partitions=2, max_contributions=5),
        epsilon=8.0,
        delta=1e-6,
        randomness=seeded(13),
    )
    frame = release.to_pandas()
    assert list(frame.columns) == [
        "app_version",
        "os",
        "count",
        "p50_latency_ms",
        "p90_latency_ms",
        "p99_latency_ms",
        "histogram_latency_ms",
        "top_event_name",
        "top_event_name_count",
    ]
    assert len(frame) > 5
    assert (frame["p50_latency_ms"] <= frame["p99_latency_ms"]).all()
    assert {len(h) for h in frame["histogram_latency_ms"]} == {14}  # 2**0 .. 2**14
    listed = [names for names in frame["top_event_name"] if names]  # the busiest partitions
    assert listed
    assert all(names[0] == "editor.save" for names in listed)  # the most popular event
    arrow = release.to_arrow()
    assert str(arrow.schema.field("histogram_latency_ms").type) == "list<item: double>"
    assert str(arrow.schema.field("top_event_name").type) == "list<item: string>"
    polars = release.to_polars()
    assert str(polars.schema["histogram_latency_ms"]) == "List(Float64)"
    for column in frame.columns[2:]:
        report = release.metrics[column]
        assert report.mechanism in {"laplace", "laplace_threshold"}
        assert report.epsilon > 0
        assert report.stddev > 0
        assert report.sensitivity is not None
    assert set(release.metadata["metrics"]) == set(frame.columns[2:])
    json.dumps(release.metadata)
    # selection, count, grid, histogram and top_k's threshold: five equal shares
    assert release.epsilon == pytest.approx(8.0, rel=1e-6)
    assert release.epsilon <= 8.0
    assert release.delta <= 1e-6
    shares = {round(release.metrics[c].epsilon, 9) for c in ("count", "top_event_name")}
    assert shares == {round(8.0 / 5, 9)}


def test_an_aggregator_with_categorical_state_pickles() -> None:
    import pickle

    agg = tm.Aggregator(policy=ONE_EACH, by="event", metrics=[top_k("code", k=1)])
    agg.add(coded_events({"A": 3}, partitions=2))
    again = pickle.loads(pickle.dumps(agg))
    assert again._categories["code"].keys == ["A"]
    assert again._state.categorical["code"].tolist() == [0] * 6
