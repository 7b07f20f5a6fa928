"""Quantiles: the noisy tree histogram, its consistency, released values and intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stats import assert_discrete_noise_scale
from tests.strategies import event_rows, policies
from tests.test_metrics_telemetry import by_event, one_event_per_user, recording

import telemagg as tm
from telemagg import _mechanisms as mech
from telemagg import _quantiles as quant
from telemagg._plan import make_plan
from telemagg.policy import ReleaseParams, quantiles
from telemagg.testing import seeded


@given(
    counts=st.lists(st.lists(st.floats(-1e4, 1e4), min_size=8, max_size=8), min_size=1, max_size=6),
    levels=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=6, unique=True),
)
def test_grid_positions_are_monotone_in_the_level_and_inside_the_grid(counts, levels) -> None:
    positions = quant.grid_positions(np.asarray(counts), sorted(levels))
    assert positions.min() >= 0.0
    assert positions.max() <= 1.0
    assert (np.diff(positions, axis=1) >= 0).all()


@given(
    leaves=st.lists(st.integers(0, 50), min_size=16, max_size=16),
    noise=st.lists(st.floats(-20, 20), min_size=21, max_size=21),
)
def test_the_consistent_tree_is_exact_without_noise_and_consistent_with_it(leaves, noise) -> None:
    exact = quant.tree_counts(np.asarray([leaves], dtype=np.int64))
    assert exact.shape == (1, quant.tree_nodes(2))
    assert exact[0, 0] == sum(leaves)
    np.testing.assert_allclose(quant.consistent_leaves(exact.astype(float)), [leaves])
    fitted = quant.consistent_leaves(exact + np.asarray([noise]))
    rebuilt = quant.tree_counts(fitted)  # consistent: refitting its own tree changes nothing
    np.testing.assert_allclose(quant.consistent_leaves(rebuilt), fitted, atol=1e-9)


def test_no_partition_released_gives_empty_quantile_columns() -> None:
    metric = quantiles("value", [0.5, 0.9], bounds=(1, 100))
    nodes = np.zeros((0, quant.tree_nodes(quant.tree_height(metric))))
    columns = quant.quantile_columns(metric, nodes)
    assert [c.shape for c in columns.values()] == [(0,), (0,)]
    assert quant.tree_counts(np.zeros((0, 64), np.int64)).shape == nodes.shape


def test_prefix_nodes_sum_to_the_prefix_counts() -> None:
    rng = np.random.default_rng(0)
    for height in (1, 2, 3):
        leaves = rng.integers(0, 9, size=(3, quant.BRANCHING**height))
        tree = quant.tree_counts(leaves)
        prefix = quant.prefix_nodes(height)
        cumulative = np.concatenate([np.zeros((3, 1)), np.cumsum(leaves, axis=1)], axis=1)
        np.testing.assert_array_equal(tree @ prefix.T, cumulative)
        assert prefix.sum(axis=1).max() <= (quant.BRANCHING - 1) * height + 1


def test_consistency_lowers_the_noise_of_prefix_counts() -> None:
    """The consistent estimate is unbiased and its prefix counts are less noisy than the
    raw tree's sums of nodes (Hay et al. 2010)."""
    rng = np.random.default_rng(1)
    height, reps = 3, 4000
    leaves = rng.integers(0, 100, size=(1, quant.BRANCHING**height))
    tree = quant.tree_counts(leaves).astype(float)
    noisy = tree + rng.laplace(0, 10.0, size=(reps, tree.shape[1]))
    truth = np.cumsum(leaves[0])
    fitted = np.cumsum(quant.consistent_leaves(noisy), axis=1)
    raw = noisy @ quant.prefix_nodes(height)[1:].T
    assert np.abs(fitted.mean(axis=0) - truth).max() < 3.0  # unbiased (stderr ~ 0.6)
    assert (fitted.var(axis=0) <= raw.var(axis=0) * 1.05).all()
    assert fitted.var(axis=0).mean() < 0.8 * raw.var(axis=0).mean()


@settings(max_examples=40, deadline=None)
@given(
    rows=event_rows(),
    policy=policies,
    levels=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=5, unique=True),
    lower=st.floats(0.5, 20),
    width=st.floats(1, 200),
    scale=st.sampled_from(["linear", "log"]),
    bins=st.integers(2, 300),
    noise=st.sampled_from(["laplace", "gaussian"]),
)
def test_released_quantiles_are_monotone_and_inside_bounds(
    rows, policy, levels, lower, width, scale, bins, noise
) -> None:
    bounds = (lower, lower + width)
    metric = quantiles("value", sorted(levels), bounds=bounds, scale=scale, bins=bins)
    release = by_event(
        rows,
        [metric],
        policy=policy,
        epsilon=0.5,
        partitions=["a", "b", "c", "z"],
        noise=noise,
        randomness=seeded(7),
    )
    table = np.column_stack([release.to_dict()[c] for c in metric.output_names])
    assert table.shape == (4, len(levels))
    assert (table >= bounds[0]).all()
    assert (table <= bounds[1]).all()
    assert (np.diff(table, axis=1) >= 0).all()


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_quantile_tree_noise_has_the_reported_scale(noise) -> None:
    n_partitions, bins = 40, 64
    levels = 1 + round(math.log(bins, quant.BRANCHING))
    values = np.random.default_rng(0).uniform(0, 100, 40_000)
    metric = quantiles("value", [0.5, 0.9], bounds=(0, 100), bins=bins)
    randomness, recorder = recording(3)
    release = by_event(
        one_event_per_user(values, n_partitions),
        [metric],
        partitions=list(range(n_partitions)),
        noise=noise,
        randomness=randomness,
    )
    report = release.metrics["p90_value"]
    assert release.metrics["p50_value"] is report
    assert report.mechanism == noise
    component = report.components[0]
    assert component["bins"] == bins
    assert component["branching"] == quant.BRANCHING
    if noise == "laplace":  # L1 = L0 * Linf * levels, the whole epsilon
        assert report.sensitivity == levels
        assert component["scale"] == pytest.approx(levels, rel=1e-6)
    else:
        assert report.sensitivity == pytest.approx(math.sqrt(levels))
    (exact, noisy, scale), *others = recorder.draws
    assert not others
    assert exact.size == n_partitions * quant.tree_nodes(levels - 1)
    assert exact.dtype == noisy.dtype == np.int64
    assert scale == component["scale"]
    assert_discrete_noise_scale(noisy - exact, noise, scale)


def heavy_tailed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Latencies: lognormal body (median 80 ms), Pareto tail on 5% from 400 ms."""
    values = rng.lognormal(np.log(80), 0.6, n)
    tail = rng.random(n) < 0.05
    values[tail] = 400 * (1 + rng.pareto(1.5, int(tail.sum())))
    return values


def test_log_quantiles_of_heavy_tailed_latencies_are_close_in_value() -> None:
    """Enough data per partition: p50/p90/p99 within two leaves of each partition's truth
    (3.7% each for 256 log leaves over [1, 10_000])."""
    rng = np.random.default_rng(2)
    values = heavy_tailed(rng, 200_000)
    levels = [0.5, 0.9, 0.99]
    metric = quantiles("value", levels, bounds=(1, 10_000), scale="log", bins=256)
    events = one_event_per_user(values, 4)
    release = by_event(events, [metric], partitions=[0, 1, 2, 3], randomness=seeded(8))
    for level, name in zip(levels, metric.output_names, strict=True):
        truth = [
            np.quantile(np.clip(values[events["event"] == p], 1, 10_000), level) for p in range(4)
        ]
        released = release.to_dict()[name]
        assert np.all(np.abs(np.log(released / truth)) < 2 * np.log(10_000) / 256), level


def test_small_partitions_keep_p90_and_p99_near_the_truth() -> None:
    """1,000 units per partition at epsilon 1, L0 = 1, Linf = 1: p90 within 0.05 and p99
    within 0.1 of the value range (the 32-bin grid was off by up to 30% of it)."""
    rng = np.random.default_rng(4)
    n_partitions = 20
    values = heavy_tailed(rng, 1000 * n_partitions)
    levels = [0.5, 0.9, 0.99]
    metric = quantiles("value", levels, bounds=(1, 10_000), scale="log")
    events = one_event_per_user(values, n_partitions)
    release = by_event(events, [metric], partitions=list(range(n_partitions)), randomness=seeded(3))
    for level, name, limit in zip(levels, metric.output_names, (0.02, 0.05, 0.1), strict=True):
        truth = np.array(
            [np.quantile(values[events["event"] == p], level) for p in range(n_partitions)]
        )
        error = np.abs(release.to_dict()[name] - np.clip(truth, 1, 10_000)) / 9999
        assert np.median(error) <= limit, (level, np.median(error))


# --------------------------------------------------------------------------- intervals


def noisy_trees(
    metric: tm.policy.Quantiles, values_per_partition: list[np.ndarray], noise: str, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, object], object]:
    """The metric's tree over each partition's values, noised as a release would."""
    policy = tm.Policy(privacy_unit="u", max_partitions=1, max_contributions=1)
    params = ReleaseParams(epsilon=1.0, delta=1e-6, noise=noise, private_partitions=False)
    plan = make_plan([metric], policy, params)
    cal = plan.measurements[quant.quantile_key(metric)]
    leaves = np.stack(
        [
            np.bincount(quant.quantile_grid(metric, v), minlength=quant.tree_leaves(metric))
            for v in values_per_partition
        ]
    )
    exact = quant.tree_counts(leaves.astype(np.int64))
    source = mech.SeededNoise(seed)
    draw = source.laplace if noise == "laplace" else source.gaussian
    noisy = draw(exact.ravel(), cal.scale).reshape(exact.shape).astype(float)
    return {cal.spec.key: noisy}, dict(plan.measurements), cal


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
@pytest.mark.parametrize("n", [50, 2000])
def test_quantile_intervals_cover_the_bounded_truth_at_their_level(noise, n) -> None:
    """Over 1,200 independent partitions (each a release of its own), every level's
    interval covers the true quantile of the bounded values at least 95% of the time."""
    rng = np.random.default_rng(n)
    partitions = [heavy_tailed(rng, n) for _ in range(1200)]
    levels = [0.1, 0.5, 0.9, 0.99]
    metric = quantiles("value", levels, bounds=(1, 10_000), scale="log", bins=64)
    noisy, calibrated, _ = noisy_trees(metric, partitions, noise, seed=n)
    intervals = quant.quantile_intervals(metric, noisy, calibrated, 0.95)  # type: ignore[arg-type]
    released = quant.quantile_columns(metric, noisy[quant.quantile_key(metric)])
    for level, name in zip(levels, metric.output_names, strict=True):
        low, high = intervals[name]
        truth = np.array(
            [np.quantile(np.clip(v, 1, 10_000), level, method="inverted_cdf") for v in partitions]
        )
        assert (low <= released[name]).all()
        assert (released[name] <= high).all()
        covered = np.mean((low <= truth * (1 + 1e-9)) & (truth <= high * (1 + 1e-9)))
        assert covered >= 0.95, (name, covered)


def test_quantile_intervals_narrow_with_more_data() -> None:
    rng = np.random.default_rng(9)
    metric = quantiles("value", [0.5, 0.9], bounds=(1, 10_000), scale="log")
    widths = []
    for n in (100, 10_000, 1_000_000):
        noisy, calibrated, _ = noisy_trees(metric, [heavy_tailed(rng, n)], "laplace", seed=n)
        low, high = quant.quantile_intervals(metric, noisy, calibrated, 0.95)["p50_value"]  # type: ignore[arg-type]
        widths.append(float(np.log(high[0] / low[0])))
    assert widths[0] > widths[1] >= widths[2]
    assert widths[2] < 3 * np.log(10_000) / 64  # a few leaves
