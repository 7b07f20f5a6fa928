"""The collector's one seam to the windowed :class:`~telemagg.Aggregator`.

Everything the collector needs from the aggregation engine goes through :class:`Engine`:
absorb a batch at the collector's clock, release the windows that are due, pickle the
state (a snapshot), keep the journal of batches absorbed since the last checkpoint (Arrow
IPC; replayed onto a snapshot on restart), and tell the window of a release. Windows
follow the window contract of API.md: they close on the collector's clock (``add(batch,
now=...)``, ``release_closed(..., now=...)``), every window from ``start`` on is released
on schedule, empty ones included, whatever the events' own times say.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from telemagg._aggregator import Aggregator
from telemagg._consent_gate import ConsentSource
from telemagg.errors import BudgetExceededError, ConfigError, require
from telemagg.ledger._protocol import LedgerLike
from telemagg.policy import parse_duration
from telemagg.release import Release

from ._config import AggregateConfig

__all__ = ["Engine", "Released"]


def window_start(release: Release) -> str:
    """The ISO start of the window a release covers (its identity for the collector)."""
    window = release.metadata.get("window") or release.metadata.get("query", {}).get("window")
    if not isinstance(window, Mapping) or "start" not in window:
        raise ConfigError("internal: a windowed release carries no window start")
    return str(window["start"])


def _epoch(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"aggregate.start must be an RFC 3339 time or epoch seconds; got {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise ConfigError(f"aggregate.start must carry a time zone; got {value!r}")
    return moment.timestamp()


@dataclass(frozen=True)
class Released:
    """What one ``release_due`` produced: releases (oldest first), and the refusal that
    stopped it, if the ledger refused a window (that window and later ones stay pending)."""

    releases: list[Release]
    refused: BudgetExceededError | None = None


class Engine:
    """A windowed Aggregator driven by the collector's clock."""

    def __init__(self, aggregator: Aggregator, config: AggregateConfig) -> None:
        self.aggregator = aggregator
        self.config = config
        self.journal: list[tuple[float, Any]] = []  # (clock, table) since the last checkpoint

    @classmethod
    def create(
        cls, config: AggregateConfig, consent: ConsentSource | None, purpose: str | None, now: float
    ) -> Engine:
        """A new, empty engine; its window grid starts at ``aggregate.start`` or ``now``
        floored to the window."""
        window_s = parse_duration(config.window, "aggregate.window")
        start = _epoch(config.start) if config.start is not None else now // window_s * window_s
        aggregator = Aggregator(
            policy=config.policy(),
            by=config.by,
            metrics=config.metric_specs(),
            consent=consent,
            purpose=purpose,
            window=config.window,
            time=config.time,
            allowed_lateness=config.allowed_lateness,
            partitions=config.partitions,
            start=dt.datetime.fromtimestamp(start, dt.UTC),
            max_clock_skew=config.max_clock_skew,
        )
        return cls(aggregator, config)

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns the query reads."""
        return self.aggregator.columns

    def add(self, batch: Any, now: float) -> None:
        """Absorb an Arrow table at the collector's clock; journal it once absorbed."""
        self.aggregator.add(batch, now=now)
        self.journal.append((now, batch))

    def take_journal(self) -> list[tuple[float, Any]]:
        """The batches absorbed since the last call (for the next checkpoint)."""
        journal, self.journal = self.journal, []
        return journal

    @staticmethod
    def journal_bytes(journal: list[tuple[float, Any]]) -> list[tuple[float, bytes]]:
        """Journal entries as Arrow IPC streams (what the state store keeps)."""
        pa: Any = require("pyarrow", "pyarrow")
        out = []
        for now, table in journal:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            out.append((now, sink.getvalue().to_pybytes()))
        return out

    def replay(self, journal: list[tuple[float, bytes]]) -> None:
        """Absorb journalled batches again, each at its recorded clock.

        The events are the same and their windows' classification (late, future) is the
        same, as no window was released since the snapshot the journal follows; the
        bottom-k priorities are drawn afresh, which gives another, equally valid, bounded
        sample of them. The state before the crash was never released, so nothing
        published depends on which sample it held.
        """
        pa: Any = require("pyarrow", "pyarrow")
        for now, data in journal:
            self.aggregator.add(pa.ipc.open_stream(data).read_all(), now=now)

    def release_due(self, now: float, ledger: LedgerLike, label: str) -> Released:
        """Release every window that is due at ``now``, charging ``ledger`` per window."""
        config = self.config
        try:
            releases = self.aggregator.release_closed(
                config.epsilon,
                config.delta,
                None,
                ledger,
                noise=config.noise,
                label=label,
                now=now,
            )
        except BudgetExceededError as exc:
            return Released(list(getattr(exc, "released", [])), exc)
        return Released(releases)

    def accounting(self) -> dict[str, Any]:
        """The operator's exact accounting (never published), as a plain dict."""
        raw = self.aggregator.accounting()
        if isinstance(raw, Mapping):
            return dict(raw)
        to_dict = getattr(raw, "to_dict", None)
        return dict(to_dict()) if callable(to_dict) else dict(vars(raw))

    def dumps(self) -> bytes:
        """The engine's state (the bounded per-window state and its sampling key).

        The consent registry is a live connection: it is left out and given back on load.
        """
        consent = getattr(self.aggregator, "consent", None)
        self.aggregator.consent = None
        try:
            return pickle.dumps(self.aggregator, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            self.aggregator.consent = consent

    @classmethod
    def loads(cls, data: bytes, config: AggregateConfig, consent: ConsentSource | None) -> Engine:
        """An engine from :meth:`dumps` (only ever from the collector's own state store)."""
        aggregator = pickle.loads(data)  # our own checkpoint, written by us
        if not isinstance(aggregator, Aggregator):
            raise ConfigError("the state store's checkpoint does not hold a telemagg Aggregator")
        aggregator.consent = consent
        engine = cls(aggregator, config)
        engine._check_same_query()
        return engine

    def _check_same_query(self) -> None:
        fresh = Aggregator(
            policy=self.config.policy(),
            by=self.config.by,
            metrics=self.config.metric_specs(),
            window=self.config.window,
            time=self.config.time,
            allowed_lateness=self.config.allowed_lateness,
        )
        for name in ("policy", "by", "metrics", "window", "time", "allowed_lateness"):
            if getattr(fresh, name) != getattr(self.aggregator, name):
                raise ConfigError(
                    f"aggregate.{name} differs from the checkpointed collector's"
                    f" ({getattr(self.aggregator, name)!r}); a changed query needs a new"
                    " state.name (or a new state store)"
                )
