"""The collector's run loop: fetch, absorb, release, checkpoint, acknowledge.

The event loop fetches at most ``source.fetch_messages`` messages at a time; ONE worker
thread decodes them (vectorised, by Arrow), absorbs them into the windowed engine at the
collector's clock, releases due windows and writes checkpoints, while the loop fetches the
next messages. Every second the windows due on the clock are released; at least every
``state.checkpoint_interval``, after ``state.checkpoint_events`` events, and after any
release, a checkpoint commits (a journal append of the batches absorbed since the last
one, or a snapshot of the whole state: see :mod:`telemagg.collector._checkpoint`).

Crash safety, step by step (a window's id is its start time):

1. the ledger is charged for window W, its noise drawn (inside ``release_closed``);
2. the release is written in full to W's hidden pending file and synced;
3. ONE state-store transaction commits the engine's state (W no longer in it), the source
   positions of every absorbed message, and W as released (with its file and charge);
4. the pending file is renamed into place (atomic) and the messages are acknowledged;
5. the next checkpoint marks W's file as published.

A checkpoint that releases a window is always a snapshot, so the journal replayed on
restart never spans a release. A crash before 3 restarts from the previous checkpoint: W is
still open in it and is released again, so the ledger holds two charges for W (its budget
is over-counted by one window, never under-counted; the first noisy result was never
written anywhere readable), and the unacknowledged messages are delivered again and
absorbed once (positions after the checkpoint are unknown to it). A crash after 3 finds W
committed: its pending file is renamed on restart, W is never released again, and
redelivered messages whose positions the checkpoint holds are acknowledged and skipped. A
file that cannot be written (disk full) stops the collector before step 3, with the same
outcome as a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemagg._storage import redact_url
from telemagg.errors import ConfigError, SchemaError, TelemaggError, require
from telemagg.hygiene import pseudonymize, scrub_pii
from telemagg.ledger import Ledger
from telemagg.policy import parse_duration

from ._checkpoint import CheckpointStore, WindowRecord
from ._config import CollectorConfig, load_config
from ._decode import Decoder, project
from ._engine import Engine, window_start
from ._ops import Health, Metrics, serve_http
from ._output import FILE_NAME, finish, window_path, write_pending
from ._sources import Message, Source, columns_table, open_source

__all__ = ["Collector"]

log = logging.getLogger("telemagg.collector")

RELEASE_CHECK_S = 1.0
LAG_CHECK_S = 5.0
FETCH_TIMEOUT_S = 0.2
#: ... and while messages wait for their checkpoint (not to delay it).
BUSY_FETCH_TIMEOUT_S = 0.005
#: Fetches decoded or waiting for the worker before the loop stops fetching (backpressure).
PIPELINE_DEPTH = 2
#: Seconds between checkpoints while the source has nothing more to deliver.
IDLE_CHECKPOINT_S = 0.1
#: Checkpoints prepared or being written at once (one is written while the next prepares).
MAX_COMMITTING = 2
#: Events decoded and waiting before the worker absorbs them in one ``add``.
ABSORB_EVENTS = 200_000


@dataclass(frozen=True)
class Prepared:
    """A checkpoint ready to be written (see :meth:`Collector._prepare`)."""

    positions: dict[str, Any]
    held: list[Message]
    windows: list[WindowRecord]
    published: list[str]
    snapshot: bytes | None
    journal: list[tuple[float, bytes]]


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: the messages and windows it holds, and how long it took."""

    held: list[Message]
    windows: list[WindowRecord]
    seconds: float


class Collector:
    """A long-running, crash-safe collector: one source, one windowed query, one ledger.

    ``config`` is a path to a TOML file, TOML text, a mapping or a
    :class:`~telemagg.collector.CollectorConfig`; ``clock`` gives the operator's time in
    epoch seconds (the wall clock; tests pass their own). :meth:`run` blocks until
    :meth:`stop` or SIGTERM/SIGINT, then checkpoints and returns.

    >>> import telemagg as tm
    >>> tm.Collector({"source": {"kind": "nats"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: aggregate is required
    """

    def __init__(
        self,
        config: Any,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config: CollectorConfig = load_config(config)
        self.config.hygiene and self.config.hygiene.key()  # a missing key fails now, not later
        self.metrics = Metrics()
        self.health = Health()
        self.http_address: tuple[str, int] | None = None
        self.source_address: tuple[str, int] | None = None  # the OTLP receiver's
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._waiting: list[Any] = []  # decoded tables not absorbed yet
        self._waiting_events = 0
        self._staged_events = 0  # events staged since the last prepared checkpoint
        self._snapshot_due = True  # the first checkpoint is a snapshot
        self._snapshot_size = 0  # bytes of the last snapshot
        self._journal_size = 0  # bytes journalled since it
        source = self.config.source
        dedupe = parse_duration(source.dedupe_window, "source.dedupe_window", allow_zero=True)
        self._dedupe_s: float | None = float(dedupe) if source.kind == "otlp" and dedupe else None

    def __repr__(self) -> str:
        source = self.config.source
        return f"Collector(source={source.kind}:{source.stream}, state={self.config.state.name!r})"

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Run until stopped; checkpoint on the way out."""
        asyncio.run(self._main())

    def stop(self) -> None:
        """Ask the collector to checkpoint and return from :meth:`run` (any thread)."""
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
        config = self.config
        require("pyarrow", "pyarrow")
        self._store = CheckpointStore(config.state.url, config.state.name)
        resources: list[Any] = [self._store]
        server = None
        source: Source | None = None
        try:
            self._ledger = Ledger(
                config.ledger.url,
                config.ledger.epsilon,
                config.ledger.delta,
                window=config.ledger.window,
            )
            resources.append(self._ledger)
            consent = None
            if config.consent is not None:
                from telemagg.consent import ConsentRegistry

                consent = ConsentRegistry(config.consent.url)
                resources.append(consent)
            purpose = config.consent.purpose if config.consent else None
            checkpoint = self._store.load()
            if checkpoint is None or checkpoint.engine is None:
                self._engine = Engine.create(config.aggregate, consent, purpose, self._clock())
                positions: dict[str, Any] = {}
            else:
                self._engine = Engine.loads(checkpoint.engine, config.aggregate, consent)
                self._engine.replay(checkpoint.journal)
                positions = checkpoint.positions
            self._decoder = Decoder(config.source.format, self._engine.columns)
            self._released_ids = {w.window_start for w in self._store.released()}
            self._published = self._finish_committed()
            self._check_output()
            source = open_source(
                config.source, 10 * config.source.fetch_messages, config.aggregate.time
            )
            try:
                await source.open(positions.get("source"))
            except (OSError, TimeoutError, ConnectionError) as exc:
                raise TelemaggError(
                    f"source {config.source.kind} at {redact_url(config.source.server_url())}"
                    f" is unreachable: {exc or type(exc).__name__}"
                ) from None
            except Exception as exc:
                if type(exc).__module__.split(".")[0] not in ("nats", "redis"):
                    raise
                raise TelemaggError(
                    f"source {config.source.kind} at {redact_url(config.source.server_url())}"
                    f" failed: {type(exc).__name__}: {exc}"
                ) from None
            if checkpoint is not None and self._dedupe_s is not None:
                source.restore_digests(checkpoint.digests, time.time() - self._dedupe_s)
            self.source_address = getattr(source, "address", None)
            if config.http.listen:
                server = serve_http(config.http.listen, self.metrics, self.health)
                self.http_address = server.server_address[:2]  # type: ignore[assignment]
            self._update_budget()
            self.health.ready = True
            log.info(
                "collector started",
                extra={
                    "source": config.source.kind,
                    "state": config.state.name,
                    "resumed": checkpoint is not None,
                },
            )
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="telemagg-collector")
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="telemagg-checkpoint")
            resources += [_Shutdown(self._committer), _Shutdown(self._worker)]
            await self._run(source)
        finally:
            self.health.ready = False
            if server is not None:
                server.shutdown()
                server.server_close()
            if source is not None:
                await source.close()
            for resource in reversed(resources):
                resource.close()
        log.info("collector stopped", extra={"state": config.state.name})

    def _check_output(self) -> None:
        """Refuse an output directory holding windows this state store never released: a
        second collector writing there, or a lost state store, would release them again."""
        directory = self.config.output.dir
        found = {
            p.parent.name.removeprefix("window_start=")
            for p in directory.glob(f"window_start=*/{FILE_NAME}")
        }
        foreign = sorted(found - self._released_ids)
        if foreign:
            raise ConfigError(
                f"output.dir {str(directory)!r} holds releases of windows this collector's"
                f" state (state.name {self.config.state.name!r}) never released, e.g."
                f" {foreign[0]}: another collector writes there, or the state store was lost;"
                " use a fresh output.dir (re-releasing would publish a window twice)"
            )

    def _finish_committed(self) -> list[str]:
        """Rename the pending files of windows committed before a crash."""
        done = []
        for record in self._store.released(unpublished_only=True):
            if finish(Path(record.path)):
                done.append(record.window_start)
            else:
                log.error(
                    "released window has neither its file nor its pending file",
                    extra={"window_start": record.window_start, "path": record.path},
                )
        return done

    # ------------------------------------------------------------------ the loop

    async def _run(self, source: Source) -> None:
        """Fetch on the event loop; decode, absorb, release and checkpoint on the worker.

        The worker is ONE thread, so the engine is only ever touched by it, in order; Arrow's
        decoding and numpy's sorting release the GIL, so they overlap with the next fetch.
        At most ``PIPELINE_DEPTH`` fetches wait for the worker (backpressure on the source),
        and checkpoints are pipelined: the next one is prepared (its batches absorbed and
        serialised) while the last one is written to the store, at most ``MAX_COMMITTING``
        at a time, written in order; messages are acknowledged when the checkpoint holding
        them has committed.
        """
        config = self.config
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        interval = float(_seconds(config.state.checkpoint_interval))
        staged: collections.deque[tuple[asyncio.Future[int], list[Message]]] = collections.deque()
        held: list[Message] = []
        held_events = 0
        windows: list[WindowRecord] = []
        committing: collections.deque[asyncio.Future[Committed]] = collections.deque()
        preparing = 0  # checkpoints whose batches the worker has not serialised yet
        last_checkpoint = last_release = last_lag = time.monotonic()

        def work(call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(self._worker, call, *args)

        def checkpoint(
            held: list[Message], events: int, windows: list[WindowRecord]
        ) -> asyncio.Future[Committed]:
            # Submitted to the worker NOW, so that it runs after exactly the batches staged
            # so far (the worker is first in, first out).
            nonlocal preparing
            preparing += 1
            began = time.monotonic()
            positions = {"source": source.positions(held)}
            preparation = work(self._prepare, positions, held, events, windows)

            async def commit() -> Committed:
                nonlocal preparing
                try:
                    prepared = await preparation
                finally:
                    preparing -= 1
                # One committer thread: checkpoints commit in the order they were prepared.
                return await loop.run_in_executor(self._committer, self._write, prepared, began)

            return asyncio.ensure_future(commit())

        async def settle_staged(block: bool = True) -> None:
            nonlocal held_events
            while staged and (block or staged[0][0].done()):
                future, messages = staged.popleft()
                held_events += await future
                held.extend(messages)

        async def settle(block: bool) -> None:
            await settle_staged(block)
            while committing and (block or committing[0].done()):
                committed = await committing.popleft()
                await self._acknowledge(source, committed)
                self.metrics.set("checkpoint_seconds", committed.seconds)

        while not self._stopping.is_set():
            busy = held or staged or committing  # a checkpoint will be due
            timeout = BUSY_FETCH_TIMEOUT_S if busy else FETCH_TIMEOUT_S
            messages = await source.fetch(config.source.fetch_messages, timeout)
            if messages:
                self.metrics.count("messages_received", len(messages))
                staged.append((work(self._stage, messages), messages))
            await settle(block=len(staged) > PIPELINE_DEPTH)
            now = time.monotonic()
            if now - last_release >= RELEASE_CHECK_S:
                windows += await work(self._release)
                last_release = now
            if now - last_lag >= LAG_CHECK_S:
                with contextlib.suppress(Exception):  # lag is informative only
                    lag = await source.lag()
                    if lag is not None:
                        self.metrics.set("source_lag", lag)
                last_lag = now
            self.metrics.set("held_events", held_events)
            self.metrics.set("requests_duplicate", source.duplicates)
            # Group commit: clients waiting for their checkpoint (OTLP) get one as soon as
            # the last one is prepared; what arrives while one is written goes in the next
            # (journal appends cost O(new events), whatever the state's size).
            # A source with nothing more to deliver now gets its checkpoint (and acks) soon.
            idle = not messages and not staged
            wait = 0.0 if source.clients_wait else IDLE_CHECKPOINT_S if idle else interval
            due = now - last_checkpoint >= wait and (held or self._published)
            free = len(committing) < MAX_COMMITTING and not preparing
            if free and (windows or held_events >= config.state.checkpoint_events or due):
                # The worker absorbs every staged batch before it prepares this checkpoint:
                # the checkpoint must hold (and position) exactly those messages.
                await settle_staged()
                committing.append(checkpoint(held, held_events, windows))
                held, held_events, windows = [], 0, []
                last_checkpoint = time.monotonic()
        # Graceful stop: every fetched message decoded, absorbed and checkpointed.
        await settle(block=True)
        await self._acknowledge(source, await checkpoint(held, held_events, windows))

    def _stage(self, messages: list[Message]) -> int:
        """(worker) Decode messages into tables waiting to be absorbed, absorbing them once
        enough wait; the number of events."""
        bodies = [m.body for m in messages if m.columns is None]
        tables, malformed = self._decoder.decode(bodies)
        tables += [columns_table(m.columns) for m in messages if m.columns is not None]
        if malformed:
            self.metrics.count("messages_malformed", malformed)
            log.warning("malformed messages skipped", extra={"messages": malformed})
        total = 0
        for table in tables:
            total += int(table.num_rows)
            self._waiting.append(self._clean(project(table, self._engine.columns)))
        self._waiting_events += total
        self._staged_events += total
        self.metrics.count("events_received", total)
        if self._waiting_events >= ABSORB_EVENTS:
            self._absorb()
        return total

    def _absorb(self) -> None:
        """(worker) Absorb the waiting tables in ONE ``add`` (a call has a fixed cost, and
        bounding works on large batches best)."""
        if not self._waiting:
            return
        pa: Any = require("pyarrow", "pyarrow")
        waiting, self._waiting, self._waiting_events = self._waiting, [], 0
        try:
            batch = pa.concat_tables(waiting, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column's type differs between them
            self._absorb_each(waiting)
            return
        if len(waiting) > 1:
            try:
                self._engine.add(self._dictionary_keys(batch), self._clock())
            except (SchemaError, ConfigError):  # find the table that does not fit
                self._absorb_each(waiting)
                return
            self.metrics.count("events_absorbed", int(batch.num_rows))
        else:
            self._absorb_each(waiting)

    def _dictionary_keys(self, table: Any) -> Any:
        """String columns of the privacy unit and ``by`` dictionary-encoded by Arrow (in
        C++): the aggregator then reads each distinct value once, not every event's."""
        pa: Any = require("pyarrow", "pyarrow")
        aggregate = self.config.aggregate
        for name in (aggregate.privacy_unit, *aggregate.by):
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                encoded = column.dictionary_encode()
                table = table.set_column(table.column_names.index(name), name, encoded)
        return table

    def _absorb_each(self, tables: list[Any]) -> None:
        now = self._clock()
        for table in tables:
            n = int(table.num_rows)
            try:
                self._engine.add(self._dictionary_keys(table), now)
            except (SchemaError, ConfigError) as exc:
                # The batch does not fit the query (a column of the wrong type): skip it.
                self.metrics.count("events_dropped", n, reason="schema")
                log.warning("batch skipped: %s", exc, extra={"events": n})
                continue
            self.metrics.count("events_absorbed", n)

    def _clean(self, table: Any) -> Any:
        """Hygiene: pseudonymise the privacy unit, scrub free-text columns."""
        hygiene = self.config.hygiene
        if hygiene is None:
            return table
        pa: Any = require("pyarrow", "pyarrow")
        key = hygiene.key()
        unit = self.config.aggregate.privacy_unit
        if key is not None:
            encoded = table.column(unit).combine_chunks().dictionary_encode()
            pseudonyms = pseudonymize(encoded.dictionary.to_pylist(), key=key)  # per unit
            values = pa.array(pseudonyms.tolist(), pa.string()).take(encoded.indices)
            table = table.set_column(table.column_names.index(unit), unit, values)
        for column in hygiene.scrub:
            if column in table.column_names:
                texts = table.column(column).cast(pa.string()).to_pylist()
                scrubbed = pa.array(scrub_pii(texts), pa.string())
                table = table.set_column(table.column_names.index(column), column, scrubbed)
        return table

    def _release(self) -> list[WindowRecord]:
        """(worker) Release the windows due now; their files are written pending, not
        committed (the next checkpoint, a snapshot, commits them)."""
        self._absorb()  # every event received before the clock closes its window
        name = self.config.state.name
        result = self._engine.release_due(
            self._clock(), self._ledger, label=f"telemagg collector {name}"
        )
        records = []
        for release in result.releases:
            self._snapshot_due = True  # the journal never spans a release
            start = window_start(release)
            if start in self._released_ids:  # never twice, whatever the engine says
                log.error(
                    "window already released; not written again", extra={"window_start": start}
                )
                continue
            final = window_path(self.config.output.dir, start)
            write_pending(release, final)
            charge = release.metadata.get("ledger", {}).get("charge")
            records.append(WindowRecord(start, str(final), charge))
            self._released_ids.add(start)
        if result.refused is not None:
            self.metrics.count("releases_refused")
            self.health.problem("ledger", f"releases stopped: {result.refused}")
            log.error("ledger refused a window; it stays pending: %s", result.refused)
        else:
            self.health.problem("ledger", None)
        if result.releases:
            self._update_budget()
        return records

    def _prepare(
        self,
        positions: dict[str, Any],
        held: list[Message],
        events: int,
        windows: list[WindowRecord],
    ) -> Prepared:
        """(worker) What the next checkpoint writes: a journal append, or a snapshot when
        the journal would outgrow the last snapshot or a window was released.

        ``events``: the events of ``held`` by the loop's count, which must be every event
        staged since the last checkpoint (else a message's events would be checkpointed
        without its position, and counted twice after a crash): checked, never assumed.
        """
        if events != self._staged_events:
            raise TelemaggError(
                f"internal: a checkpoint holding {events} events would store"
                f" {self._staged_events}; stopping without checkpointing"
            )
        self._staged_events = 0
        self._absorb()
        journal = self._engine.take_journal()
        new_bytes = sum(int(table.nbytes) for _, table in journal)
        published, self._published = self._published, []
        if self._snapshot_due or self._journal_size + new_bytes > self._snapshot_size:
            snapshot = self._engine.dumps()
            self._snapshot_size, self._journal_size = len(snapshot), 0
            self._snapshot_due = False
            self.metrics.count("snapshots")
            entries = []
            # Accounting reads settle the state (bound its pending rows): only here, where
            # pickling has just settled it, not on every checkpoint.
            for reason, n in self._engine.accounting().get("dropped", {}).items():
                self.metrics.set("events_dropped", n, reason=str(reason))
        else:
            snapshot, entries = None, Engine.journal_bytes(journal)
            self._journal_size += sum(len(data) for _, data in entries)
        return Prepared(positions, held, windows, published, snapshot, entries)

    def _write(self, prepared: Prepared, began: float) -> Committed:
        """(committer) Commit a prepared checkpoint in one transaction of the state store,
        while the worker goes on decoding and absorbing."""
        wall = time.time()
        horizon = self._dedupe_s
        self._store.save(
            prepared.positions,
            snapshot=prepared.snapshot,
            journal=prepared.journal,
            windows=prepared.windows,
            published=prepared.published,
            digests=[]
            if horizon is None
            else [(m.digest, wall) for m in prepared.held if m.digest is not None],
            digests_before=None if horizon is None else wall - horizon,
        )
        self.metrics.count("checkpoints")
        return Committed(prepared.held, prepared.windows, time.monotonic() - began)

    async def _acknowledge(self, source: Source, committed: Committed) -> None:
        """After a checkpoint committed: acknowledge its messages, publish its windows."""
        await source.ack(committed.held)
        for record in committed.windows:
            if finish(Path(record.path)):
                self._published.append(record.window_start)
            self.metrics.count("windows_released")
            log.info(
                "window released",
                extra={
                    "window_start": record.window_start,
                    "path": record.path,
                    "charge": record.charge,
                },
            )

    def _update_budget(self) -> None:
        epsilon, delta = self._ledger.remaining
        self.metrics.set("budget_epsilon_remaining", epsilon)
        self.metrics.set("budget_delta_remaining", delta)


def _seconds(duration: str) -> int:
    return parse_duration(duration, "state.checkpoint_interval")


class _Shutdown:
    """Closes the worker with the collector's other resources."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
