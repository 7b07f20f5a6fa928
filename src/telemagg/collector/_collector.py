"""The collector's run loop: fetch, absorb, release, checkpoint, acknowledge.

One iteration fetches at most ``source.fetch_messages`` messages, decodes them (vectorised,
by Arrow), and absorbs them into the windowed engine at the collector's clock. Every second
the windows due on the clock are released; at least every ``state.checkpoint_interval``,
after ``state.checkpoint_events`` events, and after any release, a checkpoint commits.

Crash safety, step by step (a window's id is its start time):

1. the ledger is charged for window W, its noise drawn (inside ``release_closed``);
2. the release is written in full to W's hidden pending file and synced;
3. ONE state-store transaction commits the engine's state (W no longer in it), the source
   positions of every absorbed message, and W as released (with its file and charge);
4. the pending file is renamed into place (atomic) and the messages are acknowledged;
5. the next checkpoint marks W's file as published.

A crash before 3 restarts from the previous checkpoint: W is still open in it and is
released again, so the ledger holds two charges for W (its budget is over-counted by one
window, never under-counted; the first noisy result was never written anywhere readable),
and the unacknowledged messages are delivered again and absorbed once (positions after the
checkpoint are unknown to it). A crash after 3 finds W committed: its pending file is renamed
on restart, W is never released again, and redelivered messages whose positions the
checkpoint holds are acknowledged and skipped. A file that cannot be written (disk full)
stops the collector before step 3, with the same outcome as a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telemagg._storage import redact_url
from telemagg.errors import ConfigError, SchemaError, TelemaggError, require
from telemagg.hygiene import pseudonymize, scrub_pii
from telemagg.ledger import Ledger

from ._checkpoint import CheckpointStore, WindowRecord
from ._config import CollectorConfig, load_config
from ._decode import decode, project
from ._engine import Engine, window_start
from ._ops import Health, Metrics, serve_http
from ._output import FILE_NAME, finish, window_path, write_pending
from ._sources import Message, Source, open_source

__all__ = ["Collector"]

log = logging.getLogger("telemagg.collector")

RELEASE_CHECK_S = 1.0
LAG_CHECK_S = 5.0
FETCH_TIMEOUT_S = 0.2


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
                positions = checkpoint.positions
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
        config = self.config
        assert self._stopping is not None
        interval = float(_seconds(config.state.checkpoint_interval))
        held: list[Message] = []
        held_events = 0
        windows: list[WindowRecord] = []
        last_checkpoint = last_release = last_lag = time.monotonic()
        checkpoint_s = 0.0
        while not self._stopping.is_set():
            messages = await source.fetch(config.source.fetch_messages, FETCH_TIMEOUT_S)
            if messages:
                held_events += self._receive(messages)
                held += messages
            now = time.monotonic()
            if now - last_release >= RELEASE_CHECK_S:
                windows += self._release()
                last_release = now
            if now - last_lag >= LAG_CHECK_S:
                with contextlib.suppress(Exception):  # lag is informative only
                    lag = await source.lag()
                    if lag is not None:
                        self.metrics.set("source_lag", lag)
                last_lag = now
            self.metrics.set("held_events", held_events)
            # Group commit: clients waiting for their checkpoint (OTLP) get one as soon as
            # twice the last checkpoint's duration has passed, so checkpoints stay a bounded
            # share of the time whatever the state's size.
            wait = min(interval, 2 * checkpoint_s) if source.clients_wait else interval
            due = now - last_checkpoint >= wait and (held or self._published)
            if windows or held_events >= config.state.checkpoint_events or due:
                began = time.monotonic()
                await self._checkpoint(source, held, windows)
                held, held_events, windows = [], 0, []
                last_checkpoint = time.monotonic()
                checkpoint_s = last_checkpoint - began
        await self._checkpoint(source, held, windows)  # graceful stop: keep everything

    def _receive(self, messages: list[Message]) -> int:
        """Decode messages into tables waiting to be absorbed; the number of events."""
        self.metrics.count("messages_received", len(messages))
        bodies = [m.body for m in messages if m.table is None]
        tables, malformed = decode(bodies, self.config.source.format)
        tables += [m.table for m in messages if m.table is not None]
        if malformed:
            self.metrics.count("messages_malformed", malformed)
            log.warning("malformed messages skipped", extra={"messages": malformed})
        total = 0
        for table in tables:
            total += int(table.num_rows)
            self._waiting.append(self._clean(project(table, self._engine.columns)))
        self.metrics.count("events_received", total)
        return total

    def _absorb(self) -> None:
        """Absorb the waiting tables in ONE ``add`` (bounding re-sorts a window's state on
        every call, so one large call is far cheaper than many small ones)."""
        if not self._waiting:
            return
        pa: Any = require("pyarrow", "pyarrow")
        waiting, self._waiting = self._waiting, []
        try:
            batch = pa.concat_tables(waiting, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column's type differs between them
            self._absorb_each(waiting)
            return
        if len(waiting) > 1:
            try:
                self._engine.add(batch, self._clock())
            except (SchemaError, ConfigError):  # find the table that does not fit
                self._absorb_each(waiting)
                return
            self.metrics.count("events_absorbed", int(batch.num_rows))
        else:
            self._absorb_each(waiting)

    def _absorb_each(self, tables: list[Any]) -> None:
        now = self._clock()
        for table in tables:
            n = int(table.num_rows)
            try:
                self._engine.add(table, now)
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
        """Release the windows due now; their files are written pending, not committed."""
        self._absorb()  # every event received before the clock closes its window
        name = self.config.state.name
        result = self._engine.release_due(
            self._clock(), self._ledger, label=f"telemagg collector {name}"
        )
        records = []
        for release in result.releases:
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

    async def _checkpoint(
        self, source: Source, held: list[Message], windows: list[WindowRecord]
    ) -> None:
        self._absorb()
        positions = {"source": source.positions(held)}
        self._store.save(self._engine.dumps(), positions, windows, self._published)
        self._published = []
        await source.ack(held)
        for record in windows:
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
        self.metrics.count("checkpoints")
        for reason, n in self._engine.accounting().get("dropped", {}).items():
            self.metrics.set("events_dropped", n, reason=str(reason))

    def _update_budget(self) -> None:
        epsilon, delta = self._ledger.remaining
        self.metrics.set("budget_epsilon_remaining", epsilon)
        self.metrics.set("budget_delta_remaining", delta)


def _seconds(duration: str) -> int:
    from telemagg.policy import parse_duration

    return parse_duration(duration, "state.checkpoint_interval")
