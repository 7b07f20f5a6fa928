"""Tumbling windows on the operator's clock: a grid, a clock and a schedule.

Which windows are released, and when, must not depend on the data: otherwise one unit's
skewed clock (an event stamped 10 hours ahead) could create a release of its own or make
every other unit's events "late" (issue 9, hole 2). So:

- the **grid** is fixed by parameters only: window ``k`` covers
  ``[start + k * length, start + (k + 1) * length)``;
- the **clock** is the operator's processing time (``now``, default the wall clock); event
  times only say which window an event belongs to, they never move the clock;
- the **schedule** releases window ``k`` once ``now >= end_k + allowed_lateness``, every
  window exactly once and in order, with or without events. The set and number of releases
  are therefore a function of ``(start, length, allowed_lateness, now)`` and of earlier
  calls, never of the events.

An event is dropped (counted in the operator's accounting only) as ``future`` when its time
is after ``now + max_clock_skew``, and as ``late`` when it falls before ``start``, in a window
already released, or in one whose end plus the allowed lateness has passed at ``now``.

Nothing here costs time or memory per window except releasing it: a batch is split over the
windows its accepted events fall in (at most ``(allowed_lateness + max_clock_skew) /
length + 2`` of them, by one sort), and :meth:`Schedule.due` is a ``range``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import ConfigError
from telemagg.policy import format_duration

I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

LATE = "late"
FUTURE = "future"


def instant_ms(value: Any, parameter: str) -> int:
    """An instant as integer milliseconds since the epoch: a timezone-aware datetime or epoch
    seconds (int or float); ``None`` reads the wall clock.

    >>> instant_ms(dt.datetime(1970, 1, 1, 1, tzinfo=dt.UTC), "now"), instant_ms(1.5, "now")
    (3600000, 1500)
    >>> instant_ms(dt.datetime(2026, 1, 1), "start")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: start must be a timezone-aware datetime or epoch seconds; ...
    """
    if value is None:
        return time.time_ns() // 1_000_000
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return delta // dt.timedelta(milliseconds=1)
    number = isinstance(value, int | float | np.integer | np.floating)
    # |seconds| < 1e14 (3 million years) keeps milliseconds well inside int64
    if number and not isinstance(value, bool | np.bool_) and abs(float(value)) < 1e14:
        return math.floor(float(value) * 1000)
    raise ConfigError(
        f"{parameter} must be a timezone-aware datetime or epoch seconds; got {value!r}"
    )


def iso(ms: int) -> str:
    """ISO 8601 (UTC) of an instant in epoch milliseconds."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (epoch + dt.timedelta(milliseconds=ms)).isoformat()


@dataclass(frozen=True)
class Grid:
    """Tumbling windows of ``length_ms`` from ``start_ms``, closing ``lateness_ms`` after
    their end; events more than ``skew_ms`` after the clock are from the future.

    >>> grid = Grid(start_ms=0, length_ms=3_600_000, lateness_ms=600_000, skew_ms=300_000)
    >>> grid.index(np.array([0, 3_599_999, 3_600_000, -1])).tolist()
    [0, 0, 1, -1]
    >>> grid.last_closed(3_600_000 + 600_000), grid.last_closed(3_600_000 + 599_999)
    (0, -1)
    >>> grid.describe(1)["start"]
    '1970-01-01T01:00:00+00:00'
    """

    start_ms: int
    length_ms: int
    lateness_ms: int
    skew_ms: int

    def index(self, time_ms: I64) -> I64:
        """The window of each event time (negative before ``start``)."""
        return (time_ms - np.int64(self.start_ms)) // np.int64(self.length_ms)

    def bounds(self, window: int) -> tuple[int, int]:
        start = self.start_ms + window * self.length_ms
        return start, start + self.length_ms

    def containing(self, now_ms: int) -> int:
        """The window ``now`` falls in."""
        return (now_ms - self.start_ms) // self.length_ms

    def last_closed(self, now_ms: int) -> int:
        """The latest window whose end plus the allowed lateness is at or before ``now``."""
        return (now_ms - self.lateness_ms - self.start_ms) // self.length_ms - 1

    def describe(self, window: int) -> dict[str, str]:
        """The publishable description of one window (bounds and parameters only)."""
        start, end = self.bounds(window)
        return {
            "start": iso(start),
            "end": iso(end),
            "size": format_duration(self.length_ms // 1000),
            "allowed_lateness": format_duration(self.lateness_ms // 1000),
        }

    def key_columns(self, window: int, rows: int) -> dict[str, np.ndarray[Any, Any]]:
        """``window_start`` and ``window_end`` (UTC datetime64[ms]) for ``rows`` rows."""
        start, end = self.bounds(window)
        return {
            "window_start": np.full(rows, np.datetime64(start, "ms")),
            "window_end": np.full(rows, np.datetime64(end, "ms")),
        }


@dataclass(frozen=True)
class Schedule:
    """Which windows have been released (all up to ``released_through``) and which are due.

    Immutable: releasing a window gives a new schedule (so copies and spawned shards never
    share one by accident).

    >>> schedule = Schedule(Grid(start_ms=0, length_ms=1000, lateness_ms=0, skew_ms=0))
    >>> list(schedule.due(3500)), list(schedule.due(3500, flush=True))
    ([0, 1, 2], [0, 1, 2, 3])
    >>> list(schedule.released(2).due(3500))
    []
    """

    grid: Grid
    released_through: int = -1  # windows 0 .. released_through are released

    def due(self, now_ms: int, *, flush: bool = False) -> range:
        """Windows to release at ``now``, oldest first: every closed one not yet released
        (with ``flush``, the window containing ``now`` too). Empty windows included."""
        last = self.grid.containing(now_ms) if flush else self.grid.last_closed(now_ms)
        return range(self.released_through + 1, last + 1)

    def released(self, window: int) -> Schedule:
        return replace(self, released_through=window)

    def classify(self, time_ms: I64, now_ms: int) -> tuple[I64, Bool, Bool]:
        """Each event's window, and whether it is ``future`` or ``late`` at ``now``."""
        index = self.grid.index(time_ms)
        future = time_ms > now_ms + self.grid.skew_ms
        closed = max(self.released_through, self.grid.last_closed(now_ms))
        late = ~future & ((index < 0) | (index <= closed))
        return index, future, late


def by_window(index: I64, keep: Bool) -> Iterator[tuple[int, I64]]:
    """``(window, positions)`` of the kept events, one pair per window present (one sort)."""
    positions = np.flatnonzero(keep)
    order = positions[np.argsort(index[positions], kind="stable")]
    windows = index[order]
    if not order.size:
        return
    starts = np.flatnonzero(np.concatenate([[True], windows[1:] != windows[:-1]]))
    ends = np.append(starts[1:], order.size)
    for first, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(windows[first]), order[first:end]
