"""Private partition selection: truncated-geometric keep probabilities, their sampling, and
which selection a release uses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import telemagg as tm
from telemagg import _mechanisms as mech
from telemagg.testing import Randomness, seeded

Table = tuple[float, float, np.ndarray]
tables = st.tuples(
    st.floats(min_value=0.01, max_value=5.0), st.floats(min_value=1e-12, max_value=0.1)
).map(lambda b: (b[0], b[1], mech.keep_probabilities(*b)))
"""(epsilon, delta, keep probabilities at that budget)"""


# --------------------------------------------------------------------------- keep probabilities


@settings(max_examples=60, deadline=None)
@given(tables)
def test_keep_probabilities_follow_the_recursion_and_are_monotone_in_0_1(table: Table) -> None:
    eps, delta, pi = table
    assert pi[0] == 0.0
    assert pi[-1] == 1.0
    assert pi[-2] < 1.0
    previous = pi[:-1]
    expected = np.minimum.reduce(
        [
            math.exp(eps) * previous + delta,
            1.0 - math.exp(-eps) * (1.0 - previous - delta),
            np.ones_like(previous),
        ]
    )
    # directed rounding: never above the exact step, and within float error of it
    assert np.all(pi[1:] <= expected + 1e-15)
    np.testing.assert_allclose(pi[1:], expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(pi) > 0.0)
    assert np.all((pi >= 0.0) & (pi <= 1.0))


@settings(max_examples=60, deadline=None)
@given(tables)
def test_keep_probabilities_satisfy_both_privacy_inequalities_at_every_count(
    table: Table,
) -> None:
    eps, delta, pi = table
    pi = np.append(pi, [1.0, 1.0])  # counts past the table are clipped to its end
    before, after = pi[:-1], pi[1:]
    slack = 1e-15  # float rounding of evaluating these inequalities (the table is rounded down)
    # kept: P(kept | n) <= e^eps P(kept | n - 1) + delta
    assert np.all(after <= math.exp(eps) * before + delta + slack)
    # not kept: P(dropped | n - 1) <= e^eps P(dropped | n) + delta
    assert np.all(1.0 - before <= math.exp(eps) * (1.0 - after) + delta + slack)


def test_selection_splits_the_budget_over_the_partitions_one_unit_touches() -> None:
    sel = mech.truncated_geometric(4, 0.25, 1e-6)
    assert sel.partition_epsilon == pytest.approx(0.25 / 4)
    assert sel.partition_delta == pytest.approx(1e-6 / 4)
    assert sel.epsilon <= 0.25 * (1 + 1e-12)
    assert sel.delta <= 1e-6 * (1 + 1e-12)
    np.testing.assert_array_equal(sel.probabilities, mech.keep_probabilities(0.25 / 4, 1e-6 / 4))
    half = sel.units_for_half
    assert sel.probabilities[half] >= 0.5 > sel.probabilities[half - 1]
    # the reason to use it: mid-sized partitions pass far sooner than the Laplace threshold
    assert half < 0.9 * mech.laplace_threshold(4, 1, 0.25, 1e-6).threshold


def test_keep_probability_is_zero_for_absent_partitions_and_one_past_the_table() -> None:
    sel = mech.truncated_geometric(2, 1.0, 1e-6)
    end = sel.probabilities.size
    out = sel.keep_probability(np.array([0, 1, end - 2, end - 1, end, 10 * end]))
    assert out[0] == 0.0
    assert out[1] == pytest.approx(0.5e-6)
    assert out[2] < 1.0
    assert out[3:].tolist() == [1.0, 1.0, 1.0]


def test_keep_table_ends_for_tiny_deltas_and_is_bounded() -> None:
    """delta=1e-16 over L0=4 used to stall just below 1 and grow until MemoryError: the
    drop probability carries the tail, and the table's length is bounded in advance."""
    sel = mech.truncated_geometric(4, 0.25, 1e-16)
    assert sel.probabilities[-1] == 1.0
    assert sel.probabilities.size <= mech.keep_table_length(0.25 / 4, 1e-16 / 4)
    # drop probabilities below float64's resolution near 1 are kept exactly
    assert sel.drop[-2] > 0.0
    assert np.all(np.diff(sel.drop) <= 0.0)
    tail = sel.drop[sel.probabilities > 0.5]
    assert np.all(np.diff(tail) < 0.0)  # strictly: the tail never stalls
    with pytest.raises(tm.ConfigError, match="keep table"):
        mech.truncated_geometric(4, 1e-5, 1e-12)


def test_tail_coins_use_the_drop_probability() -> None:
    sel = mech.truncated_geometric(4, 0.25, 1e-16)
    units = np.full(200_000, sel.probabilities.size - 3)
    drop = float(sel.drop[-3])
    kept = sel.keep(units, mech.SeededNoise(2))
    assert stats.binomtest(int((~kept).sum()), units.size, drop).pvalue > 1e-3
    assert sel.keep(np.array([0, 10**9]), mech.SeededNoise(3)).tolist() == [False, True]


# --------------------------------------------------------------------------- sampling


def test_seeded_release_rate_matches_keep_probability() -> None:
    sel = mech.truncated_geometric(4, 0.25, 1e-6)
    noise = mech.SeededNoise(11)
    trials = 20_000
    for n in (sel.units_for_half - 15, sel.units_for_half, sel.units_for_half + 25):
        p = float(sel.keep_probability(np.array([n]))[0])
        kept = int(noise.bernoulli(np.full(trials, p)).sum())
        assert stats.binomtest(kept, trials, p).pvalue > 1e-3, (n, p, kept)
        assert stats.binomtest(kept, trials, 0.7 * p).pvalue < 1e-9  # a 30%-off rate fails


@pytest.mark.parametrize("p", [0.03, 0.5, 0.81])
def test_opendp_coins_have_the_requested_probability(p: float) -> None:
    # Production sampler, unseeded: a false failure has probability about 1e-6 per case.
    trials = 20_000
    probabilities = np.full(trials, p)
    probabilities[::2] = 1.0 - p  # two groups in one call
    drawn = mech.OpenDPNoise().bernoulli(probabilities)
    for group in (slice(0, None, 2), slice(1, None, 2)):
        expected = float(probabilities[group][0])
        count = int(drawn[group].sum())
        assert stats.binomtest(count, trials // 2, expected).pvalue > 1e-6


def test_opendp_coins_at_0_and_1_are_certain_and_empty_input_is_fine() -> None:
    noise = mech.OpenDPNoise()
    assert noise.bernoulli(np.array([0.0, 1.0, 0.0, 1.0])).tolist() == [False, True, False, True]
    assert noise.bernoulli(np.zeros(0)).shape == (0,)


# --------------------------------------------------------------------------- in a release

POLICY = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=2)
USERS = np.arange(3001)
ONE_AND_THOUSANDS = {  # a partition held by one user, one by 3000 users (two events each)
    "user": np.repeat(USERS, 2),
    "event": np.repeat(np.where(USERS == 0, "lonely", "busy").astype(object), 2),
    "value": np.ones(2 * USERS.size),
}


def release(metrics: list[Any], randomness: Randomness | None) -> tm.Release:
    """A release of ONE_AND_THOUSANDS by event at epsilon 1, delta 1e-6."""
    return tm.aggregate(
        ONE_AND_THOUSANDS,
        by="event",
        metrics=metrics,
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        randomness=randomness,
    )


def test_without_unit_count_selection_is_truncated_geometric() -> None:
    for seed in range(20):
        out = release([tm.count()], seeded(seed))
        assert out.to_pandas()["event"].tolist() == ["busy"]
    selection = out.metadata["partitions"]["mechanism"]
    assert selection["mechanism"] == "truncated_geometric"
    expected = mech.truncated_geometric(1, 0.5, 1e-6)  # two shares: selection and count
    assert selection["epsilon"] == expected.epsilon
    assert selection["delta"] == expected.delta
    assert selection["units_for_half"] == expected.units_for_half
    assert out.epsilon <= 1.0
    assert out.delta <= 1e-6


def test_production_randomness_releases_the_busy_partition_only() -> None:
    out = release([tm.count(), tm.sum("value", bounds=(0, 1))], None)
    assert out.to_pandas()["event"].tolist() == ["busy"]
    assert out.metadata["partitions"]["mechanism"]["mechanism"] == "truncated_geometric"


def test_unit_count_keeps_the_laplace_threshold_and_its_noisy_counts() -> None:
    out = release([tm.count(), tm.unit_count()], seeded(3))
    assert out.metadata["partitions"]["mechanism"]["mechanism"] == "laplace_threshold"
    table = out.to_pandas()
    assert table["event"].tolist() == ["busy"]
    assert abs(table["unit_count"][0] - 3000) < 100  # threshold noise: Laplace scale 2
