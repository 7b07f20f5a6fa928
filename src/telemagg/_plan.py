"""From metrics to calibrated measurements: sensitivities and the budget split.

A *measurement* is one noisy vector: a value (or a few, for histograms) per partition.
Metrics are post-processing of measurements, and metrics that need the same measurement
share it (``mean`` and ``variance`` of one column share its count and centred sum).

Sensitivity (neighbouring datasets differ by all events of one privacy unit). After
bounding, a unit touches at most ``max_partitions`` (L0) partitions and changes each
partition's vector by at most ``partition_l1`` in L1 norm (``partition_l2`` in L2), so the
whole vector moves by at most L0 * partition_l1 in L1 and sqrt(L0) * partition_l2 in L2
(the L0/Linf argument of Wilson et al., "Differentially private SQL with bounded user
contribution", PoPETs 2020). Per partition, with Linf = ``max_contributions`` events:

* count: Linf; unit count: 1;
* sum of values clamped to [lo, hi]: Linf * max(|lo|, |hi|);
* centred sum of (x - mid), mid = (lo + hi) / 2: Linf * (hi - lo) / 2;
* centred sum of squares (x - mid)^2: Linf * ((hi - lo) / 2)^2.

Budget split: epsilon is divided equally over the measurements, plus one share for private
partition selection. Selection takes all of delta under Laplace noise; under Gaussian noise
selection and the Gaussian measurements take half of delta each. Every scale, threshold and
the loss actually spent come from OpenDP maps (``_mechanisms``), so the totals never exceed
what the caller passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg._state import State
from telemagg.errors import ConfigError, TelemaggError
from telemagg.policy import Count, Mean, Metric, Policy, ReleaseParams, Sum, UnitCount, Variance

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

Compute = Callable[[State, int], F64]
"""Exact per-partition values of a measurement: (state, number of partitions) -> (P, width)."""


@dataclass(frozen=True)
class MeasurementSpec:
    """What to measure and how much one unit can move it in one partition."""

    key: str
    partition_l1: float
    partition_l2: float
    compute: Compute = field(compare=False)
    width: int = 1


@dataclass(frozen=True)
class Calibrated:
    """A measurement with its noise: mechanism, scale and the privacy it costs."""

    spec: MeasurementSpec
    mechanism: str
    sensitivity: float  # L1 for Laplace, L2 for Gaussian, of the whole vector
    scale: float
    epsilon: float
    delta: float
    rho: float

    @property
    def stddev(self) -> float:
        return self.scale * math.sqrt(2.0) if self.mechanism == "laplace" else self.scale

    def report(self) -> dict[str, Any]:
        return {
            "measurement": self.spec.key,
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "sensitivity": self.sensitivity,
            "stddev": self.stddev,
        }


# --------------------------------------------------------------------------- measurements


def _bincount(state: State, n: int, weights: F64 | None = None) -> F64:
    out = np.bincount(state.partition, weights=weights, minlength=n).astype(np.float64)
    return out[:, None]


def _clamped(state: State, column: str, bounds: tuple[float, float]) -> F64:
    return np.clip(state.numeric[column], bounds[0], bounds[1])


def count_spec(policy: Policy) -> MeasurementSpec:
    c = float(policy.max_contributions)
    return MeasurementSpec("count", c, c, lambda s, n: _bincount(s, n))


def _unit_count(state: State, n: int) -> F64:
    # pair keys identify (unit, partition) pairs: distinct pairs per partition = units
    _, first = np.unique(state.pair_key, return_index=True)
    out = np.bincount(state.partition[first], minlength=n).astype(np.float64)
    return out[:, None]


UNIT_COUNT = MeasurementSpec("unit_count", 1.0, 1.0, _unit_count)


def sum_spec(policy: Policy, column: str, bounds: tuple[float, float]) -> MeasurementSpec:
    lo, hi = bounds
    bound = policy.max_contributions * max(abs(lo), abs(hi))
    return MeasurementSpec(
        f"sum({column},{lo:g},{hi:g})",
        bound,
        bound,
        lambda s, n: _bincount(s, n, _clamped(s, column, bounds)),
    )


def centred_spec(
    policy: Policy, column: str, bounds: tuple[float, float], power: int
) -> MeasurementSpec:
    lo, hi = bounds
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    bound = policy.max_contributions * half**power
    return MeasurementSpec(
        f"centred_sum{'' if power == 1 else '_of_squares'}({column},{lo:g},{hi:g})",
        bound,
        bound,
        lambda s, n: _bincount(s, n, (_clamped(s, column, bounds) - mid) ** power),
    )


def measurement_specs(metric: Metric, policy: Policy) -> list[MeasurementSpec]:
    """The measurements a metric is computed from."""
    if isinstance(metric, Count):
        return [count_spec(policy)]
    if isinstance(metric, UnitCount):
        return [UNIT_COUNT]
    if isinstance(metric, Sum):
        return [sum_spec(policy, metric.column, metric.bounds)]
    if isinstance(metric, Mean):
        return [count_spec(policy), centred_spec(policy, metric.column, metric.bounds, 1)]
    if isinstance(metric, Variance):
        return [
            count_spec(policy),
            centred_spec(policy, metric.column, metric.bounds, 1),
            centred_spec(policy, metric.column, metric.bounds, 2),
        ]
    raise ConfigError(f"metrics contains an unknown metric: {metric!r}")


def finalize(metric: Metric, noisy: dict[str, F64]) -> dict[str, F64]:
    """Post-process noisy measurements (shape (P, width)) into the metric's columns.

    Post-processing never costs privacy; it keeps counts non-negative and means and
    variances inside what their bounds allow.
    """
    if isinstance(metric, Count | UnitCount):
        key = "count" if isinstance(metric, Count) else "unit_count"
        return {metric.name: np.maximum(noisy[key][:, 0], 0.0)}
    if isinstance(metric, Sum):
        lo, hi = metric.bounds
        return {metric.name: noisy[f"sum({metric.column},{lo:g},{hi:g})"][:, 0]}
    assert isinstance(metric, Mean | Variance)
    lo, hi = metric.bounds
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    n = np.maximum(noisy["count"][:, 0], 1.0)
    centred_mean = np.clip(
        noisy[f"centred_sum({metric.column},{lo:g},{hi:g})"][:, 0] / n, -half, half
    )
    if isinstance(metric, Mean):  # clipped again: mid + x can round past a bound
        return {metric.name: np.clip(mid + centred_mean, lo, hi)}
    squares = noisy[f"centred_sum_of_squares({metric.column},{lo:g},{hi:g})"][:, 0] / n
    return {metric.name: np.clip(squares - centred_mean**2, 0.0, half**2)}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Calibrated measurements, partition selection and the loss of one release."""

    measurements: dict[str, Calibrated]
    selection: mech.ThresholdPlan | None
    loss: mech.PrivacyLoss
    metric_measurements: dict[str, tuple[str, ...]]

    @property
    def selection_report(self) -> dict[str, Any] | None:
        if self.selection is None:
            return None
        return {
            "mechanism": "laplace_threshold",
            "epsilon": self.selection.epsilon,
            "delta": self.selection.delta,
            "scale": self.selection.scale,
            "threshold": self.selection.threshold,
            "stddev": self.selection.scale * math.sqrt(2.0),
            "sensitivity": None,
        }


def make_plan(metrics: Sequence[Metric], policy: Policy, params: ReleaseParams) -> Plan:
    """Split the budget over the measurements the metrics need and calibrate each."""
    l0 = policy.max_partitions
    private = params.private_partitions
    specs: dict[str, MeasurementSpec] = {}
    metric_measurements: dict[str, tuple[str, ...]] = {}
    for metric in metrics:
        needed = measurement_specs(metric, policy)
        for spec in needed:
            if private and spec.key == "unit_count":
                continue  # released by the selection's threshold mechanism itself
            specs.setdefault(spec.key, spec)
        metric_measurements[metric.name] = tuple(s.key for s in needed)

    shares = len(specs) + (1 if private else 0)
    eps_share = params.epsilon / shares
    gaussian = params.noise == "gaussian"
    delta_selection = (params.delta / 2.0 if gaussian else params.delta) if private else 0.0
    delta_gaussian = params.delta - delta_selection if gaussian else 0.0

    selection = mech.laplace_threshold(l0, 1.0, eps_share, delta_selection) if private else None

    calibrated: dict[str, Calibrated] = {}
    if gaussian and specs:
        rho_each = mech.rho_within(eps_share * len(specs), delta_gaussian) / len(specs)
    for key, spec in specs.items():
        if gaussian:
            l2 = math.sqrt(l0) * spec.partition_l2
            scale = mech.gaussian_scale(l2, rho_each)
            rho = mech.gaussian_rho(l2, scale)
            calibrated[key] = Calibrated(
                spec, "gaussian", l2, scale, eps_share, delta_gaussian / len(specs), rho
            )
        else:
            l1 = l0 * spec.partition_l1
            scale = mech.laplace_scale(l1, eps_share)
            eps = mech.laplace_epsilon(l1, scale)
            calibrated[key] = Calibrated(spec, "laplace", l1, scale, eps, 0.0, 0.0)

    approx_eps = sum(c.epsilon for c in calibrated.values() if c.mechanism == "laplace")
    approx_delta = 0.0
    if selection is not None:
        approx_eps += selection.epsilon
        approx_delta += selection.delta
    rho = sum(c.rho for c in calibrated.values())
    eps_total = approx_eps + mech.zcdp_to_epsilon(rho, delta_gaussian)
    delta_total = approx_delta + (delta_gaussian if rho > 0 else 0.0)
    loss = mech.PrivacyLoss(eps_total, delta_total, approx_eps, approx_delta, rho)
    # The OpenDP maps are exact; this guards the split itself (never disabled, unlike assert).
    if eps_total > params.epsilon * (1 + 1e-9) or delta_total > params.delta * (1 + 1e-9):
        raise TelemaggError(f"internal: budget split exceeds the request: {loss}")
    return Plan(calibrated, selection, loss, metric_measurements)
