"""Exact discrete samplers: each against its exact law (chi-square), against OpenDP's
sampler (two-sample), the lazy-bit tie path, and the production bit source."""

from __future__ import annotations

import math
import time
from decimal import Context, Decimal
from fractions import Fraction

import numpy as np
import pytest
from tests.stats import (
    assert_discrete_noise_scale,
    chi_square_pvalue,
    two_sample_pvalue,
)

from telemagg import _samplers as samplers
from telemagg._samplers import (
    SeededBits,
    SystemBits,
    bernoulli,
    discrete_gaussian,
    discrete_laplace,
)

LAPLACE_SCALES = [0.37, 1.0, 3.5, 100.0, 450.0, 1e6, 1e12]
"""Single-table scales up to ~380; two, three and four levels above."""


def exact_laplace_scale(scale: float) -> float:
    return float(1 / samplers.laplace_rate(scale))


@pytest.mark.parametrize("scale", LAPLACE_SCALES)
def test_discrete_laplace_fits_its_exact_law_and_rejects_30_percent_off(scale: float) -> None:
    draws = discrete_laplace(400_000, scale, SeededBits(int(scale * 1000) % 2**32))
    assert draws.dtype == np.int64
    assert_discrete_noise_scale(draws, "laplace", exact_laplace_scale(scale))


@pytest.mark.slow
@pytest.mark.parametrize("scale", LAPLACE_SCALES)
def test_discrete_laplace_fits_its_exact_law_over_ten_million_draws(scale: float) -> None:
    draws = discrete_laplace(10_000_000, scale, SeededBits(7 + int(scale) % 1000))
    assert chi_square_pvalue(draws, "laplace", exact_laplace_scale(scale), bins=1000) > 1e-4
    # the fine structure the level decomposition could break: residues and parity
    if scale >= 450.0:
        nonzero = np.abs(draws[draws != 0]) - 1
        residues = np.bincount(nonzero % samplers._LEVEL_SIZE, minlength=samplers._LEVEL_SIZE)
        rate = float(samplers.laplace_rate(scale))
        # P(residue i) = sum_j exp(-rate (j L + i)) / Z = exp(-rate i) / (Z (1 - exp(-rate L))):
        # proportional to exp(-rate i) (a closed form; summing j up to 40/rate looped ~1e10
        # times at scale 1e12)
        weights = np.exp(-rate * np.arange(samplers._LEVEL_SIZE))
        expected = weights / weights.sum() * nonzero.size
        from scipy import stats

        statistic = float(np.sum((residues - expected) ** 2 / expected))
        assert stats.chi2.sf(statistic, samplers._LEVEL_SIZE - 1) > 1e-4


def test_tiny_scale_is_all_zeros_and_zero_draws_are_empty() -> None:
    # P(z != 0) = 2 exp(-100) / (1 + exp(-100)) ~ 7e-44 at scale 0.01
    assert not discrete_laplace(1_000_000, 0.01, SeededBits(1)).any()
    assert discrete_laplace(0, 1.0, SeededBits(1)).shape == (0,)
    assert discrete_gaussian(0, 1.0, SeededBits(1)).shape == (0,)


def test_sign_is_symmetric_and_zero_has_its_mass() -> None:
    draws = discrete_laplace(1_000_000, 1.0, SeededBits(3))
    r = math.exp(-1.0)
    zero = (1 - r) / (1 + r)
    from scipy import stats

    assert stats.binomtest(int((draws == 0).sum()), draws.size, zero).pvalue > 1e-3
    positive, negative = int((draws > 0).sum()), int((draws < 0).sum())
    assert stats.binomtest(positive, positive + negative, 0.5).pvalue > 1e-3


@pytest.mark.parametrize("sigma", [0.4, 1.0, 7.3, 60.0, 1e6])
def test_discrete_gaussian_fits_its_exact_law_and_rejects_30_percent_off(sigma: float) -> None:
    draws = discrete_gaussian(300_000, sigma, SeededBits(int(sigma * 10)))
    exact = math.sqrt(1 / (2 * float(samplers._gaussian_plan(sigma).weight)))
    assert_discrete_noise_scale(draws, "gaussian", exact)


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.4, 1.0, 7.3, 60.0, 1500.0])
def test_discrete_gaussian_fits_its_exact_law_over_ten_million_draws(sigma: float) -> None:
    n = 10_000_000 if sigma < 1000 else 1_000_000
    draws = discrete_gaussian(n, sigma, SeededBits(99))
    exact = math.sqrt(1 / (2 * float(samplers._gaussian_plan(sigma).weight)))
    assert chi_square_pvalue(draws, "gaussian", exact, bins=1000) > 1e-4


def test_rounded_parameters_are_never_narrower_than_asked() -> None:
    for scale in [0.1, 1 / 3, 2.0, 7.77, 1e6 / 3, 1e12]:
        assert 1 / samplers.laplace_rate(scale) >= Fraction(scale)
        plan = samplers._gaussian_plan(scale)
        assert 1 / (2 * plan.weight) >= Fraction(scale) ** 2
        assert plan.rate == 2 * plan.weight * plan.centre


# --------------------------------------------------------------------------- vs OpenDP


@pytest.mark.parametrize("scale", [1.0, 6.5, 2000.0])
def test_discrete_laplace_matches_opendps_sampler(scale: float) -> None:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    n = 20_000
    space = dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64)
    reference = np.asarray(dp.m.make_laplace(*space, scale)([0] * n))
    mine = discrete_laplace(n, scale, SeededBits(5))
    assert two_sample_pvalue(mine, reference) > 1e-4
    wider = discrete_laplace(n, 1.3 * scale, SeededBits(6))
    assert two_sample_pvalue(wider, reference) < 1e-3


@pytest.mark.parametrize("sigma", [1.0, 25.0])
def test_discrete_gaussian_matches_opendps_sampler(sigma: float) -> None:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    n = 10_000
    space = dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64)
    reference = np.asarray(dp.m.make_gaussian(*space, sigma)([0] * n))
    mine = discrete_gaussian(n, sigma, SeededBits(8))
    assert two_sample_pvalue(mine, reference) > 1e-4
    narrower = discrete_gaussian(n, 0.7 * sigma, SeededBits(9))
    assert two_sample_pvalue(narrower, reference) < 1e-3


# --------------------------------------------------------------------------- exactness paths


class ScriptedBits:
    """Plays back given 64-bit words, then a fixed filler (to force ties)."""

    seeded = True

    def __init__(self, words: list[int], filler: int = 0) -> None:
        self._words, self._filler = list(words), filler

    def words(self, n: int) -> np.ndarray:
        out = [self._words.pop(0) if self._words else self._filler for _ in range(n)]
        return np.asarray(out, dtype=np.uint64)


def exact_tail(scale: float, m: int, digits: int = 80) -> Decimal:
    """P(|Z| >= m) = 2 r**m / (1 + r), r = exp(-rate), at ``digits`` digits."""
    ctx = Context(prec=digits)
    rate = samplers._decimal(samplers.laplace_rate(scale))
    r = ctx.exp(-rate)
    return ctx.divide(ctx.multiply(2, ctx.exp(-rate * m)), ctx.add(1, r))


@pytest.mark.parametrize("extra", [0, 2**64 - 1, 2**63])
def test_a_tie_with_a_threshold_is_decided_by_more_bits_exactly(extra: int) -> None:
    scale = 1.0
    level = samplers._laplace_levels(samplers.laplace_rate(scale))[0]
    t1 = int(level.thresholds[0])  # floor(2^31 P(|Z| >= 1))
    # one 32-bit word whose 31 high bits equal t1 (sign bit 0), then 64 more bits of U
    first = (t1 << 1) | ((t1 << 1) << 32)  # both halves tie; only the first is used
    draw = discrete_laplace(1, scale, ScriptedBits([first, extra]))
    u = (Decimal(t1) * Decimal(2) ** 64 + Decimal(extra)) / Decimal(2) ** 95
    expected = 0
    while u < exact_tail(scale, expected + 1):
        expected += 1
    assert abs(int(draw[0])) == expected


def test_bernoulli_is_exact_for_tiny_dyadic_probabilities_and_ties() -> None:
    p = 2.0**-40 + 2.0**-80  # floor(p 2^31) = 0 with a fractional part
    # word 0: R = 0 ties with floor(p 2^31) = 0; the next 64 bits decide U < p exactly
    below = bernoulli(np.array([p]), ScriptedBits([0, 0]))
    above = bernoulli(np.array([p]), ScriptedBits([0, 2**64 - 1]))
    assert below.tolist() == [True]  # U = 0.000... < p
    assert above.tolist() == [False]  # U = 2^-31 * (1 - 2^-64) > p
    from scipy import stats

    coins = bernoulli(np.full(200_000, 0.3), SeededBits(4))
    assert stats.binomtest(int(coins.sum()), coins.size, 0.3).pvalue > 1e-3
    assert stats.binomtest(int(coins.sum()), coins.size, 0.21).pvalue < 1e-9


def test_gaussian_acceptance_ties_are_decided_exactly() -> None:
    plan = samplers._gaussian_plan(2.0)
    threshold, _ = plan._threshold(1)
    # the Laplace draw: a tie-free word giving |Y| = 1 (below t_1, above t_2), then an
    # acceptance word tying with floor(2^31 exp(-gamma(1))), then the deciding bits
    level = samplers._laplace_levels(plan.rate)[0]
    r = int(level.thresholds[1]) + 1
    accept_word = threshold << 1
    words = [r << 1, accept_word, 0]  # the draw, the coin (a tie), the deciding bits
    out = discrete_gaussian(1, 2.0, ScriptedBits(words, filler=0))
    assert abs(int(out[0])) == 1  # U = t / 2^31 exactly < exp(-gamma): accepted


@pytest.mark.parametrize("sigma", [0.4, 2.0, 37.0, 1e4, 1e9, 2.0**52])
def test_certified_float_acceptance_decides_exactly_as_the_exact_thresholds(sigma: float) -> None:
    # Every draw the float64 enclosure decides is decided as floor(2^31 exp(-gamma))
    # decides it; words are drawn around each threshold, where a wrong enclosure would show.
    plan = samplers._gaussian_plan(sigma)
    rng = np.random.default_rng(7)
    centre = int(plan.centre)
    spread = max(4 * int(plan.sigma), 4)
    magnitudes = np.unique(
        np.clip(rng.integers(centre - spread, centre + spread, 400), 0, 2**62)
    ).astype(np.int64)
    exact = np.array([plan._threshold(int(y))[0] for y in magnitudes.tolist()], dtype=np.int64)
    offsets = np.array([-3, -2, -1, 0, 1, 2, 3], dtype=np.int64)
    words = np.clip(exact[:, None] + offsets[None, :], 0, 2**31 - 1)
    flat_magnitudes = np.repeat(magnitudes, offsets.size)
    accept, undecided = plan.decide(flat_magnitudes, words.ravel().astype(np.uint32))
    truth = words.ravel() < np.repeat(exact, offsets.size)
    decided = ~undecided
    assert decided.mean() > 0.5  # the enclosure decides most even at the thresholds
    assert np.array_equal(accept[decided], truth[decided])
    assert not accept[undecided].any()


def test_overflow_of_int64_is_impossible_at_sane_scales() -> None:
    draws = discrete_laplace(100_000, 1e15, SeededBits(2))
    assert np.abs(draws).max() < 2**62


# --------------------------------------------------------------------------- bit sources


def test_system_bits_are_uniform_and_unseeded() -> None:
    source = SystemBits()
    assert source.seeded is False
    words = source.words(200_000)
    ones = np.unpackbits(words.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 0.002
    assert SeededBits(1).seeded is True
    assert "seed" not in repr(source)


def test_production_sampler_fits_the_exact_law() -> None:
    """Unseeded on purpose: the bits releases use. Alpha 1e-6: a false alarm once in a
    million runs, while 30% off is still rejected."""
    draws = discrete_laplace(300_000, 2.5, SystemBits())
    assert_discrete_noise_scale(draws, "laplace", exact_laplace_scale(2.5), alpha=1e-6)


@pytest.mark.parametrize("sigma", [1e-9, 1e-3, 0.05])
def test_tiny_gaussian_scales_terminate_with_zeros(sigma: float) -> None:
    """exp(-gamma) of a huge gamma must not underflow to 0 (the enclosure never narrowed)."""
    started = time.monotonic()
    draws = discrete_gaussian(2000, sigma, SeededBits(3))
    assert time.monotonic() - started < 30
    assert not draws.any()  # P(|z| >= 1) <= exp(-1 / (2 * 0.05**2)) ~ 1e-87
