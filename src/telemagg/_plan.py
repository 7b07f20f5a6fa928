"""From metrics to calibrated measurements: sensitivities and the budget split.

A *measurement* is one noisy vector: a value (or a few, for histograms) per partition.
Metrics are post-processing of measurements, and metrics that need the same measurement
share it (``mean`` and ``variance`` of one column share its count and centred sum).

Missing values: a NaN, None or +-inf in a value column removes the event from the metrics
on that column only (:func:`present`); ``count`` and ``unit_count`` still count it. So a
mean or variance on column X divides by its own noisy count of present X values,
measured always (whether the data has missing values or not: the plan, and so the
budget split, never depends on the data).

Sensitivity (neighbouring datasets differ by all events of one privacy unit). After
bounding, a unit touches at most ``max_partitions`` (L0) partitions and changes each
partition's vector by at most ``partition_l1`` in L1 norm (``partition_l2`` in L2), so the
whole vector moves by at most L0 * partition_l1 in L1 and sqrt(L0) * partition_l2 in L2
(the L0/Linf argument of Wilson et al., "Differentially private SQL with bounded user
contribution", PoPETs 2020). Per partition, with Linf = ``max_contributions`` events:

* count, and the count of events whose value column X is present: Linf; unit count: 1;
* sum of values clamped to [lo, hi], in fixed point (each value rounded to an integer
  number of the metric's resolution r, summed exactly as int64):
  Linf * max(|rint(lo / r)|, |rint(hi / r)|) units of r;
* centred sum of rint((x - mid) / r), mid = (lo + hi) / 2: Linf * the same at the ends;
* centred sum of squares, at a resolution r2 >= r (:func:`square_step`): Linf * the
  square of the largest centred integer, in units of r2**2;
* a histogram (``histogram`` buckets, or the counts of ``top_k``'s public candidates):
  each kept event adds 1 to at most one bin, so L1 <= Linf, and L2 <= Linf too (all Linf
  events may fall in one bin);
* the tree histogram ``quantiles`` reads: Linf per level (``_quantiles``).

A value metric with its own ``max_contributions`` m (< Linf) reads, of each (unit,
partition) pair, the m kept events of smallest priority (``State.sampled``): the sample
of a pair depends on that pair's own events only, so a unit still touches at most L0
partitions and at most m events in each, and every bound above holds with Linf = m.

``top_k`` without candidates is not a per-partition vector but a threshold over
(partition, value) counts, see :func:`value_threshold`.

Budget split: epsilon is divided equally over the measurements, plus one share for private
partition selection and one per column of a ``top_k`` without candidates. The private
selections (of partitions, see :func:`calibrate_selection`, and of ``top_k`` values) share
delta equally: all of it under
Laplace noise; under Gaussian noise they and the Gaussian measurements take half each.
Every measurement is an integer vector with exact discrete noise; every scale, threshold
and the loss actually spent come from OpenDP maps (``_mechanisms``),
but for truncated-geometric selection, whose loss is argued in
``_mechanisms.truncated_geometric``; the totals never exceed what the caller passed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg import _kernels
from telemagg import _mechanisms as mech
from telemagg._identity import key_identity
from telemagg._quantiles import quantile_columns, quantile_key, quantile_spec
from telemagg._state import State, sample_key
from telemagg.errors import ConfigError, TelemaggError
from telemagg.policy import (
    Count,
    FixedPointMetric,
    Histogram,
    Mean,
    Metric,
    Policy,
    Quantiles,
    ReleaseParams,
    Sum,
    TopK,
    UnitCount,
    ValueMetric,
    Variance,
    default_resolution,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Column = np.ndarray[Any, Any]  # a released column: float64, or object (lists) for histograms

Compute = Callable[[State, int], I64]
"""Exact per-partition integers of a measurement: (state, number of partitions) -> (P, width)."""
ComputeByValue = Callable[[State, int, Sequence[Any]], I64]
"""The same for measurements over a categorical column's values (given by code)."""

MAX_NOISE_SCALE = 2.0**52
"""Largest noise scale in integer units: the noise then stays below 2**62 (int64-safe)
except with probability exp(-2**10)."""
SQUARE_STEPS_BITS = 15
"""Centred values are squared at a resolution cutting the half-width into at most 2**15
steps, so squares stay below 2**30 and their int64 sums cannot overflow."""


@dataclass(frozen=True)
class MeasurementSpec:
    """What to measure, in integer units worth ``resolution`` each, and how much one unit
    can move it in one partition (in those units)."""

    key: str
    partition_l1: int
    partition_l2: float
    compute: Compute = field(compare=False)
    width: int = 1
    resolution: float = 1.0
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)  # for reports
    values_of: str = ""  # a categorical column whose values ``compute_by_value`` reads
    compute_by_value: ComputeByValue | None = field(default=None, compare=False)

    def exact(self, state: State, n: int, categories: Mapping[str, Sequence[Any]]) -> I64:
        """The exact per-partition integers, (n, width); ``categories`` maps a categorical
        column to its values, by code (needed by ``top_k`` candidate counts)."""
        if self.compute_by_value is not None:
            return self.compute_by_value(state, n, categories[self.values_of])
        return self.compute(state, n)


@dataclass(frozen=True)
class Calibrated:
    """A measurement with its noise: mechanism, scale (in integer units) and its cost."""

    spec: MeasurementSpec
    mechanism: str
    sensitivity: float  # L1 for Laplace, L2 for Gaussian, of the whole vector, integer units
    scale: float
    epsilon: float
    delta: float
    rho: float

    def without_data(self) -> Calibrated:
        """This calibration without the functions that read data: what a Release keeps to
        derive intervals (plain values, so a Release pickles)."""
        spec = replace(self.spec, compute=_no_data, compute_by_value=None)
        return replace(self, spec=spec)

    @property
    def stddev(self) -> float:
        """Standard deviation of the noise on each value, in the values' units."""
        if self.mechanism == "laplace":
            return mech.discrete_laplace_stddev(self.scale) * self.spec.resolution
        return self.scale * self.spec.resolution  # the discrete Gaussian's is slightly less

    def report(self) -> dict[str, Any]:
        return {
            "measurement": self.spec.key,
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "sensitivity": self.sensitivity * self.spec.resolution,
            "stddev": self.stddev,
            "scale": self.scale * self.spec.resolution,
            "noise": "discrete (exact, integer)",
            **({"resolution": self.spec.resolution} if self.spec.resolution != 1.0 else {}),
            **self.spec.details,
        }


# --------------------------------------------------------------------------- measurements


def _no_data(state: State, n: int) -> I64:
    raise TelemaggError("internal: a released calibration does not read data")


def _integer_sums(state: State, n: int, units: I64 | None = None) -> I64:
    """Per-partition int64 sums of ``units`` (or event counts), computed exactly.

    A float64 ``bincount`` is exact while every partial sum is an integer below 2**53;
    beyond that the values are split into 21-bit limbs, each summed exactly, and
    recombined in int64 (the planning bounds keep every total below 2**62).
    """
    if units is None:
        return np.bincount(state.partition, minlength=n).astype(np.int64)[:, None]
    largest = int(np.abs(units).max()) if units.size else 0
    if largest * units.size < 2**53:
        sums = np.bincount(state.partition, weights=units.astype(np.float64), minlength=n)
        return sums.astype(np.int64)[:, None]
    if largest * units.size >= 2**62:
        raise TelemaggError("internal: a fixed-point sum could overflow int64")
    low = int(units.min())
    shifted = units - low  # >= 0
    total = np.bincount(state.partition, minlength=n).astype(np.int64) * low
    for limb in range(3):
        part = (shifted >> (21 * limb)) & ((1 << 21) - 1)
        sums = np.bincount(state.partition, weights=part.astype(np.float64), minlength=n)
        total += sums.astype(np.int64) << (21 * limb)
    return total[:, None]


def _fixed_point(values: F64, bounds: tuple[float, float], centre: float, step: float) -> I64:
    """Clamp, centre and round each value to an integer number of ``step``; a missing value
    (NaN, or +-inf: see :func:`present`) is 0, so it adds nothing to a sum."""
    clamped = np.where(present(values), np.clip(values, bounds[0], bounds[1]), centre)
    return np.rint((clamped - centre) / step).astype(np.int64)


def present(values: F64) -> npt.NDArray[np.bool_]:
    """Which values a metric on their column uses: the finite ones. NaN and None are
    missing; so are +-inf, which no bound can place (an overflow or a sentinel, not a
    measurement). A missing value removes its event from the metrics on that column only."""
    return np.isfinite(values)


def present_count_key(column: str) -> str:
    """Key of the count of events whose ``column`` value is present."""
    return f"count({column})"


def present_count_spec(policy: Policy, column: str) -> MeasurementSpec:
    """Events per partition whose ``column`` is present: the denominator of a mean or
    variance on it. Measured whether or not the data has missing values, so that the plan
    (and the budget split) never depends on the data. One unit moves it by at most Linf."""
    c = policy.linf

    def compute(s: State, n: int) -> I64:
        return _integer_sums(s, n, present(s.numeric[column]).astype(np.int64))

    return MeasurementSpec(present_count_key(column), c, float(c), compute)


def _largest_units(bounds: tuple[float, float], centre: float, step: float) -> int:
    """The largest ``|_fixed_point(x)|`` over the bounds, exactly: clamping, subtraction,
    division by a positive step and rounding are all monotone in x, so the extremes are
    at the bounds (computed with the same float operations)."""
    ends = _fixed_point(np.asarray(bounds, dtype=np.float64), bounds, centre, step)
    return int(np.abs(ends).max())


def count_spec(policy: Policy) -> MeasurementSpec:
    c = policy.linf
    return MeasurementSpec("count", c, float(c), lambda s, n: _integer_sums(s, n))


def _unit_count(state: State, n: int) -> I64:
    """Distinct units per partition = distinct pair keys per partition.

    One value sort (no argsort) of (partition, top bits of the pair key): two of a
    partition's pairs would merge only if their keys agreed in those 64 - log2(n) bits
    (probability ~ pairs^2 / 2^(65 - log2 n)), and a merge could only lower a count.
    """
    if len(state) == 0:
        return np.zeros((n, 1), dtype=np.int64)
    shift = np.uint64(max(n - 1, 1).bit_length())
    keys = _kernels.sort_words(
        (state.partition.astype(np.uint64) << (np.uint64(64) - shift)) | (state.pair_key >> shift)
    )
    first = np.ones(keys.size, dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    partitions = (keys[first] >> (np.uint64(64) - shift)).astype(np.int64)
    return np.bincount(partitions, minlength=n).astype(np.int64)[:, None]


UNIT_COUNT = MeasurementSpec("unit_count", 1, 1.0, _unit_count)


def sum_key(column: str, bounds: tuple[float, float], step: float) -> str:
    """Key of the clamped-sum measurement (exact bounds and resolution: different ones
    never share it)."""
    return f"sum({column},{_number(bounds[0])},{_number(bounds[1])};{_number(step)})"


def centred_key(column: str, bounds: tuple[float, float], power: int, step: float) -> str:
    """Key of the centred sum (power 1) or centred sum of squares (power 2) measurement."""
    kind = "centred_sum" if power == 1 else "centred_sum_of_squares"
    return f"{kind}({column},{_number(bounds[0])},{_number(bounds[1])};{_number(step)})"


def square_step(metric: FixedPointMetric) -> float:
    """Resolution of centred values before squaring: the metric's, or coarser so that the
    half-width is at most 2**15 steps (squares below 2**30)."""
    coarse = default_resolution(metric.largest, SQUARE_STEPS_BITS, integers_exact=False)
    return max(metric.step, coarse)


def sum_spec(policy: Policy, metric: FixedPointMetric) -> MeasurementSpec:
    """Sum of values clamped to the bounds, in units of ``metric.step``: one event moves it
    by at most ``max(|rint(lo / step)|, |rint(hi / step)|)`` units."""
    column, bounds, step = metric.column, metric.value_bounds, metric.step
    largest = _largest_units(bounds, 0.0, step)
    bound = policy.linf * largest
    return MeasurementSpec(
        sum_key(column, bounds, step),
        bound,
        float(bound),
        lambda s, n: _integer_sums(s, n, _fixed_point(s.numeric[column], bounds, 0.0, step)),
        resolution=step,
    )


def centred_spec(policy: Policy, metric: FixedPointMetric, power: int) -> MeasurementSpec:
    """Centred sum (power 1) of ``rint((x - mid) / step)``, or of its square (power 2, at
    :func:`square_step`, in units of ``step**2``)."""
    column, bounds = metric.column, metric.value_bounds
    lo, hi = bounds
    mid = (lo + hi) / 2.0
    step = metric.step if power == 1 else square_step(metric)
    bound = policy.linf * _largest_units(bounds, mid, step) ** power

    def compute(s: State, n: int) -> I64:
        return _integer_sums(s, n, _fixed_point(s.numeric[column], bounds, mid, step) ** power)

    return MeasurementSpec(
        centred_key(column, bounds, power, step),
        bound,
        float(bound),
        compute,
        resolution=step**power,
    )


def _number(x: float) -> str:
    """Shortest exact text of a float (keys must not merge different parameters)."""
    return repr(float(x)).removesuffix(".0")


def _histogram(state: State, n: int, bins: I64, width: int, partition: I64 | None = None) -> I64:
    """Per-partition counts of ``bins`` (one per row of ``partition``, default the state's)."""
    rows = state.partition if partition is None else partition
    flat = np.bincount(rows * width + bins, minlength=n * width)
    return flat.reshape(n, width).astype(np.int64)


def _value_histogram(
    state: State, n: int, column: str, bucket: Callable[[F64], I64], width: int
) -> I64:
    """Per-partition counts of the present values of ``column`` in each ``bucket``."""
    values = state.numeric[column]
    keep = present(values)
    return _histogram(state, n, bucket(values[keep]), width, state.partition[keep])


def histogram_buckets(edges: Sequence[float], values: F64) -> I64:
    """Bucket of each value: ``(edges[i], edges[i + 1]]``, clamped into the end buckets."""
    inside = np.searchsorted(np.asarray(edges), values, side="left") - 1
    return np.clip(inside, 0, len(edges) - 2).astype(np.int64)


def histogram_key(metric: Histogram) -> str:
    edges = metric.bins
    if len(edges) <= 8:
        shown = ",".join(map(_number, edges))
    else:  # many edges: first, last, and a digest that tells edge sets apart
        digest = hashlib.blake2b(np.asarray(edges).tobytes(), digest_size=4).hexdigest()
        shown = f"{_number(edges[0])}..{_number(edges[-1])} in {len(edges) - 1} buckets #{digest}"
    return f"histogram({metric.column},{shown})"


def histogram_spec(policy: Policy, metric: Histogram) -> MeasurementSpec:
    """Noisy counts per bucket (L1 = L2 = Linf per partition)."""
    edges = metric.bins
    width = len(edges) - 1
    bound = policy.linf
    return MeasurementSpec(
        histogram_key(metric),
        bound,
        float(bound),
        lambda s, n: _value_histogram(
            s, n, metric.column, lambda v: histogram_buckets(edges, v), width
        ),
        width=width,
        details={"bins": width},
    )


def metric_key(metric: Metric, key: str) -> str:
    """Key of a measurement as ``metric`` reads it: a value metric with its own
    ``max_contributions`` reads its own sample, which never shares a measurement with the
    policy's rows."""
    return sample_key(key, metric.max_contributions if isinstance(metric, ValueMetric) else None)


def _sampled(metric: ValueMetric, spec: MeasurementSpec, linf: int) -> MeasurementSpec:
    """``spec`` (calibrated at Linf ``linf``) computed on each pair's ``linf`` events of
    smallest priority (:meth:`State.sampled`), under the metric's key."""
    compute = spec.compute

    def sampled(s: State, n: int) -> I64:
        return compute(s.sampled(linf), n)

    return replace(
        spec,
        key=metric_key(metric, spec.key),
        compute=sampled,
        details={**spec.details, "max_contributions": linf},
    )


def measurement_specs(metric: Metric, policy: Policy) -> list[MeasurementSpec]:
    """The measurements a metric is computed from. A value metric with its own
    ``max_contributions`` below the policy's reads a sample of the kept events and is
    calibrated to its own bound; at or above the policy's it reads them all."""
    if isinstance(metric, ValueMetric) and metric.max_contributions is not None:
        linf = min(metric.max_contributions, policy.linf)
        own = policy.model_copy(update={"max_contributions": linf})
        specs = _measurement_specs(metric.model_copy(update={"max_contributions": None}), own)
        if linf == policy.linf:  # nothing to sample
            return [replace(s, key=metric_key(metric, s.key)) for s in specs]
        return [_sampled(metric, s, linf) for s in specs]
    return _measurement_specs(metric, policy)


def _measurement_specs(metric: Metric, policy: Policy) -> list[MeasurementSpec]:
    if isinstance(metric, Count):
        return [count_spec(policy)]
    if isinstance(metric, UnitCount):
        return [UNIT_COUNT]
    if isinstance(metric, Sum):
        return [sum_spec(policy, metric)]
    if isinstance(metric, Mean):
        return [present_count_spec(policy, metric.column), centred_spec(policy, metric, 1)]
    if isinstance(metric, Variance):
        centred = [centred_spec(policy, metric, power) for power in (1, 2)]
        return [present_count_spec(policy, metric.column), *centred]
    if isinstance(metric, Quantiles):
        return [quantile_spec(policy, metric)]
    if isinstance(metric, Histogram):
        return [histogram_spec(policy, metric)]
    if isinstance(metric, TopK):
        if metric.candidates is not None:
            return [candidate_spec(policy, metric)]
        return []  # a threshold over (partition, value) keys, not a measurement
    raise ConfigError(f"metrics contains an unknown metric: {metric!r}")


INSUFFICIENT_STDDEVS = 2.0
"""A mean or variance is NaN where the noisy count of present values is below
:func:`insufficient_below`."""


def sum_keys(metric: Mean | Variance) -> list[tuple[str, float]]:
    """The centred sums of a mean or variance, each with the largest size its ratio to the
    count can have (the half-width, or its square)."""
    half = (metric.value_bounds[1] - metric.value_bounds[0]) / 2.0
    keys = [(centred_key(metric.column, metric.value_bounds, 1, metric.step), half)]
    if isinstance(metric, Variance):
        keys.append(
            (centred_key(metric.column, metric.value_bounds, 2, square_step(metric)), half**2)
        )
    return [(metric_key(metric, key), largest) for key, largest in keys]


def insufficient_below(metric: Mean | Variance, calibrated: Mapping[str, Calibrated]) -> float:
    """The noisy count of present values under which a mean or variance says nothing and
    is released as NaN: ``max(1, 2 * stddev of the count's noise, stddev of each centred
    sum's noise / its largest ratio)``. Below it, either the count is not told apart from
    zero, or the noise of a numerator divided by the count exceeds the whole half-range of
    the result (which would then mostly be clamped to a bound: a bound is not a
    measurement). The rule reads the plan only, never the data.

    >>> from telemagg.policy import Policy, mean
    >>> metric, policy = mean("x", bounds=(0, 10)), Policy(privacy_unit="u")
    >>> plan = {s.key: Calibrated(s, "laplace", 1.0, 10.0, 0.1, 0.0, 0.0)
    ...         for s in measurement_specs(metric, policy)}
    >>> round(insufficient_below(metric, plan), 1)  # 2 x the count's noise stddev
    28.3
    """
    count = calibrated[metric_key(metric, present_count_key(metric.column))]
    sums = [calibrated[key].stddev / largest for key, largest in sum_keys(metric)]
    return max(1.0, INSUFFICIENT_STDDEVS * count.stddev, *sums)


def insufficient_rule(metric: Metric, calibrated: Mapping[str, Calibrated]) -> dict[str, Any]:
    """The publishable ``insufficient_data`` entry of a mean or variance (plan only)."""
    assert isinstance(metric, Mean | Variance)
    return {
        "value": "NaN",
        "rule": (
            f"NaN (and NaN interval) where the noisy count of present {metric.column!r} values"
            f" is below max(1, {INSUFFICIENT_STDDEVS:g} x the stddev of its noise, the stddev"
            " of each noisy centred sum / the largest value of its ratio to the count)"
        ),
        "min_noisy_count": insufficient_below(metric, calibrated),
        "otherwise": (
            "the ratio, clamped into what the bounds allow (post-processing); a value at a"
            " bound is an estimate that fell outside them: see its interval"
        ),
    }


def finalize(
    metric: Metric,
    noisy: Mapping[str, F64],
    value_counts: Mapping[str, ValueCounts] | None = None,
    calibrated: Mapping[str, Calibrated] | None = None,
) -> dict[str, Column]:
    """Post-process noisy measurements (shape (P, width)) into the metric's columns.

    Post-processing never costs privacy; it keeps counts non-negative, means and
    variances inside what their bounds allow, and quantiles monotone and inside theirs.
    A mean or variance whose noisy count of present values is too small is NaN
    (:func:`insufficient_below`; ``calibrated`` holds the plan's calibrations).
    ``value_counts`` holds the released (partition, value) counts that ``top_k`` reads.
    """
    if isinstance(metric, Quantiles):
        return quantile_columns(metric, noisy[metric_key(metric, quantile_key(metric))])
    if isinstance(metric, Histogram):
        counts = np.maximum(noisy[histogram_key(metric)], 0.0)
        return {metric.name: list_column([row.tolist() for row in counts])}
    if isinstance(metric, TopK):
        if metric.candidates is not None:
            return candidate_top_k_columns(metric, noisy[candidate_key(metric)])
        assert value_counts is not None
        return top_k_columns(metric, value_counts[value_counts_key(metric.column)])
    if isinstance(metric, Count | UnitCount):
        key = "count" if isinstance(metric, Count) else "unit_count"
        return {metric.name: np.maximum(noisy[key][:, 0], 0.0)}
    if isinstance(metric, Sum):
        key = metric_key(metric, sum_key(metric.column, metric.value_bounds, metric.step))
        return {metric.name: noisy[key][:, 0]}
    assert isinstance(metric, Mean | Variance)
    assert calibrated is not None
    lo, hi = metric.value_bounds
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    (centred_sum, _), *squares_sum = sum_keys(metric)
    noisy_count = noisy[metric_key(metric, present_count_key(metric.column))][:, 0]
    unknown = noisy_count < insufficient_below(metric, calibrated)
    n = np.maximum(noisy_count, 1.0)
    centred = noisy[centred_sum][:, 0]
    centred_mean = np.clip(centred / n, -half, half)
    if isinstance(metric, Mean):  # clipped again: mid + x can round past a bound
        value = np.clip(mid + centred_mean, lo, hi)
    else:
        squares = noisy[squares_sum[0][0]][:, 0] / n
        value = np.clip(squares - centred_mean**2, 0.0, half**2)
    return {metric.name: np.where(unknown, np.nan, value)}


def list_column(rows: Sequence[list[Any]]) -> Column:
    """An object column of Python lists (arrow: list<...>, polars: List, pandas: object)."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


# --------------------------------------------------------------------------- top_k


def value_counts_key(column: str) -> str:
    return f"value_counts({column})"


@dataclass(frozen=True)
class ValueThreshold:
    """Private selection of (partition, value) keys of a categorical column, for ``top_k``.

    Privacy: after bounding, a unit keeps events in at most L0 = ``max_partitions``
    partitions and at most Linf = ``max_contributions`` events in each, and each kept event
    adds 1 to the count of one (partition, value) key. Removing a unit therefore changes at
    most L0 * Linf keys (l0), each by at most Linf (linf: all its events in a partition may
    share one value), and all of them together by at most L0 * Linf (l1: one per kept
    event). OpenDP's ``make_laplace_threshold`` map at d_in = (l0, l1, linf) gives the
    (epsilon, delta) of releasing every key whose noisy count passes the threshold (Rogers
    et al. 2023, arXiv:2309.09170); keys below it, values seen by few units among them,
    are never released. Restricting the keys to the released partitions first is adaptive
    composition with the partition selection: it only removes a unit's contributions.
    """

    column: str
    threshold: mech.ThresholdPlan
    l0: int
    l1: int
    linf: int

    @property
    def key(self) -> str:
        return value_counts_key(self.column)

    def report(self) -> dict[str, Any]:
        return {
            "measurement": self.key,
            "mechanism": "laplace_threshold",
            "epsilon": self.threshold.epsilon,
            "delta": self.threshold.delta,
            "rho": 0.0,
            "sensitivity": self.l1,
            "stddev": mech.discrete_laplace_stddev(self.threshold.scale),
            "scale": self.threshold.scale,
            "threshold": self.threshold.threshold,
            "keys_per_unit": self.l0,
        }


def value_threshold(policy: Policy, column: str, epsilon: float, delta: float) -> ValueThreshold:
    """Calibrate the (partition, value) threshold of ``column`` (see :class:`ValueThreshold`)."""
    linf = policy.linf
    l0 = policy.l0 * linf
    plan = mech.laplace_threshold(l0, linf, epsilon, delta, l0)
    return ValueThreshold(column, plan, l0, l0, linf)


@dataclass(frozen=True)
class ValueCounts:
    """The (partition, value) keys that passed a :class:`ValueThreshold`, with noisy counts.

    ``partition`` indexes the released partitions (``n_partitions`` of them), ``value`` the
    column's distinct values (``values``).
    """

    partition: I64
    value: I64
    count: F64
    n_partitions: int
    values: Sequence[Any]


def noisy_value_counts(
    state: State,
    released: I64,
    n_known: int,
    selection: ValueThreshold,
    values: Sequence[Any],
    noise: mech.Noise,
) -> ValueCounts:
    """Count events per (released partition, value) and keep the keys that pass the
    threshold. ``released`` are partition ids (of ``n_known``), in release order."""
    codes = state.categorical[selection.column]
    position = np.full(n_known, -1, dtype=np.int64)
    position[released] = np.arange(released.size)
    where = position[state.partition] if len(state) else np.zeros(0, np.int64)
    counted = (where >= 0) & (codes >= 0)
    width = max(len(values), 1)
    keys, counts = np.unique(where[counted] * width + codes[counted], return_counts=True)
    kept, noisy = noise.threshold(keys, counts.astype(np.int64), selection.threshold)
    return ValueCounts(
        kept // width, kept % width, noisy.astype(np.float64), int(released.size), values
    )


def top_k_columns(metric: TopK, counts: ValueCounts) -> dict[str, Column]:
    """Per released partition, the ``k`` values with the largest noisy counts (descending)."""
    order = np.lexsort((counts.value, -counts.count, counts.partition))
    partition, value, count = counts.partition[order], counts.value[order], counts.count[order]
    first = np.searchsorted(partition, np.arange(counts.n_partitions))
    rank = np.arange(partition.size) - first[partition] if partition.size else partition
    keep = rank < metric.k
    partition, value, count = partition[keep], value[keep], count[keep]
    bounds = np.searchsorted(partition, np.arange(counts.n_partitions + 1))
    names, numbers = [], []
    for start, stop in itertools.pairwise(bounds.tolist()):
        names.append([counts.values[v] for v in value[start:stop].tolist()])
        numbers.append(count[start:stop].tolist())
    name, count_name = metric.output_names
    return {name: list_column(names), count_name: list_column(numbers)}


def candidate_key(metric: TopK) -> str:
    """Key of the candidate counts of a ``top_k`` with public candidates (different lists
    never share it)."""
    assert metric.candidates is not None
    digest = hashlib.blake2b(repr(metric.candidates).encode(), digest_size=4).hexdigest()
    return f"candidate_counts({metric.column},{len(metric.candidates)} candidates #{digest})"


def candidate_positions(candidates: Sequence[Any], values: Sequence[Any]) -> I64:
    """Position in ``candidates`` of each of a column's distinct ``values`` (-1: not one),
    by key identity (equal values of any type match). A loop over distinct values."""
    position = {key_identity(c): i for i, c in enumerate(candidates)}
    return np.asarray([position.get(key_identity(v), -1) for v in values], dtype=np.int64)


def _needs_values(state: State, n: int) -> I64:
    raise TelemaggError("internal: candidate counts need the column's values (spec.exact)")


def candidate_spec(policy: Policy, metric: TopK) -> MeasurementSpec:
    """Event counts of each public candidate per partition: one vector of width
    ``len(candidates)``. A kept event adds 1 to at most one candidate, so one unit changes a
    partition's vector by at most Linf in L1 and in L2 (all its events may share a value),
    exactly a histogram's sensitivity. Values outside the list are not counted. The
    candidates are public (part of the query), so no threshold is needed: every released
    partition lists its top ``k`` (Wilson et al. 2020's public-domain case)."""
    candidates = metric.candidates
    assert candidates is not None
    width = len(candidates)
    column = metric.column

    def compute(s: State, n: int, values: Sequence[Any]) -> I64:
        where = np.append(candidate_positions(candidates, values), -1)[s.categorical[column]]
        keep = where >= 0
        return _histogram(s, n, where[keep], width, s.partition[keep])

    bound = policy.linf
    return MeasurementSpec(
        candidate_key(metric),
        bound,
        float(bound),
        _needs_values,
        width=width,
        details={"candidates": width},
        values_of=column,
        compute_by_value=compute,
    )


def candidate_top_k_columns(metric: TopK, counts: F64) -> dict[str, Column]:
    """Per partition, the ``k`` candidates with the largest noisy counts (descending; ties in
    the candidates' order), counts floored at 0 (post-processing)."""
    assert metric.candidates is not None
    k = min(metric.k, len(metric.candidates))
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    top = np.maximum(np.take_along_axis(counts, order, axis=1), 0.0)
    names = [[metric.candidates[i] for i in row] for row in order.tolist()]
    name, count_name = metric.output_names
    return {name: list_column(names), count_name: list_column([r.tolist() for r in top])}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Calibrated measurements, partition selection and the loss of one release."""

    measurements: dict[str, Calibrated]
    selection: Selection | None
    loss: mech.PrivacyLoss
    metric_measurements: dict[str, tuple[str, ...]]
    value_thresholds: dict[str, ValueThreshold] = field(default_factory=dict)  # top_k

    def measure(
        self,
        state: State,
        released: I64,
        n_known: int,
        noise: mech.Noise,
        categories: Mapping[str, Sequence[Any]],
    ) -> tuple[dict[str, F64], dict[str, ValueCounts]]:
        """Noisy values of every measurement on the ``released`` partition ids (of
        ``n_known``), in the values' units, and the released (partition, value) counts of
        every ``top_k`` column (``categories`` maps a column to its values, by code).

        Each measurement is an integer vector (counts, or fixed-point sums in units of its
        resolution) noised by exact discrete noise in one vectorised call; its value is
        the noisy integer times the resolution (post-processing).
        """
        noisy: dict[str, F64] = {}
        with state.sampling():  # metrics with their own max_contributions share a sample
            for key, cal in self.measurements.items():
                exact = cal.spec.exact(state, n_known, categories)[released]
                draw = noise.laplace if cal.mechanism == "laplace" else noise.gaussian
                units = draw(exact.ravel(), cal.scale).reshape(exact.shape)
                noisy[key] = units.astype(np.float64) * cal.spec.resolution
        value_counts = {
            key: noisy_value_counts(
                state, released, n_known, selection, categories[selection.column], noise
            )
            for key, selection in self.value_thresholds.items()
        }
        return noisy, value_counts

    @property
    def selection_report(self) -> dict[str, Any] | None:
        if self.selection is None:
            return None
        if isinstance(self.selection, mech.GeometricSelection):
            return {
                "mechanism": "truncated_geometric",
                "epsilon": self.selection.epsilon,
                "delta": self.selection.delta,
                "partition_epsilon": self.selection.partition_epsilon,
                "partition_delta": self.selection.partition_delta,
                "units_for_half": self.selection.units_for_half,
                "sensitivity": None,
            }
        return {
            "mechanism": "laplace_threshold",
            "epsilon": self.selection.epsilon,
            "delta": self.selection.delta,
            "scale": self.selection.scale,
            "threshold": self.selection.threshold,
            "stddev": mech.discrete_laplace_stddev(self.selection.scale),
            "sensitivity": None,
        }


Selection = mech.ThresholdPlan | mech.GeometricSelection


def calibrate_selection(
    max_partitions: int, epsilon: float, delta: float, unit_count: bool
) -> Selection:
    """Private partition selection over distinct-unit counts (one unit adds 1 to at most
    ``max_partitions`` of them).

    With ``unit_count`` requested: the Laplace threshold, whose noisy counts are the
    released unit counts at no extra cost. Otherwise: truncated-geometric selection, which
    keeps mid-sized partitions far more often at the same budget (Desfontaines et al.,
    PoPETs 2022). The choice depends only on the query and its parameters, never on the
    data, so it reveals nothing.

    >>> type(calibrate_selection(4, 0.25, 1e-6, unit_count=False)).__name__
    'GeometricSelection'
    """
    if unit_count:
        return mech.laplace_threshold(max_partitions, 1, epsilon, delta)
    return mech.truncated_geometric(max_partitions, epsilon, delta)


def select_partitions(
    selection: Selection, units: I64, noise: mech.Noise
) -> tuple[I64, F64 | None]:
    """Ids of the partitions kept, ascending, from their distinct-unit counts ``units``
    (one per partition id), and their noisy unit counts (threshold selection only)."""
    units = np.asarray(units).astype(np.int64)
    present = np.flatnonzero(units > 0)
    if isinstance(selection, mech.ThresholdPlan):
        kept, noisy = noise.threshold(present, units[present], selection)
        return kept, noisy.astype(np.float64)
    return present[selection.keep(units[present], noise)], None


def _checked(scale: float, spec: MeasurementSpec) -> float:
    """A noise scale the int64 samplers can carry (see :data:`MAX_NOISE_SCALE`)."""
    if not (math.isfinite(scale) and scale <= MAX_NOISE_SCALE):
        raise ConfigError(
            f"epsilon is too small for {spec.key}: its noise scale would be {scale:.3g}"
            f" units of {spec.resolution:g} (at most 2**52); raise epsilon, or lower the"
            " bounds, max_partitions or max_contributions"
        )
    return scale


def make_plan(metrics: Sequence[Metric], policy: Policy, params: ReleaseParams) -> Plan:
    """Split the budget over the measurements the metrics need and calibrate each."""
    l0 = policy.l0
    private = params.private_partitions
    specs: dict[str, MeasurementSpec] = {}
    metric_measurements: dict[str, tuple[str, ...]] = {}
    value_columns: dict[str, None] = {}
    unit_count = False  # a released unit_count column picks the threshold selection
    for metric in metrics:
        if isinstance(metric, TopK) and metric.candidates is None:
            value_columns[metric.column] = None
            metric_measurements[metric.name] = (value_counts_key(metric.column),)
            continue
        needed = measurement_specs(metric, policy)
        for spec in needed:
            if private and spec.key == "unit_count":
                unit_count = True
                continue  # released by the selection's threshold mechanism itself
            specs.setdefault(spec.key, spec)
        metric_measurements[metric.name] = tuple(s.key for s in needed)
    if value_columns and params.delta == 0:
        raise ConfigError(
            "delta must be > 0 for top_k: its values are selected privately (a threshold"
            " over per-value counts); pass delta, e.g. 1e-6"
        )

    thresholds = (1 if private else 0) + len(value_columns)
    shares = len(specs) + thresholds
    eps_share = params.epsilon / shares
    gaussian = params.noise == "gaussian"
    delta_thresholds = (params.delta / 2.0 if gaussian else params.delta) if thresholds else 0.0
    delta_gaussian = params.delta - delta_thresholds if gaussian else 0.0
    delta_each = delta_thresholds / thresholds if thresholds else 0.0

    selection = calibrate_selection(l0, eps_share, delta_each, unit_count) if private else None
    value_thresholds = {
        value_counts_key(c): value_threshold(policy, c, eps_share, delta_each)
        for c in value_columns
    }

    calibrated: dict[str, Calibrated] = {}
    if gaussian and specs:
        rho_each = mech.rho_within(eps_share * len(specs), delta_gaussian) / len(specs)
    for key, spec in specs.items():
        if gaussian:
            l2 = math.sqrt(l0) * spec.partition_l2
            scale = _checked(mech.gaussian_scale(l2, rho_each), spec)
            rho = mech.gaussian_rho(l2, scale)
            calibrated[key] = Calibrated(
                spec, "gaussian", l2, scale, eps_share, delta_gaussian / len(specs), rho
            )
        else:
            l1 = l0 * spec.partition_l1
            scale = _checked(mech.laplace_scale(l1, eps_share), spec)
            eps = mech.laplace_epsilon(l1, scale)
            calibrated[key] = Calibrated(spec, "laplace", float(l1), scale, eps, 0.0, 0.0)

    approx_eps = sum(c.epsilon for c in calibrated.values() if c.mechanism == "laplace")
    approx_delta = 0.0
    for threshold in [selection, *(v.threshold for v in value_thresholds.values())]:
        if threshold is not None:
            approx_eps += threshold.epsilon
            approx_delta += threshold.delta
    rho = sum(c.rho for c in calibrated.values())
    eps_total = approx_eps + mech.zcdp_to_epsilon(rho, delta_gaussian)
    delta_total = approx_delta + (delta_gaussian if rho > 0 else 0.0)
    loss = mech.PrivacyLoss(eps_total, delta_total, approx_eps, approx_delta, rho)
    # The OpenDP maps are exact; this guards the split itself (never disabled, unlike assert).
    if eps_total > params.epsilon * (1 + 1e-9) or delta_total > params.delta * (1 + 1e-9):
        raise TelemaggError(f"internal: budget split exceeds the request: {loss}")
    return Plan(calibrated, selection, loss, metric_measurements, value_thresholds)
