"""The storage layer shared by the ledger and the consent registry, on both backends."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import POSTGRES_ENV, _postgres_base_url
from telemagg import _storage
from telemagg._storage import Column, Table, open_store, redact_url, sqlite_path
from telemagg.errors import ConfigError, LedgerError, MissingDependencyError, TelemaggError

ITEMS = Table(
    "test_items",
    (Column("name", "text"), Column("value", "float", nullable=True), Column("n", "int")),
    ("name",),
    indexes=(("n",),),
)


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cret@db:5432/x", "postgresql://alice:***@db:5432/x"),
        ("postgresql://alice:p%40ss@db/x", "postgresql://alice:***@db/x"),
        ("postgresql://db/x?user=a&password=s3cret", "postgresql://db/x?user=a&password=***"),
        ("postgresql://alice@db/x", "postgresql://alice@db/x"),
        ("sqlite:////var/lib/x.db", "sqlite:////var/lib/x.db"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_sqlite_urls_relative_and_absolute() -> None:
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///x.db?mode=rw"])
def test_malformed_sqlite_url_is_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///relative\.db"):
        open_store(url)


def test_memory_sqlite_is_refused() -> None:
    with pytest.raises(ConfigError, match="outlive the process"):
        open_store("sqlite:///:memory:")


@pytest.mark.parametrize("url", ["mysql://u:hunter2@h/db", "privacy.db", "redis://h"])
def test_unknown_scheme_names_it_without_secret(url: str) -> None:
    with pytest.raises(ConfigError, match="scheme must be 'sqlite' or 'postgresql'") as info:
        open_store(url)
    assert "hunter2" not in str(info.value)


def test_missing_psycopg_names_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    with pytest.raises(MissingDependencyError, match=r"telemagg\[postgres\]"):
        open_store("postgresql://postgres@127.0.0.1:5432/test")


def test_unreachable_postgres_error_hides_password() -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(LedgerError) as info:
        open_store(url)
    assert "hunter2" not in str(info.value)
    assert "postgres:***@127.0.0.1:1" in str(info.value)


# --------------------------------------------------------------------------- files


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is a text file, not SQLite " * 100)
    with pytest.raises(LedgerError, match="not a usable telemagg store"):
        open_store(f"sqlite:///{path}")
    assert path.read_bytes().startswith(b"this is a text file")


def test_create_false_never_creates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(LedgerError, match="does not exist"):
        open_store(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_missing_directory_is_ledger_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="opening"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")


# --------------------------------------------------------------------------- both backends


def test_schema_is_idempotent_and_round_trips(store_url: str) -> None:
    store = open_store(store_url)
    store.ensure_schema("test", 1, [ITEMS])
    store.ensure_schema("test", 1, [ITEMS])  # second time: checked, not recreated
    with store.transaction(write=True) as tx:
        tx.executemany(
            "INSERT INTO test_items (name, value, n) VALUES (?, ?, ?)",
            [("a", 0.1, 1), ("b", None, 2)],
        )
    again = open_store(store_url)
    again.ensure_schema("test", 1, [ITEMS])
    with again.transaction() as tx:
        assert tx.fetchall("SELECT name, value, n FROM test_items ORDER BY name") == [
            ("a", 0.1, 1),
            ("b", None, 2),
        ]
        assert tx.fetchone("SELECT name FROM test_items WHERE n = ?", (3,)) is None
    store.close()
    again.close()


def test_exception_rolls_back(store_url: str) -> None:
    store = open_store(store_url)
    store.ensure_schema("test", 1, [ITEMS])

    def insert_then_fail() -> None:
        with store.transaction(write=True) as tx:
            tx.execute("INSERT INTO test_items (name, n) VALUES (?, ?)", ("a", 1))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        insert_then_fail()
    with store.transaction() as tx:
        assert tx.fetchall("SELECT count(*) FROM test_items") == [(0,)]


def test_sql_error_is_ledger_error(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(LedgerError, match="failed"), store.transaction() as tx:
        tx.fetchall("SELECT nothing FROM no_such_table")
    with store.transaction() as tx:  # the store is still usable
        assert tx.fetchall("SELECT 1") == [(1,)]


def test_closed_store_refuses(store_url: str) -> None:
    store = open_store(store_url)
    store.close()
    with pytest.raises(LedgerError, match="closed"), store.transaction():
        pass


def test_foreign_table_of_the_same_name_is_refused(store_url: str) -> None:
    store = open_store(store_url)
    with store.transaction(write=True) as tx:
        tx.execute("CREATE TABLE test_items (id INTEGER, payload TEXT)")
    with pytest.raises(LedgerError, match="that telemagg did not create"):
        store.ensure_schema("test", 1, [ITEMS])


def test_changed_columns_and_versions_are_refused(store_url: str) -> None:
    store = open_store(store_url)
    store.ensure_schema("test", 1, [ITEMS])
    other = Table("test_items", (Column("name", "text"),), ("name",))
    with pytest.raises(LedgerError, match="columns"):
        store.ensure_schema("test", 1, [other])
    with pytest.raises(LedgerError, match="schema version 1"):
        store.ensure_schema("test", 2, [ITEMS])
    with pytest.raises(LedgerError, match="holds no telemagg absent store"):
        store.ensure_schema("absent", 1, [], create=False)


def test_foreign_meta_table_is_refused(store_url: str) -> None:
    store = open_store(store_url)
    with store.transaction(write=True) as tx:
        tx.execute("CREATE TABLE telemagg_meta (k TEXT)")
    with pytest.raises(LedgerError, match="telemagg_meta"):
        store.ensure_schema("test", 1, [ITEMS])


def test_bad_identifier_is_config_error() -> None:
    with pytest.raises(ConfigError, match="names must match"):
        Table("items; DROP TABLE x", (Column("a", "text"),), ("a",))


def _increment(url: str, times: int) -> None:
    """Read-modify-write a counter: loses updates unless write transactions are serialised."""
    store = open_store(url)
    for _ in range(times):
        with store.transaction(write=True, lock="counter") as tx:
            row = tx.fetchone("SELECT n FROM test_items WHERE name = ?", ("counter",))
            assert row is not None
            time.sleep(0.0005)  # widen the race window
            tx.execute("UPDATE test_items SET n = ? WHERE name = ?", (row[0] + 1, "counter"))
    store.close()


@pytest.mark.slow
def test_write_transactions_serialise_threads_and_processes(store_url: str) -> None:
    store = open_store(store_url)
    store.ensure_schema("test", 1, [ITEMS])
    with store.transaction(write=True) as tx:
        tx.execute("INSERT INTO test_items (name, n) VALUES (?, ?)", ("counter", 0))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_increment, args=(store_url, 25)) for _ in range(3)]
    threads = [threading.Thread(target=_increment, args=(store_url, 25)) for _ in range(3)]
    for worker in [*processes, *threads]:
        worker.start()
    for worker in [*processes, *threads]:
        worker.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    with store.transaction() as tx:
        assert tx.fetchone("SELECT n FROM test_items WHERE name = ?", ("counter",)) == (150,)


def _fork_child_writes(store: _storage.Store) -> None:
    with store.transaction(write=True) as tx:
        tx.execute("INSERT INTO test_items (name, n) VALUES (?, ?)", ("child", 1))


def test_store_used_across_fork_reconnects(store_url: str) -> None:
    store = open_store(store_url)
    store.ensure_schema("test", 1, [ITEMS])
    child = multiprocessing.get_context("fork").Process(target=_fork_child_writes, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    # The parent's connection survived the child's exit (PostgreSQL would end a shared session).
    with store.transaction() as tx:
        assert tx.fetchall("SELECT name FROM test_items") == [("child",)]


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its user info."""
    parts = urlsplit(url)
    if parts.password is not None:
        pytest.skip(f"{POSTGRES_ENV} already holds a password")
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo or 'postgres'}:{password}@{hostinfo}"))


def test_repr_and_errors_hide_password(postgres_url: str) -> None:
    url = with_password(postgres_url, "hunter2")  # trust authentication ignores it
    store = open_store(url)
    assert "hunter2" not in repr(store)
    assert "hunter2" not in store.url
    with pytest.raises(LedgerError) as info, store.transaction() as tx:
        tx.fetchall("SELECT 'hunter2' FROM no_such_table")
    assert "hunter2" not in str(info.value)


def test_lost_postgres_connection_reconnects(postgres_url: str) -> None:
    store = open_store(postgres_url)
    with store.transaction() as tx:
        (pid,) = tx.fetchone("SELECT pg_backend_pid()") or (None,)
    with open_store(postgres_url).transaction() as tx:  # as a server restart would
        tx.fetchall("SELECT pg_terminate_backend(?)", (pid,))
    with pytest.raises(LedgerError), store.transaction() as tx:
        tx.fetchall("SELECT 1")
    with store.transaction() as tx:
        assert tx.fetchall("SELECT 1") == [(1,)]


# --------------------------------------------------------------------------- secrets, any shape

# Characters that break naive URL parsing, plus non-ASCII; a password is wrapped in markers so
# that finding it in any output cannot be a coincidence.
_SPECIALS = "#?/@:%&= []'\"\\é€🙂ß"
passwords = st.text(
    alphabet=st.sampled_from(_SPECIALS) | st.characters(codec="utf-8", categories=("L", "N")),
    min_size=1,
    max_size=16,
).map(lambda core: f"Zq{core}9X")

UNREACHABLE_SHAPES = [
    "postgresql://postgres:{pw}@127.0.0.1:1/db",
    "postgres://app:{pw}@127.0.0.1:1/db?sslmode=disable",
    "postgresql://postgres:{pw}@[::1:5432/db",  # unparsable: libpq quotes the whole URI
    "postgresql://postgres@127.0.0.1:1/db?password={pw}",
    "postgresql://postgres@127.0.0.1:1/db?sslmode=disable&sslpassword={pw}&application_name=x",
    "postgresql://postgres@127.0.0.1:1/db?options=-c%20password%3D{pw}",
    "postgresql://:{pw}@127.0.0.1:1/db",
    "root:{pw}@127.0.0.1/db",  # no scheme
    "mysql://u:{pw}@h/db",
    "sqlite://u:{pw}@/x.db",
    "host=127.0.0.1 port=1 password={pw}",
]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _all_logs() -> Iterator[list[str]]:
    handler, root = _Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _texts(error: BaseException) -> list[str]:
    """Everything an error can show: message, repr, the chained errors, the full traceback."""
    texts = ["".join(traceback.format_exception(error))]
    seen: BaseException | None = error
    while seen is not None:
        texts += [str(seen), repr(seen), *map(str, seen.args)]
        seen = seen.__cause__ or seen.__context__
    return texts


def _assert_hidden(password: str, texts: list[str]) -> None:
    for secret in {password, unquote(password)}:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"{secret!r} shown in {leaks}"


@settings(max_examples=150, deadline=None)
@given(password=passwords, shape=st.sampled_from(UNREACHABLE_SHAPES))
def test_no_shape_of_url_shows_its_password(password: str, shape: str) -> None:
    url = shape.format(pw=password)
    texts = [redact_url(url)]
    with _all_logs() as logs:
        try:
            store = open_store(url)
        except TelemaggError as error:
            texts += _texts(error)
        else:  # pragma: no cover - every shape above is unreachable or invalid
            texts += [repr(store), store.url]
            store.close()
    _assert_hidden(password, texts + logs)


@pytest.mark.postgres
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=passwords)
def test_a_real_connection_with_a_special_password_shows_it_nowhere(password: str) -> None:
    """The local server trusts every connection, so any password connects: it must still be
    hidden from the repr, ``.url``, query errors and logs of the open store."""
    url = with_password(_postgres_base_url(), password)
    with _all_logs() as logs:
        store = open_store(url)
        texts = [repr(store), store.url, str(store)]
        try:
            with store.transaction() as tx:
                tx.fetchall("SELECT * FROM no_such_table_anywhere")
        except LedgerError as error:
            texts += _texts(error)
        store.close()
    assert store.url.startswith("postgresql://postgres:***@")
    _assert_hidden(password, texts + logs)


@pytest.mark.postgres
@pytest.mark.parametrize("password", ["Zq#?/@:%20 é🙂9X", "Zq%zz@[::1]/a?b=c#d9X"])
def test_a_missing_host_shows_no_password(password: str) -> None:
    _postgres_base_url()  # skips without a server configured, as the other PostgreSQL tests
    url = f"postgresql://postgres:{password}@nonexistent-host.invalid:5432/test"
    with _all_logs() as logs, pytest.raises(LedgerError, match="connecting to") as info:
        open_store(url)
    assert "postgres:***@nonexistent-host.invalid" in str(info.value)
    _assert_hidden(password, _texts(info.value) + logs)
