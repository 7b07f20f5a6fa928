"""Confidence intervals for released values: post-processing of the noisy measurements.

Every measurement is an integer vector plus exact discrete noise of a known law (discrete
Laplace or discrete Gaussian at the calibrated scale, see ``_samplers``), so an interval
needs nothing but the noisy values, the calibration and the requested level: no budget,
no access to the data. For a value ``X = x + Z`` the interval ``[X - h, X + h]``, with ``h``
the smallest integer such that ``P(|Z| > h) <= 1 - level`` (:func:`half_width`, computed
exactly once per scale), covers the exact bounded value ``x`` with probability at least
``level``. Intervals are per value (each row, each histogram bin), not simultaneous.

* counts, unit counts, histogram bins: ``[max(X - h, 0), max(X + h, 0)]`` (truths are >= 0);
* sums: ``X +- h`` (in the values' units);
* unit counts released by the partition selection's threshold (private partitions with a
  ``unit_count`` metric): the noisy count is only published when it passes the threshold
  ``T``, which biases it up near ``T``. The lower end is the smallest ``t >= 1`` that the
  *conditional* law of ``t + Z`` given ``t + Z >= T`` does not reject at ``(1 - level) / 2``
  (:func:`threshold_lower`); the upper end ``X + h`` stays valid, as conditioning on
  ``Z >= T - t`` only moves ``Z`` up;
* means and variances are ratios of noisy quantities (a noisy count of present values, a
  centred sum and, for a variance, a centred sum of squares). Their interval is the range
  of the ratio over the box of the components' intervals, each at level
  ``1 - (1 - level) / k`` for ``k`` components (Bonferroni: all components are inside their
  intervals together with probability >= level), intersected with what the bounds allow;
* quantiles: :func:`telemagg._quantiles.quantile_intervals`;
* ``top_k``: no interval. Its counts are those of the values ranked highest by their own
  noisy counts (or, without candidates, of those that passed a threshold), a selection
  that biases them up (the winner's curse), so a noise interval would not hold its level.

The truth an interval covers is the value the release would have without noise: events
kept within the contribution bounds, values clamped to the bounds and, for sums, means and
variances, rounded to the metric's resolution (at most half a step per value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg import _samplers
from telemagg._plan import (
    Calibrated,
    Column,
    histogram_key,
    list_column,
    metric_key,
    present_count_key,
    sum_key,
    sum_keys,
)
from telemagg._samplers import laplace_rate
from telemagg.errors import ConfigError
from telemagg.policy import (
    Count,
    Histogram,
    Mean,
    Metric,
    Quantiles,
    Sum,
    TopK,
    UnitCount,
    Variance,
)

__all__ = [
    "Measured",
    "check_level",
    "half_width",
    "interval_columns",
    "interval_description",
    "threshold_lower",
]

F64 = npt.NDArray[np.float64]

EXACT_GAUSSIAN_SIGMA = 4096.0
"""Up to this sigma the discrete Gaussian's tails are summed exactly; beyond it, the bound
``P(Z >= m) <= P(N(0, sigma**2) >= m - 1)`` for ``m >= 1`` is used, wider by at most one
integer unit. Why it holds: ``f(x) = exp(-x**2 / (2 sigma**2))`` decreases on ``x >= 0``, so
``sum_{z >= m} f(z) <= integral_{m-1}^inf f``; and by Poisson summation ``sum_z f(z) =
sigma sqrt(2 pi) sum_k exp(-2 pi**2 sigma**2 k**2) >= sigma sqrt(2 pi)`` (Canonne, Kamath &
Steinke 2020, the same argument). Dividing gives the normal tail at ``m - 1``."""


def check_level(level: Any) -> float:
    """The ``intervals=`` argument of an export: a float in (0, 1).

    >>> check_level(0.95)
    0.95
    >>> check_level(1.0)
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: intervals must be None or a confidence level in (0, 1), \
e.g. 0.95; got 1.0
    """
    if (
        isinstance(level, bool)
        or not isinstance(level, int | float | np.floating)
        or not 0.0 < float(level) < 1.0
    ):
        raise ConfigError(
            f"intervals must be None or a confidence level in (0, 1), e.g. 0.95; got {level!r}"
        )
    return float(level)


# --------------------------------------------------------------------------- noise tails


@lru_cache(maxsize=4096)
def half_width(mechanism: str, scale: float, alpha: float) -> int:
    """Smallest integer ``h >= 0`` with ``P(|Z| > h) <= alpha`` for the noise ``Z`` drawn at
    ``scale`` (integer units) by the exact samplers.

    Discrete Laplace (rate ``a`` = :func:`~telemagg._samplers.laplace_rate`, ``r = e**-a``):
    ``P(|Z| >= m) = 2 r**m / (1 + r)`` for ``m >= 1``, so ``h + 1`` is the smallest ``m`` with
    ``m >= -log(alpha (1 + r) / 2) / a``. Discrete Gaussian (``sigma'`` of the sampler, see
    :func:`sampler_sigma`): tails summed exactly up to :data:`EXACT_GAUSSIAN_SIGMA`, the
    continuous bound beyond.

    >>> half_width("laplace", 1.0, 0.05)
    3
    >>> half_width("gaussian", 1.0, 0.05)
    2
    >>> half_width("laplace", 0.0, 0.05)
    0
    """
    if scale == 0.0:
        return 0
    if mechanism == "laplace":
        rate = float(laplace_rate(scale))
        r = math.exp(-rate)
        m = math.ceil(-math.log(alpha * (1.0 + r) / 2.0) / rate * (1.0 + 1e-12))
        while m > 1 and 2.0 * math.exp(-(m - 1) * rate) / (1.0 + r) <= alpha:
            m -= 1  # float rounding above may have overshot by one
        return max(m - 1, 0)
    sigma = sampler_sigma(scale)
    if sigma > EXACT_GAUSSIAN_SIGMA:
        return math.ceil(sigma * NormalDist().inv_cdf(1.0 - alpha / 2.0))
    return _gaussian_half_width(sigma, alpha)


@lru_cache(maxsize=4096)
def sum_half_width(mechanism: str, scale: float, terms: int, alpha: float) -> float:
    """A bound ``t`` with ``P(|Z_1 + ... + Z_terms| > t) <= alpha`` for independent noises
    drawn at ``scale`` (Chernoff, which bounds ``P(|S| >= t)``; exact :func:`half_width`
    for one term).

    Discrete Laplace: ``E[exp(l Z)] = (1 - r)**2 / ((1 - r e**l) (1 - r e**-l))`` for
    ``0 < l < a`` (``r = e**-a``), so ``P(S >= t) <= exp(-l t) E[exp(l Z)]**terms`` for every
    such ``l``; the bound is the smallest ``t`` over a grid of ``l`` (any ``l`` is valid).
    Discrete Gaussian: ``E[exp(l Z)] = exp(l**2 s**2 / 2) sum_z f(z - l s**2) / sum_z f(z)``
    with ``f`` as in :data:`EXACT_GAUSSIAN_SIGMA`, and by Poisson summation a shifted sum is
    at most the centred one, so ``Z`` is sub-Gaussian with variance proxy ``s**2`` (``s =
    sigma'``; Canonne, Kamath & Steinke 2020) and ``t = s sqrt(2 terms log(2 / alpha))``.

    >>> sum_half_width("laplace", 10.0, 1, 0.05) == half_width("laplace", 10.0, 0.05)
    True
    >>> 2 * 14 < sum_half_width("laplace", 10.0, 4, 0.05) < 4 * 34
    True
    """
    if terms <= 1:
        return float(half_width(mechanism, scale, alpha))
    if scale == 0.0:
        return 0.0
    log_tails = math.log(2.0 / alpha)
    if mechanism != "laplace":
        return sampler_sigma(scale) * math.sqrt(2.0 * terms * log_tails)
    a = float(laplace_rate(scale))
    grid = a * np.linspace(0.0, 1.0, 513)[1:-1]
    log_mgf = (
        2.0 * math.log(-math.expm1(-a)) - np.log(-np.expm1(grid - a)) - np.log(-np.expm1(-grid - a))
    )
    return float(np.min((terms * log_mgf + log_tails) / grid))


def sampler_sigma(sigma: float) -> float:
    """The sigma the discrete Gaussian sampler actually uses for ``sigma`` (``sigma' >=
    sigma``, see :func:`telemagg._samplers.discrete_gaussian`): its own plan, so the two
    cannot drift apart."""
    return _samplers._gaussian_plan(sigma).sigma


def _gaussian_half_width(sigma: float, alpha: float) -> int:
    """Exact ``h`` for the discrete Gaussian: ``P(Z = z)`` proportional to
    ``exp(-z**2 / (2 sigma**2))``, summed over ``|z| <= 40 sigma + 2`` (the rest weighs
    below ``e**-800``)."""
    reach = int(40 * sigma) + 2
    z = np.arange(0, reach + 1, dtype=np.float64)
    weights = np.exp(-(z**2) / (2.0 * sigma**2))
    total = weights[0] + 2.0 * weights[1:].sum()
    above = np.cumsum(weights[::-1])[::-1]  # above[m] = sum_{z >= m} w(z)
    tails = 2.0 * above / total  # P(|Z| >= m)
    # smallest h with P(|Z| >= h + 1) <= alpha (a hair stricter for float sums)
    return int(np.argmax(np.append(tails[1:], 0.0) <= alpha * (1.0 - 1e-9)))


def _log_tail(a: F64, log_r: float) -> F64:
    """``log P(Z >= a)`` of the discrete Laplace, integer ``a``: ``r**a / (1 + r)`` for
    ``a >= 0`` and ``1 - r**(1 - a) / (1 + r)`` below."""
    log_norm = math.log1p(math.exp(log_r))
    upper = a * log_r - log_norm
    lower = np.log1p(-np.exp((1.0 - np.minimum(a, 0.0)) * log_r - log_norm))
    return np.where(a >= 0, upper, lower)


def threshold_lower(noisy: F64, plan: mech.ThresholdPlan, alpha: float) -> F64:
    """Lower confidence bounds on unit counts released through a threshold.

    ``noisy`` counts were published because ``t + Z >= T`` (``Z`` discrete Laplace at
    ``plan.scale``, ``T`` = ``plan.threshold``). The bound is the smallest integer ``t >= 1``
    with ``P(Z >= X - t | Z >= T - t) > alpha``: that ratio rises with ``t`` (the discrete
    Laplace is log-concave), so the set of ``t`` not rejected at level ``alpha`` in the upper
    tail is ``[bound, inf)``. Bisection, vectorised.

    >>> plan = mech.ThresholdPlan(scale=2.0, threshold=20, epsilon=0.5, delta=1e-9)
    >>> threshold_lower(np.array([20.0, 100.0]), plan, 0.025).tolist()
    [1.0, 94.0]
    """
    log_r = -float(laplace_rate(plan.scale))
    log_alpha = math.log(alpha)
    x = noisy.astype(np.float64)

    def accepted(t: F64) -> npt.NDArray[np.bool_]:
        ratio = _log_tail(x - t, log_r) - _log_tail(plan.threshold - t, log_r)
        return ratio > log_alpha

    low = np.ones_like(x)  # not always accepted: search in [1, x]
    high = np.maximum(x, 1.0)  # always accepted: P(Z >= 0 | ...) >= 1/2
    done = accepted(low)
    high = np.where(done, low, high)
    while True:
        open_ = high - low > 1
        if not open_.any():
            break
        mid = np.floor((low + high) / 2.0)
        ok = accepted(mid)
        high = np.where(open_ & ok, mid, high)
        low = np.where(open_ & ~ok, mid, low)
    return high


# --------------------------------------------------------------------------- per metric


@dataclass(frozen=True)
class Measured:
    """What intervals are computed from: the noisy measurements (values' units, shape
    (P, width), already DP outputs), their calibrations, and the partition threshold whose
    noisy counts are the ``unit_count`` column (private partitions). Never exact data."""

    noisy: Mapping[str, F64]
    calibrated: Mapping[str, Calibrated]
    selection: mech.ThresholdPlan | None = None

    def __post_init__(self) -> None:
        kept = {key: cal.without_data() for key, cal in self.calibrated.items()}
        object.__setattr__(self, "calibrated", kept)


Bounds = tuple[F64, F64]


def _noise_bounds(measured: Measured, key: str, alpha: float) -> Bounds:
    """``X -+ h`` for every value of measurement ``key`` (values' units, shape (P, width))."""
    cal = measured.calibrated[key]
    h = half_width(cal.mechanism, cal.scale, alpha) * cal.spec.resolution
    values = measured.noisy[key]
    return values - h, values + h


def _non_negative(bounds: Bounds) -> Bounds:
    return np.maximum(bounds[0], 0.0), np.maximum(bounds[1], 0.0)


def _unit_count_bounds(measured: Measured, alpha: float) -> Bounds:
    if "unit_count" in measured.calibrated:  # public partitions: a plain measurement
        return _non_negative(_noise_bounds(measured, "unit_count", alpha))
    plan = measured.selection
    assert plan is not None
    values = measured.noisy["unit_count"][:, 0]
    h = half_width("laplace", plan.scale, alpha)
    return threshold_lower(values, plan, alpha / 2.0)[:, None], values[:, None] + h


def _ratio_range(num: Bounds, den: Bounds) -> Bounds:
    """Range of ``c / n`` over ``c`` in ``num``, ``n`` in ``den`` (``n >= 1``)."""
    n_low, n_high = np.maximum(den[0], 1.0), np.maximum(den[1], 1.0)
    low = np.where(num[0] >= 0, num[0] / n_high, num[0] / n_low)
    high = np.where(num[1] >= 0, num[1] / n_low, num[1] / n_high)
    return low, high


def _mean_variance_bounds(metric: Mean | Variance, measured: Measured, level: float) -> Bounds:
    """The ratio's range over the Bonferroni box of its components (module docstring)."""
    lo, hi = metric.value_bounds
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    parts = 2 if isinstance(metric, Mean) else 3
    alpha = (1.0 - level) / parts
    count = _noise_bounds(measured, metric_key(metric, present_count_key(metric.column)), alpha)
    centred_key, *squares_key = (key for key, _ in sum_keys(metric))
    centred_sum = _noise_bounds(measured, centred_key, alpha)
    m_low, m_high = _ratio_range(centred_sum, count)
    m_low, m_high = np.clip(m_low, -half, half), np.clip(m_high, -half, half)
    if isinstance(metric, Mean):
        return np.clip(mid + m_low, lo, hi), np.clip(mid + m_high, lo, hi)
    squares = _noise_bounds(measured, squares_key[0], alpha)
    low, high = _variance_range(count, centred_sum, squares)
    return np.clip(low, 0.0, half**2), np.clip(high, 0.0, half**2)


def _variance_range(count: Bounds, centred_sum: Bounds, squares: Bounds) -> Bounds:
    """Range of ``v = s / n - c**2 / n**2`` over the box ``n`` x ``c`` x ``s`` (``n >= 1``).

    For a fixed ``n`` the terms separate: the extremes take ``s`` at an end and ``c**2`` at
    its least or largest. Each is then ``f(n) = a / n - b / n**2`` with ``b >= 0``, whose only
    critical point is ``n = 2 b / a``; so the range over ``n`` is reached at the ends of its
    interval or at that point (clipped into it). Keeping ``n`` shared by both terms is what
    makes this tighter than combining the ranges of ``s / n`` and ``(c / n)**2``.
    """
    n_ends = (np.maximum(count[0], 1.0), np.maximum(count[1], 1.0))
    straddles = (centred_sum[0] <= 0.0) & (centred_sum[1] >= 0.0)
    c2_least = np.where(straddles, 0.0, np.minimum(centred_sum[0] ** 2, centred_sum[1] ** 2))
    c2_most = np.maximum(centred_sum[0] ** 2, centred_sum[1] ** 2)

    def extremes(a: F64, b: F64) -> tuple[F64, F64]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            critical = np.where(a > 0, 2.0 * b / a, n_ends[0])
        candidates = [*n_ends, np.clip(np.nan_to_num(critical, nan=1.0), *n_ends)]
        values = np.stack([a / n - b / n**2 for n in candidates])
        return values.min(axis=0), values.max(axis=0)

    low, _ = extremes(squares[0], c2_most)
    _, high = extremes(squares[1], c2_least)
    return low, high


def _bounds(metric: Metric, measured: Measured, level: float) -> dict[str, Bounds]:
    """(low, high) arrays, shape (P, width), per output column of ``metric``."""
    alpha = 1.0 - level
    if isinstance(metric, Count):
        return {metric.name: _non_negative(_noise_bounds(measured, "count", alpha))}
    if isinstance(metric, UnitCount):
        return {metric.name: _unit_count_bounds(measured, alpha)}
    if isinstance(metric, Sum):
        key = metric_key(metric, sum_key(metric.column, metric.value_bounds, metric.step))
        return {metric.name: _noise_bounds(measured, key, alpha)}
    if isinstance(metric, Histogram):
        return {metric.name: _non_negative(_noise_bounds(measured, histogram_key(metric), alpha))}
    if isinstance(metric, Mean | Variance):
        low, high = _mean_variance_bounds(metric, measured, level)
        return {metric.name: (low[:, 0], high[:, 0])}
    if isinstance(metric, Quantiles):
        # imported here: _quantiles builds on this module's noise tails (half_width)
        from telemagg._quantiles import quantile_intervals

        return dict(quantile_intervals(metric, measured.noisy, measured.calibrated, level))
    return {}


def interval_columns(
    metrics: Sequence[Metric],
    measured: Measured,
    level: float,
    values: Mapping[str, Column],
) -> dict[str, tuple[Column, Column]]:
    """``(low, high)`` columns per released value column (``top_k``'s have none).

    ``values`` are the released columns: where one is NaN (a mean or variance with
    ``insufficient_data``) its interval is NaN too. Histograms get lists of lows and highs.
    """
    out: dict[str, tuple[Column, Column]] = {}
    for metric in metrics:
        for name, (low, high) in _bounds(metric, measured, level).items():
            if isinstance(metric, Histogram):
                out[name] = (_lists(low), _lists(high))
                continue
            low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
            if low.ndim == 2:
                low, high = low[:, 0], high[:, 0]
            unknown = np.isnan(np.asarray(values[name], dtype=np.float64))
            out[name] = (np.where(unknown, np.nan, low), np.where(unknown, np.nan, high))
    return out


def _lists(values: F64) -> Column:
    return list_column([row.tolist() for row in values])


_METHODS: Mapping[type[Metric], str] = {
    Count: "noisy count +- the noise's two-sided quantile, floored at 0",
    UnitCount: (
        "noisy unit count +- the noise's two-sided quantile, floored at 0; under private"
        " partition selection the lower end is conditional on passing the threshold"
    ),
    Sum: "noisy sum +- the noise's two-sided quantile",
    Histogram: "per bucket: noisy count +- the noise's two-sided quantile, floored at 0",
    Mean: (
        "range of mid + centred sum / count over both components' intervals at level"
        " 1 - (1 - level) / 2 each (Bonferroni), inside the bounds"
    ),
    Variance: (
        "range of squares / count - (centred sum / count)**2 over the three components'"
        " intervals at level 1 - (1 - level) / 3 each (Bonferroni; exact over that box),"
        " inside [0, half-width**2]"
    ),
    Quantiles: "grid points consistent with the noisy cumulative counts at that confidence",
}


def interval_description(metrics: Sequence[Metric], level: float) -> dict[str, Any]:
    """The publishable description of the intervals of an export (parameters only)."""
    methods: dict[str, str] = {}
    for metric in metrics:
        method = _METHODS.get(type(metric))
        if method is None:  # top_k
            continue
        for name in metric.output_names:
            methods[name] = method
    skipped = [n for m in metrics if isinstance(m, TopK) for n in m.output_names]
    return {
        "level": level,
        "columns": "<column>_low, <column>_high after each value column",
        "coverage": (
            "each interval covers the value the release would have without noise (events"
            " kept within the contribution bounds, values clamped and rounded to the"
            " resolution) with probability >= level, per value; exact noise quantiles"
        ),
        "methods": methods,
        **(
            {
                "without_intervals": {
                    "columns": skipped,
                    "why": (
                        "top_k counts are those of the values ranked highest by their own"
                        " noisy counts (or that passed a threshold): selected upwards, so a"
                        " noise interval would not hold its level"
                    ),
                }
            }
            if skipped
            else {}
        ),
    }
