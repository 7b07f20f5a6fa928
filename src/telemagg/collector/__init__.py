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
  state, the source positions and the released windows are checkpointed in one
  transaction of the state store (SQLite or PostgreSQL); messages are acknowledged, and OTLP
  requests answered 200, only after it. A checkpoint appends the batches absorbed since the
  last one to a journal, or writes a snapshot of the whole state when the journal would
  outgrow the last snapshot or a window is released (:mod:`telemagg.collector._checkpoint`),
  so its cost follows the new events, not the state's size. The state store holds the
  bounded events, the journal's recent (pseudonymised) events and the sampling key: protect
  it like the raw telemetry.
* OTLP idempotency: a retried request (same decompressed body) committed within
  ``source.dedupe_window`` (10 min), or still waiting for its checkpoint, is answered 200
  and not counted again, across restarts too (:class:`~telemagg.collector._sources.OtlpSource`).
* ``/healthz`` (200 ok; 503 while starting or when the ledger refuses a window, with the
  reason) and ``/metrics`` (Prometheus text: events received/absorbed/dropped by reason,
  source lag, windows released, budget remaining) on ``[http] listen``: operator-side exact
  counts, so serve them on a private interface.
* SIGTERM/SIGINT: checkpoint, then exit 0. Logs: logger ``telemagg.collector``, one JSON
  object a line under ``telemagg serve``.
* Backpressure: at most ``source.fetch_messages`` messages a fetch and two fetches waiting
  for the worker, a checkpoint every ``state.checkpoint_interval`` or
  ``state.checkpoint_events`` events (sooner when the source is idle; OTLP: as soon as the
  last one is prepared); JetStream's ``max_ack_pending`` and the OTLP receiver's queue are
  10 fetches deep (then 503).
"""

from telemagg.collector._collector import Collector
from telemagg.collector._config import CollectorConfig, load_config, parse_metric

__all__ = ["Collector", "CollectorConfig", "load_config", "parse_metric"]
