"""The collector's one seam to the windowed :class:`~telemagg.Aggregator`.

Everything the collector needs from the aggregation engine goes through :class:`Engine`:
absorb a batch at the collector's clock, release the windows that are due, pickle the
state, and tell the window of a release. Two generations of the Aggregator are supported:

* the window contract of API.md (``add(batch, now=...)``, ``release_closed(..., now=...)``,
  ``start=``, ``max_clock_skew=``): windows close on the collector's clock, every window is
  released on schedule, empty ones included;
* the earlier one (no ``now``): windows close on the watermark of event times, and the
  collector additionally flushes when every open window is closed on its clock (so a quiet
  stream still releases). Empty windows are not released there.

Which one runs is decided once, from the Aggregator's signature (:data:`CLOCK_AWARE`).
"""

from __future__ import annotations

import datetime as dt
import inspect
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from telemagg._aggregator import Aggregator, ConsentSource, LedgerLike
from telemagg.errors import BudgetExceededError, ConfigError
from telemagg.policy import parse_duration
from telemagg.release import Release

from ._config import AggregateConfig

__all__ = ["CLOCK_AWARE", "Engine", "Released", "publishable_metadata"]

#: Whether the Aggregator takes the operator's clock (``add(batch, now=...)``).
CLOCK_AWARE = "now" in inspect.signature(Aggregator.add).parameters

# Exact event accounting is the operator's, never the release's (issue 9, hole 1); an
# Aggregator that still carries it in its metadata has it removed before anything is written.
_OPERATOR_ONLY = ("events", "accounting")


def publishable_metadata(release: Release) -> dict[str, Any]:
    """The release's metadata without anything computed exactly from the data.

    >>> publishable_metadata(type("R", (), {"metadata": {"epsilon": 1.0, "events": {}}})())
    {'epsilon': 1.0}
    """
    return {k: v for k, v in release.metadata.items() if k not in _OPERATOR_ONLY}


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
        self._window_s = parse_duration(config.window, "aggregate.window")
        self._lateness_s = parse_duration(
            config.allowed_lateness, "aggregate.allowed_lateness", allow_zero=True
        )

    @classmethod
    def create(
        cls, config: AggregateConfig, consent: ConsentSource | None, purpose: str | None, now: float
    ) -> Engine:
        """A new, empty engine; its window grid starts at ``aggregate.start`` or ``now``
        floored to the window."""
        extra: dict[str, Any] = {}
        if CLOCK_AWARE:
            window_s = parse_duration(config.window, "aggregate.window")
            start = _epoch(config.start) if config.start is not None else now // window_s * window_s
            extra = {
                "start": dt.datetime.fromtimestamp(start, dt.UTC),
                "max_clock_skew": config.max_clock_skew,
            }
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
            **extra,
        )
        return cls(aggregator, config)

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns the query reads."""
        return self.aggregator.columns

    def add(self, batch: Any, now: float) -> None:
        """Absorb a batch (any input form the Aggregator takes) at the collector's clock."""
        if CLOCK_AWARE:
            self.aggregator.add(batch, now=now)  # type: ignore[call-arg, unused-ignore]
        else:
            self.aggregator.add(batch)

    def release_due(self, now: float, ledger: LedgerLike, label: str) -> Released:
        """Release every window that is due at ``now``, charging ``ledger`` per window."""
        config = self.config
        kwargs: dict[str, Any] = {"noise": config.noise, "label": label}
        if CLOCK_AWARE:
            kwargs["now"] = now
        else:
            kwargs["flush"] = self._all_open_closed(now)
        try:
            releases = self.aggregator.release_closed(
                config.epsilon, config.delta, None, ledger, **kwargs
            )
        except BudgetExceededError as exc:
            return Released(list(getattr(exc, "released", [])), exc)
        return Released(releases)

    def _all_open_closed(self, now: float) -> bool:
        # The earlier Aggregator closes windows on event times only; on the collector's
        # clock, flush once every open window's end + lateness has passed.
        open_windows = list(getattr(self.aggregator, "_windows", {}))
        if not open_windows:
            return False
        last_end = (max(open_windows) + 1) * self._window_s
        return bool(last_end + self._lateness_s <= now)

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
