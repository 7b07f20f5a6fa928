"""One small connection layer for telemagg's persistent stores (budget ledger, consent registry).

A store is opened from a URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: stdlib :mod:`sqlite3`,
  WAL journal, ``synchronous=FULL`` (a committed write survives a crash or power loss), a busy
  timeout, and ``BEGIN IMMEDIATE`` write transactions. ``sqlite:///:memory:`` is refused:
  a store that vanishes with the process cannot hold a privacy budget or consent.
* ``postgresql://user:password@host:port/db`` (or ``postgres://``): psycopg 3, from the
  ``postgres`` extra. Write transactions take a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``), released by commit, rollback, or the server when the client dies.
  Add ``?options=-csearch_path%3Dmy_schema`` to keep the tables in a schema of your own.

Everything above the connection is the same for both backends:

* SQL uses ``?`` placeholders (translated to ``%s`` for psycopg), so SQL written for a store
  must not contain a literal ``?`` or ``%``.
* :meth:`Store.transaction` is the only way to run SQL. ``write=True`` serialises writers:
  at most one write transaction per ``lock`` name runs at a time across all threads and
  processes using the store, so a check followed by an insert inside it cannot race.
  Any exception rolls the transaction back; a killed process leaves it uncommitted.
* :meth:`Store.ensure_schema` creates a component's tables once (idempotent, safe to race)
  and refuses tables of the same name that telemagg did not create.
* Column types are portable names: ``"int"``, ``"float"``, ``"text"``.
* :meth:`Store.text_rows` passes many strings as ONE parameter that SQL reads as a table
  (SQLite ``json_each``, PostgreSQL ``unnest`` of an array), so a query about 100,000 keys
  is still one query.
* ``store.url`` is the URL with its password replaced by ``***``; the password never reaches
  a repr or an error message. Errors are :class:`~telemagg.errors.LedgerError` (the store is
  unusable: not a database, foreign schema, unreachable) or
  :class:`~telemagg.errors.ConfigError` (the URL itself is wrong).

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "demo.db")
>>> store = open_store("sqlite:///" + path)
>>> store.ensure_schema("demo", 1, [Table("demo_items", (Column("name", "text"),), ("name",))])
>>> with store.transaction(write=True, lock="demo") as tx:
...     tx.execute("INSERT INTO demo_items (name) VALUES (?)", ("a",))
>>> with store.transaction() as tx:
...     tx.fetchall("SELECT name FROM demo_items")
[('a',)]
>>> store.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from telemagg.errors import ConfigError, LedgerError, require

__all__ = [
    "Column",
    "Store",
    "StoreOwner",
    "Table",
    "Transaction",
    "format_time",
    "open_store",
    "parse_time",
    "redact_url",
    "storable_text",
]

ColumnType = Literal["int", "float", "text"]
Row = tuple[Any, ...]
_T = TypeVar("_T")

#: Seconds a SQLite writer waits for the write lock before giving up with a LedgerError.
BUSY_TIMEOUT_S = 60.0

_META_TABLE = "telemagg_meta"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_SECRET_PARAMS = frozenset({"password", "passwd", "pass", "sslpassword"})

#: How stores write times: UTC, fixed width, so that text order is time order in both backends.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(time: datetime) -> str:
    """A UTC time as stored: fixed-width text whose order is time order.

    >>> format_time(datetime(2030, 1, 2, 3, 4, 5, 60, tzinfo=UTC))
    '2030-01-02T03:04:05.000060Z'
    """
    return time.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: object) -> datetime:
    """A stored time back as an aware UTC datetime; ValueError if ``text`` is not one.

    >>> parse_time("2030-01-02T03:04:05.000060Z")
    datetime.datetime(2030, 1, 2, 3, 4, 5, 60, tzinfo=datetime.timezone.utc)
    """
    if not isinstance(text, str) or len(text) != 27:
        raise ValueError(f"not a stored time: {text!r}")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


# --------------------------------------------------------------------------- URLs and secrets


def redact_url(url: str) -> str:
    """The URL with any password (in the user info or a query parameter) replaced by ``***``.

    >>> redact_url("postgresql://alice:s3cret@db.example:5432/telemetry")
    'postgresql://alice:***@db.example:5432/telemetry'
    >>> redact_url("postgresql://db/x?user=bob&password=s3cret")
    'postgresql://db/x?user=bob&password=***'
    >>> redact_url("sqlite:///privacy.db")
    'sqlite:///privacy.db'
    """
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            return url
        userinfo, at, hostinfo = parts.netloc.rpartition("@")
        if parts.password is not None:
            userinfo = userinfo.partition(":")[0] + ":***"
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
        return urlunsplit(
            (parts.scheme, userinfo + at + hostinfo, parts.path, query, parts.fragment)
        )
    except ValueError:
        # An unparsable URL may hold a secret anywhere: show only its scheme.
        return url.partition(":")[0] + "://***"


def _secrets(url: str) -> list[str]:
    """Every secret string that must never be shown (raw and percent-decoded forms)."""
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS and v]
        found += [unquote(v) for v in list(found)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


def storable_text(text: str, parameter: str) -> str:
    r"""``text`` if both backends can store it (UTF-8: no lone surrogate, no NUL), else ConfigError.

    >>> storable_text("crash rates", "label")
    'crash rates'
    >>> storable_text("a\ud800", "label")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: label must be valid Unicode text (...) to be stored; got 'a\ud800'
    """
    try:
        text.encode("utf-8")
        valid = "\x00" not in text
    except UnicodeEncodeError:
        valid = False
    if not valid:
        raise ConfigError(
            f"{parameter} must be valid Unicode text (no lone surrogate such as '\\ud800', "
            f"no NUL) to be stored; got {text!r}"
        )
    return text


# --------------------------------------------------------------------------- schema description


@dataclass(frozen=True)
class Column:
    """A column: name, portable type, and whether NULL is allowed."""

    name: str
    type: ColumnType
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    """A table a component owns: its columns, primary key and extra indexes."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        names = [self.name, *(c.name for c in self.columns)]
        bad = [n for n in names if not _IDENTIFIER.match(n)]
        if bad:
            raise ConfigError(f"table and column names must match {_IDENTIFIER.pattern}; got {bad}")


# --------------------------------------------------------------------------- transactions


class Transaction(ABC):
    """SQL inside one transaction, ``?`` placeholders. Errors become LedgerError."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abstractmethod
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row as a tuple."""

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None."""
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    @abstractmethod
    def now(self) -> datetime:
        """The database server's UTC clock, read now (not at the start of the transaction).

        Inside a write transaction it is read after the write lock was acquired, so a time
        taken here is never earlier than a time committed by the writer before.
        """


class Store(ABC):
    """A connection to one store. Thread-safe; reconnects by itself in a forked child."""

    backend: Literal["sqlite", "postgresql"]

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        self._secrets = _secrets(url)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._inherited: list[object] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- what each backend provides

    @abstractmethod
    def _connect(self) -> None:
        """Open the connection (called at construction and again after a fork)."""

    @abstractmethod
    def _connection(self) -> object:
        """The current connection object (kept, never closed, if inherited across fork)."""

    @abstractmethod
    def _begin(self, write: bool, lock: str) -> contextlib.AbstractContextManager[Transaction]:
        """A transaction on the current connection; serialised on ``lock`` when ``write``."""

    @abstractmethod
    def _close(self) -> None:
        """Close the current connection."""

    @abstractmethod
    def _table_columns(self, tx: Transaction, table: str) -> list[str]:
        """The column names of ``table`` in this store (empty if it does not exist)."""

    @abstractmethod
    def _sql_type(self, column: Column) -> str:
        """The backend's SQL type for a portable column type."""

    @abstractmethod
    def text_rows(self, values: Sequence[str]) -> tuple[str, Any]:
        """``values`` as a one-column table (column ``value``) carried by one parameter.

        Returns the SQL to use as a table in a FROM or JOIN clause (give it an alias) and the
        parameter to bind at its one ``?``.
        """

    # -- the protocol

    def error(self, exc: BaseException, doing: str) -> LedgerError:
        """A LedgerError for ``exc`` that names the redacted URL and shows no secret."""
        return LedgerError(f"{doing} {self.url} failed: {_scrub(str(exc), self._secrets)}")

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False, lock: str = "default") -> Iterator[Transaction]:
        """One transaction: committed on success, rolled back on any exception.

        ``write=True`` serialises with every other write transaction on the same ``lock``
        name in this store, across threads and processes.
        """
        with self._lock:
            if self._closed:
                raise LedgerError(f"the store {self.url} is closed")
            if os.getpid() != self._pid:
                # A connection must not be used (or closed: PostgreSQL would end the parent's
                # session) in a forked child; keep the inherited object alive and reconnect.
                self._inherited.append(self._connection())
                self._pid = os.getpid()
                self._connect()
            with self._begin(write, lock) as tx:
                yield tx

    def ensure_schema(
        self, component: str, version: int, tables: Sequence[Table], *, create: bool = True
    ) -> None:
        """Create ``component``'s tables unless they exist; check them if they do.

        Idempotent and safe when several processes race to create the same store. Raises
        LedgerError if tables of these names exist but telemagg did not create them (or with
        other columns), if they were written by another schema version, or (``create=False``)
        if the store holds no ``component`` yet.
        """
        with self.transaction(write=True, lock="telemagg_schema") as tx:
            row = self._meta_row(tx, component, create)
            if row is None:
                if not create:
                    raise LedgerError(f"{self.url} holds no telemagg {component} store")
                for table in tables:
                    if self._table_columns(tx, table.name):
                        raise LedgerError(
                            f"{self.url} is not a telemagg {component} store: it has a table "
                            f"{table.name!r} that telemagg did not create; refusing to use it"
                        )
                    self._create(tx, table)
                tx.execute(
                    f"INSERT INTO {_META_TABLE} (component, schema_version) VALUES (?, ?)",
                    (component, version),
                )
                return
            if int(row[0]) != version:
                raise LedgerError(
                    f"{self.url} holds a telemagg {component} store of schema version {row[0]}; "
                    f"this telemagg reads version {version}"
                )
            for table in tables:
                self._check_columns(tx, table, component)

    def close(self) -> None:
        """Close the connection; later transactions raise LedgerError."""
        with self._lock:
            if not self._closed and os.getpid() == self._pid:
                self._close()
            self._closed = True

    # -- shared helpers

    def _meta_row(self, tx: Transaction, component: str, create: bool) -> Row | None:
        """The component's row of the meta table (creating the table if allowed and absent)."""
        meta = Table(
            _META_TABLE,
            (Column("component", "text"), Column("schema_version", "int")),
            ("component",),
        )
        if self._table_columns(tx, _META_TABLE):
            self._check_columns(tx, meta, "meta")
        elif create:
            self._create(tx, meta)
        else:
            return None
        return tx.fetchone(
            f"SELECT schema_version FROM {_META_TABLE} WHERE component = ?", (component,)
        )

    def _check_columns(self, tx: Transaction, table: Table, component: str) -> None:
        found = sorted(self._table_columns(tx, table.name))
        expected = sorted(c.name for c in table.columns)
        if found != expected:
            raise LedgerError(
                f"{self.url} has a table {table.name!r} whose columns {found} are not the "
                f"telemagg {component} schema {expected}; refusing to use it"
            )

    def _create(self, tx: Transaction, table: Table) -> None:
        columns = [
            f"{c.name} {self._sql_type(c)}" + ("" if c.nullable else " NOT NULL")
            for c in table.columns
        ]
        columns.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        tx.execute(f"CREATE TABLE {table.name} ({', '.join(columns)})")
        for cols in table.indexes:
            name = f"{table.name}_{'_'.join(cols)}_idx"
            tx.execute(f"CREATE INDEX {name} ON {table.name} ({', '.join(cols)})")


class StoreOwner:
    """What every object that owns one store shares: its redacted URL, ``close()`` and use
    in a ``with`` statement (which closes it)."""

    _store: Store

    @property
    def url(self) -> str:
        """The store's URL with any password replaced by ``***``."""
        return self._store.url

    def close(self) -> None:
        """Close the connection to the store."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names (``sqlite:///...`` or ``postgresql://...``).

    ``create=False`` refuses a SQLite file that does not exist yet instead of creating it.

    >>> open_store("mysql://db/x")
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: store URL scheme must be 'sqlite' or 'postgresql'; got 'mysql' in 'mysql://db/x'
    """
    if not isinstance(url, str):
        raise ConfigError(f"store URL must be a string like 'sqlite:///path.db'; got {url!r}")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return SQLiteStore(url, create=create)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ConfigError(
        f"store URL scheme must be 'sqlite' or 'postgresql'; got {scheme!r} in {redact_url(url)!r}"
    )


# --------------------------------------------------------------------------- SQLite


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (relative after three slashes, absolute after four).

    >>> sqlite_path("sqlite:///privacy.db"), sqlite_path("sqlite:////var/lib/privacy.db")
    ('privacy.db', '/var/lib/privacy.db')
    """
    prefix = "sqlite:///"
    path = url[len(prefix) :] if url.lower().startswith(prefix) else ""
    if not path or "?" in path or "#" in path:
        raise ConfigError(
            "a SQLite store URL must look like 'sqlite:///relative.db' or "
            f"'sqlite:////absolute/path.db' (no query string); got {url!r}"
        )
    if path == ":memory:":
        raise ConfigError(
            "a store must outlive the process; 'sqlite:///:memory:' is not supported, "
            "use a file such as 'sqlite:///privacy.db'"
        )
    return path


class _SQLiteTransaction(Transaction):
    def __init__(self, store: SQLiteStore, connection: sqlite3.Connection) -> None:
        self._store = store
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(lambda: self._connection.execute(sql, tuple(params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._run(lambda: self._connection.executemany(sql, (tuple(r) for r in rows)))

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(lambda: self._connection.execute(sql, tuple(params)).fetchall())

    def now(self) -> datetime:
        # SQLite's clock is the machine's; strftime's %f gives milliseconds.
        row = self.fetchone("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
        assert row is not None
        return datetime.strptime(str(row[0]), TIME_FORMAT).replace(tzinfo=UTC)

    def _run(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except sqlite3.Error as exc:
            raise self._store.error(exc, "a query on") from None


class SQLiteStore(Store):
    """A SQLite file in WAL mode; writers serialised by ``BEGIN IMMEDIATE``.

    SQLite has one writer per database file, so every ``lock`` name shares that one lock.
    """

    backend = "sqlite"

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.path = sqlite_path(url)
        super().__init__(url)
        self._create_file = create
        self._conn: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> None:
        if not self._create_file and not os.path.isfile(self.path):
            raise LedgerError(f"{self.url} does not exist (no file at {self.path!r})")
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from None
        try:
            # Reading the header first turns "file is not a database" into a clear error.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(
                f"{self.url} is not a usable telemagg store (is it a SQLite database?): {exc}"
            ) from None
        self._conn = conn

    def _connection(self) -> object:
        return self._conn

    def _live(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def _begin(self, write: bool, lock: str) -> Iterator[Transaction]:
        conn = self._live()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise self.error(exc, f"waiting {BUSY_TIMEOUT_S:g}s for the write lock on") from None
        try:
            yield _SQLiteTransaction(self, conn)
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.rollback()
            raise self.error(exc, "committing to") from None

    def _close(self) -> None:
        self._live().close()

    def _table_columns(self, tx: Transaction, table: str) -> list[str]:
        return [str(r[1]) for r in tx.fetchall(f'PRAGMA table_info("{table}")')]

    def _sql_type(self, column: Column) -> str:
        return {"int": "INTEGER", "float": "REAL", "text": "TEXT"}[column.type]

    def text_rows(self, values: Sequence[str]) -> tuple[str, Any]:
        return "(SELECT value FROM json_each(?))", json.dumps(list(values), ensure_ascii=False)


# --------------------------------------------------------------------------- PostgreSQL


class _PostgresTransaction(Transaction):
    def __init__(self, store: PostgresStore, connection: Any) -> None:
        self._store = store
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(lambda cur: cur.execute(_pg(sql), tuple(params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._run(lambda cur: cur.executemany(_pg(sql), [tuple(r) for r in rows]))

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(lambda cur: list(cur.execute(_pg(sql), tuple(params)).fetchall()))

    def now(self) -> datetime:
        # clock_timestamp(), unlike now(), is the time of the call, not of BEGIN: a charge that
        # waited for the advisory lock is not stamped before the charge it waited for.
        row = self.fetchone("SELECT clock_timestamp()")
        assert row is not None
        assert isinstance(row[0], datetime)
        return row[0].astimezone(UTC)

    def _run(self, call: Callable[[Any], _T]) -> _T:
        psycopg: Any = require("psycopg", "postgres")
        try:
            with self._connection.cursor() as cursor:
                return call(cursor)
        except psycopg.Error as exc:
            raise self._store.error(exc, "a query on") from None


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresStore(Store):
    """A PostgreSQL database via psycopg 3; writers serialised by advisory locks per name."""

    backend = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._raw_url = url
        self._conn: Any = None
        self._schema = ""
        self._connect()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    def _connect(self) -> None:
        psycopg: Any = require("psycopg", "postgres")
        try:
            self._conn = psycopg.connect(self._raw_url, autocommit=True, connect_timeout=10)
            row = self._conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error as exc:
            raise self.error(exc, "connecting to") from None
        if row is None or row[0] is None:
            raise LedgerError(f"{self.url} has no schema to write to (check search_path)")
        self._schema = str(row[0])

    def _connection(self) -> object:
        return self._conn

    @contextlib.contextmanager
    def _begin(self, write: bool, lock: str) -> Iterator[Transaction]:
        psycopg: Any = require("psycopg", "postgres")
        if self._conn.closed:  # lost (server restart, network): a long-lived store reconnects
            self._connect()
        try:
            with self._conn.transaction():
                tx = _PostgresTransaction(self, self._conn)
                if write:
                    # Held until commit/rollback; the server drops it if the client dies.
                    key = _advisory_key(f"telemagg:{self._schema}:{lock}")
                    tx.execute("SELECT pg_advisory_xact_lock(?)", (key,))
                yield tx
        except psycopg.Error as exc:
            raise self.error(exc, "a transaction on") from None

    def _close(self) -> None:
        self._conn.close()

    def _table_columns(self, tx: Transaction, table: str) -> list[str]:
        rows = tx.fetchall(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return [str(r[0]) for r in rows]

    def _sql_type(self, column: Column) -> str:
        return {"int": "BIGINT", "float": "DOUBLE PRECISION", "text": "TEXT"}[column.type]

    def text_rows(self, values: Sequence[str]) -> tuple[str, Any]:
        return "(SELECT unnest(?::text[]) AS value)", list(values)
