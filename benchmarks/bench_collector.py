"""Collector throughput: events/s from NATS JetStream (or Redis Streams) into the windows.

Publishes ``--events`` synthetic events as JSON lines, ``--per-message`` events a message
(1,000 by default, the batched case of issue 14), to a fresh stream on the local server,
then runs ``tm.Collector`` until every event is absorbed and checkpointed. Reported: events/s
from the collector's start to the last checkpoint (fetch, JSON decoding by Arrow, the
windowed Aggregator's ``add``, checkpoints with the pickled state, acks), and peak RSS.
Publishing is not timed. The query: ``count`` + ``mean(duration_ms)`` by ``event_name``
(4 public partitions), 1 h windows, 50,000 users.

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
    parser.add_argument("--source", choices=["nats", "redis"], default="nats")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--per-message", type=int, default=1000)
    parser.add_argument("--fetch", type=int, default=200, help="messages per fetch")
    args = parser.parse_args()

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
            start = time.perf_counter()
            thread.start()
            while collector.metrics.get("events_absorbed") < args.events or not drained(cfg):
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
            collector.stop()
            thread.join()
        finally:
            cleanup(cfg)
    rate = args.events / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.source}: {args.events:,} events in {elapsed:.2f} s = {rate:,.0f} events/s"
        f" (target {TARGET_EVENTS_PER_S:,}); peak RSS {peak:,.0f} MB"
    )


if __name__ == "__main__":
    main()
