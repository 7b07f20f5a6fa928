"""Event sources: NATS JetStream and Redis Streams, on their real servers.

A source hands the collector messages it has not processed yet. Positions (JetStream stream
sequences, Redis entry ids) are checkpointed with the engine's state; a message is
acknowledged only after the checkpoint that holds it committed, and a message delivered
again after a crash (its checkpoint committed, its ack lost) is recognised by its position,
acknowledged and skipped.

* JetStream: a durable pull consumer with explicit acks (stream and consumer created if
  missing). Unacknowledged messages come back after ``ack_wait``, in any order, so the
  processed positions are kept as a set of sequence ranges above the consumer's ack floor.
* Redis Streams: a consumer group read with XREADGROUP; on start the consumer's own pending
  entries (delivered before a crash, never acknowledged) are read again first, in id order,
  so one position (the last id checkpointed) is enough.
"""

from __future__ import annotations

import bisect
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from telemagg.errors import ConfigError, require
from telemagg.policy import parse_duration

from ._config import SourceConfig

__all__ = ["Message", "NatsSource", "RedisSource", "Source", "open_source"]


@dataclass(frozen=True)
class Message:
    """One message: its position in the source and its body."""

    position: Any
    body: bytes
    handle: Any = None  # what the source needs to acknowledge it


class Source(ABC):
    """Where the collector's messages come from."""

    kind: str

    @abstractmethod
    async def open(self, positions: Any) -> None:
        """Connect, create what is missing, and restore the checkpointed ``positions``."""

    @abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages not processed yet (waits at most ``timeout`` s)."""

    @abstractmethod
    def positions(self, held: list[Message]) -> Any:
        """JSON-serialisable positions once ``held`` are processed (for the checkpoint)."""

    @abstractmethod
    async def ack(self, held: list[Message]) -> None:
        """Acknowledge messages whose checkpoint committed."""

    @abstractmethod
    async def lag(self) -> int | None:
        """Messages in the source not yet delivered to this collector, if known."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect (unacknowledged messages will be delivered again)."""


# --------------------------------------------------------------------------- NATS JetStream


def _contains(ranges: list[list[int]], seq: int) -> bool:
    """Whether ``seq`` lies in one of the sorted, disjoint inclusive ``ranges``.

    >>> _contains([[1, 3], [7, 9]], 8), _contains([[1, 3], [7, 9]], 5)
    (True, False)
    """
    i = bisect.bisect_right(ranges, [seq, float("inf")]) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def _merge(ranges: list[list[int]], seqs: list[int], floor: int) -> list[list[int]]:
    """``ranges`` plus ``seqs``, merged into sorted disjoint ranges, those <= ``floor`` gone.

    >>> _merge([[1, 3]], [4, 5, 9], 0)
    [[1, 5], [9, 9]]
    >>> _merge([[1, 5], [9, 9]], [6], 4)
    [[5, 6], [9, 9]]
    """
    points = sorted([*([r[0], r[1]] for r in ranges), *([s, s] for s in seqs)])
    out: list[list[int]] = []
    for lo, hi in points:
        lo = max(lo, floor + 1)
        if hi < lo:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


class NatsSource(Source):
    """A JetStream durable pull consumer."""

    kind = "nats"

    def __init__(self, config: SourceConfig, max_ack_pending: int) -> None:
        self.config = config
        self._max_ack_pending = max_ack_pending
        self._done: list[list[int]] = []  # processed sequences above the ack floor
        self._floor = 0
        self._in_flight: set[int] = set()  # fetched, not yet checkpointed
        self._redelivered: list[Any] = []  # their redeliveries: acknowledged with them
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None

    async def open(self, positions: Any) -> None:
        nats: Any = require("nats", "collector")
        api: Any = require("nats.js.api", "collector")
        errors: Any = require("nats.js.errors", "collector")
        config = self.config
        if isinstance(positions, dict):
            self._done = [list(map(int, r)) for r in positions.get("done", [])]
            self._floor = int(positions.get("floor", 0))
        self._nc = await nats.connect(
            config.server_url(), connect_timeout=5, max_reconnect_attempts=-1
        )
        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(config.stream)
        except errors.NotFoundError:
            await self._js.add_stream(name=config.stream, subjects=[config.subject])
        consumer = api.ConsumerConfig(
            durable_name=config.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=float(parse_duration(config.ack_wait, "source.ack_wait")),
            max_ack_pending=self._max_ack_pending,
            filter_subject=config.subject,
        )
        self._sub = await self._js.pull_subscribe(
            config.subject, durable=config.durable, stream=config.stream, config=consumer
        )

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        try:
            msgs = await self._sub.fetch(batch=max_messages, timeout=timeout)
        except TimeoutError:  # nothing to fetch (nats-py raises both kinds)
            return []
        fresh: list[Message] = []
        for msg in msgs:  # a loop over messages (1,000s of events each), not events
            seq = int(msg.metadata.sequence.stream)
            if seq <= self._floor or _contains(self._done, seq):
                await msg.ack()  # held by a committed checkpoint already
                continue
            if seq in self._in_flight:  # ack_wait ran out before its checkpoint
                self._redelivered.append(msg)
                continue
            self._in_flight.add(seq)
            fresh.append(Message(seq, msg.data, msg))
        return fresh

    def positions(self, held: list[Message]) -> Any:
        self._done = _merge(self._done, [int(m.position) for m in held], self._floor)
        return {"floor": self._floor, "done": self._done}

    async def ack(self, held: list[Message]) -> None:
        for message in held:
            await message.handle.ack()
            self._in_flight.discard(int(message.position))
        redelivered, self._redelivered = self._redelivered, []
        for msg in redelivered:
            if _contains(self._done, int(msg.metadata.sequence.stream)):
                await msg.ack()
            else:  # still in flight: acknowledged with its first delivery's checkpoint
                self._redelivered.append(msg)
        if held:
            try:
                await self._nc.flush()
                info = await self._js.consumer_info(self.config.stream, self.config.durable)
            except TimeoutError:
                return  # the floor only keeps the position set small: next time
            self._floor = max(self._floor, int(info.ack_floor.stream_seq))
            self._done = _merge(self._done, [], self._floor)

    async def lag(self) -> int | None:
        info = await self._js.consumer_info(self.config.stream, self.config.durable)
        return int(info.num_pending)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


# --------------------------------------------------------------------------- Redis Streams


def _entry_id(value: bytes | str) -> tuple[int, int]:
    """A Redis stream entry id as a comparable pair.

    >>> _entry_id(b"1700000000000-3") < _entry_id("1700000000000-12")
    True
    """
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisSource(Source):
    """A consumer of a Redis Streams consumer group; the body is the entry's ``body`` field."""

    kind = "redis"
    FIELD = b"body"

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self._last: tuple[int, int] = (0, 0)  # the last entry id checkpointed
        self._reading_pending = True
        self._pending_cursor: bytes | str = "0"
        self._redis: Any = None

    async def open(self, positions: Any) -> None:
        redis: Any = require("redis.asyncio", "collector")
        exceptions: Any = require("redis.exceptions", "collector")
        if isinstance(positions, dict) and positions.get("last"):
            self._last = _entry_id(str(positions["last"]))
        self._redis = redis.from_url(self.config.server_url())
        try:
            await self._redis.xgroup_create(
                self.config.stream, self.config.durable, id="0", mkstream=True
            )
        except exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._reading_pending, self._pending_cursor = True, "0"

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        # First this consumer's own pending entries (from id 0, a cursor moving over them:
        # they stay pending until acknowledged), then new ones (">").
        start = self._pending_cursor if self._reading_pending else ">"
        reply = await self._redis.xreadgroup(
            self.config.durable,
            self.config.consumer,
            {self.config.stream: start},
            count=max_messages,
            block=None if self._reading_pending else max(1, int(timeout * 1000)),
        )
        entries = reply[0][1] if reply else []
        if self._reading_pending and not entries:
            self._reading_pending = False
            return await self.fetch(max_messages, timeout)
        fresh: list[Message] = []
        stale: list[bytes] = []
        for entry_id, fields in entries:  # a loop over messages, not events
            position = _entry_id(entry_id)
            if position <= self._last:
                stale.append(entry_id)
                continue
            fresh.append(Message(position, fields.get(self.FIELD, b""), entry_id))
        if stale:
            await self._redis.xack(self.config.stream, self.config.durable, *stale)
        if self._reading_pending:
            self._pending_cursor = entries[-1][0]
        return fresh

    def positions(self, held: list[Message]) -> Any:
        if held:
            self._last = max(self._last, *(m.position for m in held))
        return {"last": f"{self._last[0]}-{self._last[1]}"}

    async def ack(self, held: list[Message]) -> None:
        if held:
            await self._redis.xack(
                self.config.stream, self.config.durable, *(m.handle for m in held)
            )

    async def lag(self) -> int | None:
        for group in await self._redis.xinfo_groups(self.config.stream):
            name = group.get("name")
            if name in (self.config.durable, self.config.durable.encode()):
                lag = group.get("lag")
                return None if lag is None else int(lag)
        return None

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


def open_source(config: SourceConfig, max_ack_pending: int) -> Source:
    """The source ``[source] kind`` names."""
    if config.kind == "nats":
        return NatsSource(config, max_ack_pending)
    if config.kind == "redis":
        return RedisSource(config)
    raise ConfigError(f"source.kind {config.kind!r} is not a message source here")
