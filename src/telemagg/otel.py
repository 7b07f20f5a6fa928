"""OpenTelemetry, in process: a log record processor that feeds a telemagg Aggregator.

For a single-process service that releases on its own schedule: register
:class:`AggregatorLogProcessor` on the SDK's ``LoggerProvider`` and every log record's
attributes become one event of ``aggregator`` (the record's timestamp fills the time column
of a windowed aggregator when no attribute of that name is given). Records are buffered and
absorbed ``batch_size`` at a time (one ``add`` per batch) and on ``force_flush``/``shutdown``.

Nothing here survives a crash: buffered and absorbed events live in the process. A service
that must not lose or double-count events sends them to the collector instead
(``telemagg serve``, OTLP/HTTP), which checkpoints before acknowledging.

>>> import telemagg as tm
>>> from telemagg.testing import seeded
>>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="user"), by="event",
...                     metrics=[tm.count()], randomness=seeded(0))
>>> processor = AggregatorLogProcessor(agg)
>>> class Record:  # what the SDK hands a processor carries a record like this one
...     def __init__(self, attributes): self.attributes, self.timestamp = attributes, None
>>> for user in (1, 2, 2):
...     processor.on_emit(Record({"user": user, "event": "open"}))
>>> processor.force_flush()
True
>>> agg.release(epsilon=1.0, partitions=["open"]).to_dict()["event"].tolist()
['open']
"""

from __future__ import annotations

import threading
from typing import Any

from telemagg._aggregator import Aggregator
from telemagg.errors import ConfigError

__all__ = ["AggregatorLogProcessor"]


class AggregatorLogProcessor:
    """An OpenTelemetry SDK log record processor adding each record to ``aggregator``.

    Register it on the SDK's ``LoggerProvider``
    (``provider.add_log_record_processor(AggregatorLogProcessor(agg))``); each record's
    attributes are one event. Here a stand-in record:

    >>> import types
    >>> import telemagg as tm
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="user_id"), by=["event_name"],
    ...                     metrics=[tm.count()])
    >>> processor = AggregatorLogProcessor(agg)
    >>> processor.on_emit(types.SimpleNamespace(attributes={"user_id": 1, "event_name": "open"}))
    >>> processor.force_flush()
    True
    >>> agg.accounting().pending     # in the aggregator, waiting for a release
    1
    """

    def __init__(self, aggregator: Aggregator, *, batch_size: int = 10_000) -> None:
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(f"aggregator must be a tm.Aggregator; got {aggregator!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.aggregator = aggregator
        self.batch_size = batch_size
        self._time = aggregator.time
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []

    def on_emit(self, log_record: Any) -> None:
        """Buffer one record (the SDK's ReadWriteLogRecord, LogData, or a log record)."""
        record = getattr(log_record, "log_record", log_record)
        row = dict(record.attributes or {})
        if self._time is not None and self._time not in row:
            nanos = getattr(record, "timestamp", None) or getattr(
                record, "observed_timestamp", None
            )
            row[self._time] = nanos / 1e9 if nanos else None
        with self._lock:
            self._rows.append(row)
            if len(self._rows) >= self.batch_size:
                self._absorb()

    emit = on_emit  # the SDK's name before 1.39

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Absorb every buffered record now."""
        with self._lock:
            self._absorb()
        return True

    def shutdown(self) -> None:
        """Absorb what is buffered; the aggregator stays usable."""
        self.force_flush()

    def _absorb(self) -> None:
        rows, self._rows = self._rows, []
        if not rows:
            return
        names = list(dict.fromkeys(name for row in rows for name in row))
        self.aggregator.add({name: [row.get(name) for row in rows] for name in names})
