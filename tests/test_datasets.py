"""Tests of the synthetic telemetry generator (telemagg.datasets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemagg.datasets import telemetry_events
from telemagg.errors import ConfigError

COLUMNS = {
    "user_id": np.dtype(np.int64),
    "session_id": np.dtype(np.int64),
    "timestamp": np.dtype("datetime64[ms]"),
    "event_name": np.dtype(object),
    "app_version": np.dtype(object),
    "os": np.dtype(object),
    "duration_ms": np.dtype(np.float64),
    "latency_ms": np.dtype(np.float64),
    "error_code": np.dtype(object),
}
N = 200_000


@pytest.fixture(scope="module")
def events() -> dict[str, npt.NDArray[Any]]:
    return telemetry_events(N, seed=20240101)


def _share_of_top_users(user_id: npt.NDArray[Any], fraction: float) -> float:
    counts = np.sort(np.unique(user_id, return_counts=True)[1])[::-1]
    return float(counts[: max(1, int(len(counts) * fraction))].sum() / counts.sum())


def test_columns_dtypes_and_lengths(events: dict[str, npt.NDArray[Any]]) -> None:
    assert {name: column.dtype for name, column in events.items()} == COLUMNS
    assert {len(column) for column in events.values()} == {N}


def test_empty_stream_keeps_the_schema() -> None:
    events = telemetry_events(0, seed=1)
    assert {name: column.dtype for name, column in events.items()} == COLUMNS
    assert {len(column) for column in events.values()} == {0}


def test_timestamps_lie_in_the_span_and_are_sorted() -> None:
    start = datetime(2025, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    timestamp = telemetry_events(20_000, seed=3, start=start, duration_s=3_600)["timestamp"]
    first = np.datetime64("2025-03-01T10:00:00.000")
    assert timestamp.min() >= first
    assert timestamp.max() < first + np.timedelta64(3_600_000, "ms")
    assert (np.diff(timestamp.astype(np.int64)) >= 0).all()
    # Events fill the hour rather than piling up at an edge.
    minutes = (timestamp - first).astype("timedelta64[m]").astype(np.int64)
    assert np.bincount(minutes, minlength=60).min() > 0.3 * len(timestamp) / 60


def test_naive_start_is_utc() -> None:
    naive = telemetry_events(100, seed=5, start=datetime(2024, 6, 1))["timestamp"]
    aware = telemetry_events(100, seed=5, start=datetime(2024, 6, 1, tzinfo=UTC))["timestamp"]
    np.testing.assert_array_equal(naive, aware)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    first, again, other = (telemetry_events(5_000, seed=s) for s in (11, 11, 12))
    for name in COLUMNS:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["user_id"], other["user_id"])
    assert not np.array_equal(first["duration_ms"], other["duration_ms"])


def test_default_is_one_user_per_twenty_events(events: dict[str, npt.NDArray[Any]]) -> None:
    n_users = len(np.unique(events["user_id"]))
    # The least active users expect ~4.5 events, so almost all of the N // 20 appear.
    assert 0.95 * N // 20 <= n_users <= N // 20
    assert len(np.unique(telemetry_events(5_000, n_users=7, seed=2)["user_id"])) == 7


def test_activity_is_zipf_skewed(events: dict[str, npt.NDArray[Any]]) -> None:
    top_share = _share_of_top_users(events["user_id"], 0.01)
    assert top_share > 0.25  # the top 1% of users emit over a quarter of all events
    counts = np.unique(events["user_id"], return_counts=True)[1]
    assert counts.max() > 2_000  # some users emit thousands of events
    assert np.median(counts) < 20
    flat = telemetry_events(N, seed=20240101, zipf_exponent=0.0)["user_id"]
    assert _share_of_top_users(flat, 0.01) < 0.03


def test_sessions_belong_to_one_user(events: dict[str, npt.NDArray[Any]]) -> None:
    pairs = np.unique(np.stack([events["session_id"], events["user_id"]]), axis=1)
    sessions = np.unique(events["session_id"])
    assert pairs.shape[1] == len(sessions)
    assert len(events["user_id"]) / len(sessions) > 5  # several events per session


def test_event_names_are_zipf_popular(events: dict[str, npt.NDArray[Any]]) -> None:
    names, counts = np.unique(events["event_name"].astype(str), return_counts=True)
    assert len(names) == 200
    assert all(name.count(".") == 1 for name in names)
    ranked = names[np.argsort(-counts)]
    assert list(ranked[:3]) == ["editor.save", "search.query", "video.play"]
    # Zipf(1): the most popular is about twice the second (binomial noise is ~1% here).
    top, second = np.sort(counts)[::-1][:2]
    assert 1.8 < top / second < 2.2
    many = telemetry_events(2_000, n_event_types=450, seed=1)["event_name"]
    assert len(set(many)) <= 450


def test_device_attributes(events: dict[str, npt.NDArray[Any]]) -> None:
    first_row = np.unique(events["user_id"], return_index=True)[1]
    os_values, os_users = np.unique(events["os"][first_row].astype(str), return_counts=True)
    share = dict(zip(os_values, os_users / os_users.sum(), strict=True))
    expected = {"android": 0.36, "windows": 0.28, "ios": 0.19, "macos": 0.11, "linux": 0.06}
    assert share == pytest.approx(expected, abs=0.02)
    versions, version_users = np.unique(
        events["app_version"][first_row].astype(str), return_counts=True
    )
    assert list(versions[np.argsort(version_users)]) == sorted(versions, key=_version_key)
    # A user's device does not change between events.
    pairs = np.unique(np.stack([events["user_id"], events["os"].astype(str)]), axis=1)
    assert pairs.shape[1] == len(first_row)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_measurements(events: dict[str, npt.NDArray[Any]]) -> None:
    duration = events["duration_ms"].astype(np.float64)
    latency = events["latency_ms"].astype(np.float64)
    assert np.isfinite(duration).all()
    assert (duration > 0).all()
    assert (duration > 60_000).any()  # bounds of (0, 60000) clamp something
    assert (latency > 0).all()
    p50, p999 = np.percentile(latency, [50, 99.9])
    assert 60 < p50 < 100
    assert p999 > 20 * p50  # the Pareto tail


def test_error_codes(events: dict[str, npt.NDArray[Any]]) -> None:
    error_code = events["error_code"]
    failed = np.array([code is not None for code in error_code])
    assert 0.015 < failed.mean() < 0.03
    assert {type(code) for code in error_code[failed]} == {str}
    assert (error_code[events["latency_ms"].astype(np.float64) > 5_000] == "E_TIMEOUT").all()
    codes, counts = np.unique(error_code[failed].astype(str), return_counts=True)
    assert len(codes) == 10
    assert codes[np.argmax(counts)] == "E_NETWORK"


@pytest.mark.parametrize(("dirty", "n_events"), [(0.001, 100_000), (0.01, 7_777), (1.0, 101)])
def test_dirty_fraction_is_honoured(dirty: float, n_events: int) -> None:
    events = telemetry_events(n_events, seed=9, dirty=dirty)
    no_user = np.array([user is None for user in events["user_id"]])
    no_duration = np.isnan(events["duration_ms"].astype(np.float64))
    n_dirty = round(dirty * n_events)
    assert no_user.sum() == (n_dirty + 1) // 2
    assert no_duration.sum() == n_dirty // 2
    assert not (no_user & no_duration).any()
    assert events["user_id"].dtype == object
    clean = telemetry_events(n_events, seed=9)
    np.testing.assert_array_equal(events["user_id"][~no_user], clean["user_id"][~no_user])


def test_clean_by_default(events: dict[str, npt.NDArray[Any]]) -> None:
    assert events["user_id"].dtype == np.int64
    assert not np.isnan(events["duration_ms"].astype(np.float64)).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_events": -1}, "n_events must be >= 0; got -1"),
        ({"n_users": 0}, "n_users must be >= 1; got 0"),
        ({"n_event_types": 0}, "n_event_types must be >= 1; got 0"),
        ({"duration_s": 0}, "duration_s must be >= 1 second; got 0"),
        ({"zipf_exponent": float("nan")}, "zipf_exponent must be a finite number >= 0; got nan"),
        ({"zipf_exponent": -0.5}, "zipf_exponent must be a finite number >= 0; got -0.5"),
        ({"dirty": 1.5}, r"dirty must be a fraction in \[0, 1\]; got 1.5"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, float], message: str) -> None:
    arguments: dict[str, float] = {"n_events": 100, **kwargs}
    n_events = int(arguments.pop("n_events"))
    with pytest.raises(ConfigError, match=message):
        telemetry_events(n_events, **arguments)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    n_events=st.integers(0, 400),
    n_users=st.integers(1, 50),
    n_event_types=st.integers(1, 320),
    zipf_exponent=st.floats(0, 3),
    seed=st.integers(0, 2**32),
)
def test_any_parameters_give_a_consistent_table(
    n_events: int, n_users: int, n_event_types: int, zipf_exponent: float, seed: int
) -> None:
    events = telemetry_events(
        n_events,
        n_users=n_users,
        n_event_types=n_event_types,
        zipf_exponent=zipf_exponent,
        seed=seed,
        duration_s=60,
    )
    assert {len(column) for column in events.values()} == {n_events}
    assert len(np.unique(events["user_id"])) <= n_users
    assert len(set(events["event_name"])) <= n_event_types
    assert (events["user_id"] >= 1).all()
    span = (events["timestamp"] - np.datetime64("2024-01-01T00:00:00.000")).astype(np.int64)
    assert ((span >= 0) & (span < 60_000)).all()
