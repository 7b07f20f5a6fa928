"""One small connection layer for telemagg's persistent stores (budget ledger, consent registry).

A store is opened from a URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: stdlib :mod:`sqlite3`,
  WAL journal, ``synchronous=FULL`` (a committed write survives a crash or power loss), a busy
  timeout, and ``BEGIN IMMEDIATE`` write transactions. ``sqlite:///:memory:`` is refused:
  a store that vanishes with the process cannot hold a privacy budget or consent. A file this
  process cannot write, or a URL ending in ``?mode=ro``, is opened read-only
  (:attr:`Store.read_only`): reads work, write transactions raise a LedgerError saying so.
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
from urllib.parse import quote, unquote

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
#
# Secrets are found by telemagg's own reading of a URL, never by urllib's (which splits the
# user info at the FIRST '@' or '/' and so shows the rest of a password holding '@', '/', '?'
# or '#'). The reading below is deliberately pessimistic: the user info runs from '://' to the
# LAST '@' (a password may hold any character; an unencoded '@' elsewhere only hides more),
# and a query is hidden from its first secret-looking parameter to its end. libpq never sees a
# password inside a URL either: it is passed beside it (see :class:`PostgresStore`), so none of
# libpq's messages quoting a URL or a token of it can carry one.

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# Characters a user name may show (RFC 3986 userinfo without ':'); anything else: hide it too.
_SHOWN_USER = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%\-]*")
# A key or value that names a secret: password, passwd, pass, sslpassword, passfile, secret...
_SECRET_WORD = re.compile(r"pass|secret|token", re.IGNORECASE)
# key=value settings inside a conninfo string or an ``options`` value.
_SECRET_SETTING = re.compile(
    r"([\w.\-]*(?:pass|secret|token)[\w.\-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE
)
_SECRET_KWARGS = ("password", "sslpassword")


@dataclass(frozen=True)
class _URLParts:
    """A store URL as telemagg reads it (see the comment above)."""

    prefix: str  # "postgresql://", or "" when there is no scheme
    user: str | None  # None: no user info
    password: str | None  # raw (not percent-decoded); None: no password in the user info
    rest: str  # host, port, path, query, fragment: everything after the user info

    @classmethod
    def read(cls, url: str) -> _URLParts:
        scheme = _SCHEME.match(url)
        prefix = url[: scheme.end()] if scheme else ""
        body = url[len(prefix) :]
        before, at, rest = body.rpartition("@")
        if not at:
            return cls(prefix, None, None, body)
        user, colon, password = before.partition(":")
        if not colon and _SHOWN_USER.fullmatch(user) is None:
            # No ':' and characters no user name has ('/', '?', '#'): the '@' may be in a
            # path or query, or the whole of it a password. Unsure: all of it is secret.
            return cls(prefix, "", before, rest)
        return cls(prefix, user, password if colon else None, rest)

    def query_items(self) -> list[tuple[str, str]]:
        """The query's raw (key, value) pairs, up to a fragment."""
        query = self.rest.partition("#")[0].partition("?")[2]
        return [
            (key, value)
            for key, _, value in (item.partition("=") for item in query.split("&") if item)
        ]


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***``: the password of its user info, the
    query from its first secret-looking parameter on, any fragment.

    >>> redact_url("postgresql://alice:s3cret@db.example:5432/telemetry")
    'postgresql://alice:***@db.example:5432/telemetry'
    >>> redact_url("postgresql://alice:p@ss/w#rd?@db/x?options=-csearch_path%3Dp")
    'postgresql://alice:***@db/x?options=-csearch_path%3Dp'
    >>> redact_url("postgresql://db/x?user=bob&password=s3cret&sslmode=require")
    'postgresql://db/x?user=bob&password=***'
    >>> redact_url("root:s3cret@127.0.0.1/db"), redact_url("host=db password='s 3'")
    ('root:***@127.0.0.1/db', 'host=db password=***')
    >>> redact_url("sqlite:///privacy.db")
    'sqlite:///privacy.db'
    """
    parts = _URLParts.read(url)
    shown = parts.prefix
    if parts.user is not None:
        user_shown = _SHOWN_USER.fullmatch(parts.user) is not None and parts.password is None
        if parts.password is None:
            shown += f"{parts.user}@" if user_shown else "***@"
        elif parts.user and _SHOWN_USER.fullmatch(parts.user):
            shown += f"{parts.user}:***@"
        else:
            shown += "***@"
    shown += _redact_rest(parts.rest)
    # Keyword/value conninfo ("host=db password=x") and anything the URL reading missed.
    return _SECRET_SETTING.sub(lambda m: f"{m.group(1)}{m.group(2)}***", shown)


def _redact_rest(rest: str) -> str:
    """Host, path and query with the query hidden from its first secret on, fragments hidden."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    if tail.startswith("#"):
        return head + "#***"
    query, hash_, _ = tail[1:].partition("#")
    kept: list[str] = []
    for item in query.split("&"):
        key, equals, value = item.partition("=")
        if _SECRET_WORD.search(unquote(key)) or _SECRET_WORD.search(unquote(value)):
            kept.append(f"{key}=***" if equals else "***")
            return f"{head}?{'&'.join(kept)}"  # everything after it may belong to it
        kept.append(item)
    return f"{head}{'?' if tail else ''}{'&'.join(kept)}{'#***' if hash_ else ''}"


def _secrets(url: str) -> list[str]:
    """Every secret string of ``url`` (raw and percent-decoded), longest first.

    From the first secret-looking query parameter on, every piece of the query counts too: an
    unencoded '&' or '#' in a password splits it, and no piece of a password may be shown.
    """
    parts = _URLParts.read(url)
    found = [parts.password or ""]
    query = parts.rest.partition("?")[2]
    for key, value in parts.query_items():
        if _SECRET_WORD.search(unquote(key)) or _SECRET_WORD.search(unquote(value)):
            remainder = query[query.find(f"{key}={value}") + len(key) + 1 :]
            found += [remainder, *(p for p in re.split("[&#=]", remainder) if len(p) >= 3)]
            found += [m.group(3).strip("'") for m in _SECRET_SETTING.finditer(unquote(value))]
            break
    found += [m.group(3).strip("'") for m in _SECRET_SETTING.finditer(url)]
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _connection_arguments(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its passwords (nor fragment), and the passwords as libpq keywords.

    >>> _connection_arguments("postgresql://u:p%40ss#1@db/x?sslmode=require")
    ('postgresql://u@db/x?sslmode=require', {'password': 'p@ss#1'})
    >>> _connection_arguments("postgresql://db/x?password=p&sslmode=require")
    ('postgresql://db/x?sslmode=require', {'password': 'p'})
    """
    parts = _URLParts.read(url)
    if parts.user == "" and parts.password is not None:
        return url, {}  # an '@' telemagg cannot place: libpq reads it; messages are scrubbed
    kwargs: dict[str, str] = {}
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    head, _, query = parts.rest.partition("#")[0].partition("?")
    items = [item for item in query.split("&") if item]
    kwargs.update(
        {key: unquote(value) for key, value in parts.query_items() if key in _SECRET_KWARGS}
    )
    kept = [item for item in items if item.partition("=")[0] not in _SECRET_KWARGS]
    userinfo = f"{parts.user}@" if parts.user is not None else ""
    return parts.prefix + userinfo + head + ("?" + "&".join(kept) if kept else ""), kwargs


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
    #: True when the store can only be read (a SQLite file this process cannot write).
    read_only: bool = False

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
            if write and self.read_only:
                raise LedgerError(
                    f"{self.url} is read-only (this process cannot write the file): it can be "
                    "read but not written"
                )
            if os.getpid() != self._pid:
                # A connection must not be used (or closed: PostgreSQL would end the parent's
                # session) in a forked child; keep the inherited object alive and reconnect.
                self._inherited.append(self._connection())
                self._pid = os.getpid()
                self._connect()
            with self._begin(write, lock) as tx:
                yield tx

    def ensure_schema(
        self,
        component: str,
        version: int,
        tables: Sequence[Table],
        *,
        create: bool = True,
        migrate: Callable[[Transaction, int], None] | None = None,
    ) -> None:
        """Create ``component``'s tables unless they exist; check them if they do.

        Idempotent and safe when several processes race to create the same store. A store of
        an older schema version is brought to ``version`` by ``migrate(tx, old_version)``
        (inside the same serialised write transaction, which also records the new version)
        when given. Raises LedgerError if tables of these names exist but telemagg did not
        create them (or with other columns), if they were written by another schema version
        that cannot be migrated, or (``create=False``) if the store holds no ``component`` yet.
        A store that is already as it should be is only read (so read-only stores open).
        """
        with self.transaction() as tx:
            row = self._meta_row(tx, component, create=False)
            if row is not None and int(row[0]) == version:
                for table in tables:
                    self._check_columns(tx, table, component)
                return
        if row is None and not create:
            raise LedgerError(f"{self.url} holds no telemagg {component} store")
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
            stored = int(row[0])
            if stored != version:
                if migrate is None or stored > version:
                    raise LedgerError(
                        f"{self.url} holds a telemagg {component} store of schema version "
                        f"{stored}; this telemagg reads version {version}"
                    )
                migrate(tx, stored)
                tx.execute(
                    f"UPDATE {_META_TABLE} SET schema_version = ? WHERE component = ?",
                    (version, component),
                )
            for table in tables:
                self._check_columns(tx, table, component)

    def add_column(self, tx: Transaction, table: str, column: Column, default: object) -> None:
        """Add ``column`` to an existing ``table`` (a migration), filled with ``default``."""
        literal = {"int": "0", "float": "0", "text": "''"}[column.type]
        tx.execute(
            f"ALTER TABLE {table} ADD COLUMN {column.name} {self._sql_type(column)} "
            f"NOT NULL DEFAULT {literal}"
        )
        if default is not None:
            tx.execute(f"UPDATE {table} SET {column.name} = ?", (default,))

    def create_index(self, tx: Transaction, table: str, columns: tuple[str, ...]) -> None:
        """Create an index on ``columns`` of ``table`` unless it exists (a migration)."""
        name = f"{table}_{'_'.join(columns)}_idx"
        tx.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)})")

    @abstractmethod
    def hold(self, tx: Transaction, lock: str) -> None:
        """Inside a write transaction, also hold the write lock named ``lock`` until it ends.

        SQLite has one write lock per file, already held; PostgreSQL takes ``lock``'s
        advisory lock.
        """

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
            self.create_index(tx, table.name, cols)


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
        raise ConfigError(
            f"store URL must be a string like 'sqlite:///path.db'; got {type(url).__name__}"
        )
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return SQLiteStore(url, create=create)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ConfigError(
        f"store URL scheme must be 'sqlite' or 'postgresql'; got {scheme!r} in {redact_url(url)!r}"
    )


# --------------------------------------------------------------------------- SQLite


_READ_ONLY = "?mode=ro"


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
            f"'sqlite:////absolute/path.db' (with at most '{_READ_ONLY}' after it); "
            f"got {redact_url(url)!r}"
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
        asked_read_only = url.endswith(_READ_ONLY)
        self.path = sqlite_path(url.removesuffix(_READ_ONLY))
        super().__init__(url)
        self._create_file = create and not asked_read_only
        self._asked_read_only = asked_read_only
        self._conn: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> None:
        exists = os.path.isfile(self.path)
        if not self._create_file and not exists:
            raise LedgerError(f"{self.url} does not exist (no file at {self.path!r})")
        # A file this process cannot write (or a URL ending in ?mode=ro) is opened read-only:
        # it can be read (budget show), and every write says it is read-only.
        self.read_only = self._asked_read_only or (exists and not os.access(self.path, os.W_OK))
        target = (
            f"file:{quote(os.path.abspath(self.path))}?mode=ro" if self.read_only else self.path
        )
        try:
            conn = sqlite3.connect(
                target,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                uri=self.read_only,
            )
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from None
        try:
            # Reading the header first turns "file is not a database" into a clear error.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if not self.read_only:
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

    def hold(self, tx: Transaction, lock: str) -> None:
        del tx, lock  # BEGIN IMMEDIATE already holds the file's one write lock

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
            failure = self._store.error(exc, "a query on")
        raise failure  # outside the except: psycopg's error is not even the context


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
        conninfo, passwords = _connection_arguments(self._raw_url)
        failure: LedgerError | None = None
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10, **passwords)
            row = self._conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error as exc:
            failure = self.error(exc, "connecting to")
        if failure is not None:
            raise failure  # outside the except: psycopg's message is not even the context
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
                    self.hold(tx, lock)
                yield tx
        except psycopg.Error as exc:
            failure = self.error(exc, "a transaction on")
        else:
            return
        raise failure  # outside the except: psycopg's message is not even the context

    def hold(self, tx: Transaction, lock: str) -> None:
        # Held until commit/rollback; the server drops it if the client dies.
        tx.execute(
            "SELECT pg_advisory_xact_lock(?)", (_advisory_key(f"telemagg:{self._schema}:{lock}"),)
        )

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
