"""A crash-safe collector: events from NATS JetStream or Redis Streams, windowed
differentially private releases to Parquet, the budget charged to a ledger.

Run it with ``telemagg serve --config pipeline.toml`` or ``tm.Collector(config).run()``;
the configuration's keys are described in :mod:`telemagg.collector._config`.
"""

from telemagg.collector._collector import Collector
from telemagg.collector._config import CollectorConfig, load_config, parse_metric

__all__ = ["Collector", "CollectorConfig", "load_config", "parse_metric"]
