"""The pending windows of a windowed Aggregator: a bounded state per window, on a schedule.

Events are split over the windows of the grid by their event time; which windows exist,
close and get released is decided by the operator's clock alone (:mod:`telemagg._windows`),
so no event moves the schedule. Each window that received events holds its own bounded
state (a unit is bounded per window: each window is its own release); events that reach
no window (late, future) are counted here, for the operator's accounting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from telemagg._state import State
from telemagg._windows import FUTURE, LATE, Grid, Schedule, by_window
from telemagg.release import Accounting, Release

I64 = npt.NDArray[np.int64]


class WindowStates:
    """One bounded state per pending window that received events, and the schedule.

    ``limits`` (L0, Linf) bound every window's state; ``numeric`` and ``categorical`` name
    the value columns a state holds.

    >>> from telemagg._windows import Grid
    >>> hour = 3_600_000
    >>> grid = Grid(start_ms=0, length_ms=hour, lateness_ms=hour, skew_ms=0)
    >>> windows = WindowStates(grid, (1, 1), ["v"], [])
    >>> rows = State(unit_id=np.array([1, 2], dtype=np.uint64), partition=np.array([0, 0]),
    ...     pair_key=np.array([5, 6], dtype=np.uint64),
    ...     event_priority=np.array([1, 2], dtype=np.uint64),
    ...     numeric={"v": np.array([1.0, 2.0])}, categorical={}, received=2)
    >>> windows.add(rows, np.array([10, hour + 10]), now_ms=hour + 10)
    >>> windows.accounting(Counter()).pending  # one event in each of hours 0 and 1
    2
    >>> list(windows.due(3 * hour))  # each closes an hour (the lateness) after its end
    [0, 1]
    """

    def __init__(
        self,
        grid: Grid,
        limits: tuple[int, int],
        numeric: Sequence[str],
        categorical: Sequence[str],
    ) -> None:
        self.grid = grid
        self.schedule = Schedule(grid)
        self._limits = limits
        self._columns = (tuple(numeric), tuple(categorical))
        self._states: dict[int, State] = {}  # pending windows that received events
        self._received = 0
        self._aggregated = 0  # events in the tables of released windows
        self._outside: Counter[str] = Counter()  # dropped outside pending windows

    def spawn(self) -> WindowStates:
        """No events, the same schedule (windows released here are late there too)."""
        other = WindowStates(self.grid, self._limits, *self._columns)
        other.schedule = self.schedule  # immutable
        return other

    def empty(self) -> State:
        return State.empty(*self._columns)

    def _absorb(self, window: int, rows: State) -> None:
        l0, linf = self._limits
        state = self._states.get(window, self.empty())
        self._states[window] = state.absorb(rows, max_partitions=l0, max_contributions=linf)

    def add(self, rows: State, time_ms: I64, now_ms: int) -> None:
        """Split rows over the windows of the grid; future and late events are dropped.

        The clock is ``now``, never the events: see :mod:`telemagg._windows`. Events that
        reach no window are counted in :meth:`accounting`; each window's release accounts
        for the events placed in it.
        """
        self._received += rows.received
        self._outside.update(rows.dropped)
        index, future, late = self.schedule.classify(time_ms, now_ms)
        self._outside[FUTURE] += int(np.count_nonzero(future))
        self._outside[LATE] += int(np.count_nonzero(late))
        for w, positions in by_window(index, ~(future | late)):  # a loop over windows
            part = rows.select(cast(npt.NDArray[np.bool_], positions))  # positions index too
            part.received, part.dropped = len(positions), Counter()
            self._absorb(w, part)

    def merge(self, other: WindowStates, adopt: Callable[[State], State]) -> None:
        """Merge per window (``adopt`` maps the other's state into this one's ids); the
        other's events in windows released here count as late."""
        self._received += other._received
        self._aggregated += other._aggregated
        self._outside.update(other._outside)
        for w, theirs in other._states.items():
            if w <= self.schedule.released_through:
                self._outside[LATE] += len(theirs)
                self._outside.update(theirs.dropped)
                continue
            self._absorb(w, adopt(theirs))

    def without(self, remove: Callable[[State], State]) -> None:
        """Every held state through ``remove`` (consent withdrawals)."""
        self._states = {w: remove(s) for w, s in self._states.items()}

    def due(self, now_ms: int, *, flush: bool = False) -> range:
        """The windows to release at ``now_ms``, oldest first (see Schedule.due)."""
        return self.schedule.due(now_ms, flush=flush)

    def state(self, window: int) -> State:
        """A window's state: empty if it received no event (released all the same)."""
        state = self._states.get(window)
        return self.empty() if state is None else state

    def released(self, window: int, release: Release) -> None:
        """``window`` was released as ``release``: forget its state, count its events."""
        self._states.pop(window, None)
        self.schedule = self.schedule.released(window)
        self._aggregated += release.accounting.aggregated
        self._outside.update(release.accounting.dropped)

    def accounting(self, dropped: Counter[str]) -> Accounting:
        """Where every event sent to the windows is now (``dropped``: the reasons to
        report, at zero); operator side, exact, never released."""
        dropped.update({LATE: 0, FUTURE: 0})
        dropped.update(self._outside)
        for state in self._states.values():
            dropped.update(state.dropped)
        return Accounting(
            received=self._received,
            aggregated=self._aggregated,
            pending=sum(len(s) for s in self._states.values()),
            dropped=dropped,
        )
