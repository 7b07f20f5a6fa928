"""A value metric with its own ``max_contributions`` reads a sample of the kept events and
is calibrated to its own, smaller bound; under an "auto" policy the tuning chooses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stats import assert_release_noise
from tests.strategies import event_rows
from tests.test_intervals import ExactValues

import telemagg as tm
from telemagg._aggregator import Randomness
from telemagg.errors import ConfigError
from telemagg.testing import seeded

BOUNDS = (-50.0, 150.0)


def value_metrics(m: int | None) -> list[Any]:
    return [
        tm.sum("value", bounds=BOUNDS, max_contributions=m),
        tm.mean("value", bounds=BOUNDS, max_contributions=m),
        tm.variance("value", bounds=BOUNDS, max_contributions=m),
        tm.quantiles("value", [0.25, 0.5, 0.9], bounds=BOUNDS, max_contributions=m),
    ]


def exact(data: dict[str, np.ndarray], policy: tm.Policy, metrics: list[Any]) -> dict[str, Any]:
    """The release's exact (noise-free) values, same sampling key for every call."""
    agg = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(3))
    agg.add(data)
    agg._randomness = Randomness(agg._randomness.sampling_key, ExactValues())
    release = agg.release(epsilon=90.0, partitions=["a", "b", "c", "d", "e"])
    return release.to_dict()


@settings(max_examples=60, deadline=None)
@given(
    data=event_rows(),
    l0=st.integers(1, 4),
    linf=st.integers(1, 6),
    m=st.integers(1, 8),
)
def test_a_metric_reads_exactly_what_a_policy_with_its_bound_would_keep(
    data: dict[str, np.ndarray], l0: int, linf: int, m: int
) -> None:
    """Bottom-m of the kept bottom-linf events per pair is the bottom-min(m, linf) of all:
    the same values as a release whose policy has that Linf (same priorities)."""
    policy = tm.Policy(privacy_unit="user", max_partitions=l0, max_contributions=linf)
    own = exact(data, policy, [tm.count(), *value_metrics(m)])
    same = policy.model_copy(update={"max_contributions": min(m, linf)})
    # a count too, so that both plans split the budget alike (the NaN rule reads it)
    reference = exact(data, same, [tm.count(), *value_metrics(None)])
    for column, values in reference.items():
        if column not in ("event", "count"):
            np.testing.assert_array_equal(np.asarray(own[column]), np.asarray(values), column)
    # the count still reads every kept event
    np.testing.assert_array_equal(own["count"], exact(data, policy, [tm.count()])["count"])


def test_noise_is_calibrated_to_the_metric_bound_not_the_policy() -> None:
    n_partitions, per_pair = 2000, 20
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(n_partitions * 5), per_pair)  # 5 users per partition
    data = {
        "user": users,
        "event": users // 5,
        "value": rng.uniform(0.0, 10.0, users.size),
    }
    policy = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=per_pair)
    metrics = [tm.count(), tm.sum("value", bounds=(0, 10), max_contributions=3, resolution=1)]
    release = tm.aggregate(
        data,
        by="event",
        metrics=metrics,
        policy=policy,
        epsilon=1.0,
        partitions=list(range(n_partitions)),
        randomness=seeded(11),
    )
    report = release.metrics["sum_value"]
    assert report.sensitivity == 3 * 10  # L0 x the metric's 3 events x |10|
    assert report.components[0]["max_contributions"] == 3
    assert release.metrics["count"].sensitivity == per_pair
    exact_sums = exact_sum_of_sample(data, policy, n_partitions)
    noise = np.asarray(release.to_dict()["sum_value"]) - exact_sums
    assert_release_noise(noise, report)
    wrong = dict(report.components[-1], scale=report.components[-1]["scale"] * 1.3)
    with pytest.raises(AssertionError):  # a scale 30% off is told apart
        assert_release_noise(noise, wrong)


def exact_sum_of_sample(data: dict[str, Any], policy: tm.Policy, n: int) -> np.ndarray:
    """The exact sums the seeded release measured (same sampling key, no noise)."""
    metric = tm.sum("value", bounds=(0, 10), max_contributions=3, resolution=1)
    agg = tm.Aggregator(policy=policy, by="event", metrics=[metric], randomness=seeded(11))
    agg.add(data)
    agg._randomness = Randomness(agg._randomness.sampling_key, ExactValues())
    release = agg.release(epsilon=1.0, partitions=list(range(n)))
    return np.asarray(release.to_dict()["sum_value"], dtype=np.float64)


@pytest.mark.parametrize("bad", [0, -1, 100_001, 2.5, "3", True, "auto"])
def test_a_bad_metric_bound_is_a_config_error_naming_it(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_contributions"):
        tm.mean("value", bounds=BOUNDS, max_contributions=bad)


def test_auto_policy_gives_value_metrics_their_own_smaller_bound() -> None:
    rng = np.random.default_rng(5)
    users = rng.integers(0, 3000, 300_000)  # ~100 events per user, one partition each
    data = {
        "user": users,
        "event": users % 5,
        "value": rng.lognormal(3.0, 1.0, users.size),
    }
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.count(), tm.mean("value", bounds="auto"), tm.quantiles("value", [0.5], "auto")],
        policy=tm.Policy(privacy_unit="user", max_partitions="auto", max_contributions="auto"),
        epsilon=1.0,
        partitions=list(range(5)),
        randomness=seeded(2),
    )
    tuning = release.metadata["tuning"]
    own = tuning["metric_max_contributions"]
    assert set(own) == {"mean_value", "value"}
    assert all(1 <= m < tuning["max_contributions"] for m in own.values())
    for name, m in own.items():
        column = {"mean_value": "mean_value", "value": "p50_value"}[name]
        components = release.metrics[column].components
        assert {c["max_contributions"] for c in components} == {m}
    assert set(tuning["metric_bounds"]) == {"mean_value", "value"}
    assert release.metrics["count"].sensitivity == tuning["max_contributions"]


def test_a_release_samples_once_per_bound_and_keeps_no_sample_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mean and a variance with one own bound read one sample (four measurements);
    the held state keeps no copy of its rows once the release is out."""
    from telemagg import _state

    rng = np.random.default_rng(0)
    data = {"user": rng.integers(0, 50, 2000), "event": rng.integers(0, 3, 2000)}
    data["value"] = rng.uniform(0, 100, 2000)
    policy = tm.Policy(privacy_unit="user", max_partitions=3, max_contributions=20)
    metrics = [
        tm.mean("value", bounds=BOUNDS, max_contributions=2),
        tm.variance("value", bounds=BOUNDS, max_contributions=2),
    ]
    agg = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(1))
    agg.add(data)
    calls: list[int] = []
    real = _state.bound_contributions

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["max_contributions"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_state, "bound_contributions", counted)
    agg.release(epsilon=1.0, partitions=[0, 1, 2])
    assert calls.count(2) == 1
    assert agg._state._samples is None
