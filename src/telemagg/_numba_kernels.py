"""The numba kernels behind :mod:`telemagg._kernels` (imported only when numba is).

Each function is the compiled twin of numpy code named in its docstring, with the same
results; ``tests/test_kernels.py`` checks that on random and adversarial inputs.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_njit = numba.njit(cache=True, nogil=True)

_DIGIT_BITS = 11
_DIGITS = 1 << _DIGIT_BITS


@_njit
def radix_sort(keys: U64) -> U64:
    """``np.sort`` of 64-bit words, by least significant digit first: one pass counts
    every digit, then one stable scatter per digit that is not the same in all words."""
    n = keys.size
    passes = (64 + _DIGIT_BITS - 1) // _DIGIT_BITS
    counts = np.zeros((passes, _DIGITS), dtype=np.int64)
    mask = np.uint64(_DIGITS - 1)
    for i in range(n):
        word = keys[i]
        for d in range(passes):
            counts[d, (word >> np.uint64(d * _DIGIT_BITS)) & mask] += 1
    src = keys.copy()
    dst = np.empty_like(keys)
    for d in range(passes):
        shift = np.uint64(d * _DIGIT_BITS)
        if counts[d, (src[0] >> shift) & mask] == n:  # one digit value: order unchanged
            continue
        at = np.empty(_DIGITS, dtype=np.int64)
        total = 0
        for v in range(_DIGITS):
            at[v] = total
            total += counts[d, v]
        for i in range(n):
            v = (src[i] >> shift) & mask
            dst[at[v]] = src[i]
            at[v] += 1
        src, dst = dst, src
    return src


@_njit
def _sort_block(order: I64, lo: int, hi: int, unit: U64, pair: U64, prio: U64, whole: bool) -> None:
    """Sort ``order[lo:hi]`` exactly by (unit, pair, priority, row) (``whole``) or by
    (priority, row): stable sorts from the last key to the first."""
    rows = np.sort(order[lo:hi])
    rows = rows[np.argsort(prio[rows], kind="mergesort")]
    if whole:
        rows = rows[np.argsort(pair[rows], kind="mergesort")]
        rows = rows[np.argsort(unit[rows], kind="mergesort")]
    order[lo:hi] = rows


@_njit
def _refresh(order: I64, lo: int, hi: int, unit: U64, pair: U64, units: U64, pairs: U64) -> None:
    """The unit and pair at positions ``lo:hi`` of ``order`` again, after a sort."""
    for m in range(lo, hi):
        units[m] = unit[order[m]]
        pairs[m] = pair[order[m]]


@_njit
def packed_rows(
    unit: U64, pair: U64, prio: U64, shared_bits: int, index_bits: int, pair_bits: int,
    prio_bits: int,
) -> U64:  # fmt: skip
    """``_bounding._packed_pairs`` before its sort: each row one 64-bit word, from the
    top the bits of its unit after the ``shared_bits``, of its pair key, of its priority,
    and its position."""
    n = unit.size
    unit_bits = 64 - index_bits - pair_bits - prio_bits
    packed = np.empty(n, dtype=np.uint64)
    for i in range(n):
        word = (unit[i] << np.uint64(shared_bits)) >> np.uint64(64 - unit_bits)
        word = (word << np.uint64(pair_bits)) | (pair[i] >> np.uint64(64 - pair_bits))
        word = (word << np.uint64(prio_bits)) | (prio[i] >> np.uint64(64 - prio_bits))
        packed[i] = (word << np.uint64(index_bits)) | np.uint64(i)
    return packed


@_njit
def kept_rows(
    unit: U64,
    pair: U64,
    prio: U64,
    shared_bits: int,
    index_bits: int,
    pair_bits: int,
    prio_bits: int,
    max_partitions: int,
    k: int,
) -> I64:
    """``_bounding._kept_rows``: :func:`packed_rows`, sorted by :func:`radix_sort`, then
    :func:`kept_in_sorted`."""
    widths = (index_bits, pair_bits, prio_bits)
    packed = radix_sort(packed_rows(unit, pair, prio, shared_bits, *widths))
    return kept_in_sorted(packed, unit, pair, prio, *widths, max_partitions, k)


@_njit
def kept_in_sorted(
    packed: U64,
    unit: U64,
    pair: U64,
    prio: U64,
    index_bits: int,
    pair_bits: int,
    prio_bits: int,
    max_partitions: int,
    k: int,
) -> I64:
    """The rows bounding keeps, from the rows' :func:`packed_rows` words sorted: one pass
    in that order. A run of rows sharing a unit prefix whose full (unit, pair) keys do not
    ascend (distinct units, or distinct pairs of one unit, sharing a prefix) is sorted
    exactly by (unit, pair, priority, row); each unit keeps its first ``max_partitions``
    pairs and each of them its first ``k`` rows, after the rows tied with the cut on their
    packed priority prefix are sorted exactly by (priority, row). The order and the choice
    of ``_bounding._kept_rows``."""
    n = packed.size
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    mask = (np.uint64(1) << np.uint64(index_bits)) - np.uint64(1)
    order = np.empty(n, dtype=np.int64)
    units = np.empty(n, dtype=np.uint64)  # unit and pair at each position: one gather
    pairs = np.empty(n, dtype=np.uint64)
    for i in range(n):
        row = np.int64(packed[i] & mask)
        order[i] = row
        units[i] = unit[row]
        pairs[i] = pair[row]
    # Runs sharing a unit prefix: exact wherever the full (unit, pair) keys ascend. In a
    # run of one unit, pairs of different prefixes are in order (a smaller prefix is a
    # smaller key), so only the sub-runs sharing a pair prefix may need sorting.
    pair_shift = np.uint64(index_bits + prio_bits)
    unit_shift = pair_shift + np.uint64(pair_bits)
    i = 0
    while i < n:
        prefix = packed[i] >> unit_shift
        j = i + 1
        ordered = True
        one_unit = True
        while j < n and (packed[j] >> unit_shift) == prefix:
            if units[j] != units[j - 1]:
                one_unit = False
            if units[j] < units[j - 1] or (units[j] == units[j - 1] and pairs[j] < pairs[j - 1]):
                ordered = False
            j += 1
        if not ordered and not one_unit:
            _sort_block(order, i, j, unit, pair, prio, True)
            _refresh(order, i, j, unit, pair, units, pairs)
        elif not ordered:
            lo = i
            while lo < j:
                sub = packed[lo] >> pair_shift
                hi = lo + 1
                ordered = True
                while hi < j and (packed[hi] >> pair_shift) == sub:
                    if pairs[hi] < pairs[hi - 1]:
                        ordered = False
                    hi += 1
                if not ordered:
                    _sort_block(order, lo, hi, unit, pair, prio, True)
                    _refresh(order, lo, hi, unit, pair, units, pairs)
                lo = hi
        i = j
    # L0 and Linf. The packed words at positions of a re-sorted run are stale, but there
    # every block of a pair is already in (priority, row) order: sorting one again
    # changes nothing.
    coarse_shift = np.uint64(index_bits)
    count = 0
    i = 0
    while i < n:
        u = units[i]
        rank = 0
        while i < n and units[i] == u:
            p = pairs[i]
            start = i
            i += 1
            while i < n and pairs[i] == p and units[i] == u:
                i += 1
            if rank < max_partitions:
                take = min(i - start, k)
                cut = start + k
                if k > 0 and i - start > k:
                    tie = packed[cut] >> coarse_shift
                    if tie == (packed[cut - 1] >> coarse_shift):
                        lo = cut - 1
                        while lo > start and (packed[lo - 1] >> coarse_shift) == tie:
                            lo -= 1
                        hi = cut + 1
                        while hi < i and (packed[hi] >> coarse_shift) == tie:
                            hi += 1
                        _sort_block(order, lo, hi, unit, pair, prio, False)
                out[count : count + take] = order[start : start + take]
                count += take
            rank += 1
    return out[:count]


@_njit
def _bit_length(x: int) -> int:
    bits = 0
    while x > 0:
        x >>= 1
        bits += 1
    return bits


@_njit
def bucket_bytes(unit: U64, bits: int) -> npt.NDArray[np.uint8]:
    """The top ``bits`` bits (at most 8) of each unit: its bucket."""
    bucket = np.zeros(unit.size, dtype=np.uint8)
    if bits > 0:  # (a shift by 64 would be undefined)
        top = np.uint64(64 - bits)
        for i in range(unit.size):
            bucket[i] = np.uint8(unit[i] >> top)
    return bucket


@_njit
def group_rows(
    bucket: npt.NDArray[np.uint8], group: int, inner_bits: int, unit: U64, pair: U64, prio: U64
) -> tuple[I64, U64, U64, U64, I64]:
    """The rows whose bucket's top bits (above ``inner_bits``) are ``group``, by bucket
    (a counting sort; input order within each): their positions, units, pair keys and
    priorities, and where each bucket starts (and the end)."""
    n = unit.size
    inner = 1 << inner_bits
    inner_mask = inner - 1
    starts = np.zeros(inner + 1, dtype=np.int64)
    for i in range(n):
        v = np.int64(bucket[i])
        if v >> inner_bits == group:
            starts[(v & inner_mask) + 1] += 1
    for b in range(inner):
        starts[b + 1] += starts[b]
    size = starts[inner]
    at = starts[:inner].copy()
    rows = np.empty(size, dtype=np.int64)
    units = np.empty(size, dtype=np.uint64)
    pairs = np.empty(size, dtype=np.uint64)
    prios = np.empty(size, dtype=np.uint64)
    for i in range(n):
        v = np.int64(bucket[i])
        if v >> inner_bits == group:
            j = at[v & inner_mask]
            at[v & inner_mask] = j + 1
            rows[j] = i
            units[j] = unit[i]
            pairs[j] = pair[i]
            prios[j] = prio[i]
    return rows, units, pairs, prios, starts


@_njit
def packed_widths(n: int) -> tuple[int, int, int]:
    """``_bounding._packed_widths``."""
    index_bits = max(1, _bit_length(n - 1))
    coarse_bits = 64 - index_bits
    return index_bits, coarse_bits * 3 // 10, coarse_bits // 5


@_njit
def bound_buckets(
    unit: U64, pair: U64, prio: U64, bits: int, outer: int, max_partitions: int, k: int
) -> npt.NDArray[np.bool_]:
    """``_bounding.bound_contributions`` of more rows than one bucket: the rows split by
    the top ``bits`` bits of their unit, each bucket bounded by :func:`kept_rows`. The
    buckets of one of the ``2**outer`` groups are gathered at once (:func:`group_rows`),
    so that temporaries stay a group's size."""
    keep = np.zeros(unit.size, dtype=np.bool_)
    bucket = bucket_bytes(unit, bits)
    for g in range(1 << outer):
        rows, units, pairs, prios, starts = group_rows(bucket, g, bits - outer, unit, pair, prio)
        for b in range(starts.size - 1):
            lo, hi = starts[b], starts[b + 1]
            m = hi - lo
            if m == 0:
                continue
            index_bits, pair_bits, prio_bits = packed_widths(m)
            kept = kept_rows(
                units[lo:hi], pairs[lo:hi], prios[lo:hi], bits, index_bits, pair_bits,
                prio_bits, min(max_partitions, m), min(k, m),
            )  # fmt: skip
            for r in kept:
                keep[rows[lo + r]] = True
    return keep
