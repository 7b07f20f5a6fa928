"""Statistical checks used by the noise tests: accept the true scale, reject 30% off.

Continuous noise: Kolmogorov-Smirnov. Discrete noise (telemagg's releases): a chi-square
goodness-of-fit test of the integer samples against the exact probability mass function,
over bins of about equal expected mass (tails merged so each bin expects >= 5 draws).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 1e-3


def ks_pvalue(samples: np.ndarray, mechanism: str, stddev: float) -> float:
    """Kolmogorov-Smirnov p-value of ``samples`` against zero-mean noise of ``stddev``."""
    if mechanism == "laplace":
        return float(stats.kstest(samples, "laplace", args=(0.0, stddev / np.sqrt(2))).pvalue)
    assert mechanism == "gaussian"
    return float(stats.kstest(samples, "norm", args=(0.0, stddev)).pvalue)


def assert_noise_scale(
    samples: np.ndarray, mechanism: str, stddev: float, alpha: float = ALPHA
) -> None:
    """The samples fit the claimed distribution, and do not fit one 30% narrower or wider."""
    assert ks_pvalue(samples, mechanism, stddev) > alpha, "true scale rejected"
    assert ks_pvalue(samples, mechanism, 0.7 * stddev) < alpha, "30% smaller scale accepted"
    assert ks_pvalue(samples, mechanism, 1.3 * stddev) < alpha, "30% larger scale accepted"


# --------------------------------------------------------------------------- discrete noise


def discrete_cdf(mechanism: str, scale: float, z: np.ndarray) -> np.ndarray:
    """P(Z <= z) of the discrete Laplace (``P(z)`` ~ ``exp(-|z| / scale)``) or the discrete
    Gaussian (``P(z)`` ~ ``exp(-z**2 / (2 scale**2))``), centred at 0."""
    z = np.asarray(z, dtype=np.float64)
    if mechanism == "laplace":
        rate = 1.0 / scale
        r = math.exp(-rate)
        below = np.exp(-rate * np.maximum(-z, 0.0)) / (1.0 + r)
        above = 1.0 - np.exp(-rate * (np.maximum(z, 0.0) + 1.0)) / (1.0 + r)
        return np.where(z < 0, below, above)
    assert mechanism == "gaussian"
    reach = math.ceil(12 * scale) + 2
    grid = np.arange(-reach, reach + 1)
    pmf = np.exp(-(grid.astype(np.float64) ** 2) / (2 * scale * scale))
    cdf = np.cumsum(pmf) / pmf.sum()
    return np.interp(np.clip(z, -reach - 1, reach), np.append(-reach - 1, grid), np.append(0, cdf))


def chi_square_pvalue(samples: np.ndarray, mechanism: str, scale: float, bins: int = 200) -> float:
    """Chi-square p-value of integer ``samples`` against the exact discrete law."""
    samples = np.asarray(samples, dtype=np.int64)
    n = samples.size
    bins = max(2, min(bins, n // 20))
    # integer edges at the law's quantiles (bin i is [edge_i, edge_{i+1}))
    lo, hi = int(samples.min()), int(samples.max())
    grid = np.unique(np.linspace(lo, hi + 1, min(hi - lo + 2, 200_000)).astype(np.int64))
    cdf = discrete_cdf(mechanism, scale, grid - 1)  # P(Z < grid)
    targets = np.linspace(0, 1, bins + 1)[1:-1]
    inner = np.unique(grid[np.clip(np.searchsorted(cdf, targets), 0, grid.size - 1)])
    edges = np.concatenate([[np.iinfo(np.int64).min], inner, [np.iinfo(np.int64).max]])
    below = np.concatenate([[0.0], discrete_cdf(mechanism, scale, inner - 1), [1.0]])
    expected = np.diff(below) * n
    observed = np.histogram(samples, bins=edges.astype(np.float64))[0].astype(np.float64)
    keep = expected > 0
    expected, observed = expected[keep], observed[keep]
    if np.any(observed[expected <= 1e-300] > 0):
        return 0.0
    # merge bins with small expectations into their neighbours
    while expected.size > 2 and expected.min() < 5:
        i = int(np.argmin(expected))
        j = i + 1 if i + 1 < expected.size else i - 1
        expected[j] += expected[i]
        observed[j] += observed[i]
        expected, observed = np.delete(expected, i), np.delete(observed, i)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(statistic, expected.size - 1))


def assert_discrete_noise_scale(
    samples: np.ndarray, mechanism: str, scale: float, alpha: float = ALPHA
) -> None:
    """Integer samples fit the exact discrete law at ``scale`` (Laplace scale or Gaussian
    sigma) and do not fit it 30% narrower or wider."""
    assert chi_square_pvalue(samples, mechanism, scale) > alpha, "true scale rejected"
    assert chi_square_pvalue(samples, mechanism, 0.7 * scale) < alpha, "30% smaller accepted"
    assert chi_square_pvalue(samples, mechanism, 1.3 * scale) < alpha, "30% larger accepted"


def two_sample_pvalue(first: np.ndarray, second: np.ndarray, bins: int = 30) -> float:
    """Chi-square test that two integer samples come from one law (binned at the pooled
    quantiles)."""
    pooled = np.concatenate([first, second])
    inner = np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)[1:-1]).round())
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    table = np.array([np.histogram(first, edges)[0], np.histogram(second, edges)[0]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table)[1])


def assert_release_noise(samples: np.ndarray, report: object, alpha: float = ALPHA) -> None:
    """Released values minus exact values fit the exact discrete law the report claims.

    ``report`` is a ``release.metrics[...]`` entry (its main component) or a component
    dict: its ``scale`` and ``resolution`` (default 1) give the law in integer units.
    """
    component = report.components[-1] if hasattr(report, "components") else report
    assert isinstance(component, dict)
    resolution = float(component.get("resolution", 1.0))
    units = np.rint(np.asarray(samples, dtype=np.float64) / resolution)
    np.testing.assert_allclose(units * resolution, samples, rtol=1e-12, atol=resolution * 1e-6)
    mechanism = "gaussian" if component["mechanism"] == "gaussian" else "laplace"
    scale = float(component["scale"]) / resolution
    assert_discrete_noise_scale(units.astype(np.int64), mechanism, scale, alpha)
