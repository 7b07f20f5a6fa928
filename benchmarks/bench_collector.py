"""Collector throughput: events/s from NATS JetStream (or Redis Streams) into the windows.

Publishes ``--events`` synthetic events as JSON lines, ``--per-message`` events a message
(1,000 by default, the batched case of issue 14), to a fresh stream on the local server,
then runs ``tm.Collector`` until every event is absorbed and checkpointed. Reported: events/s
from the collector's start to the last checkpoint (fetch, JSON decoding by Arrow, the
windowed Aggregator's ``add``, checkpoints, acks), the process's CPU time over the same span
(all threads; on a shared machine wall time depends on the neighbours, CPU time much less),
checkpoints and snapshots written, and peak RSS. Publishing is not timed. The query:
``count`` + ``mean(duration_ms)`` by ``event_name`` (4 public partitions), 1 h windows,
50,000 users.

Run from the repository root with the project's venv active (servers on 127.0.0.1)::

    python benchmarks/bench_collector.py --source nats --events 2000000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "collector"))

from collector_helpers import (
    HOUR,
    T0,
    Clock,
    cleanup,
    config,
    drained,
    jsonl_bodies,
    make_events,
    publish,
)

import telemagg as tm

TARGET_EVENTS_PER_S = 500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["nats", "redis", "otlp"], default="nats")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--per-message", type=int, default=1000)
    parser.add_argument("--fetch", type=int, default=200, help="messages per fetch")
    parser.add_argument("--senders", type=int, default=8, help="otlp: concurrent senders")
    args = parser.parse_args()

    if args.source == "otlp":
        return otlp(args.events, args.per_message, args.senders)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp), args.source, fetch_messages=args.fetch, ack_wait="60s")
        cfg["state"]["checkpoint_interval"] = "2s"
        cfg["state"]["checkpoint_events"] = 1_000_000
        try:
            events = make_events(args.events, windows=1, seed=1)
            bodies = jsonl_bodies(events, args.per_message)
            publish(cfg, bodies)
            print(f"published {args.events:,} events in {len(bodies):,} messages")
            collector = tm.Collector(cfg, clock=Clock(T0 + HOUR - 1))
            thread = threading.Thread(target=collector.run, daemon=True)
            start, cpu = time.perf_counter(), time.process_time()
            thread.start()
            while collector.metrics.get("events_absorbed") < args.events or not drained(cfg):
                time.sleep(0.05)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            collector.stop()
            thread.join()
        finally:
            cleanup(cfg)
    rate = args.events / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.source}: {args.events:,} events in {elapsed:.2f} s = {rate:,.0f} events/s"
        f" (target {TARGET_EVENTS_PER_S:,}); CPU {cpu:.2f} s = {args.events / cpu:,.0f}"
        f" events per CPU-second; {_checkpoints(collector)}; peak RSS {peak:,.0f} MB"
    )


def _checkpoints(collector: tm.Collector) -> str:
    metrics = collector.metrics
    return (
        f"{metrics.get('checkpoints'):.0f} checkpoints ({metrics.get('snapshots'):.0f} snapshots)"
    )


def otlp_requests(events: dict[str, Any], per_request: int) -> list[bytes]:
    """Protobuf ExportLogsServiceRequests of ``per_request`` log records each."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    columns = {k: v.tolist() for k, v in events.items()}
    n = len(columns["ts"])
    out = []
    for lo in range(0, n, per_request):
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        for i in range(lo, min(lo + per_request, n)):
            record = records.add()
            record.time_unix_nano = int(columns["ts"][i] * 1e9)
            for key, kind in (
                ("user_id", "int_value"),
                ("event_name", "string_value"),
                ("duration_ms", "double_value"),
            ):
                attribute = record.attributes.add()
                attribute.key = key
                setattr(attribute.value, kind, columns[key][i])
        out.append(request.SerializeToString())
    return out


def _send(address: tuple[str, int], chunk: list[bytes]) -> None:
    """One sender (a process of its own, as a service is): POST each body, wait for 200."""
    import http.client

    connection = http.client.HTTPConnection(*address, timeout=120)
    for body in chunk:
        connection.request("POST", "/v1/logs", body, {"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    connection.close()


def otlp(n_events: int, per_request: int, senders: int = 8) -> None:
    """Throughput of the OTLP/HTTP receiver: protobuf requests from ``senders`` processes
    (the collector's CPU time is its process's alone)."""
    import multiprocessing

    bodies = otlp_requests(make_events(n_events, windows=1, seed=1), per_request)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp), "nats")
        cfg["source"] = {
            "kind": "otlp",
            "listen": "127.0.0.1:0",
            "ack_wait": "60s",
            "fetch_messages": 200,
        }
        cfg["state"]["checkpoint_interval"] = "1s"
        collector = tm.Collector(cfg, clock=Clock(T0 + HOUR - 1))
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        while collector.source_address is None:
            time.sleep(0.01)
        address = collector.source_address
        chunks = [(address, bodies[i::senders]) for i in range(senders)]
        with multiprocessing.get_context("fork").Pool(senders) as pool:
            start, cpu = time.perf_counter(), time.process_time()
            pool.starmap(_send, chunks)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        collector.stop()
        thread.join()
    print(
        f"otlp: {n_events:,} events ({len(bodies):,} protobuf requests, {senders} senders)"
        f" in {elapsed:.2f} s = {n_events / elapsed:,.0f} events/s (target 100,000);"
        f" collector CPU {cpu:.2f} s = {n_events / cpu:,.0f} events per CPU-second;"
        f" {_checkpoints(collector)}"
    )


if __name__ == "__main__":
    main()
