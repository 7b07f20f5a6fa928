"""Quantiles from one noisy hierarchical histogram per metric, and their intervals.

The bounded domain is cut into ``leaves`` equal bins (equal in log space for
``scale="log"``), a power of :data:`BRANCHING`, and the bins are the leaves of a complete
``BRANCHING``-ary tree whose every node (root included) counts the events below it. One
measurement per metric and partition: the vector of all node counts, each with the same
exact discrete noise. Sensitivity: each kept event adds 1 to one node per level, so one
unit's Linf events move the vector by at most Linf * levels in L1 and Linf * sqrt(levels)
in L2 (all events in one leaf).

Post-processing (no budget): the noisy tree is made consistent (every node the sum of its
children) by the least-squares estimator of Hay, Rastogi, Miklau & Suciu, "Boosting the
accuracy of differentially private histograms through consistency", VLDB 2010 (bottom-up
weighted averaging, then top-down mean consistency): any prefix count, the quantity a
quantile reads, is then the minimum-variance linear unbiased estimate from the whole tree,
and its noise grows with ``BRANCHING * log(leaves)`` nodes rather than ``leaves`` bins
(Qardaji, Yang & Li, "Understanding hierarchical methods for differentially private
histograms", VLDB 2013). The consistent leaves are read as a monotone CDF
(:func:`grid_positions`), so outputs are monotone in the level and inside the bounds.

:func:`quantile_intervals` gives, per level and partition, the values the true quantile of
the bounded values lies between with the requested confidence, from the raw noisy nodes
and the exact noise law (a Chernoff bound per leaf edge, Bonferroni over the edges).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from telemagg import _samplers
from telemagg._state import State, sample_key
from telemagg.policy import Policy, Quantiles

if TYPE_CHECKING:
    from telemagg._plan import Calibrated, MeasurementSpec

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

BRANCHING = 4
"""Children per node. Measured on heavy-tailed latencies (benchmarks/README.md): a 4-ary
tree over 64 leaves beats 8- and 16-ary trees, 256 or 1024 leaves, and the flat grid in
small partitions, and ties the flat grid from 1,000 units up."""


def tree_height(metric: Quantiles) -> int:
    """Levels below the root: the leaves are ``BRANCHING ** height >= metric.bins``.

    >>> from telemagg.policy import quantiles
    >>> tree_height(quantiles("x", [0.5], bounds=(0, 1), bins=256))
    4
    """
    return max(1, math.ceil(math.log(metric.bins, BRANCHING) - 1e-9))


def tree_leaves(metric: Quantiles) -> int:
    """Number of leaf bins the domain is cut into."""
    return int(BRANCHING ** tree_height(metric))


def tree_nodes(height: int) -> int:
    """Nodes of the complete tree, root included (the measurement's width)."""
    return int((BRANCHING ** (height + 1) - 1) // (BRANCHING - 1))


def quantile_grid(metric: Quantiles, values: F64) -> I64:
    """Leaf bin of each value: equal bins of the (log-)scaled bounds."""
    lo, hi = metric.value_bounds
    leaves = tree_leaves(metric)
    clamped = np.clip(values, lo, hi)
    if metric.scale == "log":
        position = np.log(clamped / lo) / math.log(hi / lo)
    else:
        position = (clamped - lo) / (hi - lo)
    return np.clip(np.floor(position * leaves).astype(np.int64), 0, leaves - 1)


def grid_values(metric: Quantiles, position: F64) -> F64:
    """Values at ``position`` (fractions of the grid, in [0, 1]), inside the bounds."""
    lo, hi = metric.value_bounds
    if metric.scale == "log":
        values = lo * np.exp(position * math.log(hi / lo))
    else:
        values = lo + position * (hi - lo)
    return np.clip(values, lo, hi)  # rounding can step past a bound


def _number(x: float) -> str:
    return repr(float(x)).removesuffix(".0")


def quantile_key(metric: Quantiles) -> str:
    lo, hi = metric.value_bounds
    return (
        f"quantile_tree({metric.column},{_number(lo)},{_number(hi)},{metric.scale},"
        f"{tree_leaves(metric)}/{BRANCHING})"
    )


def tree_counts(leaf_counts: I64) -> I64:
    """All node counts of the tree over ``leaf_counts`` (P, BRANCHING**h), root first, then
    each level left to right (exact int64 sums)."""
    levels = [leaf_counts]
    while levels[-1].shape[1] > 1:
        above = levels[-1]
        rows, width = above.shape
        levels.append(above.reshape(rows, width // BRANCHING, BRANCHING).sum(axis=2))
    return np.concatenate(levels[::-1], axis=1)


def _levels(nodes: F64) -> list[F64]:
    """Split a (P, nodes) tree into its levels, root first."""
    out, start, width = [], 0, 1
    while start < nodes.shape[1]:
        out.append(nodes[:, start : start + width])
        start, width = start + width, width * BRANCHING
    return out


def quantile_spec(policy: Policy, metric: Quantiles) -> MeasurementSpec:
    """The noisy tree every level of ``metric`` is read from: L1 = Linf * levels,
    L2 = Linf * sqrt(levels) per partition (module docstring)."""
    from telemagg._plan import MeasurementSpec  # _plan imports this module

    height = tree_height(metric)
    leaves, levels = tree_leaves(metric), height + 1
    linf = policy.linf

    def compute(state: State, n: int) -> I64:
        values = state.numeric[metric.column]
        present = np.isfinite(values)  # a missing value leaves this metric only (_plan.present)
        bins = quantile_grid(metric, values[present])
        flat = np.bincount(state.partition[present] * leaves + bins, minlength=n * leaves)
        return tree_counts(flat.reshape(n, leaves).astype(np.int64))

    return MeasurementSpec(
        quantile_key(metric),
        linf * levels,
        linf * math.sqrt(levels),
        compute,
        width=tree_nodes(height),
        details={"bins": leaves, "branching": BRANCHING, "spacing": metric.scale},
    )


def consistent_leaves(nodes: F64) -> F64:
    """Least-squares consistent leaf counts of a noisy tree with equal noise on every node
    (Hay et al. 2010, section 4: weighted averaging up, mean consistency down).

    >>> tree = tree_counts(np.array([[1, 2, 3, 4]]))
    >>> consistent_leaves(tree.astype(float)).tolist()
    [[1.0, 2.0, 3.0, 4.0]]
    """
    levels = _levels(nodes)
    k = BRANCHING
    z = [levels[-1]]  # bottom-up, leaves first; a node at height i (leaves: 1)
    for i, level in enumerate(reversed(levels[:-1]), start=2):
        children = z[-1].reshape(level.shape[0], level.shape[1], k).sum(axis=2)
        own = (k**i - k ** (i - 1)) / (k**i - 1)
        z.append(own * level + (1.0 - own) * children)
    z.reverse()  # root first
    fitted = z[0]
    for below in z[1:]:
        siblings = below.reshape(below.shape[0], fitted.shape[1], k)
        gap = (fitted - siblings.sum(axis=2)) / k
        fitted = (siblings + gap[:, :, None]).reshape(below.shape)
    return fitted


def grid_positions(counts: F64, levels: Sequence[float]) -> F64:
    """Where each level falls on a grid histogram, as a fraction of the grid, per partition.

    ``counts`` (P, bins) are noisy (or consistent) bin counts. Their running sum is the
    noisy cumulative count at each grid edge; it wanders, so it is made monotone as the
    mean of its running maximum from the left and running minimum from the right, then
    divided by the noisy total. A level's position interpolates linearly inside the bin
    where this CDF first reaches it. Partitions whose total is not positive carry no
    information; they get the uniform CDF. Positions are monotone in the level and in
    [0, 1].

    >>> grid_positions(np.array([[10.0, 0.0, 10.0, 0.0]]), [0.25, 0.5, 0.75]).round(3).tolist()
    [[0.125, 0.25, 0.625]]
    """
    n_partitions, bins = counts.shape
    cumulative = np.zeros((n_partitions, bins + 1))
    np.cumsum(counts, axis=1, out=cumulative[:, 1:])
    upper = np.maximum.accumulate(cumulative, axis=1)
    lower = np.minimum.accumulate(cumulative[:, ::-1], axis=1)[:, ::-1]
    total = cumulative[:, -1]
    informative = total > 0.0
    # cdf[:, 0] <= 0 < level and cdf[:, -1] >= 1 > level: every level is crossed
    cdf = np.where(
        informative[:, None],
        (upper + lower) / 2.0 / np.where(informative, total, 1.0)[:, None],
        np.linspace(0.0, 1.0, bins + 1),
    )
    rows = np.arange(n_partitions)
    out = np.empty((n_partitions, len(levels)))
    for i, level in enumerate(levels):
        edge = np.argmax(cdf >= level, axis=1)  # >= 1
        below, above = cdf[rows, edge - 1], cdf[rows, edge]
        out[:, i] = (edge - 1 + (level - below) / (above - below)) / bins
    return np.clip(out, 0.0, 1.0)


def _positions(metric: Quantiles, nodes: F64) -> F64:
    return grid_positions(consistent_leaves(nodes), metric.levels)


def quantile_columns(metric: Quantiles, nodes: F64) -> dict[str, F64]:
    """The released quantiles of ``metric`` from its noisy tree (P, nodes)."""
    values = grid_values(metric, _positions(metric, nodes))
    return {name: values[:, i] for i, name in enumerate(metric.output_names)}


# --------------------------------------------------------------------------- intervals


def prefix_nodes(height: int) -> F64:
    """Coefficients (edges, nodes) of the fewest tree nodes whose sum is the count of the
    leaves before each leaf edge ``j`` (0 .. leaves): at each level, the nodes inside
    ``[0, j)`` that their parent does not cover.

    >>> prefix_nodes(1).tolist()[2]
    [0.0, 1.0, 1.0, 0.0, 0.0]
    """
    leaves = BRANCHING**height
    edges = np.arange(leaves + 1)
    out = np.zeros((leaves + 1, tree_nodes(height)))
    offset = 0
    for depth in range(height + 1):
        span = BRANCHING ** (height - depth)  # leaves under a node of this level
        first = (edges // (span * BRANCHING)) * BRANCHING if depth else np.zeros_like(edges)
        last = edges // span
        index = np.arange(BRANCHING**depth)
        out[:, offset : offset + index.size] = (index >= first[:, None]) & (index < last[:, None])
        offset += index.size
    return out


def _log_mgf_laplace(t: F64, rate: float) -> F64:
    """log E[exp(t X)] of the discrete Laplace of ``rate`` (P(x) ~ exp(-rate |x|)), |t| < rate."""
    r = math.exp(-rate)
    return np.asarray(
        2.0 * math.log1p(-r) - np.log1p(-r * np.exp(t)) - np.log1p(-r * np.exp(-t)),
        dtype=np.float64,
    )


def noise_reach(coefficients: F64, calibrated: Calibrated, failure: float) -> F64:
    """Per row of ``coefficients`` (rows, nodes), a ``w`` with P(sum c_i X_i >= w) <= failure,
    X_i the measurement's i.i.d. noise (in integer units), by the Chernoff bound.

    Discrete Gaussian: sigma-subgaussian (Canonne, Kamath & Steinke 2020, Corollary 9), so
    w = sigma * sqrt(2 ln(1/failure) * sum c_i**2). Discrete Laplace: its exact moment
    generating function, the bound minimised over a grid of t (any t gives a valid bound).
    """
    log_failure = math.log(1.0 / failure)
    if calibrated.mechanism == "gaussian":
        return np.asarray(
            calibrated.scale * np.sqrt(2.0 * log_failure * (coefficients**2).sum(axis=1)),
            dtype=np.float64,
        )
    rate = float(_samplers.laplace_rate(calibrated.scale))
    largest = np.abs(coefficients).max(axis=1, keepdims=True)
    best = np.full(coefficients.shape[0], np.inf)
    for u in np.linspace(0.02, 0.98, 49):
        t = u * rate / largest  # (rows, 1)
        total = _log_mgf_laplace(coefficients * t, rate).sum(axis=1)
        best = np.minimum(best, (total + log_failure) / t[:, 0])
    return best


def quantile_intervals(
    metric: Quantiles,
    noisy: Mapping[str, F64],
    calibrated: Mapping[str, Calibrated],
    level: float,
) -> dict[str, tuple[F64, F64]]:
    """Per quantile column, (low, high) arrays: the true quantile of the bounded values
    lies in [low, high] with probability at least ``level`` (each column on its own).

    Post-processing of the raw noisy tree. For the level q and each leaf edge j, the noisy
    ``D_j = prefix_j - q * root`` estimates ``T_j - q N`` (events below the edge minus q
    times all events), which is monotone in j; let j* be the first edge where it is >= 0
    (the true quantile lies in the leaf ending at j*). Its noise is a fixed linear
    combination of the nodes' noise, bounded one-sided by ``w_j`` with failure
    ``(1 - level) / 2`` (:func:`noise_reach`; the noise is symmetric). ``low`` is the end of
    the *leading run* of edges with ``D_j + w_j < 0`` and ``high`` the start of the
    *trailing run* with ``D_j - w_j >= 0``. ``low`` passes j* only if that run contains
    j*, i.e. only if the noise at the one edge j* (fixed by the data, not by the noise) is
    below ``-w``; ``high`` falls below j* only if the noise at j* - 1 reaches ``w``. So
    each side fails with probability at most ``(1 - level) / 2`` and both hold with
    probability >= ``level``, with no union over the edges. Intervals are widened to
    include the released value.
    """
    key = sample_key(quantile_key(metric), metric.max_contributions)
    cal = calibrated[key]
    nodes = np.asarray(noisy[key], dtype=np.float64) / cal.spec.resolution
    height = tree_height(metric)
    leaves = BRANCHING**height
    prefix = prefix_nodes(height)
    failure = (1.0 - level) / 2.0
    edges = grid_values(metric, np.arange(leaves + 1) / leaves)
    released = grid_values(metric, _positions(metric, nodes))
    out: dict[str, tuple[F64, F64]] = {}
    for i, (q, name) in enumerate(zip(metric.levels, metric.output_names, strict=True)):
        coefficients = prefix.copy()
        coefficients[:, 0] -= q  # minus q times the root
        reach = noise_reach(coefficients, cal, failure)
        excess = nodes @ coefficients.T  # (P, edges): D_j
        below = excess + reach < 0.0
        above = excess - reach >= 0.0
        leading = np.where(below.all(axis=1), leaves + 1, np.argmin(below, axis=1))
        trailing = np.where(above.all(axis=1), leaves + 1, np.argmin(above[:, ::-1], axis=1))
        low_edge = np.maximum(leading - 1, 0)
        high_edge = np.where(trailing > 0, leaves + 1 - trailing, leaves)
        low = np.minimum(edges[low_edge], released[:, i])
        high = np.maximum(edges[high_edge], released[:, i])
        out[name] = (np.minimum(low, high), high)
    return out
