"""Noise and accounting: reported scales are the real ones, budgets add up, OpenDP maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stats import assert_discrete_noise_scale, assert_release_noise, two_sample_pvalue

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
    assert report.components[0]["resolution"] == 2.0**-13  # 100 in at most 2**20 steps
    assert_release_noise(noise_samples(release, "sum_value", 400.0), report)


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
    assert_release_noise(noise_samples(release, "count", 300.0), report)


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
    assert_release_noise(noise_samples(release, "unit_count", 300.0), report)


def test_production_noise_has_the_exact_law_and_matches_opendps() -> None:
    """Unseeded on purpose: this is the sampler releases use. Alpha 1e-6 keeps a false
    alarm to one run in a million while a 30% scale error is still rejected."""
    scale = 3.0
    source = mech.SystemNoise()
    zeros = np.zeros(100_000, dtype=np.int64)
    assert_discrete_noise_scale(source.laplace(zeros, scale), "laplace", scale, alpha=1e-6)
    assert_discrete_noise_scale(source.gaussian(zeros, scale), "gaussian", scale, alpha=1e-6)
    reference = mech.OpenDPNoise()
    small = zeros[:10_000]
    assert two_sample_pvalue(source.laplace(small, scale), reference.laplace(small, scale)) > 1e-6
    assert two_sample_pvalue(source.gaussian(small, scale), reference.gaussian(small, scale)) > 1e-6


def test_noise_is_added_to_integers_exactly_and_refuses_overflow() -> None:
    noise = mech.SeededNoise(1)
    edges = np.array([2**62, -(2**62), 0], dtype=np.int64)
    out = noise.laplace(edges, 1.0)
    assert out.dtype == np.int64
    assert np.all(np.abs(out - edges) < 100)  # shifts carried exactly, no float rounding
    with pytest.raises(tm.TelemaggError, match="2\\*\\*62"):
        noise.laplace(np.array([2**62 + 1], dtype=np.int64), 1.0)
    with pytest.raises(tm.TelemaggError, match="integer"):
        noise.laplace(np.array([0.5]), 1.0)


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
    loose = mech.laplace_threshold(4, 1, 0.5, 1e-3)
    tight = mech.laplace_threshold(4, 1, 0.5, 1e-9)
    for plan, delta in ((loose, 1e-3), (tight, 1e-9)):
        assert plan.epsilon <= 0.5
        assert plan.delta <= delta
    assert tight.threshold > loose.threshold
    # the threshold is the smallest integer within the delta share
    d_in = (4, 4, 1)
    assert mech._delta_of(tight.scale, tight.threshold - 1, d_in) > 1e-9


def test_laplace_scale_is_the_smallest_within_the_map() -> None:
    scale = mech.laplace_scale(6, 0.5)
    assert mech.laplace_epsilon(6, scale) <= 0.5
    assert mech.laplace_epsilon(6, scale * (1 - 1e-6)) > 0.5
    assert mech.laplace_epsilon(6, 12.0) == 0.5  # OpenDP's integer map: d_in / scale


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
    # NaN: too few values to say anything (insufficient_data), never a bound instead
    mean, variance = table["mean_x"][0], table["variance_x"][0]
    assert math.isnan(mean) or lo <= mean <= hi
    assert math.isnan(variance) or 0.0 <= variance <= ((hi - lo) / 2) ** 2


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


class NumpyNoise:
    """A look-alike noise source claiming to be unseeded (hole 7 of the privacy issue)."""

    seeded = False

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)

    def laplace(self, values: np.ndarray, scale: float) -> np.ndarray:
        return values + np.rint(self._rng.laplace(0.0, scale, values.shape)).astype(np.int64)

    gaussian = laplace

    def threshold(self, keys, counts, plan):  # type: ignore[no-untyped-def]
        return mech.SeededNoise(0).threshold(keys, counts, plan)

    def bernoulli(self, probabilities: np.ndarray) -> np.ndarray:
        return self._rng.random(probabilities.shape) < probabilities


class SystemNoiseSubclass(mech.SystemNoise):
    """Even a subclass of the production source is not the production source."""


@pytest.mark.parametrize("noise", [NumpyNoise(), SystemNoiseSubclass(), mech.OpenDPNoise()])
def test_only_system_noise_without_a_seed_is_unseeded_and_ledgers_refuse_the_rest(
    noise, sqlite_url
) -> None:
    from telemagg._aggregator import Randomness

    randomness = Randomness(seeded(0).sampling_key, noise)  # no seed sequence
    assert randomness.seeded
    assert randomness.spawn().seeded
    events = {"user": [1, 2, 3], "event": ["a", "a", "b"]}
    options = {
        "by": "event",
        "metrics": [tm.count()],
        "policy": tm.Policy(privacy_unit="user"),
        "epsilon": 1.0,
        "partitions": ["a", "b"],
    }
    release = tm.aggregate(events, randomness=randomness, **options)
    assert release.metadata["seeded"] is True
    with tm.Ledger(sqlite_url, epsilon=10.0, delta=1e-5) as ledger:
        with pytest.raises(tm.ConfigError, match="seeded"):
            tm.aggregate(events, randomness=randomness, ledger=ledger, **options)
        assert ledger.charges() == []
    production = Randomness(seeded(0).sampling_key, mech.SystemNoise())
    assert not production.seeded
    assert not production.spawn().seeded
    assert not Randomness.system().seeded


# --------------------------------------------------------------------------- fixed point


def test_fixed_point_sums_are_exact_and_their_sensitivity_holds_on_neighbours() -> None:
    """Casacuberta et al. (CCS 2022): float sums can move by more than the claimed
    sensitivity. Fixed-point sums are exact integers, and adding one unit whose events sit
    at the bounds moves them by exactly the integer sensitivity, never more."""
    from fractions import Fraction

    from telemagg._plan import sum_spec
    from telemagg._state import State

    rng = np.random.default_rng(3)
    policy = tm.Policy(privacy_unit="u", max_partitions=1, max_contributions=3)
    metric = tm.sum("x", bounds=(-1e15, 1e15 + 1))
    spec = sum_spec(policy, metric)
    values = np.concatenate([rng.uniform(-2e15, 2e15, 5000), [1e15, -1e15, 0.1, 1e16]])

    def state(x: np.ndarray, partition: np.ndarray) -> State:
        zeros = np.zeros(x.size, np.uint64)
        return State(
            unit_id=zeros,
            partition=partition,
            pair_key=zeros,
            event_priority=zeros,
            numeric={"x": x},
            categorical={},
        )

    before = spec.compute(state(values, np.zeros(values.size, np.int64)), 1)
    step = Fraction(metric.step)
    clamped = np.clip(values, -1e15, 1e15 + 1)
    exact = sum(round(Fraction(float(v)) / step) for v in clamped)
    assert int(before[0, 0]) == exact
    heavy = np.concatenate([values, np.full(3, 1e15 + 1)])  # one unit: Linf events at the bound
    after = spec.compute(state(heavy, np.zeros(heavy.size, np.int64)), 1)
    assert int(after[0, 0] - before[0, 0]) <= spec.partition_l1
    assert spec.partition_l1 == 3 * round(Fraction(1e15 + 1) / step)


def test_resolution_is_validated_stated_and_used() -> None:
    assert tm.sum("x", bounds=(0, 60_000)).step == 2.0**-4  # 60000 < 2**16: 2**20 steps
    assert tm.mean("x", bounds=(0, 10), resolution=0.5).step == 0.5
    for bad in (0, -1.0, math.inf, "0.1", 1e-12, 100.0):
        with pytest.raises(tm.ConfigError, match="resolution"):
            tm.sum("x", bounds=(0, 10), resolution=bad)
    events = {"u": np.arange(100), "e": np.zeros(100, np.int64), "x": np.linspace(0, 10, 100)}
    release = tm.aggregate(
        events,
        by="e",
        metrics=[tm.sum("x", bounds=(0, 10), resolution=0.25), tm.variance("x", bounds=(0, 10))],
        policy=tm.Policy(privacy_unit="u"),
        epsilon=1.0,
        partitions=[0],
        randomness=seeded(1),
    )
    component = release.metadata["metrics"]["sum_x"]["components"][0]
    assert component["resolution"] == 0.25
    assert component["noise"] == "discrete (exact, integer)"
    assert release.metadata["query"]["metrics"][0]["resolution"] == 0.25
    squares = release.metadata["metrics"]["variance_x"]["components"][-1]
    assert squares["resolution"] == 2.0**-24  # half-width 5 < 2**3 in 2**15 steps, squared
    sums = release.to_dict()["sum_x"]
    assert float(sums[0] / 0.25) == round(sums[0] / 0.25)  # a multiple of the resolution


# --------------------------------------------------------------------------- parameter ranges


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: make(epsilon=1e-308), "epsilon"),
        (lambda: make(epsilon=1e6), "epsilon"),
        (lambda: make(epsilon=1e12, noise="gaussian"), "epsilon"),
        (lambda: make(epsilon=101.0), "epsilon"),
        (lambda: make(epsilon="1.0"), "epsilon"),
        (lambda: make(delta="1e-6"), "delta"),
        (lambda: make(delta=0.01), "delta"),
        (lambda: make(metric=tm.variance("x", bounds=(0, 1e200))), "bounds"),
        (lambda: make(metric=tm.quantiles("x", [0.5], bounds=(-1e308, 1e308))), "bounds"),
        (lambda: make(max_partitions=2**62), "max_partitions"),
        (lambda: make(max_contributions=10**7), "max_contributions"),
        (lambda: make(max_partitions="4"), "max_partitions"),
    ],
)
def test_unusable_parameters_are_config_errors_naming_them(build, parameter) -> None:
    with pytest.raises(tm.ConfigError, match=parameter):
        build()


def make(
    *,
    epsilon: object = 1.0,
    delta: object = 1e-6,
    noise: str = "laplace",
    metric: object = None,
    max_partitions: object = 4,
    max_contributions: object = 2,
    private: bool = True,
    allow_large_delta: bool = False,
):
    """Plan one release (no data): what ``release`` does before charging a ledger."""
    from telemagg._plan import make_plan
    from telemagg.policy import ReleaseParams

    policy = tm.Policy(
        privacy_unit="u", max_partitions=max_partitions, max_contributions=max_contributions
    )
    params = ReleaseParams(
        epsilon=epsilon,
        delta=delta,
        noise=noise,
        private_partitions=private,
        allow_large_delta=allow_large_delta,
    )
    metrics = [tm.count(), metric if metric is not None else tm.sum("x", bounds=(0, 1e3))]
    return make_plan(metrics, policy, params)


@pytest.mark.parametrize(
    "metric",
    [
        tm.sum("x", bounds=(0, 1e16)),
        tm.sum("x", bounds=(1e15, 1e15 + 1)),
        tm.mean("x", bounds=(1e15, 1e15 + 1)),
        tm.variance("x", bounds=(-1e150, 1e150)),
    ],
)
def test_extreme_but_valid_bounds_plan_with_finite_noise(metric) -> None:
    plan = make(metric=metric)
    for cal in plan.measurements.values():
        report = cal.report()
        assert all(math.isfinite(v) for v in report.values() if isinstance(v, float))
    assert plan.loss.epsilon <= 1.0


def test_large_delta_needs_the_flag_and_tiny_delta_selection_terminates() -> None:
    assert make(delta=0.01, allow_large_delta=True).loss.delta <= 0.01
    plan = make(delta=1e-16, metric=tm.count(name="c2"))  # truncated geometric over L0=4
    assert plan.selection is not None
    assert plan.loss.delta <= 1e-16


@settings(max_examples=60, deadline=None)
@given(
    epsilon=st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**6), st.text(max_size=2)),
    delta=st.one_of(st.floats(0, 1), st.floats(1e-300, 1e-2), st.sampled_from([0, 1e-16])),
    noise=st.sampled_from(["laplace", "gaussian"]),
    lower=st.floats(-1e200, 1e200, allow_nan=False),
    width=st.floats(1e-300, 1e200, allow_nan=False),
    kind=st.sampled_from(["sum", "mean", "variance", "quantiles", "histogram", "count"]),
    max_partitions=st.one_of(st.integers(-1, 20_000), st.just(2**62)),
    max_contributions=st.one_of(st.integers(0, 200_000), st.just(10**7)),
    private=st.booleans(),
)
def test_any_parameters_give_a_config_error_or_a_valid_plan(
    epsilon, delta, noise, lower, width, kind, max_partitions, max_contributions, private
) -> None:
    """Issue 10: never a raw exception, a hang, an overflow or a non-finite scale."""
    try:
        bounds = (lower, lower + width)
        metric = {
            "sum": lambda: tm.sum("x", bounds=bounds),
            "mean": lambda: tm.mean("x", bounds=bounds),
            "variance": lambda: tm.variance("x", bounds=bounds),
            "quantiles": lambda: tm.quantiles("x", [0.5], bounds=bounds),
            "histogram": lambda: tm.histogram("x", bins=list(bounds)),
            "count": lambda: tm.count(name="c2"),
        }[kind]()
        plan = make(
            epsilon=epsilon,
            delta=delta,
            noise=noise,
            metric=metric,
            max_partitions=max_partitions,
            max_contributions=max_contributions,
            private=private,
        )
    except tm.ConfigError:
        return
    assert plan.loss.epsilon <= float(epsilon) * (1 + 1e-9)
    assert plan.loss.delta <= float(delta) * (1 + 1e-9)
    for cal in plan.measurements.values():
        assert 0 < cal.scale <= 2.0**52
        assert math.isfinite(cal.stddev)
