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

Cost: one value sort of the rows by (unit, pair key, event priority) prefixes, which gives
both levels at once, a few gathers, and O(rows) vectorised passes; no parameter makes time
or memory grow beyond the data.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from telemagg import _kernels

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
        exact = np.zeros(n, dtype=bool)
        exact[positions] = True
        starts = _restarted(group, order, starts, positions, lo)
    # (b) outside re-sorted runs, a tie of (group, priority) prefixes across the k-th place:
    # re-sort the tied block (rows sharing that prefix pair; one group) exactly.
    tied = _tied_at_k(coarse, starts, k, exact)
    if tied is not None:
        _resort(order, *tied, group, priority)
    return order, starts, group[order[starts]]


def _tied_at_k(coarse: U64, starts: I64, k: int, exact: Bool | None) -> tuple[I64, I64] | None:
    """The blocks of rows whose coarse (prefix) keys tie across the ``k``-th row of a
    group, outside the rows already re-sorted exactly (``exact``): their (lo, hi) position
    ranges, to be re-sorted by the full keys; None if there is none."""
    sizes = np.diff(np.append(starts, coarse.size))
    cut = starts[sizes > k] + k if k > 0 else starts[:0]
    tied = coarse[cut] == coarse[cut - 1]
    if exact is not None:
        tied &= ~exact[cut]
    cut = cut[tied]
    if not cut.size:
        return None
    keys = coarse[cut]
    return np.searchsorted(coarse, keys, "left"), np.searchsorted(coarse, keys, "right")


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


def _restarted(group: U64, order: I64, starts: I64, positions: I64, lo: I64) -> I64:
    """:func:`_group_starts` after the runs starting at ``lo`` (``positions``, ascending)
    were re-sorted: only their rows are compared again. A run's first position
    stays a start (the row before it has a smaller group prefix), and so does the position
    after it (a larger prefix)."""
    start = np.zeros(order.size, dtype=bool)
    start[starts] = True
    here = group[order[positions]]
    again = np.ones(positions.size, dtype=bool)
    np.not_equal(here[1:], here[:-1], out=again[1:])
    again[np.searchsorted(positions, lo)] = True
    start[positions] = again
    return np.flatnonzero(start)


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
    so time and memory follow the rows kept, whatever ``k`` is. The kept rows are flagged
    as they come: a scattered write of a byte mask costs far less than sorting them first
    (1.25M rows: 0.8 ms against 31 ms; 10M: 18 ms against 310 ms)."""
    n = order.size
    taken = np.minimum(np.diff(np.append(starts, n)), k)
    if groups_kept is not None:
        taken[~groups_kept] = 0
    rows = order[_ranges(starts, taken)]
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
    # temporaries stay bucket-sized. The rows of a group of buckets are gathered at once
    # (see _OUTER_BITS), then a stable sort of their bucket numbers lists each bucket's rows
    # in input order, so ties break by position as before, and a pair key shared by two
    # units in two buckets is two groups, as the exact path makes it: the kept rows are
    # those of one pass.
    bits = min((n // _BUCKET_ROWS).bit_length(), _MAX_BUCKET_BITS)
    outer = min(bits, _OUTER_BITS)
    compiled = _kernels.bound_buckets(
        unit_id, pair_key, event_priority, bits, outer, max_partitions, max_contributions
    )
    if compiled is not None:
        return compiled
    shift = np.uint64(64 - bits)
    bucket = np.empty(n, dtype=np.uint8)
    for at in range(0, n, _CHUNK):  # a chunk at a time: no n-row uint64 temporary
        bucket[at : at + _CHUNK] = unit_id[at : at + _CHUNK] >> shift
    keep = np.zeros(n, dtype=bool)
    limits = (max_partitions, max_contributions)
    for g in range(1 << outer):
        rows = np.flatnonzero((bucket >> np.uint8(bits - outer)) == g)
        if rows.size == 0:
            continue
        units, pairs, priorities = unit_id[rows], pair_key[rows], event_priority[rows]
        if bits == outer:  # the group is one bucket
            keep[rows[_kept_rows(units, pairs, priorities, *limits, bits)]] = True
            continue
        kept = np.zeros(rows.size, dtype=bool)
        for inner in _buckets(bucket[rows], bits - outer):
            kept[inner[
                _kept_rows(units[inner], pairs[inner], priorities[inner], *limits, bits)
            ]] = True  # fmt: skip
        keep[rows[kept]] = True
    return keep


def _buckets(bucket: npt.NDArray[np.uint8], bits: int) -> list[I64]:
    """The positions of each value of the low ``bits`` bits of ``bucket`` (masked in
    place), each list in ascending order (a stable sort of bytes is a radix sort)."""
    if bits == 0:
        return [np.arange(bucket.size)]
    bucket &= np.uint8((1 << bits) - 1)
    order = np.argsort(bucket, kind="stable")
    ends = np.cumsum(np.bincount(bucket, minlength=1 << bits)).tolist()
    return [order[lo:hi] for lo, hi in zip([0, *ends[:-1]], ends, strict=True) if hi > lo]


_BUCKET_ROWS = 1 << 17
"""Rows bounded at once: about 128k rows, so that a bucket's packed words (1 MB) and the
columns its sort order gathers from stay in a core's L2 cache; larger inputs are split by
unit into buckets of about this size. 1M rows (200k units): 0.11 CPU s against 0.14 with
256k-row buckets; 10M rows: 1.27 against 1.30 (and 2.05 with 2M-row buckets)."""
_MAX_BUCKET_BITS = 7
"""At most 128 buckets: buckets grow beyond ``_BUCKET_ROWS`` instead, so the passes over
the whole input stay a constant number."""
_OUTER_BITS = 3
"""The rows of 8 bucket groups are gathered (one pass over the input each), then split into
their buckets: each gather reads a cache line of the input about 5.3 times, not 7.6 as one
gather per bucket of 64 would."""


def _bound(
    unit_id: U64,
    pair_key: U64,
    event_priority: U64,
    max_partitions: int,
    max_contributions: int,
    shared_bits: int = 0,
) -> Bool:
    """:func:`bound_contributions` of rows bounded in one pass; the ``shared_bits`` top bits
    of every ``unit_id`` are equal (a bucket's)."""
    keep = np.zeros(unit_id.size, dtype=bool)
    keep[
        _kept_rows(
            unit_id, pair_key, event_priority, max_partitions, max_contributions, shared_bits
        )
    ] = True
    return keep


def _kept_rows(
    unit_id: U64,
    pair_key: U64,
    event_priority: U64,
    max_partitions: int,
    max_contributions: int,
    shared_bits: int,
) -> I64:
    """The rows :func:`_bound` keeps, in no particular order.

    One sort orders the rows by (unit, pair key, event priority, position) (see
    :func:`_sorted_pairs`): a unit's pairs then come in the order of their keys, each
    pair's events in the order of their priorities, so L0 keeps the first
    ``max_partitions`` pairs of each unit and Linf the first ``max_contributions`` rows of
    each kept pair: the positions [start, start + min(size, max_contributions)) of each
    kept pair, listed directly, so time and memory follow the rows kept, whatever the
    limits are.
    """
    n = unit_id.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    kept = _kernels.kept_rows(
        unit_id, pair_key, event_priority, shared_bits, max_partitions, max_contributions
    )
    if kept is not None:
        return kept
    max_contributions = min(max_contributions, n)
    order, starts, unit_first = _sorted_pairs(
        unit_id, pair_key, event_priority, max_contributions, shared_bits
    )
    rank = np.arange(starts.size)
    rank -= np.maximum.accumulate(np.where(unit_first, rank, 0))  # of a pair in its unit
    taken = np.minimum(np.diff(np.append(starts, n)), max_contributions)
    taken[rank >= min(max_partitions, n)] = 0
    rows: I64 = order[_ranges(starts, taken)]
    return rows


def _sorted_pairs(
    unit_id: U64, pair_key: U64, priority: U64, k: int, shared_bits: int
) -> tuple[I64, I64, Bool]:
    """Order rows by (unit, pair key, priority, position), exactly wherever L0 and a
    bottom-``k`` Linf choice depend on it; return the order, the positions where (unit,
    pair) groups start in it, and whether each of those groups starts a unit.

    As in :func:`_sorted_groups`, each row is packed into one 64-bit word and value-sorted:
    the top bits of its unit (after the ``shared_bits``), of its pair key, of its priority,
    and its position. The packed order is exact except (a) where distinct units share their
    unit prefix, (b) where distinct pairs of one unit share their pair prefix (their rows
    may interleave, and the unit's pairs are ordered by prefix only), and (c) where
    priorities of one pair tie in their prefix exactly at the ``k``-th place. (a) and (b)
    show in the full keys as a unit (pair) start whose unit (unit and pair) prefix equals
    the previous row's; the runs of rows sharing that prefix are re-sorted exactly. (c) is
    fixed as in :func:`_sorted_groups`. Elsewhere truncation is monotone, so exact.
    """
    n = unit_id.size
    packed, (index_bits, pair_bits, prio_bits) = _packed_pairs(
        unit_id, pair_key, priority, shared_bits
    )
    index_u, pair_u, prio_u = np.uint64(index_bits), np.uint64(pair_bits), np.uint64(prio_bits)
    unit_shift = pair_u + prio_u  # coarse >> unit_shift: the unit prefix
    order: I64 = (packed & ((_ONE << index_u) - _ONE)).view(np.int64)
    coarse = packed
    coarse >>= index_u  # sorted: (unit, pair, priority) prefixes of each position

    units = unit_id[order]
    pairs = pair_key[order]
    new_unit = np.empty(n, dtype=bool)
    new_unit[0] = True
    np.not_equal(units[1:], units[:-1], out=new_unit[1:])
    new_pair = np.empty(n, dtype=bool)
    new_pair[0] = True
    np.not_equal(pairs[1:], pairs[:-1], out=new_pair[1:])
    new_pair |= new_unit
    starts = np.flatnonzero(new_pair)

    # (a) a unit starting inside a run of its unit prefix, (b) a pair starting inside a run
    # of its (unit, pair) prefix: re-sort those runs exactly (a (b) run inside an (a) run
    # is part of it; a (b) run outside holds one unit).
    # (contiguous passes over all rows: cheaper than gathering at the starts, which are
    # most rows when pairs are small)
    prefix = coarse >> prio_u  # (unit, pair) prefix of each position
    same = prefix[1:] == prefix[:-1]
    pair_clash = np.flatnonzero(same & new_pair[1:]) + 1
    prefix >>= pair_u  # unit prefix
    np.equal(prefix[1:], prefix[:-1], out=same)
    unit_clash = np.flatnonzero(same & new_unit[1:]) + 1
    del prefix, same
    exact = None
    if unit_clash.size or pair_clash.size:
        unit_runs = np.unique(coarse[unit_clash] >> unit_shift)
        pair_runs = np.unique(coarse[pair_clash] >> prio_u)
        pair_runs = pair_runs[~np.isin(pair_runs >> pair_u, unit_runs)]
        lo = np.concatenate(
            [
                np.searchsorted(coarse, unit_runs << unit_shift),
                np.searchsorted(coarse, pair_runs << prio_u),
            ]
        )
        hi = np.concatenate(
            [
                np.searchsorted(coarse, (unit_runs + _ONE) << unit_shift),
                np.searchsorted(coarse, (pair_runs + _ONE) << prio_u),
            ]
        )
        ranked = np.argsort(lo)
        lo, hi = lo[ranked], hi[ranked]
        positions = _resort_pairs(order, lo, hi, unit_id, pair_key, priority)
        exact = np.zeros(n, dtype=bool)
        exact[positions] = True
        # Only the re-sorted rows' starts change: a run's first row follows a row of a
        # smaller prefix, the row after it has a larger one.
        rows = order[positions]
        units[positions] = unit_id[rows]
        pairs[positions] = pair_key[rows]
        inner = positions[positions > 0]
        new_unit[inner] = units[inner] != units[inner - 1]
        new_pair[inner] = (pairs[inner] != pairs[inner - 1]) | new_unit[inner]
        starts = np.flatnonzero(new_pair)
    # (c) outside re-sorted runs, a tie of the coarse keys across the k-th place of a pair:
    # re-sort the tied block (rows sharing all three prefixes; one pair) exactly.
    tied = _tied_at_k(coarse, starts, k, exact)
    if tied is not None:
        _resort_pairs(order, *tied, unit_id, pair_key, priority)
    return order, starts, new_unit[starts]


def _packed_widths(n: int) -> tuple[int, int, int]:
    """Widths of the position, pair and priority fields of :func:`_packed_pairs` words
    for ``n`` rows (the unit field takes the rest)."""
    index_bits = max(1, (n - 1).bit_length())
    coarse_bits = 64 - index_bits
    return index_bits, coarse_bits * 3 // 10, coarse_bits // 5  # 128k rows: 17, 14, 9


def _packed_pairs(
    unit_id: U64, pair_key: U64, priority: U64, shared_bits: int
) -> tuple[U64, tuple[int, int, int]]:
    """Each row packed into one 64-bit word, value-sorted: from the top, the bits of its
    unit after the ``shared_bits``, of its pair key, of its priority, and its position;
    returns the words and the widths of the position, pair and priority fields."""
    n = unit_id.size
    index_bits, pair_bits, prio_bits = _packed_widths(n)
    unit_bits = 64 - index_bits - pair_bits - prio_bits
    packed = unit_id << np.uint64(shared_bits)
    packed >>= np.uint64(64 - unit_bits)
    packed <<= np.uint64(pair_bits)
    part = pair_key >> np.uint64(64 - pair_bits)
    packed |= part
    packed <<= np.uint64(prio_bits)
    np.right_shift(priority, np.uint64(64 - prio_bits), out=part)
    packed |= part
    packed <<= np.uint64(index_bits)
    del part
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    return packed, (index_bits, pair_bits, prio_bits)


def _resort_pairs(order: I64, lo: I64, hi: I64, unit_id: U64, pair_key: U64, priority: U64) -> I64:
    """Sort the disjoint position blocks ``[lo, hi)`` of ``order`` exactly by (unit, pair,
    priority, row), in place; return the positions touched (ascending if ``lo`` is)."""
    sizes = hi - lo
    block = np.repeat(np.arange(lo.size), sizes)
    positions = _ranges(lo, sizes)
    rows = order[positions]
    order[positions] = rows[
        np.lexsort((rows, priority[rows], pair_key[rows], unit_id[rows], block))
    ]
    return positions


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
