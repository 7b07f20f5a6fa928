"""The collector's state store: checkpoints, the journal, request digests, released windows.

A checkpoint is ONE transaction of the store (SQLite by default, or PostgreSQL) that holds,
together, the source positions, the windows released since the previous checkpoint, and the
engine's state in one of two forms:

* a **snapshot**: the whole engine (pickled); the journal is emptied;
* a **journal append**: only the batches absorbed since the previous checkpoint (Arrow IPC,
  each with the collector's clock when it was absorbed), appended after the last snapshot.

The state on restart is the snapshot with the journal replayed onto it. The collector
writes a snapshot when the journal would outgrow the last snapshot (so the store stays
within about twice the state plus one checkpoint's batches, and replay reads at most that)
and with every released window (so the journal never spans a release); otherwise it
appends, which costs O(new events) instead of O(state): many small checkpoints (OTLP
requests waiting for theirs) stay cheap however large the state grows.

Request digests (OTLP idempotency) are stored beside them, inserted and expired in the same
transaction.

Fencing: every checkpoint carries a generation number; a collector that opens the state
takes the next generation, and a checkpoint whose generation was taken over by another
process is refused (two collectors of one name never both commit).

>>> import os, tempfile
>>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "state.db")
>>> store = CheckpointStore(url, "demo")
>>> store.load() is None
True
>>> store.save({"nats": [[1, 10]]}, snapshot=b"engine", windows=[
...     WindowRecord("2026-01-01T00:00:00+00:00", "out/a.parquet", 3)])
>>> store.save({"nats": [[1, 12]]}, journal=[(1.5, b"batch")])
>>> checkpoint = store.load()
>>> checkpoint.engine, checkpoint.journal, checkpoint.positions
(b'engine', [(1.5, b'batch')], {'nats': [[1, 12]]})
>>> store.released()[0].charge
3
>>> store.close()
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from telemagg._storage import Column, StoreOwner, Table, Transaction, open_store
from telemagg.errors import LedgerError

__all__ = ["Checkpoint", "CheckpointStore", "WindowRecord"]

_COMPONENT = "collector"
_VERSION = 2
_CHECKPOINTS = Table(
    "collector_checkpoints",
    (
        Column("name", "text"),
        Column("generation", "int"),
        Column("engine", "text", nullable=True),
        Column("positions", "text"),
        Column("updated_at", "text"),
    ),
    ("name",),
)
_WINDOWS = Table(
    "collector_windows",
    (
        Column("name", "text"),
        Column("window_start", "text"),
        Column("path", "text"),
        Column("charge", "int", nullable=True),
        Column("published", "int"),
        Column("released_at", "text"),
    ),
    ("name", "window_start"),
)
_JOURNAL = Table(
    "collector_journal",
    (
        Column("name", "text"),
        Column("seq", "int"),
        Column("now", "float"),
        Column("batch", "text"),
    ),
    ("name", "seq"),
)
_DIGESTS = Table(
    "collector_digests",
    (Column("name", "text"), Column("digest", "text"), Column("at", "float")),
    ("name", "digest"),
    indexes=(("name", "at"),),
)


@dataclass(frozen=True)
class Checkpoint:
    """The last committed state: the engine's snapshot (pickled), the journal after it
    (``(clock, Arrow IPC batch)`` in order), the source positions and request digests."""

    engine: bytes | None
    positions: dict[str, Any]
    journal: list[tuple[float, bytes]] = field(default_factory=list)
    digests: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowRecord:
    """A released window: its start (its id), its file, and the ledger charge that paid it."""

    window_start: str
    path: str
    charge: int | None
    published: bool = False


class CheckpointStore(StoreOwner):
    """Checkpoints of one collector (``name``) in a telemagg store."""

    def __init__(self, url: str, name: str) -> None:
        self._store = open_store(url)
        self.name = name
        self._lock = f"collector_{name}"
        try:
            self._store.ensure_schema(
                _COMPONENT,
                _VERSION,
                [_CHECKPOINTS, _WINDOWS, _JOURNAL, _DIGESTS],
                migrate=self._migrate,
            )
            self._generation = self._take_over()
            self._seq = self._last_seq()
        except BaseException:
            self._store.close()
            raise

    def _migrate(self, tx: Transaction, old: int) -> None:
        """Version 1 (whole snapshots only) to 2: add the journal and digest tables."""
        for table in (_JOURNAL, _DIGESTS):
            self._store._create(tx, table)

    def _take_over(self) -> int:
        """Claim the next generation: a collector still running under this name is fenced."""
        now = _now()
        with self._store.transaction(write=True, lock=self._lock) as tx:
            row = tx.fetchone(
                f"SELECT generation FROM {_CHECKPOINTS.name} WHERE name = ?", (self.name,)
            )
            if row is None:
                tx.execute(
                    f"INSERT INTO {_CHECKPOINTS.name} (name, generation, engine, positions,"
                    " updated_at) VALUES (?, ?, ?, ?, ?)",
                    (self.name, 1, None, "{}", now),
                )
                return 1
            generation = int(row[0]) + 1
            tx.execute(
                f"UPDATE {_CHECKPOINTS.name} SET generation = ?, updated_at = ? WHERE name = ?",
                (generation, now, self.name),
            )
            return generation

    def _last_seq(self) -> int:
        with self._store.transaction() as tx:
            row = tx.fetchone(f"SELECT MAX(seq) FROM {_JOURNAL.name} WHERE name = ?", (self.name,))
        return 0 if row is None or row[0] is None else int(row[0])

    def load(self) -> Checkpoint | None:
        """The last checkpoint, or None if this collector never checkpointed."""
        with self._store.transaction() as tx:
            row = tx.fetchone(
                f"SELECT engine, positions FROM {_CHECKPOINTS.name} WHERE name = ?", (self.name,)
            )
            journal = tx.fetchall(
                f"SELECT now, batch FROM {_JOURNAL.name} WHERE name = ? ORDER BY seq",
                (self.name,),
            )
            digests = tx.fetchall(
                f"SELECT digest, at FROM {_DIGESTS.name} WHERE name = ?", (self.name,)
            )
        if row is None or row[0] is None:
            return None
        return Checkpoint(
            base64.b64decode(str(row[0])),
            json.loads(str(row[1])),
            [(float(now), base64.b64decode(str(batch))) for now, batch in journal],
            {str(d): float(at) for d, at in digests},
        )

    def save(
        self,
        positions: dict[str, Any],
        *,
        snapshot: bytes | None = None,
        journal: Sequence[tuple[float, bytes]] = (),
        windows: Sequence[WindowRecord] = (),
        published: Sequence[str] = (),
        digests: Sequence[tuple[str, float]] = (),
        digests_before: float | None = None,
    ) -> None:
        """Commit one checkpoint in one transaction.

        ``snapshot`` (the whole engine) replaces the previous one and empties the journal;
        without it, ``journal`` (the batches absorbed since the previous checkpoint) is
        appended. ``windows`` are newly released windows; ``published`` names windows whose
        file has since been renamed into place; ``digests`` are request digests with their
        time, and those older than ``digests_before`` are forgotten. Raises LedgerError if
        another process took this collector's name over.
        """
        now = _now()
        name = self.name
        with self._store.transaction(write=True, lock=self._lock) as tx:
            row = tx.fetchone(f"SELECT generation FROM {_CHECKPOINTS.name} WHERE name = ?", (name,))
            if row is None or int(row[0]) != self._generation:
                raise LedgerError(
                    f"collector {name!r}: another process took over its state"
                    f" (generation {row[0] if row else None}, ours {self._generation});"
                    " this one stops without checkpointing"
                )
            if snapshot is not None:
                tx.execute(
                    f"UPDATE {_CHECKPOINTS.name} SET engine = ?, positions = ?, updated_at = ?"
                    " WHERE name = ?",
                    (base64.b64encode(snapshot).decode("ascii"), json.dumps(positions), now, name),
                )
                tx.execute(f"DELETE FROM {_JOURNAL.name} WHERE name = ?", (name,))
            else:
                tx.execute(
                    f"UPDATE {_CHECKPOINTS.name} SET positions = ?, updated_at = ? WHERE name = ?",
                    (json.dumps(positions), now, name),
                )
                first = self._seq + 1
                self._seq += len(journal)
                tx.executemany(
                    f"INSERT INTO {_JOURNAL.name} (name, seq, now, batch) VALUES (?, ?, ?, ?)",
                    [
                        (name, first + i, clock, base64.b64encode(batch).decode("ascii"))
                        for i, (clock, batch) in enumerate(journal)
                    ],
                )
            tx.executemany(
                f"INSERT INTO {_WINDOWS.name} (name, window_start, path, charge, published,"
                " released_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(name, w.window_start, w.path, w.charge, 0, now) for w in windows],
            )
            tx.executemany(
                f"UPDATE {_WINDOWS.name} SET published = 1 WHERE name = ? AND window_start = ?",
                [(name, start) for start in published],
            )
            if digests_before is not None:
                tx.execute(
                    f"DELETE FROM {_DIGESTS.name} WHERE name = ? AND at < ?",
                    (name, digests_before),
                )
            tx.executemany(
                f"INSERT INTO {_DIGESTS.name} (name, digest, at) VALUES (?, ?, ?)"
                " ON CONFLICT (name, digest) DO UPDATE SET at = excluded.at",
                [(name, digest, at) for digest, at in digests],
            )

    def released(self, *, unpublished_only: bool = False) -> list[WindowRecord]:
        """The windows this collector released, oldest first."""
        where = " AND published = 0" if unpublished_only else ""
        with self._store.transaction() as tx:
            rows = tx.fetchall(
                f"SELECT window_start, path, charge, published FROM {_WINDOWS.name}"
                f" WHERE name = ?{where} ORDER BY window_start",
                (self.name,),
            )
        return [
            WindowRecord(str(r[0]), str(r[1]), None if r[2] is None else int(r[2]), bool(r[3]))
            for r in rows
        ]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
