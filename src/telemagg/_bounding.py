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
    group starting at each of those positions.

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
    for at in range(0, n, _CHUNK):  # row positions, a chunk at a time (no n-row temporary)
        packed[at : at + _CHUNK] |= np.arange(at, min(at + _CHUNK, n), dtype=np.uint64)
    packed.sort()
    order: I64 = (packed & ((_ONE << index_bits_u) - _ONE)).view(np.int64)
    coarse = packed
    coarse >>= index_bits_u  # sorted: (group prefix, priority prefix) of each position
    starts = _group_starts(group, order)
    # (a) a group starting inside a run of its prefix: re-sort the whole run exactly.
    later = starts[1:]
    clash = later[(coarse[later] >> priority_bits) == (coarse[later - 1] >> priority_bits)]
    exact = None
    if clash.size:
        runs = np.unique(coarse[clash] >> priority_bits)
        lo = np.searchsorted(coarse, runs << priority_bits, "left")
        hi = np.searchsorted(coarse, (runs + _ONE) << priority_bits, "left")
        positions = _resort(order, lo, hi, group, priority)
        starts = _group_starts(group, order)
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
    return order, starts, group[order[starts]]


_CHUNK = 1 << 20
"""Rows per chunk of the passes that would otherwise gather a whole column in sorted order:
memory for one chunk instead of n rows (8 MB, not 80 MB at 10M rows)."""


def _group_starts(group: U64, order: I64) -> I64:
    """Positions where a new group starts in ``group[order]``, gathered a chunk at a time."""
    n = order.size
    start = np.empty(n, dtype=bool)
    start[:1] = True
    for lo in range(0, n - 1, _CHUNK):
        hi = min(lo + _CHUNK, n - 1)
        here = group[order[lo : hi + 1]]
        np.not_equal(here[1:], here[:-1], out=start[lo + 1 : hi + 1])
    return np.flatnonzero(start)


def _mixed_groups(key: U64, order: I64, starts: I64) -> bool:
    """Whether some group of ``order`` (starting at ``starts``) holds rows of two
    ``key`` values (compared between neighbours, a chunk at a time)."""
    n = order.size
    inside = np.ones(n, dtype=bool)
    inside[starts] = False  # a row and the one before it are in one group
    for lo in range(0, n - 1, _CHUNK):
        hi = min(lo + _CHUNK, n - 1)
        here = key[order[lo : hi + 1]]
        if np.any((here[1:] != here[:-1]) & inside[lo + 1 : hi + 1]):
            return True
    return False


def _resort(order: I64, lo: I64, hi: I64, group: U64, priority: U64) -> I64:
    """Sort the disjoint position blocks ``[lo, hi)`` of ``order`` exactly by (group,
    priority, row), in place; return the positions touched.

    Each block holds the rows between its neighbours in the exact order, so sorting every
    block in place makes the whole order exact there.
    """
    sizes = hi - lo
    block = np.repeat(np.arange(lo.size), sizes)
    positions = _ranges(lo, sizes)
    rows = order[positions]
    order[positions] = rows[np.lexsort((rows, priority[rows], group[rows], block))]
    return positions


def _first_k(order: I64, starts: I64, k: int, groups_kept: Bool | None = None) -> Bool:
    """Mask (in input order) of the rows among the first ``k`` of their (kept) group in
    ``order``: the positions [start, start + min(k, size)) of each group, listed directly,
    so time and memory follow the rows kept, whatever ``k`` is. The kept rows are sorted
    before they are flagged, so the writes run in order."""
    n = order.size
    taken = np.minimum(np.diff(np.append(starts, n)), k)
    if groups_kept is not None:
        taken[~groups_kept] = 0
    rows = order[_ranges(starts, taken)]
    rows.sort()
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


def _ranges(starts: I64, sizes: I64) -> I64:
    """The positions of the ranges [start, start + size), concatenated."""
    ends = np.cumsum(sizes)
    positions: I64 = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int64)
    positions += np.repeat(starts - (ends - sizes), sizes)
    return positions


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
    if n <= _BUCKET_ROWS:
        return _bound(unit_id, pair_key, event_priority, max_partitions, max_contributions)
    # Units are bounded independently: split the rows by the top bits of their unit's
    # (uniformly mixed) id and bound each bucket on its own, so that the sorts and their
    # temporaries stay bucket-sized. Rows keep their order within a bucket, so ties break
    # by position as before, and a pair key shared by two units in two buckets is two
    # groups, as the exact path makes it: the kept rows are those of one pass.
    bits = (n // _BUCKET_ROWS).bit_length()
    bucket = (unit_id >> np.uint64(64 - bits)).astype(np.uint16)
    keep = np.zeros(n, dtype=bool)
    for b in range(1 << bits):
        rows = np.flatnonzero(bucket == b)
        if rows.size:
            kept = _bound(
                unit_id[rows], pair_key[rows], event_priority[rows], max_partitions,
                max_contributions,
            )  # fmt: skip
            keep[rows[kept]] = True
    return keep


_BUCKET_ROWS = 1 << 21
"""Rows bounded at once: about 2M rows (a few tens of MB of temporaries), cache-friendly
sorts; larger inputs are split by unit into buckets of about this size."""


def _bound(
    unit_id: U64, pair_key: U64, event_priority: U64, max_partitions: int, max_contributions: int
) -> Bool:
    """:func:`bound_contributions` of rows bounded in one pass."""
    n = unit_id.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    max_contributions = min(max_contributions, n)
    # Linf: bottom-k events per pair.
    order, starts, pair_keys = _sorted_groups(pair_key, event_priority, max_contributions)
    if _mixed_groups(unit_id, order, starts):
        # Two units' pairs share a 64-bit key (~pairs^2 / 2^65 per call): bound each unit's
        # rows of that key on its own, so no unit can ever gain a slot from another. Every
        # row is compared with its neighbour, as the units of such a group interleave.
        return _bound_exactly(unit_id, pair_key, event_priority, max_partitions, max_contributions)
    pair_units = unit_id[order[starts]]
    # L0: bottom-k pairs per unit, the pair key being the pair's priority.
    pair_kept = bottom_k(pair_units, pair_keys, max_partitions)
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
