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
    if n == 0:
        return keys.copy()
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


# --------------------------------------------------------------------------- BLAKE2b

_IV = np.array(
    [
        0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
        0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)  # fmt: skip
_SIGMA = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ],
    dtype=np.int64,
)


@numba.njit(inline="always")
def _rotr(x: np.uint64, n: int) -> np.uint64:
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(inline="always")
def _mix(
    a: np.uint64, b: np.uint64, c: np.uint64, d: np.uint64, x: np.uint64, y: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """BLAKE2b's G (RFC 7693, section 3.1) on four state words (kept in registers)."""
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@_njit
def _compress(h: U64, m: U64, t: int, last: bool) -> None:
    """BLAKE2b's compression function F (RFC 7693, section 3.2) of ``h``, in place."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = _IV[0], _IV[1], _IV[2], _IV[3]
    v12 = _IV[4] ^ np.uint64(t)  # messages here are far below 2**64 bytes: high word 0
    v13, v14, v15 = _IV[5], _IV[6], _IV[7]
    if last:
        v14 = ~v14
    for r in range(12):
        s = _SIGMA[r % 10]
        v0, v4, v8, v12 = _mix(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _mix(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _mix(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _mix(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _mix(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _mix(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _mix(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _mix(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@_njit
def blake2b_64(data: npt.NDArray[np.uint8], starts: I64, ends: I64) -> U64:
    """``hashlib.blake2b(data[start:end], digest_size=8)`` of each piece, its digest read
    as a little-endian word (``_key_index._text_hashes``): BLAKE2b without a key, 8-byte
    digest (RFC 7693), one piece after another."""
    out = np.empty(starts.size, dtype=np.uint64)
    h = np.empty(8, dtype=np.uint64)
    block = np.zeros(128, dtype=np.uint8)
    m = block.view(np.uint64)  # little-endian words (x86, ARM)
    for i in range(starts.size):
        h[:] = _IV
        h[0] ^= np.uint64(0x01010000 | 8)  # depth 1, fanout 1, no key, 8-byte digest
        pos, end = starts[i], ends[i]
        t = 0
        while end - pos > 128:  # every block but the last
            block[:] = data[pos : pos + 128]
            t += 128
            _compress(h, m, t, False)
            pos += 128
        block[:] = 0
        block[: end - pos] = data[pos:end]
        t += end - pos
        _compress(h, m, t, True)
        out[i] = h[0]
    return out
