"""Shared by the collector tests: real servers, synthetic events, publishing, the truth."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import telemagg as tm

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the window grid's start
HOUR = 3600
PARTITIONS = ["open", "save", "share", "close"]
MAX_PARTITIONS, MAX_CONTRIBUTIONS = 4, 3


def require_server(kind: str) -> str:
    """The local server's URL, or skip the test saying how CI starts it."""
    port = 4222 if kind == "nats" else 6379
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        pytest.skip(f"the {kind} server is not reachable on 127.0.0.1:{port} (.ci/run starts it)")
    return NATS_URL if kind == "nats" else REDIS_URL


class Clock:
    """The collector's clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_events(n: int, windows: int, seed: int, users: int = 50_000) -> dict[str, np.ndarray]:
    """Events in time order over ``windows`` hours from T0, four public event names."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(T0, T0 + windows * HOUR - 1, n))
    return {
        "user_id": rng.integers(0, users, n),
        "event_name": np.asarray(PARTITIONS, dtype=object)[rng.integers(0, len(PARTITIONS), n)],
        "duration_ms": rng.uniform(0, 1000, n).round(1),
        "ts": ts.round(3),
    }


def jsonl_bodies(events: dict[str, np.ndarray], per_message: int) -> list[bytes]:
    """One JSON-lines body per ``per_message`` events."""
    names = list(events)
    columns = [events[c].tolist() for c in names]
    lines = [json.dumps(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]
    return [
        "\n".join(lines[i : i + per_message]).encode() for i in range(0, len(lines), per_message)
    ]


def bounded_truth(events: dict[str, np.ndarray]) -> dict[tuple[str, str], int]:
    """Count per (window start ISO, event name) after bounding each unit to
    MAX_CONTRIBUTIONS events per partition and window (MAX_PARTITIONS never binds)."""
    window = ((events["ts"] - T0) // HOUR).astype(np.int64)
    names = np.asarray(events["event_name"], dtype=str)
    keys = np.rec.fromarrays([window, names, events["user_id"]])
    unique, counts = np.unique(keys, return_counts=True)
    truth: dict[tuple[str, str], int] = {}
    for (w, name, _user), c in zip(unique.tolist(), counts.tolist(), strict=True):
        key = (window_iso(int(w)), str(name))
        truth[key] = truth.get(key, 0) + min(c, MAX_CONTRIBUTIONS)
    return truth


def window_iso(index: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(T0 + index * HOUR, dt.UTC).isoformat()


def config(
    tmp_path: Path,
    kind: str,
    *,
    epsilon: float = 50.0,
    ledger_epsilon: float = 1000.0,
    **source: Any,
) -> dict[str, Any]:
    """A collector configuration on fresh names (stream, subject, durable) and files."""
    tag = uuid.uuid4().hex[:12]
    return {
        "source": {
            "kind": kind,
            "url": require_server(kind),
            "stream": f"TM_{tag}",
            "subject": f"tm.{tag}",
            "durable": f"tm_{tag}",
            "ack_wait": "1s",
            **source,
        },
        "aggregate": {
            "privacy_unit": "user_id",
            "by": ["event_name"],
            "metrics": ["count", "mean(duration_ms, 0, 1000)"],
            "max_partitions": MAX_PARTITIONS,
            "max_contributions": MAX_CONTRIBUTIONS,
            "time": "ts",
            "window": "1h",
            "allowed_lateness": "4h",
            "start": T0,
            "epsilon": epsilon,
            "delta": 0.0,
            "partitions": PARTITIONS,
        },
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}", "epsilon": ledger_epsilon},
        "output": {"dir": str(tmp_path / "releases")},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}", "checkpoint_interval": "1s"},
        "http": {"listen": "127.0.0.1:0"},
    }


async def _publish_nats(cfg: dict[str, Any], bodies: list[bytes]) -> None:
    import nats
    from nats.js.errors import NotFoundError

    source = cfg["source"]
    nc = await nats.connect(source["url"])
    js = nc.jetstream()
    try:
        await js.stream_info(source["stream"])
    except NotFoundError:
        await js.add_stream(name=source["stream"], subjects=[source["subject"]])
    for i in range(0, len(bodies), 100):
        await asyncio.gather(*(js.publish(source["subject"], b) for b in bodies[i : i + 100]))
    await nc.close()


def publish(cfg: dict[str, Any], bodies: list[bytes]) -> None:
    """Publish message bodies to the configured stream (created if missing)."""
    if cfg["source"]["kind"] == "nats":
        asyncio.run(_publish_nats(cfg, bodies))
        return
    import redis

    client = redis.Redis.from_url(cfg["source"]["url"])
    with client.pipeline(transaction=False) as pipe:
        for body in bodies:
            pipe.xadd(cfg["source"]["stream"], {"body": body})
        pipe.execute()
    client.close()


def cleanup(cfg: dict[str, Any]) -> None:
    """Delete the test's stream (and with it its consumers)."""
    source = cfg["source"]
    if source["kind"] == "nats":

        async def delete() -> None:
            import nats

            nc = await nats.connect(source["url"])
            with suppress(Exception):
                await nc.jetstream().delete_stream(source["stream"])
            await nc.close()

        asyncio.run(delete())
    else:
        import redis

        client = redis.Redis.from_url(source["url"])
        client.delete(source["stream"])
        client.close()


@contextmanager
def running(collector: tm.Collector) -> Iterator[tm.Collector]:
    """The collector's run loop in a thread; stopped (and checked to end cleanly) on exit."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            collector.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_until(lambda: collector.health.ready or bool(errors) or not thread.is_alive(), 20)
    try:
        yield collector
    finally:
        collector.stop()
        thread.join(60)
        if errors:
            raise errors[0]
    assert not thread.is_alive(), "the collector did not stop"


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(step)


def released_files(cfg: dict[str, Any]) -> list[Path]:
    return sorted(Path(cfg["output"]["dir"]).glob("window_start=*/release.parquet"))


def drained(cfg: dict[str, Any]) -> bool:
    """Whether every message in the source was delivered and acknowledged."""
    source = cfg["source"]
    if source["kind"] == "nats":

        async def check() -> bool:
            import nats

            nc = await nats.connect(source["url"])
            try:
                info = await nc.jetstream().consumer_info(source["stream"], source["durable"])
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)
            except Exception:
                return False
            finally:
                await nc.close()

        return asyncio.run(check())
    import redis

    client = redis.Redis.from_url(source["url"])
    try:
        groups = client.xinfo_groups(source["stream"])
    except redis.ResponseError:
        return False
    finally:
        client.close()
    group = next(
        (g for g in groups if g["name"] in (source["durable"].encode(), source["durable"])), None
    )
    return bool(group and group["pending"] == 0 and group["lag"] == 0)
