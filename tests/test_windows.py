"""Tumbling windows: one bounded state per window, closed windows released, late events."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import telemagg as tm
from telemagg.testing import seeded

HOUR = 3600
POLICY = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=2)


def hourly(agg_kwargs: dict | None = None, seed: int = 0) -> tm.Aggregator:
    return tm.Aggregator(
        policy=POLICY,
        by="event",
        metrics=[tm.count(), tm.unit_count()],
        window="1h",
        time="t",
        randomness=seeded(seed),
        **(agg_kwargs or {}),
    )


def batch(hour: float, n_users: int = 500, start_user: int = 0) -> dict[str, np.ndarray]:
    users = np.arange(start_user, start_user + n_users)
    return {
        "user": np.repeat(users, 3),
        "event": np.full(3 * n_users, "open", dtype=object),
        "t": np.full(3 * n_users, hour * HOUR + 60.0),
    }


def test_closed_windows_are_released_one_by_one_and_open_ones_wait() -> None:
    agg = hourly()
    agg.add(batch(0))
    agg.add(batch(1))
    agg.add(batch(2.5))  # the watermark is now in hour 2: hours 0 and 1 are closed
    releases = agg.release_closed(1.0, 1e-6)
    assert [r.metadata["window"]["start"] for r in releases] == [
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T01:00:00+00:00",
    ]
    for release in releases:
        # bounding is per window: 500 users x 2 events each
        assert release.accounting.received == 1500
        assert release.accounting.dropped["contribution_bounds"] == 500
    assert agg.accounting().pending == 1000
    (last,) = agg.release_closed(1.0, 1e-6, flush=True)
    assert last.metadata["window"]["end"] == "1970-01-01T03:00:00+00:00"
    acc = agg.accounting()
    assert acc.received == acc.aggregated + acc.pending + sum(acc.dropped.values())
    assert (acc.received, acc.aggregated, acc.pending) == (4500, 3000, 0)


def test_late_events_are_dropped_and_counted() -> None:
    agg = hourly({"allowed_lateness": "10m"})
    agg.add(batch(0))
    agg.add(batch(1.1))  # watermark 01:06: hour 0 closes only at 01:10
    agg.add(batch(0, n_users=10, start_user=9000))  # within the lateness: accepted
    agg.add(batch(1.5))  # watermark 01:31: hour 0 closed
    agg.add(batch(0, n_users=20, start_user=8000))  # too late
    (hour0,) = agg.release_closed(1.0, 1e-6)
    assert hour0.accounting.dropped["late"] == 60
    assert hour0.accounting.received == 1500 + 30 + 60
    agg.add(batch(0, n_users=5, start_user=7000))  # after hour 0 was released
    assert agg.accounting().dropped["late"] == 60 + 15


def test_each_window_is_charged_to_the_ledger(sqlite_url) -> None:
    ledger = tm.Ledger(sqlite_url, epsilon=2.5, delta=1e-5)
    agg = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], window="1h", time="t")
    for hour in (0, 1, 2, 3):
        agg.add(batch(hour))
    with pytest.raises(tm.BudgetExceededError) as info:
        agg.release_closed(1.0, 1e-6, ledger=ledger)
    assert len(info.value.released) == 2  # 2 x 1.0 fit in 2.5, the third does not
    assert len(ledger.charges()) == 2
    assert ledger.charges()[0].query["window"]["start"] == "1970-01-01T00:00:00+00:00"
    assert agg.accounting().pending == 2000  # hours 2 and 3 are still open


def test_windowed_shards_merge_per_window() -> None:
    a = hourly(seed=1)
    b = a.spawn()
    a.add(batch(0, n_users=300))
    b.add(batch(0, n_users=300, start_user=300))
    b.add(batch(2))
    a.merge(pickle.loads(pickle.dumps(b)))
    releases = a.release_closed(1.0, 1e-6)
    assert [r.accounting.received for r in releases] == [1800]


def test_datetime_time_columns_work() -> None:
    agg = hourly()
    data = batch(0)
    data["t"] = np.datetime64("2026-11-27T10:15:00", "ms") + np.zeros(
        data["t"].size, "timedelta64[ms]"
    )
    agg.add(data)
    (release,) = agg.release_closed(1.0, 1e-6, flush=True)
    assert release.metadata["window"]["start"] == "2026-11-27T10:00:00+00:00"


def test_window_configuration_errors() -> None:
    with pytest.raises(tm.ConfigError, match=r"window must look like .* got 'hourly'"):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], window="hourly", time="t")
    with pytest.raises(tm.ConfigError, match="needs time="):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], window="1h")
    with pytest.raises(tm.ConfigError, match="allowed_lateness must look like"):
        hourly({"allowed_lateness": "-5m"})
    agg = hourly()
    with pytest.raises(tm.SchemaError, match="'t'"):
        agg.add({"user": [1], "event": ["a"]})
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
            )
        )
