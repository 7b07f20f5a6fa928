"""The OpenTelemetry SDK's OTLP/HTTP log exporter, unchanged, delivers events to windows."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from collector_helpers import (
    HOUR,
    PARTITIONS,
    T0,
    Clock,
    config,
    released_files,
    running,
    wait_until,
)

import telemagg as tm

pytest.importorskip("opentelemetry.sdk._logs")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")


def otlp_config(tmp_path: Path) -> dict[str, Any]:
    cfg = config(tmp_path, "nats")  # the nats keys are ignored by an otlp source
    cfg["source"] = {"kind": "otlp", "listen": "127.0.0.1:0", "ack_wait": "10s"}
    return cfg


def test_the_sdk_exporter_delivers_events_into_released_windows(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    cfg = otlp_config(tmp_path)
    clock = Clock(T0 + HOUR - 1)
    collector = tm.Collector(cfg, clock=clock)
    with running(collector):
        assert collector.source_address is not None
        endpoint = "http://{}:{}/v1/logs".format(*collector.source_address)
        provider = LoggerProvider()
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint)))
        logger = provider.get_logger("usage")
        for i in range(600):  # 600 users, one event each, spread over the 4 partitions
            logger.emit(
                timestamp=(T0 + i) * 10**9,
                body="usage",
                attributes={
                    "user_id": f"user-{i}",
                    "event_name": PARTITIONS[i % 4],
                    "duration_ms": 100.0,
                },
            )
        assert provider.force_flush(30_000)
        provider.shutdown()
        # force_flush returned: every request was answered 200, i.e. checkpointed
        assert collector.metrics.get("events_absorbed") == 600
        clock.now = T0 + 5 * HOUR
        wait_until(lambda: collector.metrics.get("windows_released") == 1, 90)
    (path,) = released_files(cfg)
    table = pq.read_table(path).to_pydict()
    metadata = json.loads(pq.read_schema(path).metadata[b"telemagg"])
    stddev = metadata["metrics"]["count"]["stddev"]
    assert table["event_name"] == PARTITIONS
    for count in table["count"]:
        assert abs(count - 150) <= 8 * stddev


def test_json_requests_and_bad_requests(tmp_path: Path) -> None:
    cfg = otlp_config(tmp_path)
    collector = tm.Collector(cfg, clock=Clock(T0 + HOUR - 1))
    with running(collector):
        assert collector.source_address is not None
        url = "http://{}:{}/v1/logs".format(*collector.source_address)
        record = {
            "timeUnixNano": str((T0 + 5) * 10**9),
            "attributes": [
                {"key": "user_id", "value": {"intValue": "7"}},
                {"key": "event_name", "value": {"stringValue": "open"}},
            ],
        }
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record, record]}]}]}
        assert post(url, json.dumps(body).encode(), "application/json") == (200, b"{}")
        assert collector.metrics.get("events_absorbed") == 2
        assert post(url, b"\xff\x00garbage", "application/x-protobuf")[0] == 400


def post(url: str, body: bytes, kind: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def protobuf_request(users: list[str], nanos: int) -> bytes:
    """A protobuf ExportLogsServiceRequest: one record per user, at ``nanos``."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i, user in enumerate(users):
        record = records.add()
        record.time_unix_nano = nanos
        for key, value in (("user_id", user), ("event_name", PARTITIONS[i % 4])):
            attribute = record.attributes.add()
            attribute.key, attribute.value.string_value = key, value
    return request.SerializeToString()


def test_a_retried_request_counts_once_across_restarts(tmp_path: Path) -> None:
    import gzip

    cfg = otlp_config(tmp_path)
    body = protobuf_request([f"u{i}" for i in range(10)], (T0 + 5) * 10**9)
    other = protobuf_request([f"u{i}" for i in range(10)], (T0 + 6) * 10**9)
    kind = "application/x-protobuf"
    clock = Clock(T0 + HOUR - 1)
    collector = tm.Collector(cfg, clock=clock)
    with running(collector):
        assert collector.source_address is not None
        url = "http://{}:{}/v1/logs".format(*collector.source_address)
        assert post(url, body, kind)[0] == 200
        # The SDK's retry: the same records, gzipped anew (another gzip header time).
        assert post_gzip(url, gzip.compress(body, mtime=1), kind)[0] == 200
        assert post(url, other, kind)[0] == 200  # other records: counted
        assert collector.metrics.get("events_absorbed") == 20
        wait_until(lambda: collector.metrics.get("requests_duplicate") == 1, 10)
    cfg["source"]["listen"] = "127.0.0.1:0"
    collector = tm.Collector(cfg, clock=clock)  # restarted: the digests were checkpointed
    with running(collector):
        assert collector.source_address is not None
        url = "http://{}:{}/v1/logs".format(*collector.source_address)
        assert post(url, body, kind)[0] == 200
        wait_until(lambda: collector.metrics.get("requests_duplicate") == 1, 10)
        assert collector.metrics.get("events_absorbed") == 0
        clock.now = T0 + 5 * HOUR
        wait_until(lambda: collector.metrics.get("windows_released") == 1, 90)
    (path,) = released_files(cfg)
    assert pq.read_table(path).num_rows == len(PARTITIONS)


def test_dedupe_window_zero_counts_every_request(tmp_path: Path) -> None:
    cfg = otlp_config(tmp_path)
    cfg["source"]["dedupe_window"] = "0s"
    body = protobuf_request(["a", "b"], (T0 + 5) * 10**9)
    collector = tm.Collector(cfg, clock=Clock(T0 + HOUR - 1))
    with running(collector):
        assert collector.source_address is not None
        url = "http://{}:{}/v1/logs".format(*collector.source_address)
        for _ in range(2):
            assert post(url, body, "application/x-protobuf")[0] == 200
        assert collector.metrics.get("events_absorbed") == 4


def post_gzip(url: str, body: bytes, kind: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": kind, "Content-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()
