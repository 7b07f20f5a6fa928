"""Collector soak: RSS of a ``telemagg serve`` process fed at a steady rate for N minutes.

Starts the collector as its own process (``python -m telemagg.cli serve``) on a fresh NATS
JetStream work-queue stream (acknowledged messages leave the server), publishes ``--rate``
events a second in messages of 1,000 JSON lines (their ``ts`` is the wall clock, users drawn
from ``--users``), with 1-minute windows released on the wall clock, and samples the
collector's RSS (``/proc/<pid>/status`` VmRSS) every ``--every`` seconds. At the end: the
collector's own counters from ``/metrics``, SIGTERM (checkpoint, exit 0), and a summary: RSS
at the first sample (the process starting), after one minute (the first window full), at
the end and the maximum, and the slope of RSS over the second half (MB a minute; flat is
~0).

Run from the repository root with the project's venv (servers on 127.0.0.1)::

    python benchmarks/soak_collector.py --minutes 10 --rate 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

PARTITIONS = ["open", "save", "share", "close"]


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def templates(n: int, per_message: int, users: int, seed: int) -> list[bytes]:
    """``n`` message bodies of ``per_message`` events each; ``TS`` stands for the time."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        user = rng.integers(0, users, per_message)
        name = rng.integers(0, len(PARTITIONS), per_message)
        duration = rng.uniform(0, 1000, per_message).round(1)
        lines = [
            f'{{"user_id": {u}, "event_name": "{PARTITIONS[e]}", "duration_ms": {d}, "ts": TS}}'
            for u, e, d in zip(user.tolist(), name.tolist(), duration.tolist(), strict=True)
        ]
        out.append("\n".join(lines).encode())
    return out


def pipeline(tmp: Path, stream: str, http_port: int) -> str:
    return f"""
[source]
kind = "nats"
url = "nats://127.0.0.1:4222"
stream = "{stream}"
subject = "soak.{stream}"
durable = "soak"
fetch_messages = 200
ack_wait = "60s"

[aggregate]
privacy_unit = "user_id"
by = ["event_name"]
metrics = ["count", "mean(duration_ms, 0, 1000)"]
max_partitions = 4
max_contributions = 3
time = "ts"
window = "1m"
allowed_lateness = "10s"
epsilon = 1.0
delta = 0.0
partitions = {json.dumps(PARTITIONS)}

[ledger]
url = "sqlite:///{tmp / "ledger.db"}"
epsilon = 1000.0

[output]
dir = "{tmp / "releases"}"

[state]
url = "sqlite:///{tmp / "state.db"}"
checkpoint_interval = "2s"

[http]
listen = "127.0.0.1:{http_port}"
"""


async def publish(args: argparse.Namespace, stream: str, stop_at: float) -> int:
    """Publish at ``args.rate`` events a second until ``stop_at``; the number published."""
    import nats
    from nats.js.api import RetentionPolicy

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(
        name=stream, subjects=[f"soak.{stream}"], retention=RetentionPolicy.WORK_QUEUE
    )
    bodies = templates(200, 1000, args.users, seed=1)
    per_second = max(1, args.rate // 1000)
    sent, i, tick = 0, 0, time.monotonic()
    while time.time() < stop_at:
        ts = f"{time.time():.3f}".encode()
        batch = [bodies[(i + k) % len(bodies)].replace(b"TS", ts) for k in range(per_second)]
        await asyncio.gather(*(js.publish(f"soak.{stream}", body) for body in batch))
        i += per_second
        sent += per_second * 1000
        tick += 1.0
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    await nc.close()
    return sent


async def delete_stream(stream: str) -> None:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("telemagg_collector_")] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=50_000, help="events a second")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--http-port", type=int, default=19464)
    args = parser.parse_args()

    stream = f"SOAK_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = tmp / "pipeline.toml"
        config.write_text(pipeline(tmp, stream, args.http_port))
        started = time.time()
        stop_at = started + args.minutes * 60
        publisher = subprocess.Popen(
            [
                *(sys.executable, __file__, "--publish-only", stream),
                *(str(stop_at), str(args.rate), "--users", str(args.users)),
            ],
        )
        time.sleep(2)  # the stream exists before the collector binds to it
        env = {**os.environ}
        log = (tmp / "collector.log").open("wb")
        collector = subprocess.Popen(
            [sys.executable, "-m", "telemagg.cli", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        samples: list[tuple[float, float]] = []
        cpu_start = _cpu_seconds(collector.pid)
        try:
            while time.time() < stop_at + 5 and collector.poll() is None:
                samples.append((time.time() - started, rss_mb(collector.pid)))
                print(f"t={samples[-1][0]:6.0f}s rss={samples[-1][1]:7.1f} MB", flush=True)
                time.sleep(args.every)
            cpu = _cpu_seconds(collector.pid) - cpu_start
            counters = metrics(args.http_port)
        finally:
            publisher.wait(60)
            collector.send_signal(signal.SIGTERM)
            code = collector.wait(120)
            log.close()
            asyncio.run(delete_stream(stream))
        if code != 0:
            print((tmp / "collector.log").read_text()[-3000:])
        summary = _summary(samples, counters, cpu, args, code)
        print(json.dumps(summary, indent=1))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(
    samples: list[tuple[float, float]],
    counters: dict[str, float],
    cpu: float,
    args: argparse.Namespace,
    code: int,
) -> dict[str, Any]:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half], rss[half], 1)[0] * 60) if half.sum() > 2 else float("nan")
    return {
        "minutes": args.minutes,
        "rate_events_per_s": args.rate,
        "samples": len(samples),
        "rss_first_sample_mb": round(float(rss[0]), 1),
        "rss_at_1_min_mb": round(float(rss[t >= 60][0]), 1) if (t >= 60).any() else None,
        "rss_end_mb": round(float(rss[-1]), 1),
        "rss_max_mb": round(float(rss.max()), 1),
        "rss_slope_second_half_mb_per_min": round(slope, 2),
        "collector_cpu_s": round(cpu, 1),
        "events_absorbed": counters.get("events_absorbed_total"),
        "windows_released": counters.get("windows_released_total"),
        "checkpoints": counters.get("checkpoints_total"),
        "snapshots": counters.get("snapshots_total"),
        "source_lag_messages": counters.get("source_lag"),
        "exit_code": code,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publish-only":
        extra = argparse.ArgumentParser()
        extra.add_argument("stream")
        extra.add_argument("stop_at", type=float)
        extra.add_argument("rate", type=int)
        extra.add_argument("--users", type=int, default=200_000)
        ns = extra.parse_args(sys.argv[2:])
        print(f"published {asyncio.run(publish(ns, ns.stream, ns.stop_at)):,} events", flush=True)
    else:
        main()
