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
* OTLP/HTTP logs: a receiver whose requests are answered only once checkpointed (see
  :class:`OtlpSource`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import hashlib
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from telemagg.errors import ConfigError, require
from telemagg.policy import parse_duration

from ._config import SourceConfig

#: Seconds the first connection to a source may take before the collector gives up.
CONNECT_TIMEOUT_S = 10.0

__all__ = ["Message", "NatsSource", "OtlpSource", "RedisSource", "Source", "open_source"]


@dataclass(frozen=True)
class Message:
    """One message: its position in the source and its body."""

    position: Any
    body: bytes
    handle: Any = None  # what the source needs to acknowledge it
    columns: dict[str, list[Any]] | None = None  # events the source decoded (OTLP)
    digest: str | None = None  # OTLP: the request's digest, checkpointed for idempotency


class Source(ABC):
    """Where the collector's messages come from."""

    kind: str
    #: Clients wait for the checkpoint (OTLP): checkpoint as soon as the last one allows.
    clients_wait: bool = False
    #: Deliveries recognised as repeats of ones already held or committed (OTLP retries).
    duplicates: int = 0

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

    def restore_digests(self, digests: dict[str, float], since: float) -> None:
        """The checkpointed digests of requests committed at ``since`` or later (OTLP)."""
        del digests, since  # only sources that dedupe requests keep them

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

        async def quiet(exc: Exception) -> None:
            pass  # connection errors surface as exceptions or, once connected, reconnects

        # Reconnect forever once connected, but fail the first connection after a while.
        self._nc = await asyncio.wait_for(
            nats.connect(
                config.server_url(),
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=quiet,
            ),
            CONNECT_TIMEOUT_S,
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
            body = (fields or {}).get(self.FIELD, b"")  # a trimmed entry has no fields
            fresh.append(Message(position, body, entry_id))
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


# --------------------------------------------------------------------------- OTLP/HTTP logs


class _Request:
    """One OTLP export request waiting for the checkpoint that holds its events."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


_SCALARS = frozenset(("string_value", "bool_value", "int_value", "double_value"))


def otlp_columns(body: bytes, content_type: str, time_column: str) -> dict[str, list[Any]]:
    """The log records of an OTLP ExportLogsServiceRequest as event columns: each record's
    attributes are its columns (absent ones None; arrays, maps and bytes are no columns:
    None); the record's time (or observed time) fills ``time_column`` in epoch seconds
    when no attribute of that name is given.

    Protobuf arrives as objects, so this is a loop over records: ~3.5 us a record of three
    attributes (iterating them alone costs ~1 us: upb builds an object per attribute).

    >>> from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ...     ExportLogsServiceRequest)
    >>> request = ExportLogsServiceRequest()
    >>> records = request.resource_logs.add().scope_logs.add().log_records
    >>> for user in ("u1", "u2"):
    ...     record = records.add()
    ...     record.time_unix_nano = 1_500_000_000
    ...     attribute = record.attributes.add()
    ...     attribute.key, attribute.value.string_value = "user_id", user
    >>> otlp_columns(request.SerializeToString(), "application/x-protobuf", "ts")
    {'user_id': ['u1', 'u2'], 'ts': [1.5, 1.5]}
    """
    service: Any = require("opentelemetry.proto.collector.logs.v1.logs_service_pb2", "collector")
    request = service.ExportLogsServiceRequest()
    if content_type.startswith("application/json"):
        json_format: Any = require("google.protobuf.json_format", "collector")
        json_format.Parse(body, request, ignore_unknown_fields=True)
    else:
        request.ParseFromString(body)
    columns: dict[str, list[Any]] = {}
    times: list[Any] = []
    n = 0
    for resource_logs in request.resource_logs:  # records arrive as objects: a loop over them
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                for kv in record.attributes:
                    column = columns.get(kv.key)
                    if column is None:
                        column = columns[kv.key] = [None] * n
                    if len(column) == n:  # a repeated key keeps its first value
                        value = kv.value
                        kind = value.WhichOneof("value")
                        column.append(getattr(value, kind) if kind in _SCALARS else None)
                nanos = record.time_unix_nano or record.observed_time_unix_nano
                times.append(nanos / 1e9 if nanos else None)
                n += 1
                for column in columns.values():
                    if len(column) < n:
                        column.append(None)
    if time_column not in columns:
        columns[time_column] = times
    return columns


def columns_table(columns: dict[str, list[Any]]) -> Any:
    """An Arrow table of event columns; a column mixing types becomes strings. (Built on the
    collector's worker, not in the HTTP threads: Arrow releases the GIL for each column,
    and with many threads busy each release costs a wait.)"""
    pa: Any = require("pyarrow", "pyarrow")
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(arrays)


#: At most this many committed request digests are kept (the newest), whatever the window.
MAX_DIGESTS = 200_000


class OtlpSource(Source):
    """An OTLP/HTTP logs receiver (``POST /v1/logs``, protobuf or JSON, gzip or not).

    A request is answered 200 only after the checkpoint holding its events committed; 503
    with ``Retry-After`` when the collector is at capacity (at most ``max_requests`` waiting)
    or stopping, or when the events are not checkpointed within ``ack_timeout`` s; the
    OpenTelemetry exporter retries both (the same body: it serialises a batch once).

    Idempotency: OTLP has no request id, so a request is known by a digest (BLAKE2b, 128
    bits) of its content type and decompressed body. A request whose digest is

    * committed within ``source.dedupe_window`` (default 10 min; at most the newest
      ``MAX_DIGESTS`` requests) is answered 200 and not absorbed again: the digests are
      checkpointed with the events, so this holds across restarts;
    * still waiting for its checkpoint (the first attempt timed out, or is in flight) waits
      for that one and gets its answer.

    So a retry counts once if it arrives within the window; one arriving later (the SDK
    gives up after about a minute of retries) counts again, as would two distinct requests
    with byte-identical bodies within the window (log records carry nanosecond times, so
    an SDK practically never sends two). The bounded state caps what any duplicate adds.
    """

    kind = "otlp"
    clients_wait = True

    def __init__(self, config: SourceConfig, time_column: str, max_requests: int) -> None:
        self.config = config
        self.time_column = time_column
        self.ack_timeout = float(parse_duration(config.ack_wait, "source.ack_wait"))
        window = parse_duration(config.dedupe_window, "source.dedupe_window", allow_zero=True)
        self.dedupe_window = float(window)
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=max_requests)
        self._server: Any = None
        self._lock = threading.Lock()
        self._closing = False
        self._committed: OrderedDict[str, float] = OrderedDict()  # digest: commit time
        self._waiting: dict[str, _Request] = {}  # digest: the request holding its events
        self.duplicates = 0
        self.address: tuple[str, int] | None = None

    def restore_digests(self, digests: dict[str, float], since: float) -> None:
        newest = sorted((at, d) for d, at in digests.items() if at >= since)[-MAX_DIGESTS:]
        with self._lock:
            self._committed = OrderedDict((d, at) for at, d in newest)

    def _admit(self, digest: str) -> tuple[_Request, bool]:
        """The request that holds these events, and whether it is a new one."""
        with self._lock:
            if digest in self._committed:
                self.duplicates += 1
                done = _Request()
                done.ok = True
                done.done.set()
                return done, False
            original = self._waiting.get(digest)
            if original is not None:
                self.duplicates += 1
                return original, False
            request = self._waiting[digest] = _Request()
            return request, True

    def _forget(self, digest: str) -> None:
        with self._lock:
            self._waiting.pop(digest, None)

    async def open(self, positions: Any) -> None:
        source = self
        # Warm up before the first request: Arrow's first conversion of Python values
        # imports pandas (~0.3 s), which would otherwise delay that request.
        otlp_columns(b"", "application/x-protobuf", self.time_column)
        columns_table({"x": [1]})

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/logs":
                    return self._reply(404, b"", "text/plain")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = self.headers.get("Content-Type", "application/x-protobuf")
                try:
                    if self.headers.get("Content-Encoding", "").lower() == "gzip":
                        body = gzip.decompress(body)
                    digest = hashlib.blake2b(
                        body, digest_size=16, person=kind.encode()[:16]
                    ).hexdigest()
                    request, new = source._admit(digest)
                    if new:
                        try:
                            columns = otlp_columns(body, kind, source.time_column)
                            events = columns if columns[source.time_column] else None
                            if source._closing:
                                raise queue.Full
                            source._queue.put_nowait(Message(digest, b"", request, events, digest))
                        except queue.Full:
                            source._forget(digest)
                            return self._reply(503, b"collector at capacity", "text/plain", True)
                        except BaseException:
                            source._forget(digest)
                            raise
                except Exception:
                    return self._reply(400, b"malformed OTLP logs request", "text/plain")
                request.done.wait(source.ack_timeout)
                if not request.ok:
                    return self._reply(503, b"not checkpointed in time", "text/plain", True)
                answer = b"{}" if kind.startswith("application/json") else b""
                self._reply(200, answer, kind)

            def _reply(self, status: int, body: bytes, kind: str, retry: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if retry:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        host, _, port = self.config.listen.rpartition(":")
        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self._server.daemon_threads = True
        self.address = self._server.server_address[:2]
        threading.Thread(
            target=self._server.serve_forever, name="telemagg-otlp", daemon=True
        ).start()

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        try:
            first = await asyncio.to_thread(self._queue.get, True, timeout)
        except queue.Empty:
            return []
        messages = [first]
        while len(messages) < max_messages:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return messages

    def positions(self, held: list[Message]) -> Any:
        return {}  # a request not answered 200 is retried by the client, not redelivered

    async def ack(self, held: list[Message]) -> None:
        now = time.time()
        with self._lock:
            for message in held:
                assert message.digest is not None
                self._waiting.pop(message.digest, None)
                if self.dedupe_window:
                    self._committed[message.digest] = now
            horizon = now - self.dedupe_window
            committed = self._committed
            while committed and (
                len(committed) > MAX_DIGESTS or next(iter(committed.values())) < horizon
            ):
                committed.popitem(last=False)
        for message in held:
            message.handle.ok = True
            message.handle.done.set()

    async def lag(self) -> int | None:
        return self._queue.qsize()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        while True:  # requests never absorbed: 503, the client retries
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            assert message.digest is not None
            self._forget(message.digest)
            message.handle.done.set()


def open_source(config: SourceConfig, max_ack_pending: int, time_column: str) -> Source:
    """The source ``[source] kind`` names."""
    if config.kind == "nats":
        return NatsSource(config, max_ack_pending)
    if config.kind == "redis":
        return RedisSource(config)
    if config.kind == "otlp":
        return OtlpSource(config, time_column, max_requests=max_ack_pending)
    raise ConfigError(f"source.kind must be 'nats', 'redis' or 'otlp'; got {config.kind!r}")
