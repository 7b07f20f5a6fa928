"""Confidence intervals: exact noise quantiles, coverage over seeded releases, exports."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import telemagg as tm
from telemagg import _intervals
from telemagg._aggregator import Randomness
from telemagg._intervals import half_width, sum_half_width, threshold_lower
from telemagg._mechanisms import SeededNoise, ThresholdPlan
from telemagg._samplers import laplace_rate
from telemagg.testing import seeded

ALPHA = 1e-3  # of every statistical check here


def laplace_tail(scale: float, m: int) -> float:
    """P(|Z| >= m) of the discrete Laplace the sampler draws at ``scale``."""
    if m <= 0:
        return 1.0
    rate = float(laplace_rate(scale))
    r = math.exp(-rate)
    return 2.0 * math.exp(-m * rate) / (1.0 + r)


def gaussian_tail(sigma: float, m: int) -> float:
    """P(|Z| >= m) of the discrete Gaussian with exactly ``sigma``, by brute-force sums."""
    if m <= 0:
        return 1.0
    z = np.arange(-int(50 * sigma) - 2, int(50 * sigma) + 3, dtype=np.float64)
    weights = np.exp(-(z**2) / (2 * sigma**2))
    return float(weights[np.abs(z) >= m].sum() / weights.sum())


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5, 17.0, 1000.0, 2.0**40])
@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.05, 1e-3, 1e-9])
def test_laplace_half_width_is_the_exact_quantile(scale: float, alpha: float) -> None:
    h = half_width("laplace", scale, alpha)
    assert laplace_tail(scale, h + 1) <= alpha * (1 + 1e-9)
    assert h == 0 or laplace_tail(scale, h) > alpha * (1 - 1e-9)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.3, 40.0, 900.0])
@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.05, 1e-3])
def test_gaussian_half_width_is_the_exact_quantile(sigma: float, alpha: float) -> None:
    exact_sigma = _intervals.sampler_sigma(sigma)
    assert exact_sigma >= sigma
    h = half_width("gaussian", sigma, alpha)
    assert gaussian_tail(exact_sigma, h + 1) <= alpha
    assert h == 0 or gaussian_tail(exact_sigma, h) > alpha * (1 - 1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.01])
def test_gaussian_tail_bound_beyond_the_exact_range_loses_at_most_one_unit(alpha: float) -> None:
    sigma = 5000.0
    bound = half_width("gaussian", sigma, alpha)  # above EXACT_GAUSSIAN_SIGMA: the bound
    exact = _intervals._gaussian_half_width(_intervals.sampler_sigma(sigma), alpha)
    assert exact <= bound <= exact + 1


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize("terms", [1, 4, 16])
def test_sum_half_width_bounds_sums_of_noise(mechanism: str, terms: int) -> None:
    noise = SeededNoise(terms)
    draw = noise.laplace if mechanism == "laplace" else noise.gaussian
    runs, alpha = 20_000, 0.05
    sums = draw(np.zeros(runs * terms, np.int64), 3.0).reshape(runs, terms).sum(axis=1)
    t = sum_half_width(mechanism, 3.0, terms, alpha)
    exceeded = int(np.count_nonzero(np.abs(sums) > t))
    assert exceeded <= stats.binom.ppf(1 - ALPHA, runs, alpha)


def test_threshold_lower_bound_holds_given_selection_and_rejects_a_narrower_scale() -> None:
    """Unit counts published by the threshold: conditional coverage at the truth near
    the threshold, where the plain interval fails; a 30% narrower law fails too."""
    plan = ThresholdPlan(scale=10.0, threshold=60, epsilon=0.1, delta=1e-9)
    truth, alpha = 45, 0.025
    noisy = SeededNoise(3).laplace(np.full(400_000, truth, np.int64), plan.scale)
    released = noisy[noisy >= plan.threshold].astype(np.float64)
    trials = released.size
    assert trials > 20_000

    def misses(p: ThresholdPlan) -> int:
        return int(np.count_nonzero(threshold_lower(released, p, alpha) > truth))

    assert misses(plan) <= stats.binom.ppf(1 - ALPHA, trials, alpha)
    narrower = ThresholdPlan(0.7 * plan.scale, plan.threshold, plan.epsilon, plan.delta)
    assert misses(narrower) > stats.binom.ppf(1 - ALPHA, trials, alpha)
    plain = released - half_width("laplace", plan.scale, 2 * alpha)  # ignores selection
    assert np.count_nonzero(plain > truth) > 4 * trials * alpha


# --------------------------------------------------------------------------- releases


class ExactValues:
    """A noise source adding nothing: the release's exact (bounded, fixed-point) values."""

    seeded = True

    def laplace(self, values: np.ndarray, scale: float) -> np.ndarray:
        return np.asarray(values, np.int64).copy()

    gaussian = laplace

    def threshold(self, keys: Any, counts: Any, plan: Any) -> Any:
        raise AssertionError("public partitions only")

    def bernoulli(self, probabilities: Any) -> Any:
        raise AssertionError("public partitions only")


BOUNDS = (0.0, 200.0)
METRICS = [
    tm.count(),
    tm.unit_count(),
    tm.sum("x", bounds=BOUNDS),
    tm.mean("x", bounds=BOUNDS),
    tm.variance("x", bounds=BOUNDS),
    tm.quantiles("x", [0.5, 0.9], bounds=BOUNDS),
    tm.histogram("x", bins=[0, 50, 100, 200]),
]
POLICY = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=2)
PARTITIONS = ["a", "b", "c"]


def workload(seed: int = 0) -> dict[str, np.ndarray]:
    """Every unit within the bounds (2 events, 1 partition): bounding keeps everything."""
    rng = np.random.default_rng(seed)
    users = np.arange(1500)
    partition = np.asarray(PARTITIONS, dtype=object)[users % 3]
    x = np.minimum(rng.exponential(60.0, 2 * users.size), 400.0)
    x[rng.choice(x.size, 40, replace=False)] = np.nan
    return {"user": np.repeat(users, 2), "event": np.repeat(partition, 2), "x": x}


def aggregator(data: dict[str, np.ndarray]) -> tm.Aggregator:
    agg = tm.Aggregator(policy=POLICY, by="event", metrics=METRICS, randomness=seeded(0))
    agg.add(data)
    return agg


def release_with(agg: tm.Aggregator, noise: Any, family: str = "laplace") -> tm.Release:
    agg._randomness = Randomness(agg._randomness.sampling_key, noise)  # white-box: noise only
    delta = 1e-6 if family == "gaussian" else 0.0
    return agg.release(epsilon=2.0, delta=delta, partitions=PARTITIONS, noise=family)


def test_interval_columns_follow_each_value_column_and_hold_the_value() -> None:
    release = release_with(aggregator(workload()), SeededNoise(1))
    table = release.to_pandas(intervals=0.95)
    names = list(table.columns)
    for value in ("count", "unit_count", "sum_x", "mean_x", "p50_x", "histogram_x"):
        i = names.index(value)
        assert names[i + 1 : i + 3] == [f"{value}_low", f"{value}_high"]
    for value in ("count", "sum_x", "mean_x", "variance_x", "p90_x"):
        assert (table[f"{value}_low"] <= table[value]).all()
        assert (table[value] <= table[f"{value}_high"]).all()
    for low, mid, high in zip(
        table["histogram_x_low"], table["histogram_x"], table["histogram_x_high"], strict=True
    ):
        assert np.all(np.asarray(low) <= mid)
        assert np.all(np.asarray(mid) <= high)
    assert list(release.to_pandas().columns) == [
        n for n in names if not n.endswith(("_low", "_high"))
    ]
    assert release.to_arrow(intervals=0.95).column_names == names
    assert release.to_polars(intervals=0.95).columns == names
    described = json.loads(release.metadata_json(0.95))["intervals"]
    assert described["level"] == 0.95
    assert set(described["methods"]) >= {"count", "mean_x", "p50_x", "histogram_x"}
    assert "intervals" not in release.metadata  # only exports with intervals carry it


def test_a_release_pickles_with_what_its_intervals_need() -> None:
    import pickle

    release = release_with(aggregator(workload()), SeededNoise(2))
    copy = pickle.loads(pickle.dumps(release))
    assert copy.to_pandas(intervals=0.9).equals(release.to_pandas(intervals=0.9))


def test_intervals_go_to_parquet_with_their_level(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    release = release_with(aggregator(workload()), SeededNoise(2))
    path = tmp_path / "r.parquet"
    release.to_parquet(path, intervals=0.9)
    table = pq.read_table(path)
    assert "count_low" in table.column_names
    assert json.loads(table.schema.metadata[b"telemagg"])["intervals"]["level"] == 0.9


@pytest.mark.parametrize("level", [0.0, 1.0, 95, "0.95", True, float("nan")])
def test_a_bad_level_is_a_config_error_naming_intervals(level: Any) -> None:
    release = release_with(aggregator(workload()), SeededNoise(2))
    with pytest.raises(tm.ConfigError, match="intervals must be None or a confidence level"):
        release.to_pandas(intervals=level)


def test_published_intervals_and_metadata_change_only_through_noise() -> None:
    """D and D + one unit: same interval description and columns; each interval is a
    function of the noisy values and the plan (same noise in, same interval out)."""
    data = workload()
    extra = {
        "user": np.append(data["user"], [10**6] * 2),
        "event": np.append(data["event"], ["a", "a"]),
        "x": np.append(data["x"], [150.0, np.nan]),
    }
    first = release_with(aggregator(data), SeededNoise(5))
    second = release_with(aggregator(extra), SeededNoise(5))

    def untimed(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k != "created_at"}

    assert untimed(first.export_metadata(0.95)) == untimed(second.export_metadata(0.95))
    assert list(first.to_pandas(intervals=0.95)) == list(second.to_pandas(intervals=0.95))
    # same noise draws: the count moves by the unit's 2 events, and its interval with it
    a, b = first.to_pandas(intervals=0.95), second.to_pandas(intervals=0.95)
    assert (b["count_low"] - a["count_low"]).tolist() == [2.0, 0.0, 0.0]
    assert (b["count_high"] - a["count_high"]).tolist() == [2.0, 0.0, 0.0]


SHRINKS = (1.0, 0.7, 1.3)


def coverage(
    level: float, runs: int, family: str = "laplace"
) -> tuple[dict[float, dict[str, int]], dict[str, float]]:
    """Intervals covering the exact value over ``runs`` seeded releases, per column, with
    every half-width around the value scaled by each of :data:`SHRINKS` (30% narrower or
    wider must be detected), and the mean width of the unscaled ones."""
    agg = aggregator(workload())
    truth = release_with(agg, ExactValues(), family).to_dict()
    hits: dict[float, dict[str, int]] = {shrink: {} for shrink in SHRINKS}
    widths: dict[str, float] = {}
    for seed in range(runs):
        table = release_with(agg, SeededNoise(10_000 + seed), family).to_dict(intervals=level)
        for name, exact_values in truth.items():
            if name == "event":
                continue
            value, low, high, exact = (
                np.asarray(column.tolist(), dtype=np.float64)
                for column in (
                    table[name],
                    table[f"{name}_low"],
                    table[f"{name}_high"],
                    exact_values,
                )
            )
            widths[name] = widths.get(name, 0.0) + float(np.mean(high - low)) / runs
            for shrink, counts in hits.items():
                lo, hi = value - shrink * (value - low), value + shrink * (high - value)
                covered = (lo <= exact + 1e-9) & (exact - 1e-9 <= hi)
                counts[name] = counts.get(name, 0) + int(np.count_nonzero(covered))
    return hits, widths


@pytest.mark.slow
def test_every_interval_covers_the_bounded_truth_at_its_level() -> None:
    level, runs = 0.9, 1000
    hits, widths = coverage(level, runs)
    print({name: round(width, 3) for name, width in widths.items()})  # reported widths
    trials = runs * len(PARTITIONS)
    for name, hit in hits[1.0].items():
        n = trials * (3 if name == "histogram_x" else 1)
        assert hit >= stats.binom.ppf(ALPHA, n, level), (name, hit / n, widths[name])
    # counts and sums are exact noise quantiles: their coverage is P(|Z| <= h) exactly,
    # and intervals 30% narrower or wider than that are rejected
    reports = release_with(aggregator(workload()), SeededNoise(0)).metrics
    for name in ("count", "sum_x"):
        component = reports[name].components[-1]
        scale = float(component["scale"]) / float(component.get("resolution", 1.0))
        p = 1.0 - laplace_tail(scale, half_width("laplace", scale, 1 - level) + 1)
        assert stats.binomtest(hits[1.0][name], trials, p).pvalue > ALPHA, name
        for shrink in (0.7, 1.3):
            off = hits[shrink][name]
            assert stats.binomtest(off, trials, p).pvalue < ALPHA, (name, shrink, off / trials)


@pytest.mark.slow
def test_gaussian_intervals_cover_at_their_level() -> None:
    level, runs = 0.8, 400
    hits, _ = coverage(level, runs, "gaussian")
    trials = runs * len(PARTITIONS)
    for name, hit in hits[1.0].items():
        n = trials * (3 if name == "histogram_x" else 1)
        assert hit >= stats.binom.ppf(ALPHA, n, level), (name, hit / n)
    for name in ("count", "sum_x"):  # 30% narrower: detected
        assert hits[0.7][name] < stats.binom.ppf(ALPHA, trials, level), name


@given(
    n=st.tuples(st.floats(-50, 5000), st.floats(0, 500)),
    c=st.tuples(st.floats(-5e4, 5e4), st.floats(0, 5e4)),
    s=st.tuples(st.floats(-1e6, 1e7), st.floats(0, 1e7)),
    picks=st.lists(st.tuples(*[st.floats(0, 1)] * 3), min_size=1, max_size=20),
)
@settings(max_examples=200, deadline=None)
def test_variance_range_contains_every_point_of_its_box(
    n: tuple[float, float], c: tuple[float, float], s: tuple[float, float], picks: list[Any]
) -> None:
    boxes = [(np.array([lo]), np.array([lo + width])) for lo, width in (n, c, s)]
    low, high = _intervals._variance_range(*boxes)
    for u, v, w in picks:
        count = max(n[0] + u * n[1], 1.0)  # the range reads counts below 1 as 1
        centred = c[0] + v * c[1]
        squares = s[0] + w * s[1]
        value = squares / count - centred**2 / count**2
        scale = max(1.0, abs(value))
        assert low[0] - 1e-9 * scale <= value <= high[0] + 1e-9 * scale


def test_windowed_releases_export_intervals_after_their_window_keys() -> None:
    agg = tm.Aggregator(
        policy=POLICY,
        by="event",
        metrics=[tm.count(), tm.mean("x", bounds=BOUNDS)],
        window="1h",
        time="t",
        start=0,
        randomness=seeded(6),
    )
    data = workload()
    agg.add({**data, "t": np.zeros(data["user"].size)}, now=10)
    release = agg.release_closed(epsilon=1.0, partitions=PARTITIONS, now=3600)[0]
    names = list(release.to_pandas(intervals=0.95).columns)
    assert names[:3] == ["window_start", "window_end", "event"]
    assert names[3:6] == ["count", "count_low", "count_high"]
