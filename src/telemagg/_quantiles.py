"""Confidence intervals for released quantiles, from the noisy grid histogram.

Post-processing only: the intervals read the noisy grid counts and their calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from telemagg._intervals import sum_half_width
from telemagg._plan import Calibrated, quantile_key
from telemagg.policy import Quantiles

F64 = npt.NDArray[np.float64]


def _edge_values(metric: Quantiles, positions: F64) -> F64:
    """Grid positions (fractions of the grid) as values of the (log-)scaled bounds."""
    lo, hi = metric.bounds
    if metric.scale == "log":
        values = lo * np.exp(positions * math.log(hi / lo))
    else:
        values = lo + positions * (hi - lo)
    return np.clip(values, lo, hi)


def quantile_intervals(
    metric: Quantiles,
    noisy: Mapping[str, F64],
    calibrated: Mapping[str, Calibrated],
    level: float,
) -> dict[str, tuple[F64, F64]]:
    """``(low, high)`` per quantile column: the grid edges consistent with the noisy
    cumulative counts at confidence ``level``.

    Conservative: at each inner edge ``j`` the noisy count below it (a sum of ``j`` noisy
    bins) and above it (``bins - j``) are within :func:`sum_half_width` of the truth, all
    ``2 (bins - 1)`` of them together with probability ``>= level`` (Bonferroni). Then
    ``F_j = below_j / (below_j + above_j)`` lies in a box. The quantile at level ``q`` (the
    smallest value with at least ``q n`` values at or below it) is at least edge ``j`` when
    surely ``F_j < q``, and at most edge ``j`` when surely ``F_j >= q``.
    """
    key = quantile_key(metric)
    cal = calibrated[key]
    counts = noisy[key]
    n_partitions, bins = counts.shape
    alpha = (1.0 - level) / (2 * (bins - 1))
    reach = np.array([sum_half_width(cal.mechanism, cal.scale, j, alpha) for j in range(bins + 1)])
    below = np.zeros((n_partitions, bins + 1))
    np.cumsum(counts, axis=1, out=below[:, 1:])
    above = below[:, -1:] - below  # noisy counts at or above each edge
    below_low = np.maximum(below - reach, 0.0)
    below_high = np.maximum(below + reach, 0.0)
    above_low = np.maximum(above - reach[::-1], 0.0)
    above_high = np.maximum(above + reach[::-1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_low = np.nan_to_num(below_low / (below_low + above_high), nan=0.0)
        share_high = np.nan_to_num(below_high / (below_high + above_low), nan=1.0)
    share_low[:, 0], share_high[:, 0] = 0.0, 0.0  # nothing is below the lower bound
    share_low[:, -1], share_high[:, -1] = 1.0, 1.0  # everything is at most the upper
    edges = np.arange(bins + 1) / bins
    out: dict[str, tuple[F64, F64]] = {}
    for level_q, name in zip(metric.levels, metric.output_names, strict=True):
        surely_below = share_high < level_q  # F_j < q: the quantile is >= edge j
        surely_above = share_low >= level_q  # F_j >= q: the quantile is <= edge j
        low_edge = np.where(surely_below, edges, 0.0).max(axis=1)
        high_edge = np.where(surely_above, edges, 1.0).min(axis=1)
        out[name] = (_edge_values(metric, low_edge), _edge_values(metric, high_edge))
    return out
