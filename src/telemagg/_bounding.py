"""Per-unit contribution bounding: pure numpy kernels.

A privacy unit keeps at most ``max_contributions`` events in each partition (Linf) and at
most ``max_partitions`` partitions (L0). Both choices are *bottom-k samples*: every
(unit, partition) pair has a keyed random priority (``pair_key``, also its identity) and
every event an i.i.d. random priority; a unit keeps its ``max_partitions`` pairs with the
smallest pair priorities, and in each its ``max_contributions`` events with the smallest
event priorities. Because the kept set is a function of the *set* of rows and their
priorities only, it does not depend on input order, and bounding the union of two bounded
states gives exactly the bounded union of their inputs (a row outside a group's bottom k
stays outside it when rows are added). That is what makes states mergeable across
``add`` calls, shards and workers (Cohen & Kaplan, "Summarizing data using bottom-k
sketches", PODC 2007). With i.i.d. priorities the kept events and partitions are a uniform
random sample of the unit's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_TOP40 = np.uint64(0xFFFFFFFFFF000000)
_SHIFT = np.uint64(40)  # priorities keep their top 24 bits in the coarse key
_SHIFT_RUN = np.uint64(24)  # the coarse key's top 40 bits are the group's
_LOW_LIMIT = np.uint64(1 << 24)  # groups differing only below bit 24 share their top 40


def _groups(group: U64, priority: U64, k: int) -> tuple[I64, I64, I64]:
    """Sort rows by (group, priority); return the order, group starts and group sizes.

    The order is exact wherever it decides a bottom-``k`` choice. Sorting one 64-bit key is
    several times faster than a two-key lexsort, so rows are sorted by the top 40 bits of
    the group and the top 24 bits of the priority. That is exact unless two groups share
    their top 40 bits, or two priorities tie in 24 bits exactly at the k-th place of a
    group; both are rare, detected, and those runs are re-sorted exactly.
    """
    n = group.size
    k = min(k, n)  # a group never holds more than n rows
    coarse = np.right_shift(priority, _SHIFT)
    np.bitwise_or(coarse, group & _TOP40, out=coarse)
    order = np.argsort(coarse)
    coarse.sort()  # == coarse[order], but a value sort is far cheaper than a gather
    run = coarse >> _SHIFT_RUN  # the top 40 bits of each row's group
    boundary = np.empty(n, dtype=bool)
    boundary[:1] = True
    np.not_equal(run[1:], run[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    sizes = np.diff(np.append(starts, n))
    # (a) distinct groups sharing their top 40 bits interleave in this order.
    groups = np.sort(group)
    distinct = groups[1:] != groups[:-1]
    clash_runs = groups[1:][distinct & ((groups[1:] ^ groups[:-1]) < _LOW_LIMIT)] >> _SHIFT_RUN
    # (b) a tie of the coarse key across the k-th place of a group.
    cut = starts[sizes > k] + k
    tie_runs = run[cut][coarse[cut] == coarse[cut - 1]]
    if clash_runs.size or tie_runs.size:
        bad = np.isin(run, np.union1d(clash_runs, tie_runs))
        rows = np.flatnonzero(bad)
        sub = order[rows]
        order[rows] = sub[np.lexsort((priority[sub], group[sub], run[rows]))]
        g = group[order]
        np.not_equal(g[1:], g[:-1], out=boundary[1:])
        starts = np.flatnonzero(boundary)
        sizes = np.diff(np.append(starts, n))
    return order, starts, sizes


def _first_k(starts: I64, sizes: I64, k: int, groups_kept: Bool | None = None) -> I64:
    """Sorted positions of the first ``k`` rows of each (kept) group.

    A row's rank in its group is its position minus the group's start, so this is O(rows)
    whatever ``k`` is: no parameter can make it loop or allocate beyond the data.
    """
    rank = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)
    take = rank < min(k, rank.size)
    if groups_kept is not None:
        take &= np.repeat(groups_kept, sizes)
    return np.flatnonzero(take)


def bottom_k(group: U64, priority: U64, k: int) -> Bool:
    """Mask of the rows with the ``k`` smallest priorities in each group.

    >>> g = np.array([1, 1, 1, 2], dtype=np.uint64)
    >>> p = np.array([30, 10, 20, 5], dtype=np.uint64)
    >>> bottom_k(g, p, 2).tolist()
    [False, True, True, True]
    """
    keep = np.zeros(group.size, dtype=bool)
    if group.size:
        order, starts, sizes = _groups(group, priority, k)
        keep[order[_first_k(starts, sizes, k)]] = True
    return keep


def bound_contributions(
    unit_id: U64,
    pair_key: U64,
    event_priority: U64,
    *,
    max_partitions: int,
    max_contributions: int,
) -> Bool:
    """Mask of the events kept by L0/Linf contribution bounding.

    ``pair_key`` identifies a (unit, partition) pair and is its random priority among the
    unit's pairs; ``event_priority`` is each event's random priority within its pair.

    >>> unit = np.array([7, 7, 7, 7, 9], dtype=np.uint64)
    >>> pair = np.array([100, 100, 100, 200, 300], dtype=np.uint64)
    >>> prio = np.array([3, 1, 2, 9, 4], dtype=np.uint64)
    >>> bound_contributions(unit, pair, prio, max_partitions=1, max_contributions=2).tolist()
    [False, True, True, False, True]
    """
    keep = np.zeros(unit_id.size, dtype=bool)
    if unit_id.size == 0:
        return keep
    # Linf: bottom-k events per pair.
    order, starts, sizes = _groups(pair_key, event_priority, max_contributions)
    units_sorted = unit_id[order]
    group_start = np.zeros(order.size, dtype=bool)
    group_start[starts] = True
    if np.any((units_sorted[1:] != units_sorted[:-1]) & ~group_start[1:]):
        # Two units' pairs share a 64-bit key (~pairs^2 / 2^65 per call): bound each unit's
        # rows of that key on its own, so no unit can ever gain a slot from another. Every
        # row is compared with its neighbour, as the units of such a group interleave.
        return _bound_exactly(unit_id, pair_key, event_priority, max_partitions, max_contributions)
    first_rows = order[starts]
    pair_units = units_sorted[starts]
    # L0: bottom-k pairs per unit, the pair key being the pair's priority.
    pair_kept = bottom_k(pair_units, pair_key[first_rows], max_partitions)
    keep[order[_first_k(starts, sizes, max_contributions, pair_kept)]] = True
    return keep


def _bound_exactly(
    unit_id: U64, pair_key: U64, event_priority: U64, max_partitions: int, max_contributions: int
) -> Bool:
    """Reference implementation grouping by (unit, pair) with a lexsort (slow, exact)."""
    order = np.lexsort((event_priority, pair_key, unit_id))
    u, p = unit_id[order], pair_key[order]
    boundary = np.ones(order.size, dtype=bool)
    boundary[1:] = (u[1:] != u[:-1]) | (p[1:] != p[:-1])
    starts = np.flatnonzero(boundary)
    sizes = np.diff(np.append(starts, order.size))
    pair_kept = bottom_k(u[starts], p[starts], max_partitions)
    keep = np.zeros(order.size, dtype=bool)
    keep[order[_first_k(starts, sizes, max_contributions, pair_kept)]] = True
    return keep
