"""Noise and accounting: reported scales are the real ones, budgets add up, OpenDP maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stats import assert_noise_scale

import telemagg as tm
from telemagg import _mechanisms as mech
from telemagg.testing import seeded

N_PARTITIONS = 3000


def wide_events(seed: int = 0) -> dict[str, np.ndarray]:
    """Every partition has exactly 10 units with 1 event of value 40: exact values known."""
    units = np.arange(N_PARTITIONS * 10)
    return {
        "user": units,
        "event": units // 10,
        "value": np.full(units.size, 40.0),
    }


def noise_samples(release: tm.Release, column: str, exact: float) -> np.ndarray:
    return release.to_dict()[column] - exact


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_count_and_sum_noise_have_the_reported_scale(noise) -> None:
    policy = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=1)
    release = tm.aggregate(
        wide_events(),
        by="event",
        metrics=[tm.count(), tm.sum("value", bounds=(-100, 100))],
        policy=policy,
        epsilon=1.0,
        delta=1e-6,
        partitions=list(range(N_PARTITIONS)),
        noise=noise,
        randomness=seeded(11),
    )
    # counts are clamped at 0 after noise; exact counts of 10 are far enough from 0
    # for a Laplace(scale 2) but not for every draw: test the sum, which is not clamped,
    # and the count on its unclamped part via the raw measurement below.
    report = release.metrics["sum_value"]
    assert_noise_scale(noise_samples(release, "sum_value", 400.0), noise, report.stddev)


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_unclamped_count_noise_matches_report(noise) -> None:
    data = wide_events()
    data["user"] = np.arange(data["user"].size)
    many = {k: np.repeat(v, 30) for k, v in data.items()}  # 300 events per partition
    many["user"] = np.arange(many["event"].size)  # 300 units each
    policy = tm.Policy(privacy_unit="user")
    release = tm.aggregate(
        many,
        by="event",
        metrics=[tm.count()],
        policy=policy,
        epsilon=1.0,
        delta=1e-6,
        partitions=list(range(N_PARTITIONS)),
        noise=noise,
        randomness=seeded(12),
    )
    report = release.metrics["count"]
    assert_noise_scale(noise_samples(release, "count", 300.0), noise, report.stddev)


def test_selection_noise_on_unit_counts_matches_report() -> None:
    many = {"event": np.repeat(np.arange(N_PARTITIONS), 300)}
    many["user"] = np.arange(many["event"].size)
    release = tm.aggregate(
        many,
        by="event",
        metrics=[tm.unit_count()],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=1.0,
        delta=1e-6,
        randomness=seeded(13),
    )
    assert len(release) == N_PARTITIONS  # 300 units is far above the threshold
    report = release.metrics["unit_count"]
    assert report.mechanism == "laplace_threshold"
    assert_noise_scale(noise_samples(release, "unit_count", 300.0), "laplace", report.stddev)


@pytest.mark.slow
def test_production_noise_is_opendps_with_the_reported_scale() -> None:
    """Unseeded on purpose: this is the sampler releases use. Alpha 1e-6 keeps a false
    alarm to one run in a million while a 30% scale error is still rejected."""
    scale = 3.0
    source = mech.OpenDPNoise()
    laplace = source.laplace(np.zeros(20_000), scale)
    assert_noise_scale(laplace, "laplace", scale * math.sqrt(2), alpha=1e-6)
    gauss = source.gaussian(np.zeros(20_000), scale)
    assert_noise_scale(gauss, "gaussian", scale, alpha=1e-6)


def test_partition_of_one_unit_is_never_released_and_busy_one_always() -> None:
    busy = {"user": np.arange(2000), "event": np.full(2000, "busy", dtype=object)}
    lonely = {"user": np.array([99_999]), "event": np.array(["lonely"], dtype=object)}
    data = {k: np.concatenate([busy[k], lonely[k]]) for k in busy}
    released: dict[str, int] = {"busy": 0, "lonely": 0}
    for seed in range(300):
        release = tm.aggregate(
            data,
            by="event",
            metrics=[tm.count()],
            policy=tm.Policy(privacy_unit="user"),
            epsilon=1.0,
            delta=1e-6,
            randomness=seeded(seed),
        )
        for key in release.to_dict()["event"]:
            released[key] += 1
    assert released == {"busy": 300, "lonely": 0}


def test_threshold_calibration_is_within_budget_and_monotone_in_delta() -> None:
    loose = mech.laplace_threshold(4, 1.0, 0.5, 1e-3)
    tight = mech.laplace_threshold(4, 1.0, 0.5, 1e-9)
    for plan, delta in ((loose, 1e-3), (tight, 1e-9)):
        assert plan.epsilon <= 0.5
        assert plan.delta <= delta
    assert tight.threshold > loose.threshold


def test_laplace_scale_is_the_smallest_within_the_map() -> None:
    scale = mech.laplace_scale(6.0, 0.5)
    assert mech.laplace_epsilon(6.0, scale) <= 0.5
    assert mech.laplace_epsilon(6.0, scale * (1 - 1e-6)) > 0.5


def test_zcdp_conversion_and_its_inverse() -> None:
    rho = mech.rho_within(1.0, 1e-6)
    assert mech.zcdp_to_epsilon(rho, 1e-6) <= 1.0
    assert mech.zcdp_to_epsilon(rho * 1.01, 1e-6) > 1.0


@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
    lo=st.floats(-100, 0),
    width=st.sampled_from([1.0, 7.5, 100.0, 1000.0]),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=60, deadline=None)
def test_mean_and_variance_stay_inside_what_bounds_allow(values, lo, width, seed) -> None:
    hi = lo + width
    data = {
        "user": np.arange(len(values)),
        "event": np.zeros(len(values), np.int64),
        "x": np.asarray(values),
    }
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.mean("x", bounds=(lo, hi)), tm.variance("x", bounds=(lo, hi))],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=0.1,
        partitions=[0],
        randomness=seeded(seed),
    )
    table = release.to_dict()
    assert lo <= table["mean_x"][0] <= hi
    assert 0.0 <= table["variance_x"][0] <= ((hi - lo) / 2) ** 2


def test_mean_is_accurate_on_large_partitions() -> None:
    rng = np.random.default_rng(5)
    n = 200_000
    data = {"user": np.arange(n), "event": rng.integers(0, 4, n), "x": rng.normal(300, 50, n)}
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.mean("x", bounds=(0, 1000)), tm.variance("x", bounds=(0, 1000))],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=1.0,
        partitions=[0, 1, 2, 3],
        randomness=seeded(5),
    )
    table = release.to_dict()
    assert np.all(np.abs(table["mean_x"] - 300) < 5)
    assert np.all(np.abs(table["variance_x"] - 2500) < 500)
