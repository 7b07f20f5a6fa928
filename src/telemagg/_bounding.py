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
random sample of the unit's. Exact priority ties (probability ~2^-64 per pair of rows)
are broken by row position, as a stable sort would.

Cost: one value sort of the rows and one of the (unit, partition) pairs, a few gathers, and
O(rows) vectorised passes; no parameter makes time or memory grow beyond the data.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_ONE = np.uint64(1)


def _sorted_groups(group: U64, priority: U64, k: int) -> tuple[I64, I64, U64]:
    """Order rows by (group, priority, position), exactly wherever a bottom-``k`` choice
    depends on it; return the order, the positions where groups start in it, and the
    group of each position.

    A value sort is several times faster than an argsort, so each row is packed into one
    64-bit word: the top bits of its group, the top bits of its priority, and its position
    in the low bits (which makes the sort an argsort, ties broken by position). The packed
    order is exact except (a) where distinct groups share their top bits (their rows may
    interleave) and (b) where priorities tie in their top bits exactly at the k-th place of
    a group. Both are detected from the full keys and only those runs are re-sorted exactly;
    other runs are exact because truncation is monotone.
    """
    n = group.size
    index_bits = max(1, (n - 1).bit_length())
    coarse_bits = 64 - index_bits
    priority_bits = np.uint64(coarse_bits // 5)  # 8 of the 40 coarse bits at 10M rows
    group_bits = coarse_bits - int(priority_bits)
    index_bits_u = np.uint64(index_bits)

    packed = group >> np.uint64(64 - group_bits)
    packed <<= priority_bits + index_bits_u
    if priority_bits:
        part = priority >> (np.uint64(64) - priority_bits)
        part <<= index_bits_u
        packed |= part
        del part
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order: I64 = (packed & ((_ONE << index_bits_u) - _ONE)).view(np.int64)
    coarse = packed
    coarse >>= index_bits_u  # sorted: (group prefix, priority prefix) of each position
    sorted_group = group[order]
    starts = _starts(sorted_group)
    # (a) a group starting inside a run of its prefix: re-sort the whole run exactly.
    later = starts[1:]
    clash = later[(coarse[later] >> priority_bits) == (coarse[later - 1] >> priority_bits)]
    exact = None
    if clash.size:
        runs = np.unique(coarse[clash] >> priority_bits)
        lo = np.searchsorted(coarse, runs << priority_bits, "left")
        hi = np.searchsorted(coarse, (runs + _ONE) << priority_bits, "left")
        positions = _resort(order, lo, hi, group, priority)
        sorted_group[positions] = group[order[positions]]
        starts = _starts(sorted_group)
        exact = np.zeros(n, dtype=bool)
        exact[positions] = True
    # (b) outside re-sorted runs, a tie of (group, priority) prefixes across the k-th place:
    # re-sort the tied block (rows sharing that prefix pair; one group) exactly.
    sizes = np.diff(np.append(starts, n))
    cut = starts[sizes > k] + k if k > 0 else starts[:0]
    tied = coarse[cut] == coarse[cut - 1]
    if exact is not None:
        tied &= ~exact[cut]
    cut = cut[tied]
    if cut.size:
        lo = np.searchsorted(coarse, coarse[cut], "left")
        hi = np.searchsorted(coarse, coarse[cut], "right")
        _resort(order, lo, hi, group, priority)
    return order, starts, sorted_group


def _starts(sorted_group: U64) -> I64:
    """Positions where a new group starts in a grouped array."""
    start = np.empty(sorted_group.size, dtype=bool)
    start[:1] = True
    np.not_equal(sorted_group[1:], sorted_group[:-1], out=start[1:])
    return np.flatnonzero(start)


def _resort(order: I64, lo: I64, hi: I64, group: U64, priority: U64) -> I64:
    """Sort the disjoint position blocks ``[lo, hi)`` of ``order`` exactly by (group,
    priority, row), in place; return the positions touched.

    Each block holds the rows between its neighbours in the exact order, so sorting every
    block in place makes the whole order exact there.
    """
    sizes = hi - lo
    block = np.repeat(np.arange(lo.size), sizes)
    positions: I64 = np.arange(block.size, dtype=np.int64) - np.repeat(
        np.cumsum(sizes) - sizes, sizes
    )
    positions += lo[block]
    rows = order[positions]
    order[positions] = rows[np.lexsort((rows, priority[rows], group[rows], block))]
    return positions


def _first_k(order: I64, starts: I64, k: int, groups_kept: Bool | None = None) -> Bool:
    """Mask (in input order) of the rows among the first ``k`` of their (kept) group in
    ``order``: position < group start + min(k, size), one comparison per row whatever
    ``k`` is. The kept rows are sorted before they are flagged, so the writes run in order
    (a scatter through ``order`` would jump around memory for every row)."""
    n = order.size
    sizes = np.diff(np.append(starts, n))
    ends = starts + np.minimum(sizes, k)
    if groups_kept is not None:
        ends = np.where(groups_kept, ends, starts)
    rows = order[np.arange(n, dtype=np.int64) < np.repeat(ends, sizes)]
    rows.sort()
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


def bottom_k(group: U64, priority: U64, k: int) -> Bool:
    """Mask of the rows with the ``k`` smallest priorities in each group.

    >>> g = np.array([1, 1, 1, 2], dtype=np.uint64)
    >>> p = np.array([30, 10, 20, 5], dtype=np.uint64)
    >>> bottom_k(g, p, 2).tolist()
    [False, True, True, True]
    """
    if group.size == 0:
        return np.zeros(0, dtype=bool)
    k = min(k, group.size)  # a group never holds more rows than the data
    order, starts, _ = _sorted_groups(group, priority, k)
    return _first_k(order, starts, k)


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
    n = unit_id.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    max_contributions = min(max_contributions, n)
    # Linf: bottom-k events per pair.
    order, starts, sorted_pair = _sorted_groups(pair_key, event_priority, max_contributions)
    sorted_unit = unit_id[order]
    same_pair = np.ones(n, dtype=bool)
    same_pair[starts] = False
    if np.any((sorted_unit[1:] != sorted_unit[:-1]) & same_pair[1:]):
        # Two units' pairs share a 64-bit key (~pairs^2 / 2^65 per call): bound each unit's
        # rows of that key on its own, so no unit can ever gain a slot from another. Every
        # row is compared with its neighbour, as the units of such a group interleave.
        return _bound_exactly(unit_id, pair_key, event_priority, max_partitions, max_contributions)
    # L0: bottom-k pairs per unit, the pair key being the pair's priority.
    pair_kept = bottom_k(sorted_unit[starts], sorted_pair[starts], max_partitions)
    return _first_k(order, starts, max_contributions, pair_kept)


def _bound_exactly(
    unit_id: U64, pair_key: U64, event_priority: U64, max_partitions: int, max_contributions: int
) -> Bool:
    """Reference implementation grouping by (unit, pair) with a lexsort (slow, exact)."""
    n = unit_id.size
    order = np.lexsort((np.arange(n), event_priority, pair_key, unit_id))
    u, p = unit_id[order], pair_key[order]
    start = np.ones(n, dtype=bool)
    start[1:] = (u[1:] != u[:-1]) | (p[1:] != p[:-1])
    starts = np.flatnonzero(start)
    pair_kept = bottom_k(u[starts], p[starts], max_partitions)
    return _first_k(order, starts, max_contributions, pair_kept)
