"""Synthetic product telemetry: a realistic, reproducible event stream for demos and benchmarks.

:func:`telemetry_events` draws a day of feature-usage events from a fixed generative model,
fully vectorised (no Python loop over events: 10M events take a few seconds on one core).
It is the workload of the demo, the tests and the benchmarks, so its shape is what telemetry
looks like in practice:

* **Users** are Zipf-skewed by activity rank (``zipf_exponent``): a few heavy users (and bots)
  emit tens of thousands of events, the median user a handful. Their ids are scrambled 62-bit
  integers, as hashed device ids are, so nothing can exploit a dense id range.
* **Sessions** nest inside users (about :data:`_EVENTS_PER_SESSION` events each); an event's
  timestamp falls inside its session, whose length is lognormal (median 8 minutes).
* **Event names** (``"editor.save"``, ``"search.query"``, ...) are Zipf-popular.
* **Device attributes** belong to the user: ``os`` with a consumer app's global mix and
  ``app_version`` among a few releases, newer ones more common.
* **Measurements**: ``duration_ms`` is lognormal around a per-event-type median (some exceed
  a minute, so clamping to bounds matters); ``latency_ms`` has a lognormal body and a Pareto
  tail; ``error_code`` is ``None`` for most events, otherwise a Zipf-popular code, and
  ``"E_TIMEOUT"`` whenever the latency exceeds :data:`_TIMEOUT_MS`.

Rows come sorted by timestamp, as an export of a day's stream would.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import ConfigError

__all__ = ["telemetry_events"]

_AREAS = (
    "editor", "search", "video", "settings", "auth", "sync", "file", "share", "notification",
    "chat", "player", "upload", "download", "profile", "billing", "camera", "map", "print",
    "help", "onboarding",
)  # fmt: skip
_ACTIONS = (
    "save", "query", "play", "open", "close", "click", "view", "load", "submit", "scroll",
    "export", "import", "toggle", "pause", "error",
)  # fmt: skip
_OS_SHARES = {"android": 0.36, "windows": 0.28, "ios": 0.19, "macos": 0.11, "linux": 0.06}
_APP_VERSIONS = ("4.9.3", "5.0.0", "5.0.1", "5.1.0", "5.1.2", "5.2.0", "5.2.1")
_VERSION_GROWTH = 1.6  # each release is adopted by 1.6x as many users as the one before it
_ERROR_CODES = (
    "E_NETWORK", "E_TIMEOUT", "0x80070005", "E_AUTH_EXPIRED", "0x80004005", "E_RATE_LIMITED",
    "E_NOT_FOUND", "E_PARSE", "0xC0000005", "E_DISK_FULL",
)  # fmt: skip
_ERROR_RATE = 0.02  # errors not caused by a timeout
_TIMEOUT_MS = 5_000.0
_EVENTS_PER_SESSION = 12.0
_SESSION_MEDIAN_S = 480.0
_DEFAULT_ZIPF = 0.8  # top user: ~2.5% of all events at 1M events; top 1% of users: ~1/3
_EVENT_ZIPF = 1.0
_EVENTS_PER_USER = 20

Array = npt.NDArray[Any]  # a column: int64, float64, datetime64[ms] or object


def telemetry_events(
    n_events: int,
    *,
    n_users: int | None = None,
    n_event_types: int = 200,
    seed: int | None = None,
    start: datetime | None = None,
    duration_s: int = 86_400,
    zipf_exponent: float = _DEFAULT_ZIPF,
    dirty: float = 0.0,
) -> dict[str, Array]:
    """Draw ``n_events`` synthetic telemetry events as a dict of equal-length numpy columns.

    Args:
        n_events: number of rows.
        n_users: number of distinct users; default one per 20 events (at least 1). Users are
            ranked by activity with probability proportional to ``rank ** -zipf_exponent``.
        n_event_types: number of distinct ``event_name`` values, popularity Zipf(1).
        seed: makes the stream reproducible; ``None`` draws fresh OS entropy.
        start: first instant of the span (default 2024-01-01 UTC); naive means UTC.
        duration_s: length of the span in seconds; every timestamp lies in it.
        zipf_exponent: skew of per-user activity (0 = every user equally active).
        dirty: fraction of rows made unusable, ``round(dirty * n_events)`` of them, chosen
            uniformly: the first half (rounded up) lose their user (``user_id`` is ``None``
            and the column becomes ``object``); the others get ``duration_ms = NaN``. telemagg
            drops the first (``missing_privacy_unit``); a missing value only leaves the metrics on
            that column (``release.accounting.missing_values``).

    Returns:
        ``user_id`` and ``session_id`` (int64; ``user_id`` is object when ``dirty > 0``),
        ``timestamp`` (datetime64[ms]), ``event_name``, ``app_version``, ``os`` and
        ``error_code`` (object arrays of ``str``, ``error_code`` with ``None`` for no error),
        ``duration_ms`` and ``latency_ms`` (float64).

    String columns are ``object`` arrays rather than fixed-width ``'U'``: every row points at
    one shared ``str`` of a small vocabulary (8 bytes a row where ``'U24'`` would take 96),
    ``None`` can mark a missing value, and pandas' ``factorize`` hashes them directly, where a
    ``'U'`` array would first be copied into Python strings.

    >>> events = telemetry_events(1_000, seed=7)
    >>> sorted(events)  # doctest: +NORMALIZE_WHITESPACE
    ['app_version', 'duration_ms', 'error_code', 'event_name', 'latency_ms', 'os',
     'session_id', 'timestamp', 'user_id']
    >>> len(events["user_id"]), events["user_id"].dtype, events["timestamp"].dtype
    (1000, dtype('int64'), dtype('<M8[ms]'))
    >>> bool((telemetry_events(1_000, seed=7)["latency_ms"] == events["latency_ms"]).all())
    True
    >>> dirty = telemetry_events(1_000, seed=7, dirty=0.01)
    >>> sum(u is None for u in dirty["user_id"]), int(np.isnan(dirty["duration_ms"]).sum())
    (5, 5)
    """
    n_users = _validate(n_events, n_users, n_event_types, duration_s, zipf_exponent, dirty)
    rng = np.random.default_rng(seed)

    # Activity per user: an exact multinomial split of n_events over Zipf weights, one row per
    # event, then every row placed in one of its user's sessions and given a time in it.
    events_per_user = rng.multinomial(n_events, _zipf_weights(n_users, zipf_exponent))
    user_rank = np.repeat(np.arange(n_users), events_per_user)
    session, n_sessions = _sessions(rng, events_per_user, user_rank)
    timestamp_ms = _event_times_ms(rng, session, n_sessions, duration_s)
    order = np.argsort(timestamp_ms)
    user_rank, session, timestamp_ms = user_rank[order], session[order], timestamp_ms[order]

    # Per-user device attributes; then per-event attributes, independent across rows, so they
    # are drawn directly in time order.
    user_os = rng.choice(len(_OS_SHARES), size=n_users, p=list(_OS_SHARES.values()))
    version_weights = _VERSION_GROWTH ** np.arange(len(_APP_VERSIONS))
    user_version = rng.choice(
        len(_APP_VERSIONS), size=n_users, p=version_weights / version_weights.sum()
    )
    event_type = rng.choice(n_event_types, size=n_events, p=_zipf_weights(n_event_types, 1.0))
    type_median_ms = np.exp(rng.normal(math.log(600.0), 1.0, n_event_types))
    latency_ms = _latencies_ms(rng, n_events)
    events: dict[str, Array] = {
        "user_id": _scrambled_ids(rng, n_users)[user_rank],
        "session_id": _scrambled_ids(rng, n_sessions)[session],
        "timestamp": (_start_ms(start) + timestamp_ms).astype("datetime64[ms]"),
        "event_name": _vocabulary(_event_names(n_event_types))[event_type],
        "app_version": _vocabulary(_APP_VERSIONS)[user_version[user_rank]],
        "os": _vocabulary(tuple(_OS_SHARES))[user_os[user_rank]],
        "duration_ms": type_median_ms[event_type] * rng.lognormal(0.0, 1.0, n_events),
        "latency_ms": latency_ms,
        "error_code": _error_codes(rng, latency_ms),
    }
    if dirty > 0:
        _make_dirty(rng, events, round(dirty * n_events))
    return events


def _validate(
    n_events: int,
    n_users: int | None,
    n_event_types: int,
    duration_s: int,
    zipf_exponent: float,
    dirty: float,
) -> int:
    """Check every parameter; return the effective number of users."""
    if n_events < 0:
        raise ConfigError(f"n_events must be >= 0; got {n_events!r}")
    if n_users is None:
        n_users = max(1, n_events // _EVENTS_PER_USER)
    if n_users < 1:
        raise ConfigError(f"n_users must be >= 1; got {n_users!r}")
    if n_event_types < 1:
        raise ConfigError(f"n_event_types must be >= 1; got {n_event_types!r}")
    if duration_s < 1:
        raise ConfigError(f"duration_s must be >= 1 second; got {duration_s!r}")
    if not (math.isfinite(zipf_exponent) and zipf_exponent >= 0):
        raise ConfigError(f"zipf_exponent must be a finite number >= 0; got {zipf_exponent!r}")
    if not 0.0 <= dirty <= 1.0:
        raise ConfigError(f"dirty must be a fraction in [0, 1]; got {dirty!r}")
    return n_users


def _zipf_weights(n: int, exponent: float) -> npt.NDArray[np.float64]:
    """Probabilities proportional to ``rank ** -exponent`` for ranks 1..n."""
    weights: npt.NDArray[np.float64] = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    weights /= weights.sum()
    return weights


def _sessions(
    rng: np.random.Generator,
    events_per_user: npt.NDArray[np.int64],
    user_rank: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], int]:
    """Each event's session (global index) and the number of sessions.

    A user with ``c`` events has ``ceil(c / 12)`` sessions (at least one); each of the user's
    events falls in one of them uniformly.
    """
    sessions_per_user = np.maximum(1, np.ceil(events_per_user / _EVENTS_PER_SESSION)).astype(
        np.int64
    )
    first_session = np.cumsum(sessions_per_user) - sessions_per_user
    own_sessions = sessions_per_user[user_rank]
    session: npt.NDArray[np.int64] = first_session[user_rank]
    session += (rng.random(user_rank.size) * own_sessions).astype(np.int64)
    return session, int(sessions_per_user.sum())


_ID_BITS = 62
_ID_MASK = np.uint64(2**_ID_BITS - 1)


def _scrambled_ids(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    """``n`` distinct ids in [1, 2**62] that look random, like hashed device ids.

    A seeded bijection of the 62-bit integers (offset, odd multiplications and xor-shifts,
    each invertible modulo 2**62) applied to 0..n-1, so distinctness needs no check.
    """
    offset, first, second = rng.integers(0, 2**_ID_BITS, size=3, dtype=np.uint64)
    x = (np.arange(n, dtype=np.uint64) + offset) & _ID_MASK
    for multiplier, shift in ((first | np.uint64(1), 31), (second | np.uint64(1), 29)):
        x = (x * multiplier) & _ID_MASK  # wraps modulo 2**64; odd => bijective mod 2**62
        x ^= x >> np.uint64(shift)
    ids: npt.NDArray[np.int64] = (x + np.uint64(1)).astype(np.int64)
    return ids


def _event_times_ms(
    rng: np.random.Generator, session: npt.NDArray[np.int64], n_sessions: int, duration_s: int
) -> npt.NDArray[np.int64]:
    """Milliseconds from the start of the span: a session start plus an offset inside it.

    A session running past the end of the span wraps around to its beginning (the span is
    one cycle of a daily pattern), so events cover the span evenly, edges included.
    """
    span_ms = duration_s * 1000
    session_start = rng.random(n_sessions) * span_ms
    session_length = rng.lognormal(math.log(_SESSION_MEDIAN_S * 1000), 1.0, n_sessions)
    offset = rng.random(session.size) * session_length[session]
    times_ms: npt.NDArray[np.int64] = (session_start[session] + offset).astype(np.int64)
    times_ms %= span_ms
    return times_ms


def _latencies_ms(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """A lognormal body (median 80 ms) with a Pareto tail (alpha 1.5 from 400 ms) on 3%."""
    latency = rng.lognormal(math.log(80.0), 0.6, n)
    tail = rng.random(n) < 0.03
    latency[tail] = 400.0 * (1.0 + rng.pareto(1.5, int(tail.sum())))
    return latency


def _error_codes(
    rng: np.random.Generator, latency_ms: npt.NDArray[np.float64]
) -> npt.NDArray[np.object_]:
    """``None`` for most events; ``"E_TIMEOUT"`` past the timeout, else a Zipf-popular code."""
    codes = np.full(latency_ms.size, None, dtype=object)
    failed = rng.random(latency_ms.size) < _ERROR_RATE
    vocabulary = _vocabulary(_ERROR_CODES)
    weights = _zipf_weights(len(_ERROR_CODES), 1.0)
    codes[failed] = vocabulary[rng.choice(len(_ERROR_CODES), size=int(failed.sum()), p=weights)]
    codes[latency_ms > _TIMEOUT_MS] = "E_TIMEOUT"
    return codes


def _event_names(n: int) -> tuple[str, ...]:
    """``n`` names ``"area.action"``, most popular first; numbered beyond the 300 combinations."""
    # Diagonal order, so the most popular names span areas: editor.save, search.query, ...
    combos = [
        f"{_AREAS[(i + k) % len(_AREAS)]}.{_ACTIONS[i % len(_ACTIONS)]}"
        for k in range(len(_AREAS))
        for i in range(len(_ACTIONS))
    ]
    extra = [f"{combos[i % len(combos)]}_{i // len(combos) + 1}" for i in range(n - len(combos))]
    return tuple(combos + extra)[:n]


def _vocabulary(values: tuple[str, ...]) -> npt.NDArray[np.object_]:
    """An object array of the values: indexing it makes rows share one ``str`` each."""
    vocabulary = np.empty(len(values), dtype=object)
    vocabulary[:] = values
    return vocabulary


def _start_ms(start: datetime | None) -> np.datetime64:
    """The span's first instant as UTC datetime64[ms] (naive datetimes are taken as UTC)."""
    if start is None:
        start = datetime(2024, 1, 1, tzinfo=UTC)
    if start.tzinfo is not None:
        start = start.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(start, "ms")


def _make_dirty(rng: np.random.Generator, events: dict[str, Array], n_dirty: int) -> None:
    """Blank the user of the first half of ``n_dirty`` random rows, NaN the duration of the rest."""
    rows = rng.choice(events["user_id"].size, size=n_dirty, replace=False)
    no_user = rows[: (n_dirty + 1) // 2]
    user_id = events["user_id"].astype(object)
    user_id[no_user] = None
    events["user_id"] = user_id
    duration_ms = events["duration_ms"]
    duration_ms[rows[(n_dirty + 1) // 2 :]] = np.nan
