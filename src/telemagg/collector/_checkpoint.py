"""The collector's state store: one checkpoint and the released windows, per collector name.

A checkpoint holds the engine's state together with the source positions it reflects, and
the windows released since the previous checkpoint, all written in ONE transaction. The
store is a :mod:`telemagg._storage` store (SQLite by default, or PostgreSQL).

Fencing: every checkpoint carries a generation number; a collector that opens the state
takes the next generation, and a checkpoint whose generation was taken over by another
process is refused (two collectors of one name never both commit).

>>> import os, tempfile
>>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "state.db")
>>> store = CheckpointStore(url, "demo")
>>> store.load() is None
True
>>> store.save(b"engine", {"nats": [[1, 10]]}, [WindowRecord("2026-01-01T00:00:00+00:00",
...            "out/a.parquet", 3)])
>>> store.load().positions, store.released()[0].charge
({'nats': [[1, 10]]}, 3)
>>> store.close()
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from telemagg._storage import Column, StoreOwner, Table, open_store
from telemagg.errors import LedgerError

__all__ = ["Checkpoint", "CheckpointStore", "WindowRecord"]

_COMPONENT = "collector"
_VERSION = 1
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


@dataclass(frozen=True)
class Checkpoint:
    """The last committed state: the engine (pickled) and the source positions."""

    engine: bytes | None
    positions: dict[str, Any]


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
            self._store.ensure_schema(_COMPONENT, _VERSION, [_CHECKPOINTS, _WINDOWS])
            self._generation = self._take_over()
        except BaseException:
            self._store.close()
            raise

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

    def load(self) -> Checkpoint | None:
        """The last checkpoint, or None if this collector never checkpointed."""
        with self._store.transaction() as tx:
            row = tx.fetchone(
                f"SELECT engine, positions FROM {_CHECKPOINTS.name} WHERE name = ?", (self.name,)
            )
        if row is None or row[0] is None:
            return None
        return Checkpoint(base64.b64decode(str(row[0])), json.loads(str(row[1])))

    def save(
        self,
        engine: bytes,
        positions: dict[str, Any],
        windows: Sequence[WindowRecord] = (),
        published: Sequence[str] = (),
    ) -> None:
        """Commit the engine, the positions and newly released windows in one transaction.

        ``published`` names windows whose file has since been renamed into place. Raises
        LedgerError if another process took this collector's name over.
        """
        now = _now()
        with self._store.transaction(write=True, lock=self._lock) as tx:
            row = tx.fetchone(
                f"SELECT generation FROM {_CHECKPOINTS.name} WHERE name = ?", (self.name,)
            )
            if row is None or int(row[0]) != self._generation:
                raise LedgerError(
                    f"collector {self.name!r}: another process took over its state"
                    f" (generation {row[0] if row else None}, ours {self._generation});"
                    " this one stops without checkpointing"
                )
            tx.execute(
                f"UPDATE {_CHECKPOINTS.name} SET engine = ?, positions = ?, updated_at = ?"
                " WHERE name = ?",
                (base64.b64encode(engine).decode("ascii"), json.dumps(positions), now, self.name),
            )
            tx.executemany(
                f"INSERT INTO {_WINDOWS.name} (name, window_start, path, charge, published,"
                " released_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(self.name, w.window_start, w.path, w.charge, 0, now) for w in windows],
            )
            tx.executemany(
                f"UPDATE {_WINDOWS.name} SET published = 1 WHERE name = ? AND window_start = ?",
                [(self.name, start) for start in published],
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
