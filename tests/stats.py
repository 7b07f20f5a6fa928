"""Statistical checks used by the noise tests: accept the true scale, reject 30% off."""

from __future__ import annotations

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
