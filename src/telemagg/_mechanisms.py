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

Production noise is :class:`SystemNoise`: exact discrete Laplace and discrete Gaussian
noise on integers (``_samplers``), from the operating system's CSPRNG; nothing here can
seed it. Every measurement is an integer vector (counts, or fixed-point sums in units of
a declared resolution), so its noise is exact and its OpenDP map is the integer one.
:class:`SeededNoise` draws the same distributions from a seeded bit source, for tests
only: a release made with any noise source other than :class:`SystemNoise` is marked
``"seeded": true`` and refused by every ledger. :class:`OpenDPNoise` draws the same
distributions with OpenDP's own samplers: the reference the tests compare against.
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

from telemagg import _samplers
from telemagg.errors import ConfigError, TelemaggError

# OpenDP gates its constructors behind a "contrib" flag (code whose proofs are written but
# not yet vetted by its committee). telemagg relies on those constructors, so it opts in once,
# here, and nowhere else.
dp.enable_features("contrib")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_VECTOR = dp.vector_domain(dp.atom_domain(T=float, nan=False))
_INTEGERS = dp.vector_domain(dp.atom_domain(T=dp.i64))
_L1_INT = dp.l1_distance(T=dp.i64)
_COUNTS_BY_KEY = dp.map_domain(dp.atom_domain(T=dp.i64), dp.atom_domain(T=dp.i64))
_L01INF = dp.l01inf_distance(dp.absolute_distance(T=dp.i64))
MAX_NOISE_INPUT = 2**62
"""Largest magnitude of an integer measurement: with noise below 2**62 too (the samplers
guarantee it), value + noise cannot overflow int64."""


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


def _smallest_scale(make: Callable[[float], Any], d_in: Any, d_out: float) -> float:
    """Smallest scale whose privacy map at ``d_in`` is within ``d_out``."""
    if d_in == 0:
        return 0.0
    try:
        return float(dp.binary_search_param(make, d_in=d_in, d_out=d_out, T=float))
    except (dp.OpenDPException, OverflowError, ValueError) as exc:
        raise ConfigError(
            f"epsilon share {d_out!r} cannot be met by any noise scale at sensitivity"
            f" {d_in!r} (OpenDP: {str(exc).splitlines()[0][:120]}); raise epsilon, or lower"
            " the bounds, max_partitions or max_contributions"
        ) from None


def _integer_laplace(scale: float) -> Any:
    return dp.m.make_laplace(_INTEGERS, _L1_INT, scale)


@lru_cache(maxsize=1024)  # pure in its arguments; calibration is slow
def laplace_scale(sensitivity_l1: int, epsilon: float) -> float:
    """Discrete Laplace scale for an integer vector query of the given L1 sensitivity, by
    OpenDP's map of ``make_laplace`` on vectors of int64.

    >>> s = laplace_scale(2, 0.5)
    >>> 4.0 <= s < 4.0001
    True
    """
    return _smallest_scale(_integer_laplace, int(sensitivity_l1), epsilon)


@lru_cache(maxsize=1024)  # pure in its float arguments; calibration is slow
def gaussian_scale(sensitivity_l2: float, rho: float) -> float:
    """Gaussian scale (sigma) for a vector query of the given L2 sensitivity under rho-zCDP.

    OpenDP's integer ``make_gaussian`` takes an integer L2 distance, and the L2 sensitivity
    ``sqrt(L0) * l2`` is rarely an integer (rounding it up would add up to 41% noise).
    The map used is ``make_gaussian`` on floats, ``rho = sensitivity**2 / (2 sigma**2)``,
    which the discrete Gaussian satisfies for integer queries of that L2 sensitivity with
    the same sigma (Canonne, Kamath & Steinke 2020, Theorem 4; OpenDP's integer map is the
    same formula), and the sampler's sigma is never below this one.

    >>> s = gaussian_scale(1.0, 0.125)
    >>> 2.0 <= s < 2.0001
    True
    """
    return _smallest_scale(
        lambda s: dp.m.make_gaussian(_VECTOR, dp.l2_distance(T=float), s), sensitivity_l2, rho
    )


@dataclass(frozen=True)
class ThresholdPlan:
    """A calibrated discrete Laplace threshold mechanism over integer per-key counts."""

    scale: float
    threshold: int
    epsilon: float
    delta: float


def _threshold_measurement(scale: float, threshold: int) -> Any:
    return dp.m.make_laplace_threshold(_COUNTS_BY_KEY, _L01INF, scale=scale, threshold=threshold)


def _delta_of(scale: float, threshold: int, d_in: tuple[int, int, int]) -> float:
    return float(privacy_map(_threshold_measurement(scale, threshold), d_in)[1])


@lru_cache(maxsize=1024)  # pure in its arguments; calibration is slow
def laplace_threshold(
    max_partitions: int,
    max_per_partition: int,
    epsilon: float,
    delta: float,
    max_total: int | None = None,
) -> ThresholdPlan:
    """Calibrate private partition selection over integer counts where one unit touches at
    most ``max_partitions`` keys, changing each by at most ``max_per_partition`` and all of
    them together by at most ``max_total`` (default: their product).

    The scale comes from the epsilon share (OpenDP's integer Laplace map), then the
    threshold is the smallest integer whose delta (OpenDP's map of
    ``make_laplace_threshold`` on int64 counts at d_in = (l0, l1, linf)) is within the
    share. Noise and threshold are integers: the noisy counts come from the exact discrete
    Laplace sampler, compared with the threshold exactly.

    >>> plan = laplace_threshold(1, 1, 1.0, 1e-6)
    >>> plan.epsilon <= 1.0 and plan.delta <= 1e-6 and plan.threshold > 10
    True
    """
    total = max_partitions * max_per_partition if max_total is None else max_total
    d_in = (int(max_partitions), int(total), int(max_per_partition))
    scale = _smallest_scale(_integer_laplace, int(total), epsilon)
    # Bisection on the integer threshold: delta falls monotonically as it rises; OpenDP
    # accepts no threshold below one unit's largest change to one key.
    lo, hi = int(max_per_partition), 2 * int(max_per_partition)
    while _delta_of(scale, hi, d_in) > delta:
        if hi > 2**61:
            raise ConfigError(f"delta {delta!r} is too small for any threshold")
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
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
    to that end). ``drop[n]`` is the probability of dropping it, kept separately because
    near 1 a float64 keep probability cannot carry it. ``epsilon``/``delta`` are the
    whole selection's loss, ``partition_epsilon``/``partition_delta`` each partition's.
    """

    epsilon: float
    delta: float
    partition_epsilon: float
    partition_delta: float
    max_partitions: int
    probabilities: FloatArray = field(compare=False, repr=False)
    drop: FloatArray = field(compare=False, repr=False)

    def keep_probability(self, units: IntArray) -> FloatArray:
        """Probability of keeping partitions holding ``units`` distinct units each.

        >>> sel = truncated_geometric(1, 1.0, 1e-6)
        >>> sel.keep_probability(np.array([0, 1, 10_000])).round(12).tolist()
        [0.0, 1e-06, 1.0]
        """
        last = self.probabilities.size - 1
        return self.probabilities[np.clip(units, 0, last)]

    def keep(self, units: IntArray, noise: Noise) -> BoolArray:
        """Independent keep decisions for partitions holding ``units`` units: a coin with
        the keep probability below 1/2, the complement of a coin with the drop
        probability above (exact either way)."""
        at = np.clip(units, 0, self.probabilities.size - 1)
        high = self.probabilities[at] > 0.5
        out = np.empty(at.size, dtype=bool)
        out[~high] = noise.bernoulli(self.probabilities[at[~high]])
        out[high] = ~noise.bernoulli(self.drop[at[high]])
        return out

    @property
    def units_for_half(self) -> int:
        """The fewest distinct units with which a partition is kept with probability >= 1/2."""
        return int(np.argmax(self.probabilities >= 0.5))


MAX_KEEP_TABLE = 100_000
"""Longest truncated-geometric table: about 2 ln(1 / delta) / epsilon entries per
partition's (epsilon, delta), a few seconds to build at this length; parameters that need
more are refused (ConfigError) before any charge."""


def keep_table_length(epsilon: float, delta: float) -> float:
    """An upper bound on the table's length, from the recursion's closed form: while
    keeping, pi grows at least by the factor e^eps from delta (pi(n) >= delta (e^(n eps) -
    1) / (e^eps - 1)), so it passes 1/2 within ln(1 + (e^eps - 1) / (2 delta)) / eps + 1
    steps; then 1 - pi shrinks at least by e^-eps and by delta each step, so it reaches 0
    within ln(1 + 1 / (2 delta)) / eps + 1 more (each phase is also at most 1 / (2 delta)
    + 1 steps: each step adds at least delta).

    >>> keep_table_length(1.0, 0.1) >= keep_probabilities(1.0, 0.1).size
    True
    """
    growth = math.log1p(math.expm1(min(epsilon, 700.0)) / (2 * delta)) / epsilon
    decay = math.log1p(1 / (2 * delta)) / epsilon
    return min(growth, 1 / (2 * delta)) + min(decay, 1 / (2 * delta)) + 4


def _down(x: float, steps: int = 2) -> float:
    for _ in range(steps):
        x = math.nextafter(x, -math.inf)
    return x


def _up(x: float, steps: int = 2) -> float:
    for _ in range(steps):
        x = math.nextafter(x, math.inf)
    return x


def keep_probabilities(epsilon: float, delta: float) -> FloatArray:
    """The optimal (epsilon, delta)-DP keep probabilities pi(0), pi(1), ... up to pi = 1.

    pi(0) = 0 and pi(n) = min(e^eps pi(n-1) + delta, 1 - e^-eps (1 - pi(n-1) - delta), 1):
    each step is the largest that keeps both privacy inequalities between n - 1 and n units
    (Desfontaines et al., PoPETs 2022: no (epsilon, delta)-DP keep rule is larger).
    Float rounding is directed: every stored value is at most the exact step from the stored
    value before it (lowering pi(n) only tightens both inequalities), and above 1/2 the
    recursion runs on the drop probability 1 - pi, which float64 carries at full
    precision near 0, so it ends after at most :func:`keep_table_length` steps.

    >>> keep_probabilities(1.0, 0.1).round(4).tolist()
    [0.0, 0.1, 0.3718, 0.8057, 0.9653, 1.0]
    """
    return _keep_and_drop(epsilon, delta)[0]


def _keep_and_drop(epsilon: float, delta: float) -> tuple[FloatArray, FloatArray]:
    if not (epsilon > 1e-12 and math.isfinite(epsilon) and 0.0 < delta < 1.0):
        raise ConfigError(
            f"truncated-geometric selection needs epsilon > 1e-12 and 0 < delta < 1 per"
            f" partition; got {epsilon!r}, {delta!r}"
        )
    length = keep_table_length(epsilon, delta)
    if length > MAX_KEEP_TABLE:
        raise ConfigError(
            f"private partition selection at epsilon {epsilon:.3g} and delta {delta:.3g} per"
            f" partition needs a keep table of ~{length:.3g} entries (more than"
            f" {MAX_KEEP_TABLE:,}): raise epsilon or delta, lower max_partitions, or add"
            " tm.unit_count() (the Laplace threshold needs no table)"
        )
    grow = _down(math.exp(min(epsilon, 700.0)))  # <= e^eps
    shrink = _up(math.exp(-epsilon))  # >= e^-eps
    keep, drop = [0.0], [1.0]
    p, q = 0.0, 1.0  # q >= 1 - p
    while q > 0.0:
        if p <= 0.5:
            kept = _down(grow * p + delta)
            dropped = _up(shrink * _up(q - delta))  # D bound on 1 - pi(n), as drop
            p_next = min(kept, _down(1.0 - dropped), 1.0)
            q_next = min(_up(1.0 - p_next), 1.0) if p_next < 1.0 else 0.0
        else:
            # 1 - pi(n) >= e^-eps (1 - pi(n-1) - delta) and >= 1 - e^eps pi(n-1) - delta
            q_next = max(_up(shrink * _up(q - delta)), _up(1.0 - grow * p - delta), 0.0)
            p_next = _down(1.0 - q_next) if q_next > 0.0 else 1.0
        p, q = max(p_next, 0.0), q_next
        keep.append(p)
        drop.append(q)
    return np.asarray(keep, dtype=np.float64), np.asarray(drop, dtype=np.float64)


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
    keep, drop = _keep_and_drop(eps1, delta1)
    return GeometricSelection(
        epsilon=max_partitions * eps1,
        delta=max_partitions * delta1,
        partition_epsilon=eps1,
        partition_delta=delta1,
        max_partitions=max_partitions,
        probabilities=keep,
        drop=drop,
    )


def laplace_epsilon(sensitivity_l1: int, scale: float) -> float:
    """Epsilon that OpenDP's integer Laplace map assigns to a calibrated scale (reports)."""
    if sensitivity_l1 == 0:
        return 0.0
    return float(privacy_map(_integer_laplace(scale), int(sensitivity_l1)))


def gaussian_rho(sensitivity_l2: float, scale: float) -> float:
    """Rho that OpenDP's Gaussian map assigns to a calibrated scale (for reports)."""
    if sensitivity_l2 == 0.0:
        return 0.0
    meas = dp.m.make_gaussian(_VECTOR, dp.l2_distance(T=float), scale)
    return float(privacy_map(meas, sensitivity_l2))


def discrete_laplace_stddev(scale: float) -> float:
    """Standard deviation of the discrete Laplace noise drawn at ``scale``:
    ``sqrt(2 r) / (1 - r)``, ``r = exp(-1 / b)``, with ``b`` the sampler's exact scale.

    >>> round(discrete_laplace_stddev(1.0), 4)
    1.357
    """
    if scale == 0.0:
        return 0.0
    rate = float(_samplers.laplace_rate(scale))
    r = math.exp(-rate)
    return math.sqrt(2.0 * r) / -math.expm1(-rate)


# --------------------------------------------------------------------------- noise sources


class Noise(Protocol):
    """Where noise comes from. Production: :class:`SystemNoise`; tests: :class:`SeededNoise`.

    Values are integers (counts, or fixed-point sums in units of their resolution) and so
    is the noise: exact discrete Laplace (``P(z)`` ~ ``exp(-|z| / scale)``) and discrete
    Gaussian (``P(z)`` ~ ``exp(-z**2 / (2 scale**2))``).
    """

    @property
    def seeded(self) -> bool:
        """Whether the noise is reproducible (tests only)."""
        ...

    def laplace(self, values: IntArray, scale: float) -> IntArray: ...

    def gaussian(self, values: IntArray, scale: float) -> IntArray: ...

    def threshold(
        self, keys: IntArray, counts: IntArray, plan: ThresholdPlan
    ) -> tuple[IntArray, IntArray]:
        """Keys whose noisy count reaches the threshold (ascending), and those noisy counts."""
        ...

    def bernoulli(self, probabilities: FloatArray) -> BoolArray:
        """Independent coins, ``True`` with the given probabilities."""
        ...


def _check_integers(values: IntArray) -> IntArray:
    out = np.asarray(values)
    if out.dtype.kind not in "iu":
        raise TelemaggError(f"internal: noise needs integer values; got {out.dtype}")
    out = out.astype(np.int64, copy=False)
    if out.size and int(np.abs(out).max()) > MAX_NOISE_INPUT:
        raise TelemaggError("internal: a measurement exceeds 2**62 units; noise would overflow")
    return out


class ExactNoise:
    """Exact discrete noise (:mod:`telemagg._samplers`) from a bit source, vectorised."""

    def __init__(self, bits: _samplers.BitSource) -> None:
        self._bits = bits

    @property
    def seeded(self) -> bool:
        return self._bits.seeded

    def laplace(self, values: IntArray, scale: float) -> IntArray:
        values = _check_integers(values)
        if scale == 0.0:
            return values.copy()
        return values + _samplers.discrete_laplace(values.size, scale, self._bits)

    def gaussian(self, values: IntArray, scale: float) -> IntArray:
        values = _check_integers(values)
        if scale == 0.0:
            return values.copy()
        return values + _samplers.discrete_gaussian(values.size, scale, self._bits)

    def threshold(
        self, keys: IntArray, counts: IntArray, plan: ThresholdPlan
    ) -> tuple[IntArray, IntArray]:
        """OpenDP's ``make_laplace_threshold`` on int64 counts, with this sampler: every
        count gets discrete Laplace noise, keys whose noisy count is >= the threshold are
        kept (OpenDP drops counts "less than this minimum value")."""
        noisy = self.laplace(counts, plan.scale)
        keep = noisy >= plan.threshold
        order = np.argsort(keys[keep], kind="stable")
        return keys[keep][order].astype(np.int64), noisy[keep][order]

    def bernoulli(self, probabilities: FloatArray) -> BoolArray:
        return _samplers.bernoulli(np.asarray(probabilities, dtype=np.float64), self._bits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SystemNoise(ExactNoise):
    """The production noise: exact discrete samplers fed by the operating system's CSPRNG.
    The only source whose releases are unseeded (and accepted by ledgers).

    >>> SystemNoise().seeded
    False
    """

    def __init__(self) -> None:
        super().__init__(_samplers.SystemBits())


class SeededNoise(ExactNoise):
    """The production distributions from a seeded bit source: reproducible. Tests only.

    >>> SeededNoise(7).laplace(np.zeros(3, np.int64), 0.0).tolist()
    [0, 0, 0]
    """

    def __init__(self, seed: int) -> None:
        super().__init__(_samplers.SeededBits(seed))


class OpenDPNoise:
    """OpenDP's own samplers for the same distributions (int64 ``make_laplace``,
    ``make_gaussian``, ``make_laplace_threshold``, randomized response): the reference the
    tests compare :class:`SystemNoise` with. Slower (tens of microseconds a value). A
    release made with it is marked seeded: only :class:`SystemNoise` is production."""

    seeded = False

    def laplace(self, values: IntArray, scale: float) -> IntArray:
        values = _check_integers(values)
        if scale == 0.0 or values.size == 0:
            return values.copy()
        meas = _integer_laplace(scale)
        return np.asarray(meas(values.tolist()), dtype=np.int64)

    def gaussian(self, values: IntArray, scale: float) -> IntArray:
        values = _check_integers(values)
        if scale == 0.0 or values.size == 0:
            return values.copy()
        meas = dp.m.make_gaussian(_INTEGERS, dp.l2_distance(T=dp.i64), scale)
        return np.asarray(meas(values.tolist()), dtype=np.int64)

    def threshold(
        self, keys: IntArray, counts: IntArray, plan: ThresholdPlan
    ) -> tuple[IntArray, IntArray]:
        if keys.size == 0:
            return keys.astype(np.int64), _check_integers(counts)
        meas = _threshold_measurement(plan.scale, plan.threshold)
        released: dict[int, int] = meas(
            dict(zip(keys.tolist(), _check_integers(counts).tolist(), strict=True))
        )
        kept = np.fromiter(released.keys(), dtype=np.int64, count=len(released))
        noisy = np.fromiter(released.values(), dtype=np.int64, count=len(released))
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

    def __repr__(self) -> str:
        return "OpenDPNoise()"
