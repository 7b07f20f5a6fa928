"""The bounded state: independent of order, batching and sharding; uniform sampling."""

from __future__ import annotations

import itertools
from collections import Counter
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from tests.strategies import event_rows, policies

import telemagg as tm
from telemagg import _state
from telemagg._plan import UNIT_COUNT
from telemagg._state import CONTRIBUTION_BOUNDS, State
from telemagg.testing import seeded


def exact(agg: tm.Aggregator) -> dict[tuple, tuple[int, int]]:
    """Noise-free (events, distinct units) per partition key, from the state (white-box)."""
    state = agg._state
    out = {}
    for pid, key in enumerate(agg._partitions.keys):
        rows = state.partition == pid
        out[key] = (int(rows.sum()), len(set(state.unit_id[rows].tolist())))
    return {k: v for k, v in out.items() if v[0]}


def split(data: dict[str, np.ndarray], cuts: list[int]) -> list[dict[str, np.ndarray]]:
    bounds = [0, *sorted(cuts), data["user"].size]
    return [{k: v[a:b] for k, v in data.items()} for a, b in itertools.pairwise(bounds)]


@given(
    data=event_rows(),
    policy=policies,
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 120), max_size=4),
    order_seed=st.integers(0, 2**16),
    floor=st.sampled_from([0, 5, _state._MIN_PENDING_ROWS]),
)
@settings(max_examples=80, deadline=None)
def test_counts_do_not_depend_on_order_batching_or_sharding(
    data, policy, seed, cuts, order_seed, floor
) -> None:
    """Which partitions a unit keeps is a keyed function of (unit, partition) and how many
    events a pair keeps is min(n, max_contributions): so per-partition counts and unit
    counts are the same whatever the order, batching or sharding of the same events, and
    whenever the lazily absorbed rows get bounded (``floor``)."""
    with mock.patch.object(_state, "_MIN_PENDING_ROWS", floor):
        check_order_batching_and_sharding(data, policy, seed, cuts, order_seed)


def check_order_batching_and_sharding(data, policy, seed, cuts, order_seed) -> None:
    metrics = [tm.count()]
    whole = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(seed))
    whole.add(data)

    perm = np.random.default_rng(order_seed).permutation(data["user"].size)
    shuffled = {k: v[perm] for k, v in data.items()}
    streamed = tm.Aggregator(policy=policy, by="event", metrics=metrics, randomness=seeded(seed))
    shards = [streamed.spawn() for _ in range(2)]
    for i, part in enumerate(split(shuffled, [c % (data["user"].size + 1) for c in cuts])):
        target = streamed if i % 3 == 0 else shards[i % 2]
        target.add(part)
    collector = streamed.spawn()  # empty: takes one bounded state as it is
    collector.merge(shards[0])
    streamed.merge(collector, shards[1])  # several states in one bounding pass

    assert exact(streamed) == exact(whole)
    assert streamed._state.received == whole._state.received == data["user"].size
    # the release's unit counts are these distinct-unit counts
    units = UNIT_COUNT.compute(whole._state, len(whole._partitions))[:, 0]
    for key, (_, distinct) in exact(whole).items():
        assert units[whole._partitions.find(key)] == distinct


def kept_value_histogram(n_batches: int, trials: int, seed0: int) -> np.ndarray:
    """Which of one unit's 20 events (values 0..19) survives max_contributions=1."""
    policy = tm.Policy(privacy_unit="user", max_contributions=1)
    values = np.arange(20.0)
    counts = np.zeros(20, dtype=np.int64)
    for trial in range(trials):
        agg = tm.Aggregator(
            policy=policy,
            by="event",
            metrics=[tm.sum("v", bounds=(0, 20))],
            randomness=seeded(seed0 + trial),
        )
        for chunk in np.array_split(values, n_batches):
            agg.add(
                {
                    "user": np.zeros(chunk.size, np.int64),
                    "event": np.zeros(chunk.size, np.int64),
                    "v": chunk,
                }
            )
        (kept,) = agg._state.numeric["v"].tolist()
        counts[int(kept)] += 1
    return counts


@pytest.mark.slow
def test_kept_events_are_uniform_whatever_the_batching() -> None:
    """Never first-N: over many seeds each of a unit's events is kept equally often, whether
    its events arrive at once or over 10 add() calls (chi-square at alpha 1e-3)."""
    for n_batches in (1, 10):
        counts = kept_value_histogram(n_batches, trials=2000, seed0=n_batches * 10_000)
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    # and the test can fail: a first-N rule would keep value 0 every time
    assert stats.chisquare(np.array([2000] + [0] * 19)).pvalue < 1e-3


def test_a_unit_over_ten_batches_moves_counts_by_at_most_l0_linf() -> None:
    policy = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3)
    rng = np.random.default_rng(0)
    base = {"user": rng.integers(0, 200, 4000), "event": rng.integers(0, 5, 4000)}
    heavy = {"user": np.full(3000, 10_000), "event": rng.integers(0, 5, 3000)}
    without = tm.Aggregator(policy=policy, by="event", metrics=[tm.count()], randomness=seeded(1))
    without.add(base)
    with_heavy = tm.Aggregator(
        policy=policy, by="event", metrics=[tm.count()], randomness=seeded(1)
    )
    with_heavy.add(base)
    for chunk in split(heavy, [300 * i for i in range(1, 10)]):
        with_heavy.add(chunk)
    a, b = exact(without), exact(with_heavy)
    moved = sum(abs(b[k][0] - a.get(k, (0, 0))[0]) for k in b)
    assert 0 < moved <= 2 * 3


def state_rows(n: int, n_units: int, n_parts: int, seed: int) -> State:
    """``n`` raw rows; numeric column ``row`` holds each row's index, to name it later."""
    rng = np.random.default_rng(seed)
    unit = rng.integers(0, n_units, n).astype(np.uint64)
    partition = rng.integers(0, n_parts, n)
    with np.errstate(over="ignore"):
        pair = (unit * np.uint64(1_000_003) + partition.astype(np.uint64)) * np.uint64(
            0x9E3779B97F4A7C15
        )
    return State(
        unit_id=unit,
        partition=partition,
        pair_key=pair,
        event_priority=rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False),
        numeric={"row": np.arange(n, dtype=np.float64)},
        categorical={},
        received=n,
    )


def batches_of(rows: State, cuts: list[int]) -> list[State]:
    bounds = [0, *sorted(cuts), len(rows)]
    out = []
    for a, b in itertools.pairwise(bounds):
        mask = np.zeros(len(rows), dtype=bool)
        mask[a:b] = True
        part = rows.select(mask)
        part.received = b - a
        out.append(part)
    return out


@given(
    n=st.integers(0, 400),
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    floor=st.integers(0, 64),
    l0=st.integers(1, 3),
    linf=st.integers(1, 3),
)
@settings(max_examples=100, deadline=None)
def test_lazy_absorb_equals_one_shot_bounding(n, seed, cuts, floor, l0, linf) -> None:
    """However the rows are batched and whenever the pending rows get bounded (the floor
    decides), the state holds exactly the rows one bounding pass keeps, with the same
    accounting."""
    rows = state_rows(n, 12, 5, seed)
    limits = {"max_partitions": l0, "max_contributions": linf}
    with mock.patch.object(_state, "_MIN_PENDING_ROWS", floor):
        once = State.empty(["row"]).absorb(rows, **limits)
        streamed = State.empty(["row"])
        for batch in batches_of(rows, [c % (n + 1) for c in cuts]):
            streamed = streamed.absorb(batch, **limits)
            assert streamed.rows_held <= len(rows)
    assert sorted(streamed.numeric["row"].tolist()) == sorted(once.numeric["row"].tolist())
    assert (
        (streamed.received, streamed.dropped)
        == (once.received, once.dropped)
        == (
            n,
            Counter({CONTRIBUTION_BOUNDS: n - len(once)} if n > len(once) else {}),
        )
    )


@pytest.mark.parametrize("floor", [0, 1000, _state._MIN_PENDING_ROWS])
def test_a_long_stream_holds_at_most_three_times_the_bounds_plus_a_batch(floor) -> None:
    """Memory stays within (1 + ratio) x units x max_partitions x max_contributions plus
    one batch (and the pending floor), whatever the stream's length: the pending rows are
    bounded once they reach ratio (2) times the bounded ones."""
    assert _state._PENDING_RATIO == 2
    units, l0, linf, batch = 20, 2, 3, 500
    cap = units * l0 * linf
    held = []
    with mock.patch.object(_state, "_MIN_PENDING_ROWS", floor):
        state = State.empty(["row"])
        for i in range(300):  # 150k events, 250x the bounded state
            state = state.absorb(
                state_rows(batch, units, 4, seed=i), max_partitions=l0, max_contributions=linf
            )
            held.append(state.rows_held)
            assert state.rows_held <= 3 * cap + batch + floor
    assert len(state) <= cap
    assert state.received == 300 * batch
    assert state.rows_held == len(state)  # reading it bounded the pending rows
    if floor > batch:
        assert max(held) > 2 * cap  # pending rows did wait (absorb is lazy)


def test_state_keeps_no_view_of_the_callers_arrays() -> None:
    """Rows wait unbounded between add calls: a caller reusing its buffer for the next
    batch must not change them (ingest passes float64 columns through without a copy)."""
    policy = tm.Policy(privacy_unit="user", max_contributions=5)
    buffer = {"user": np.arange(10), "event": np.zeros(10, np.int64), "v": np.arange(10.0)}
    agg = tm.Aggregator(
        policy=policy, by="event", metrics=[tm.sum("v", bounds=(0, 100))], randomness=seeded(0)
    )
    agg.add(buffer)
    buffer["v"][:] = 99.0  # the caller refills its buffer
    assert agg._state.rows_held == 10
    assert sorted(agg._state.numeric["v"].tolist()) == list(range(10))
