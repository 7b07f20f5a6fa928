"""A crash-safe collector: events from NATS JetStream, Redis Streams or OTLP/HTTP logs,
windowed differentially private releases to Parquet, every window charged to a ledger.

Run it with ``telemagg serve --config pipeline.toml`` or ``tm.Collector(config).run()``.
The configuration's sections and keys: :mod:`telemagg.collector._config`.

Operating it:

* Windows close on the collector's clock (API.md's window contract): every window from the
  grid's ``start`` is released once its end + ``allowed_lateness`` has passed, empty ones
  included, to ``<output.dir>/window_start=<ISO>/release.parquet`` (publishable metadata in
  the schema metadata key ``telemagg``; never exact event counts).
* Crash safety (:mod:`telemagg.collector._collector` documents every failure point): the
  bounded state, the source positions and the released windows are checkpointed in one
  transaction of the state store (SQLite or PostgreSQL); messages are acknowledged, and OTLP
  requests answered 200, only after it. The state store holds the bounded events and the
  sampling key: protect it like the raw telemetry.
* ``/healthz`` (200 ok; 503 while starting or when the ledger refuses a window, with the
  reason) and ``/metrics`` (Prometheus text: events received/absorbed/dropped by reason,
  source lag, windows released, budget remaining) on ``[http] listen``: operator-side exact
  counts, so serve them on a private interface.
* SIGTERM/SIGINT: checkpoint, then exit 0. Logs: logger ``telemagg.collector``, one JSON
  object a line under ``telemagg serve``.
* Backpressure: at most ``source.fetch_messages`` messages a fetch, a checkpoint every
  ``state.checkpoint_interval`` or ``state.checkpoint_events`` events; JetStream's
  ``max_ack_pending`` and the OTLP receiver's queue are 10 fetches deep (then 503).
"""

from telemagg.collector._collector import Collector
from telemagg.collector._config import CollectorConfig, load_config, parse_metric

__all__ = ["Collector", "CollectorConfig", "load_config", "parse_metric"]
