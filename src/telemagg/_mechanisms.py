"""Noise, thresholds and privacy accounting. The only module that imports OpenDP.

Every number that a privacy claim rests on comes from an OpenDP privacy map:

* Laplace scales: the smallest scale whose ``make_laplace`` map at the L1 sensitivity is
  within the epsilon share (``binary_search_param``), so float rounding never overspends.
* Gaussian scales: the same with ``make_gaussian`` (zero-concentrated DP, rho).
* Partition selection: ``make_laplace_threshold`` (Rogers et al. 2023, "A unifying privacy
  analysis framework for unknown domain algorithms", arXiv:2309.09170), its threshold the
  smallest whose delta is within the delta share.
* Truncated-geometric partition selection (Desfontaines, Voss, Gipson & Mandayam,
  "Differentially private partition selection", PoPETs 2022): keep probabilities from the
  paper's recursion (argument beside :func:`truncated_geometric`), the coins drawn by
  OpenDP's randomized response.
* zCDP -> (epsilon, delta): ``make_zCDP_to_approxDP`` (Bun & Steinke 2016; Canonne, Kamath
  & Steinke 2020).

Production noise is always drawn by OpenDP's samplers (exact, floating-point safe,
from the operating system's entropy); nothing here can seed them. :class:`SeededNoise`
exists for tests only: it draws from the same distributions with numpy, and a release
made with it is marked ``"seeded": true`` and refused by every ledger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp

# OpenDP gates its constructors behind a "contrib" flag (code whose proofs are written but
# not yet vetted by its committee). telemagg relies on those constructors, so it opts in once,
# here, and nowhere else.
dp.enable_features("contrib")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_VECTOR = dp.vector_domain(dp.atom_domain(T=float, nan=False))
_COUNTS_BY_KEY = dp.map_domain(dp.atom_domain(T=dp.i64), dp.atom_domain(T=float, nan=False))
_L01INF = dp.l01inf_distance(dp.absolute_distance(T=float))


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class PrivacyLoss:
    """The privacy loss of one release, split by how it composes.

    ``approx_epsilon``/``approx_delta`` is the part accounted in (approximate) DP: Laplace
    noise and thresholds, composed by summing. ``rho`` is the part accounted in
    zero-concentrated DP (Gaussian noise), composed by summing rho and converting once.
    ``epsilon``/``delta`` is the whole release standing alone: the approximate part plus
    ``rho`` converted at the remaining ``delta - approx_delta``.
    """

    epsilon: float
    delta: float
    approx_epsilon: float
    approx_delta: float
    rho: float = 0.0

    @property
    def gaussian_delta(self) -> float:
        """The delta spent converting ``rho`` to (epsilon, delta)."""
        return max(self.delta - self.approx_delta, 0.0)


def privacy_map(measurement: Any, d_in: Any) -> Any:
    """OpenDP's privacy map of ``measurement`` at input distance ``d_in``."""
    return measurement.map(d_in)


def _gaussian_with_rho(rho: float) -> Any:
    """A Gaussian measurement whose zCDP map at sensitivity 1 is (at least) ``rho``."""
    scale = 1.0 / math.sqrt(2.0 * rho)
    return dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale
    )


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def zcdp_to_epsilon(rho: float, delta: float) -> float:
    """The epsilon of a rho-zCDP mechanism at ``delta``, by OpenDP's conversion.

    >>> round(zcdp_to_epsilon(0.125, 1e-6), 3)
    2.419
    >>> zcdp_to_epsilon(0.0, 1e-6)
    0.0
    """
    if rho <= 0.0:
        return 0.0
    if not 0.0 < delta < 1.0:
        return math.inf
    profile = privacy_map(dp.c.make_zCDP_to_approxDP(_gaussian_with_rho(rho)), 1.0)
    return float(profile.epsilon(delta))


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def rho_within(epsilon: float, delta: float) -> float:
    """The largest rho whose conversion at ``delta`` costs at most ``epsilon`` (bisection).

    >>> rho = rho_within(1.0, 1e-6)
    >>> zcdp_to_epsilon(rho, 1e-6) <= 1.0
    True
    """
    lo, hi = 0.0, epsilon
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if zcdp_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------- calibration


def _smallest_scale(make: Callable[[float], Any], d_in: float, d_out: float) -> float:
    """Smallest scale whose privacy map at ``d_in`` is within ``d_out``."""
    if d_in == 0.0:
        return 0.0
    return float(dp.binary_search_param(make, d_in=d_in, d_out=d_out, T=float))


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def laplace_scale(sensitivity_l1: float, epsilon: float) -> float:
    """Laplace scale for a vector query of the given L1 sensitivity, by OpenDP's map.

    >>> s = laplace_scale(2.0, 0.5)
    >>> 4.0 <= s < 4.0001
    True
    """
    return _smallest_scale(
        lambda s: dp.m.make_laplace(_VECTOR, dp.l1_distance(T=float), s), sensitivity_l1, epsilon
    )


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def gaussian_scale(sensitivity_l2: float, rho: float) -> float:
    """Gaussian scale (stddev) for a vector query of the given L2 sensitivity under rho-zCDP.

    >>> s = gaussian_scale(1.0, 0.125)
    >>> 2.0 <= s < 2.0001
    True
    """
    return _smallest_scale(
        lambda s: dp.m.make_gaussian(_VECTOR, dp.l2_distance(T=float), s), sensitivity_l2, rho
    )


@dataclass(frozen=True)
class ThresholdPlan:
    """A calibrated Laplace threshold mechanism over per-partition counts."""

    scale: float
    threshold: float
    epsilon: float
    delta: float


def _threshold_measurement(scale: float, threshold: float) -> Any:
    return dp.m.make_laplace_threshold(_COUNTS_BY_KEY, _L01INF, scale=scale, threshold=threshold)


def _delta_of(scale: float, threshold: float, d_in: tuple[int, float, float]) -> float:
    return float(privacy_map(_threshold_measurement(scale, threshold), d_in)[1])


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def laplace_threshold(
    max_partitions: int,
    max_per_partition: float,
    epsilon: float,
    delta: float,
    max_total: float | None = None,
) -> ThresholdPlan:
    """Calibrate private partition selection over counts where one unit touches at most
    ``max_partitions`` keys, changing each by at most ``max_per_partition`` and all of them
    together by at most ``max_total`` (default: their product).

    The scale comes from the epsilon share, then the threshold is the smallest whose delta
    (OpenDP's map of ``make_laplace_threshold`` at d_in = (l0, l1, linf)) is within the share.

    >>> plan = laplace_threshold(1, 1.0, 1.0, 1e-6)
    >>> plan.epsilon <= 1.0 and plan.delta <= 1e-6 and plan.threshold > 10
    True
    """
    total = max_partitions * max_per_partition if max_total is None else max_total
    d_in = (max_partitions, total, max_per_partition)
    scale = _smallest_scale(
        lambda s: dp.m.make_laplace(_VECTOR, dp.l1_distance(T=float), s), total, epsilon
    )
    # Bisection on the threshold: delta falls monotonically as the threshold rises; OpenDP
    # accepts no threshold below one unit's largest change to one key.
    lo, hi = float(max_per_partition), 2.0 * max_per_partition
    while _delta_of(scale, hi, d_in) > delta:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if _delta_of(scale, mid, d_in) > delta:
            lo = mid
        else:
            hi = mid
    eps_used, delta_used = privacy_map(_threshold_measurement(scale, hi), d_in)
    return ThresholdPlan(
        scale=scale, threshold=hi, epsilon=float(eps_used), delta=float(delta_used)
    )


@dataclass(frozen=True)
class GeometricSelection:
    """Truncated-geometric partition selection, calibrated (see :func:`truncated_geometric`).

    ``probabilities[n]`` is the probability of keeping a partition held by ``n`` distinct
    units; the table ends at the first ``n`` where it reaches 1 (larger counts are clipped
    to that end). ``epsilon``/``delta`` are the whole selection's loss,
    ``partition_epsilon``/``partition_delta`` each partition's.
    """

    epsilon: float
    delta: float
    partition_epsilon: float
    partition_delta: float
    max_partitions: int
    probabilities: FloatArray = field(compare=False, repr=False)

    def keep_probability(self, units: IntArray) -> FloatArray:
        """Probability of keeping partitions holding ``units`` distinct units each.

        >>> sel = truncated_geometric(1, 1.0, 1e-6)
        >>> sel.keep_probability(np.array([0, 1, 10_000])).tolist()
        [0.0, 1e-06, 1.0]
        """
        last = self.probabilities.size - 1
        return self.probabilities[np.clip(units, 0, last)]

    @property
    def units_for_half(self) -> int:
        """The fewest distinct units with which a partition is kept with probability >= 1/2."""
        return int(np.argmax(self.probabilities >= 0.5))


def keep_probabilities(epsilon: float, delta: float) -> FloatArray:
    """The optimal (epsilon, delta)-DP keep probabilities pi(0), pi(1), ... up to pi = 1.

    pi(0) = 0 and pi(n) = min(e^eps pi(n-1) + delta, 1 - e^-eps (1 - pi(n-1) - delta), 1):
    each step is the largest that keeps both privacy inequalities between n - 1 and n units
    (Desfontaines et al., PoPETs 2022: no (epsilon, delta)-DP keep rule is larger).
    It reaches 1 because each step adds at least delta.

    >>> keep_probabilities(1.0, 0.1).round(4).tolist()
    [0.0, 0.1, 0.3718, 0.8057, 0.9653, 1.0]
    """
    if not (epsilon > 0.0 and 0.0 < delta < 1.0):
        raise ValueError(
            f"keep_probabilities needs epsilon > 0 and 0 < delta < 1; got {epsilon}, {delta}"
        )
    grow, shrink = math.exp(epsilon), math.exp(-epsilon)
    out = [0.0]
    while out[-1] < 1.0:
        p = out[-1]
        out.append(min(grow * p + delta, 1.0 - shrink * (1.0 - p - delta), 1.0))
    return np.asarray(out, dtype=np.float64)


@lru_cache(maxsize=256)  # pure in its arguments; the table can take thousands of steps
def truncated_geometric(max_partitions: int, epsilon: float, delta: float) -> GeometricSelection:
    """Calibrate truncated-geometric selection over distinct-unit counts, where one unit
    adds 1 to the count of at most ``max_partitions`` (L0) partitions.

    Privacy: each partition gets (epsilon / L0, delta / L0); a partition holding n units is
    kept with probability pi(n) of :func:`keep_probabilities` at that budget, independently
    of every other partition. pi makes one partition's keep decision (epsilon / L0,
    delta / L0)-DP when its count moves by 1, and pi(0) = 0 (a partition absent from the
    data is never kept), so no domain of possible keys is needed (Desfontaines et al.,
    PoPETs 2022). Adding or removing a unit moves at most L0 counts by 1 and leaves the other
    partitions' decisions identically distributed; the released set is then the
    composition of at most L0 independent such decisions, (epsilon, delta)-DP by basic
    composition (Dwork & Roth 2014, Theorem 3.16).

    >>> sel = truncated_geometric(4, 0.25, 1e-6)
    >>> sel.epsilon <= 0.25 * (1 + 1e-12) and sel.delta <= 1e-6 * (1 + 1e-12)
    True
    >>> sel.units_for_half
    189
    """
    eps1, delta1 = epsilon / max_partitions, delta / max_partitions
    return GeometricSelection(
        epsilon=max_partitions * eps1,
        delta=max_partitions * delta1,
        partition_epsilon=eps1,
        partition_delta=delta1,
        max_partitions=max_partitions,
        probabilities=keep_probabilities(eps1, delta1),
    )


def laplace_epsilon(sensitivity_l1: float, scale: float) -> float:
    """Epsilon that OpenDP's Laplace map assigns to a calibrated scale (for reports)."""
    if sensitivity_l1 == 0.0:
        return 0.0
    meas = dp.m.make_laplace(_VECTOR, dp.l1_distance(T=float), scale)
    return float(privacy_map(meas, sensitivity_l1))


def gaussian_rho(sensitivity_l2: float, scale: float) -> float:
    """Rho that OpenDP's Gaussian map assigns to a calibrated scale (for reports)."""
    if sensitivity_l2 == 0.0:
        return 0.0
    meas = dp.m.make_gaussian(_VECTOR, dp.l2_distance(T=float), scale)
    return float(privacy_map(meas, sensitivity_l2))


# --------------------------------------------------------------------------- noise sources


class Noise(Protocol):
    """Where noise comes from. Production: :class:`OpenDPNoise`; tests: :class:`SeededNoise`."""

    seeded: bool

    def laplace(self, values: FloatArray, scale: float) -> FloatArray: ...

    def gaussian(self, values: FloatArray, scale: float) -> FloatArray: ...

    def threshold(
        self, keys: IntArray, counts: FloatArray, plan: ThresholdPlan
    ) -> tuple[IntArray, FloatArray]:
        """Keys whose noisy count reaches the threshold, and those noisy counts."""
        ...

    def bernoulli(self, probabilities: FloatArray) -> BoolArray:
        """Independent coins, ``True`` with the given probabilities."""
        ...


class OpenDPNoise:
    """OpenDP's samplers: exact, floating-point safe, unseedable. The only production source."""

    seeded = False

    def laplace(self, values: FloatArray, scale: float) -> FloatArray:
        if scale == 0.0 or values.size == 0:
            return values.astype(np.float64, copy=True)
        meas = dp.m.make_laplace(_VECTOR, dp.l1_distance(T=float), scale)
        return np.asarray(meas(values.astype(np.float64).tolist()), dtype=np.float64)

    def gaussian(self, values: FloatArray, scale: float) -> FloatArray:
        if scale == 0.0 or values.size == 0:
            return values.astype(np.float64, copy=True)
        meas = dp.m.make_gaussian(_VECTOR, dp.l2_distance(T=float), scale)
        return np.asarray(meas(values.astype(np.float64).tolist()), dtype=np.float64)

    def threshold(
        self, keys: IntArray, counts: FloatArray, plan: ThresholdPlan
    ) -> tuple[IntArray, FloatArray]:
        if keys.size == 0:
            return keys.astype(np.int64), counts.astype(np.float64)
        meas = _threshold_measurement(plan.scale, plan.threshold)
        released: dict[int, float] = meas(dict(zip(keys.tolist(), counts.tolist(), strict=True)))
        kept = np.fromiter(released.keys(), dtype=np.int64, count=len(released))
        noisy = np.fromiter(released.values(), dtype=np.float64, count=len(released))
        order = np.argsort(kept)
        return kept[order], noisy[order]

    def bernoulli(self, probabilities: FloatArray) -> BoolArray:
        """Coins drawn by OpenDP's randomized response, one call per distinct probability.

        ``make_randomized_response_bitvec`` with flip probability f replaces each bit by a
        fair coin with probability f, i.e. flips it with probability f / 2 (RAPPOR's
        permanent RR). Bits set to (p >= 1/2) with f = 2 min(p, 1 - p) come out True with
        probability p exactly. Only its sampler is used: its privacy map (hence the
        domain's ``max_weight``) plays no part in the accounting.
        """
        out = probabilities >= 1.0
        uncertain = (probabilities > 0.0) & ~out
        values, group = np.unique(probabilities[uncertain], return_inverse=True)
        where = np.flatnonzero(uncertain)
        for i, p in enumerate(values.tolist()):
            members = where[group == i]
            meas = dp.m.make_randomized_response_bitvec(
                dp.bitvector_domain(max_weight=1), dp.discrete_distance(), f=2.0 * min(p, 1 - p)
            )
            bits = np.packbits(np.full(members.size, p >= 0.5)).tobytes()
            drawn = np.unpackbits(np.frombuffer(meas(bits), dtype=np.uint8))[: members.size]
            out[members] = drawn.astype(bool)
        return out


class SeededNoise:
    """Numpy noise from an explicit seed: the same distributions, reproducible. Tests only.

    >>> SeededNoise(7).laplace(np.zeros(3), 0.0).tolist()
    [0.0, 0.0, 0.0]
    """

    seeded = True

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def laplace(self, values: FloatArray, scale: float) -> FloatArray:
        return values + (self._rng.laplace(0.0, scale, values.shape) if scale > 0 else 0.0)

    def gaussian(self, values: FloatArray, scale: float) -> FloatArray:
        return values + (self._rng.normal(0.0, scale, values.shape) if scale > 0 else 0.0)

    def threshold(
        self, keys: IntArray, counts: FloatArray, plan: ThresholdPlan
    ) -> tuple[IntArray, FloatArray]:
        noisy = self.laplace(counts.astype(np.float64), plan.scale)
        keep = noisy >= plan.threshold
        order = np.argsort(keys[keep])
        return keys[keep][order], noisy[keep][order]

    def bernoulli(self, probabilities: FloatArray) -> BoolArray:
        return self._rng.random(probabilities.shape) < probabilities
