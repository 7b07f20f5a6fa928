"""telemagg.otel: the SDK's log records, in process, into an Aggregator."""

from __future__ import annotations

import pytest

import telemagg as tm
from telemagg.otel import AggregatorLogProcessor
from telemagg.testing import seeded

pytest.importorskip("opentelemetry.sdk._logs")


def test_records_of_the_sdk_reach_the_aggregator_bounded() -> None:
    from opentelemetry.sdk._logs import LoggerProvider

    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="user_id", max_contributions=2),
        by="event_name",
        metrics=[tm.count()],
        randomness=seeded(3),
    )
    provider = LoggerProvider()
    provider.add_log_record_processor(AggregatorLogProcessor(agg, batch_size=7))
    logger = provider.get_logger("usage")
    for i in range(30):  # user-0 emits 10 "open" events, bounded to 2
        user = "user-0" if i < 10 else f"user-{i}"
        logger.emit(body="usage", attributes={"user_id": user, "event_name": "open"})
    provider.force_flush()
    release = agg.release(epsilon=100.0, partitions=["open"])
    assert round(float(release.to_dict()["count"][0])) == 22


def test_windowed_aggregator_takes_the_record_time() -> None:
    from opentelemetry.sdk._logs import LoggerProvider

    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="user_id"),
        by="event_name",
        metrics=[tm.count()],
        window="1h",
        time="ts",
        randomness=seeded(4),
    )
    processor = AggregatorLogProcessor(agg)
    provider = LoggerProvider()
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("usage")
    logger.emit(timestamp=1_767_225_600 * 10**9, attributes={"user_id": 1, "event_name": "a"})
    provider.shutdown()
    accounting = agg.accounting()
    received = accounting["received"] if isinstance(accounting, dict) else accounting.received
    assert received == 1


def test_bad_parameters() -> None:
    with pytest.raises(tm.ConfigError, match=r"aggregator must be a tm\.Aggregator"):
        AggregatorLogProcessor(object())  # type: ignore[arg-type]
    agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()])
    with pytest.raises(tm.ConfigError, match="batch_size"):
        AggregatorLogProcessor(agg, batch_size=0)
