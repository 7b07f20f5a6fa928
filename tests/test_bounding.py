"""Contribution bounding: limits always hold, the choice is exact bottom-k, order-free."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies import colliding_rows

from telemagg import _bounding
from telemagg._bounding import bottom_k, bound_contributions


def reference_bound(unit, pair, prio, max_partitions, max_contributions) -> set[int]:
    """Row indices kept, by the definition: per unit the L0 pairs with the smallest pair
    keys, in each the Linf events with the smallest priorities (Python, slow, obvious)."""
    rows_of_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (u, p) in enumerate(zip(unit.tolist(), pair.tolist(), strict=True)):
        rows_of_pair[(u, p)].append(i)
    pairs_of_unit: dict[int, list[int]] = defaultdict(list)
    for u, p in rows_of_pair:
        pairs_of_unit[u].append(p)
    kept = set()
    for u, pairs in pairs_of_unit.items():
        for p in sorted(pairs)[:max_partitions]:
            rows = sorted(rows_of_pair[(u, p)], key=lambda i: int(prio[i]))
            kept.update(rows[:max_contributions])
    return kept


def random_rows(rng: np.random.Generator, n: int, n_units: int, n_parts: int):
    unit = rng.integers(0, n_units, n).astype(np.uint64)
    part = rng.integers(0, n_parts, n).astype(np.uint64)
    pair = (unit * np.uint64(1_000_003) + part * np.uint64(7919)) * np.uint64(0x9E3779B97F4A7C15)
    prio = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    return unit, pair, prio


@given(rows=colliding_rows(), l0=st.integers(1, 3), linf=st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_kernel_matches_reference_even_on_collisions_and_ties(rows, l0, linf) -> None:
    unit, pair, prio = rows
    keep = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
    assert set(np.flatnonzero(keep).tolist()) == reference_bound(unit, pair, prio, l0, linf)


@st.composite
def adversarial_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows crafted against the packed sort: pair keys and units sharing all but their low
    bits, priorities tying in their top bits or exactly, and (sometimes) two units sharing
    a pair key."""
    n = draw(st.integers(1, 150))
    small = st.integers(0, 6)
    pair_base = draw(st.integers(0, 2**64 - 1)) & ~(2**20 - 1)
    unit_base = draw(st.integers(0, 2**64 - 1)) & ~(2**20 - 1)
    pair_low = draw(st.lists(small, min_size=n, max_size=n))
    unit_of_pair = {p: draw(st.integers(0, 3)) for p in set(pair_low)}
    shared = draw(st.booleans())
    unit_low = [
        draw(st.integers(0, 3)) if shared and draw(st.booleans()) else unit_of_pair[p]
        for p in pair_low
    ]
    top = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    low_range = draw(st.sampled_from([3, 2**40, 2**52]))
    low = draw(st.lists(st.integers(0, low_range), min_size=n, max_size=n))
    pair = np.asarray([pair_base + p for p in pair_low], dtype=np.uint64)
    unit = np.asarray([unit_base + u for u in unit_low], dtype=np.uint64)
    prio = np.asarray([(t << 61) | lo for t, lo in zip(top, low, strict=True)], dtype=np.uint64)
    return unit, pair, prio


@given(rows=adversarial_rows(), l0=st.integers(1, 4), linf=st.integers(1, 4))
@settings(max_examples=400, deadline=None)
def test_kernel_matches_reference_on_adversarial_rows(rows, l0, linf) -> None:
    unit, pair, prio = rows
    keep = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
    assert set(np.flatnonzero(keep).tolist()) == reference_bound(unit, pair, prio, l0, linf)


@given(
    seed=st.integers(0, 2**32 - 1),
    group_shift=st.integers(0, 63),
    prio_shift=st.integers(0, 63),
    k=st.integers(1, 6),
)
@settings(max_examples=80, deadline=None)
def test_bottom_k_matches_sorting_with_collisions_and_ties(
    seed, group_shift, prio_shift, k
) -> None:
    """Groups and priorities with only their low bits random (so group prefixes collide or
    priorities tie, in their top bits or exactly); ties are broken by row position, like a
    stable sort."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    pool = rng.integers(0, 2**64, int(rng.integers(1, 400)), dtype=np.uint64, endpoint=False)
    group = pool[rng.integers(0, pool.size, n)] >> np.uint64(group_shift)
    prio = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False) >> np.uint64(prio_shift)
    order = np.lexsort((np.arange(n), prio, group))
    g = group[order]
    start = np.ones(n, dtype=bool)
    start[1:] = g[1:] != g[:-1]
    idx = np.arange(n)
    rank = idx - np.maximum.accumulate(np.where(start, idx, 0))
    expected = np.zeros(n, dtype=bool)
    expected[order] = rank < k
    assert bottom_k(group, prio, k).tolist() == expected.tolist()


@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 4),
    low_groups=st.integers(1, 4),
)
@settings(max_examples=150, deadline=None)
def test_group_starts_after_clash_resorts_match_a_full_recount(n, seed, k, low_groups) -> None:
    """Groups sharing their packed prefix (they differ in low bits only) force the exact
    re-sort of their runs; the starts updated there equal a full recount, and the order is
    the exact (group, priority, position) order wherever groups are concerned."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n).astype(np.uint64) << np.uint64(62)
    group |= rng.integers(0, low_groups, n).astype(np.uint64)
    priority = rng.integers(0, 4, n).astype(np.uint64) << np.uint64(60)
    order, starts, firsts = _bounding._sorted_groups(group, priority, k)
    assert starts.tolist() == _bounding._group_starts(group, order).tolist()
    exact = np.lexsort((np.arange(n), priority, group))
    assert group[order].tolist() == group[exact].tolist()
    assert firsts.tolist() == group[order[starts]].tolist()


@given(seed=st.integers(0, 2**32 - 1), l0=st.integers(1, 5), linf=st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_no_unit_exceeds_either_limit_and_bounds_are_tight(seed, l0, linf) -> None:
    rng = np.random.default_rng(seed)
    unit, pair, prio = random_rows(rng, 2000, 40, 12)
    keep = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
    kept_pairs: dict[int, set[int]] = defaultdict(set)
    per_pair: dict[tuple[int, int], int] = defaultdict(int)
    for u, p in zip(unit[keep].tolist(), pair[keep].tolist(), strict=True):
        kept_pairs[u].add(p)
        per_pair[(u, p)] += 1
    assert all(len(ps) <= l0 for ps in kept_pairs.values())
    assert all(n <= linf for n in per_pair.values())
    # ... and nothing is dropped that the bounds allow to keep
    assert set(np.flatnonzero(keep).tolist()) == reference_bound(unit, pair, prio, l0, linf)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_kept_set_does_not_depend_on_input_order(seed) -> None:
    rng = np.random.default_rng(seed)
    unit, pair, prio = random_rows(rng, 500, 10, 6)
    keep = bound_contributions(unit, pair, prio, max_partitions=2, max_contributions=3)
    perm = rng.permutation(unit.size)
    keep_perm = bound_contributions(
        unit[perm], pair[perm], prio[perm], max_partitions=2, max_contributions=3
    )
    assert set(perm[keep_perm].tolist()) == set(np.flatnonzero(keep).tolist())


def test_bottom_k_keeps_smallest_priorities_per_group() -> None:
    group = np.array([5, 5, 5, 5, 6, 6], dtype=np.uint64)
    prio = np.array([40, 10, 30, 20, 2, 1], dtype=np.uint64)
    assert bottom_k(group, prio, 2).tolist() == [False, True, False, True, True, True]


def test_empty_input_keeps_nothing() -> None:
    empty = np.zeros(0, dtype=np.uint64)
    kept = bound_contributions(empty, empty, empty, max_partitions=1, max_contributions=1)
    assert kept.size == 0


def test_units_sharing_a_pair_key_are_bounded_apart_even_when_interleaved() -> None:
    """Units 1 and 2 share pair key 50 (a 64-bit collision); by priority their rows
    interleave 1, 2, 1, so the group starts and ends with unit 1. Unit 2 must still keep
    only max_partitions = 1 pair, not ride along in unit 1's group."""
    unit = np.array([1, 2, 1, 2], dtype=np.uint64)
    pair = np.array([50, 50, 50, 60], dtype=np.uint64)
    prio = np.array([1, 2, 3, 1], dtype=np.uint64)
    keep = bound_contributions(unit, pair, prio, max_partitions=1, max_contributions=3)
    assert set(np.flatnonzero(keep).tolist()) == reference_bound(unit, pair, prio, 1, 3)
    assert keep.tolist() == [True, True, True, False]


def test_huge_limits_cost_no_more_than_the_data() -> None:
    """Issue 10: max_contributions=10**7 on 40 events took 27.7 s and 2.1 GB (a loop over
    k); max_partitions=2**62 exhausted memory. Work is O(rows) whatever the limits."""
    rng = np.random.default_rng(3)
    unit, pair, prio = random_rows(rng, 40, 4, 3)
    for l0, linf in [(1, 10**7), (2**62, 1), (2**62, 2**62), (2**80, 2**80)]:
        start = time.perf_counter()
        keep = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
        assert time.perf_counter() - start < 1.0
        assert set(np.flatnonzero(keep).tolist()) == reference_bound(unit, pair, prio, l0, linf)
    assert bottom_k(pair, prio, 2**70).all()


_GOLDEN = 0x9E3779B97F4A7C15


@st.composite
def nested_prefix_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows against the one sort by (unit, pair, priority) prefixes: units sharing their
    top ``shared`` bits (a bucket's) and, often, the unit prefix after them; pair keys of a
    unit sharing their prefix, or shared by two units; priorities tying in their prefix or
    exactly; a few huge groups (one unit with many pairs, one pair with many events) beside
    single rows."""
    shared = draw(st.sampled_from([0, 0, 3, 6]))
    n = draw(st.integers(1, 400))
    top = draw(st.integers(0, 2**shared - 1)) << (64 - shared) if shared else 0

    unit_base = top | (draw(st.integers(0, 2 ** (64 - shared) - 1)) & ~0xFF)
    units = [
        unit_base | draw(st.integers(0, 7))
        if draw(st.booleans())
        else top | draw(st.integers(0, 2 ** (64 - shared) - 1))
        for _ in range(draw(st.integers(1, 6)))
    ]
    pair_base = draw(st.integers(0, 2**64 - 1)) & ~0xFFFF
    pairs = [
        pair_base | draw(st.integers(0, 2**16 - 1))
        if draw(st.booleans())
        else draw(st.integers(0, 2**64 - 1))
        for _ in range(draw(st.integers(1, 12)))
    ]
    skew = draw(st.sampled_from([0.0, 0.9]))  # 0.9: most rows in one (unit, pair)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    hot = rng.random(n) < skew
    unit = np.asarray(units, dtype=np.uint64)[rng.integers(0, len(units), n)]
    pair = np.asarray(pairs, dtype=np.uint64)[rng.integers(0, len(pairs), n)]
    unit[hot], pair[hot] = unit[0], pair[0]
    if draw(st.booleans()):  # each unit its own keys: units sharing a prefix interleave
        pair ^= unit * np.uint64(_GOLDEN)
    tie_shift = draw(st.sampled_from([0, 40, 56, 61]))
    prio = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    prio >>= np.uint64(tie_shift)  # shifted: prefixes tie (and, at 61, values too)
    if tie_shift:
        prio |= rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63)
    return unit, pair, prio, shared


@given(rows=nested_prefix_rows(), l0=st.integers(1, 5), linf=st.integers(1, 5))
@settings(max_examples=500, deadline=None)
def test_one_sort_kernel_matches_the_exact_reference(rows, l0, linf) -> None:
    """The one-sort kernel (both levels from one packed sort, prefix clashes re-sorted)
    keeps exactly the rows of the lexsort reference, ties broken by position."""
    unit, pair, prio, shared = rows
    exact = _bounding._bound_exactly(unit, pair, prio, l0, linf)
    assert _bounding._bound(unit, pair, prio, l0, linf, shared).tolist() == exact.tolist()
    assert (
        bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf).tolist()
        == exact.tolist()
    )


@st.composite
def clashing_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units (and pair keys, unless ``random_pairs``) random in their low ``low_bits`` bits
    only, so nearly every group shares its prefix with another and the re-sorted runs are
    many and large; with random pair keys, units sharing a prefix interleave by pair."""
    n, units = draw(st.integers(1, 3000)), draw(st.integers(1, 40))
    low_bits, random_pairs = draw(st.integers(1, 16)), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.integers(0, 2**64, 2, dtype=np.uint64, endpoint=False) >> np.uint64(16)
    base <<= np.uint64(16)
    low = np.uint64(2**low_bits)
    unit = base[0] | rng.integers(0, units, n, dtype=np.uint64) % low
    pair = base[1] | rng.integers(0, 2**16, n, dtype=np.uint64) % low
    if random_pairs:  # a unit's own keys (a pair key shared by two units is a pair clash)
        pair = (unit * np.uint64(1_000_003) + pair % np.uint64(12)) * np.uint64(_GOLDEN)
    prio = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False) >> np.uint64(50)
    return unit, pair, prio


@given(rows=clashing_rows(), l0=st.integers(1, 4), linf=st.integers(1, 4))
@settings(max_examples=120, deadline=None)
def test_one_sort_kernel_matches_the_reference_on_many_prefix_clashes(rows, l0, linf) -> None:
    unit, pair, prio = rows
    keep = _bounding._bound(unit, pair, prio, l0, linf)
    assert keep.tolist() == _bounding._bound_exactly(unit, pair, prio, l0, linf).tolist()
