"""Tumbling windows on the operator's clock: the grid, the schedule, late and future events,
empty windows, partial ledger refusals, merge and pickling."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.releases import published
from tests.strategies import event_rows

import telemagg as tm
from telemagg.testing import seeded

HOUR = 3600
POLICY = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=2)


def hourly(agg_kwargs: dict | None = None, seed: int = 0) -> tm.Aggregator:
    kwargs = {"start": 0, "randomness": seeded(seed), **(agg_kwargs or {})}
    return tm.Aggregator(
        policy=POLICY,
        by="event",
        metrics=[tm.count(), tm.unit_count()],
        window="1h",
        time="t",
        **kwargs,
    )


def batch(hour: float, n_users: int = 500, start_user: int = 0) -> dict[str, np.ndarray]:
    users = np.arange(start_user, start_user + n_users)
    return {
        "user": np.repeat(users, 3),
        "event": np.full(3 * n_users, "open", dtype=object),
        "t": np.full(3 * n_users, hour * HOUR + 60.0),
    }


def starts(releases: list[tm.Release]) -> list[str]:
    return [r.metadata["window"]["start"] for r in releases]


def adds_up(agg: tm.Aggregator) -> bool:
    acc = agg.accounting()
    return acc.received == acc.aggregated + acc.pending + sum(acc.dropped.values())


# --------------------------------------------------------------------------- schedule


def test_closed_windows_are_released_one_by_one_and_open_ones_wait() -> None:
    agg = hourly()
    for hour in (0, 1, 2.5):
        agg.add(batch(hour), now=(hour + 0.1) * HOUR)
    releases = agg.release_closed(1.0, 1e-6, now=2.6 * HOUR)  # hours 0 and 1 have closed
    assert starts(releases) == ["1970-01-01T00:00:00+00:00", "1970-01-01T01:00:00+00:00"]
    for release in releases:
        # bounding is per window: 500 users x 2 events each
        assert release.accounting.received == 1500
        assert release.accounting.dropped["contribution_bounds"] == 500
    assert agg.accounting().pending == 1000
    (last,) = agg.release_closed(1.0, 1e-6, flush=True, now=2.6 * HOUR)
    assert last.metadata["window"]["end"] == "1970-01-01T03:00:00+00:00"
    acc = agg.accounting()
    assert (acc.received, acc.aggregated, acc.pending) == (4500, 3000, 0)
    assert adds_up(agg)


def test_windows_without_events_are_released_too() -> None:
    """The number of releases depends on the clock only: hours 1 and 2 saw no event and are
    released all the same (public partitions: noisy zeros; private: empty tables)."""
    public = hourly({"partitions": ["open"]})
    private = hourly()
    for agg in (public, private):
        agg.add(batch(0), now=0.5 * HOUR)
    noisy = public.release_closed(1.0, now=3 * HOUR)
    assert starts(noisy) == [f"1970-01-01T0{h}:00:00+00:00" for h in range(3)]
    assert [len(r) for r in noisy] == [1, 1, 1]
    assert abs(noisy[1].to_pandas()["count"][0]) < 60  # noise of scale 4 / 0.5 around 0
    empty = private.release_closed(1.0, 1e-6, now=3 * HOUR)
    assert starts(empty) == starts(noisy)
    assert [len(r) for r in empty] == [1, 0, 0]
    assert list(empty[2].to_pandas().columns) == list(empty[0].to_pandas().columns)


def test_each_window_is_released_exactly_once_across_calls() -> None:
    agg = hourly()
    seen: list[str] = []
    for now in (0.5, 1.0, 1.0, 1.99, 4.0, 4.0, 3.0, 6.5):  # the clock may even step back
        agg.add(batch(now - 0.5, n_users=20), now=now * HOUR)
        seen += starts(agg.release_closed(1.0, 1e-6, now=now * HOUR))
    assert seen == [f"1970-01-01T0{h}:00:00+00:00" for h in range(6)]
    assert adds_up(agg)


def test_flush_releases_the_window_containing_now_and_later_events_for_it_are_late() -> None:
    agg = hourly()
    agg.add(batch(0.2), now=0.5 * HOUR)
    assert agg.release_closed(1.0, 1e-6, now=0.5 * HOUR) == []
    (flushed,) = agg.release_closed(1.0, 1e-6, flush=True, now=0.5 * HOUR)
    assert flushed.accounting.received == 1500
    agg.add(batch(0.3, n_users=10), now=0.6 * HOUR)
    assert agg.accounting().dropped["late"] == 30
    assert agg.release_closed(1.0, 1e-6, flush=True, now=0.7 * HOUR) == []


def test_late_events() -> None:
    agg = hourly({"allowed_lateness": "10m", "start": HOUR})
    agg.add(batch(0.5, n_users=4), now=1.2 * HOUR)  # before start
    agg.add(batch(1), now=2.1 * HOUR)  # hour 1 closes at 02:10: accepted
    agg.add(batch(1, n_users=10, start_user=9000), now=2.2 * HOUR)  # closed, not yet released
    assert agg.accounting().dropped["late"] == 12 + 30
    (hour1,) = agg.release_closed(1.0, 1e-6, now=2.2 * HOUR)
    assert hour1.accounting.received == 1500
    agg.add(batch(1, n_users=5, start_user=7000), now=2.2 * HOUR)  # already released
    assert agg.accounting().dropped["late"] == 12 + 30 + 15
    assert adds_up(agg)


# --------------------------------------------------------------------------- neighbours


def test_a_unit_from_the_future_changes_no_schedule_and_makes_nobody_late(tmp_path: Path) -> None:
    """Issue 9 hole 2: one unit's event stamped 10 hours ahead neither creates a release nor
    makes the other units' events late; what is published is identical for D and D'."""

    def run(skewed: bool) -> tuple[list[tm.Release], tm.Aggregator]:
        agg = hourly({"allowed_lateness": "10m"}, seed=4)
        if skewed:
            agg.add({"user": [10**6], "event": ["open"], "t": [10.5 * HOUR]}, now=0.2 * HOUR)
        agg.add(batch(0.5), now=0.6 * HOUR)  # 500 units, after the skewed event
        return agg.release_closed(1.0, 1e-6, now=11 * HOUR), agg

    d, agg_d = run(skewed=False)
    d_prime, agg_d_prime = run(skewed=True)
    assert starts(d) == starts(d_prime)
    assert len(d) == 10  # hours 0 .. 9: 11:00 is 10 minutes short of closing hour 10
    assert [published(r, tmp_path) for r in d] == [published(r, tmp_path) for r in d_prime]
    assert d[0].accounting == d_prime[0].accounting  # nobody's events became late
    assert agg_d_prime.accounting().dropped["future"] == 1
    assert agg_d.accounting().dropped["late"] == agg_d_prime.accounting().dropped["late"] == 0


@settings(max_examples=25, deadline=None)
@given(
    times=st.lists(st.floats(-3 * HOUR, 30 * HOUR, allow_nan=False), min_size=1, max_size=8),
    clock=st.lists(st.floats(0, 12 * HOUR), min_size=1, max_size=4),
    flush=st.booleans(),
)
def test_the_released_windows_are_a_function_of_the_clock_only(
    times: list[float], clock: list[float], flush: bool
) -> None:
    """D and D' = D + one unit with events at arbitrary times: the same windows are
    released, and exactly the ones the grid schedules at each ``now``."""
    nows = np.maximum.accumulate(clock).tolist()

    def run(extra: bool) -> list[list[str]]:
        agg = hourly({"allowed_lateness": "5m"}, seed=1)
        calls = []
        for now in nows:
            agg.add(batch(now / HOUR, n_users=3), now=now)
            if extra:
                agg.add({"user": [7] * len(times), "event": ["x"] * len(times), "t": times}, now)
            calls.append(starts(agg.release_closed(1.0, 1e-6, flush=flush, now=now)))
        return calls

    released = run(extra=False)
    assert released == run(extra=True)
    last = (nows[-1] // HOUR) if flush else (nows[-1] - 300) // HOUR - 1
    expected = [
        dt.datetime.fromtimestamp(h * HOUR, dt.UTC).isoformat() for h in range(int(last) + 1)
    ]
    assert [s for call in released for s in call] == expected


# --------------------------------------------------------------------------- ledger


def test_a_refused_window_and_later_ones_stay_pending(sqlite_url: str) -> None:
    """Issue 9 hole 9: windows released before the refusal stay released (and say so);
    the refused window and later ones are released by a later call with budget."""
    ledger = tm.Ledger(sqlite_url, epsilon=2.5, delta=1e-5)
    agg = tm.Aggregator(
        policy=POLICY, by="event", metrics=[tm.count()], window="1h", time="t", start=0
    )
    for hour in (0, 1, 3):  # hour 2 is empty
        agg.add(batch(hour), now=3.5 * HOUR)
    with pytest.raises(tm.BudgetExceededError) as info:
        agg.release_closed(1.0, 1e-6, ledger=ledger, now=4 * HOUR)
    message = str(info.value)
    assert "released 2 window(s) before this error" in message
    assert "window 1970-01-01T02:00:00+00:00 to 1970-01-01T03:00:00+00:00" in message
    assert "1 later due window(s)" in message
    assert starts(info.value.released) == [
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T01:00:00+00:00",
    ]
    assert [c.query["window"]["start"] for c in ledger.charges()] == starts(info.value.released)
    assert agg.accounting().pending == 1000  # hour 3's kept events wait
    more = tm.Ledger(sqlite_url.replace("store.db", "more.db"), epsilon=5.0, delta=1e-5)
    later = agg.release_closed(1.0, 1e-6, ledger=more, now=4 * HOUR)
    assert starts(later) == ["1970-01-01T02:00:00+00:00", "1970-01-01T03:00:00+00:00"]
    assert [len(r) for r in later] == [0, 1]  # private selection: the empty hour is empty
    assert adds_up(agg)
    ledger.close()
    more.close()


# --------------------------------------------------------------------------- merge, forms


def test_windowed_shards_merge_per_window_and_pickle() -> None:
    a = hourly(seed=1)
    b = a.spawn()
    a.add(batch(0, n_users=300), now=0.5 * HOUR)
    b.add(batch(0, n_users=300, start_user=300), now=0.5 * HOUR)
    b.add(batch(2), now=2.5 * HOUR)
    a.merge(pickle.loads(pickle.dumps(b)))
    releases = a.release_closed(1.0, 1e-6, now=2.5 * HOUR)
    assert [r.accounting.received for r in releases] == [1800, 0]
    c = a.spawn()  # spawned after hours 0 and 1 were released: they are late there
    c.add(batch(1.5, n_users=2), now=1.6 * HOUR)
    a.merge(c)
    assert a.accounting().dropped["late"] == 6
    assert adds_up(a)


def test_merge_needs_the_same_grid() -> None:
    agg = hourly()
    for other in (hourly({"start": 1800}), hourly({"max_clock_skew": "1m"})):
        with pytest.raises(tm.ConfigError, match=r"different (start|max_clock_skew)"):
            agg.merge(other)


def test_default_start_is_now_floored_and_datetimes_work() -> None:
    agg = tm.Aggregator(
        policy=POLICY, by="event", metrics=[tm.count()], window="1h", time="t", randomness=seeded(0)
    )
    now = dt.datetime.now(dt.UTC)
    assert agg.start == now.replace(minute=0, second=0, microsecond=0) or now.minute == 0
    start = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    agg = hourly({"start": start})
    data = batch(0)
    data["t"] = np.datetime64("2026-11-27T10:15:00", "ms") + np.zeros(
        data["t"].size, "timedelta64[ms]"
    )
    agg.add(data, now=start + dt.timedelta(minutes=20))
    (release,) = agg.release_closed(1.0, 1e-6, now=start + dt.timedelta(hours=1))
    assert release.metadata["window"] == {
        "start": "2026-11-27T10:00:00+00:00",
        "end": "2026-11-27T11:00:00+00:00",
        "size": "1h",
        "allowed_lateness": "0s",
    }
    table = release.to_pandas()
    assert list(table.columns[:3]) == ["window_start", "window_end", "event"]
    assert table["window_start"].tolist() == [pd.Timestamp(start)]
    arrow = release.to_arrow()
    assert arrow.schema.field("window_end").type == pa.timestamp("ms", tz="UTC")
    assert release.to_polars()["window_start"].to_list() == [start]


def test_window_configuration_errors() -> None:
    with pytest.raises(tm.ConfigError, match=r"window must look like .* got 'hourly'"):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], window="hourly", time="t")
    with pytest.raises(tm.ConfigError, match="needs time="):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], window="1h")
    with pytest.raises(tm.ConfigError, match="allowed_lateness must look like"):
        hourly({"allowed_lateness": "-5m"})
    with pytest.raises(tm.ConfigError, match="max_clock_skew must look like"):
        hourly({"max_clock_skew": "soon"})
    with pytest.raises(tm.ConfigError, match="start must be a timezone-aware datetime"):
        hourly({"start": dt.datetime(2026, 1, 1)})
    with pytest.raises(tm.ConfigError, match="start=0 is only used with window"):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], start=0)
    agg = hourly()
    with pytest.raises(tm.ConfigError, match="now must be a timezone-aware datetime"):
        agg.add(batch(0), now="10:00")
    with pytest.raises(tm.ConfigError, match="now must be"):
        agg.release_closed(1.0, 1e-6, now=float("nan"))
    assert agg.accounting().received == 0  # nothing was read
    with pytest.raises(tm.SchemaError, match="'t'"):
        agg.add({"user": [1], "event": ["a"]}, now=0)
    with pytest.raises(tm.ConfigError, match="release_closed"):
        agg.release(1.0, 1e-6)
    with pytest.raises(tm.ConfigError, match="different window"):
        agg.merge(
            tm.Aggregator(
                policy=POLICY,
                by="event",
                metrics=[tm.count(), tm.unit_count()],
                window="2h",
                time="t",
                start=0,
            )
        )


# --------------------------------------------------------------------------- invariants

step = st.one_of(
    st.tuples(st.just("add"), event_rows(max_rows=30), st.lists(st.floats(-2, 8), min_size=30)),
    st.tuples(st.just("shard"), event_rows(max_rows=30), st.lists(st.floats(-2, 8), min_size=30)),
    st.tuples(st.just("release"), st.booleans(), st.just(None)),
)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(step, st.floats(0, 1.5)), max_size=8))
def test_every_event_is_accounted_for_and_every_window_released_once(steps: list) -> None:
    """Any sequence of add / merge of a shard / release_closed on an advancing clock: the
    accounting adds up after every step, and the windows released are 0, 1, 2, ... in
    order, each once, with every window's event count split exactly."""
    agg = hourly({"allowed_lateness": "15m"}, seed=2)
    now, released, released_events = 0.0, [], 0
    for (kind, first, second), advance in steps:
        now += advance * HOUR
        if kind == "release":
            releases = agg.release_closed(1.0, 1e-6, flush=first, now=now)
            released += starts(releases)
            released_events += sum(r.accounting.received for r in releases)
        else:
            rows = {**first, "t": np.asarray(second[: first["user"].size]) * HOUR}
            target = agg if kind == "add" else agg.spawn()
            target.add(rows, now=now)
            if target is not agg:
                agg.merge(pickle.loads(pickle.dumps(target)))
        assert adds_up(agg)
    hours = range(len(released))
    assert released == [dt.datetime.fromtimestamp(h * HOUR, dt.UTC).isoformat() for h in hours]
    acc = agg.accounting()
    placed = acc.received - acc.dropped["late"] - acc.dropped["future"]
    assert released_events + acc.pending + _pending_drops(agg) == placed


def _pending_drops(agg: tm.Aggregator) -> int:
    """Events of pending windows dropped by bounding so far (white-box)."""
    assert agg._windows is not None
    return sum(sum(state.dropped.values()) for state in agg._windows._states.values())


def test_a_clock_far_ahead_costs_per_release_only(sqlite_url: str) -> None:
    """start at the epoch, one-second windows, a clock in 2026: adding costs nothing per
    window, and releasing stops where the ledger does (each empty window is one charge)."""
    now = 1.8e9
    agg = tm.Aggregator(
        policy=POLICY, by="event", metrics=[tm.count()], window="1s", time="t", start=0
    )
    agg.add({"user": [1, 2], "event": ["a", "a"], "t": [now + 0.5, 5.0]}, now=now)
    assert agg.accounting().pending == 1
    assert agg.accounting().dropped["late"] == 1
    ledger = tm.Ledger(sqlite_url, epsilon=3.0, delta=1e-5)
    with pytest.raises(tm.BudgetExceededError, match=r"released 3 window\(s\)") as info:
        agg.release_closed(1.0, 1e-6, ledger=ledger, now=now)
    assert f"{int(now) - 4} later due window(s)" in str(info.value)
    assert len(info.value.released) == len(ledger.charges()) == 3
    ledger.close()
