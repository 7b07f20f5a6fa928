"""Tampered, malformed, truncated, keyed, read-only and schema-1 ledgers, on both backends."""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import QUERY, gaussian, laplace, run_sql

from telemagg import cli
from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg._storage import Column, Table, open_store
from telemagg.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerError,
    LedgerIntegrityError,
)
from telemagg.ledger import Ledger
from telemagg.ledger import _ledger as ledger_module
from telemagg.ledger._chain import KEY_ENV, KEY_FILE_ENV, Budget, digest

KEY = b"k3y-for-tests-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def _three_charges(url: str, **key: Any) -> Ledger:
    ledger = Ledger(url, epsilon=1.0, delta=1e-5, **key)
    for eps in (0.1, 0.2, 0.3):
        ledger.charge(laplace(eps), query=QUERY, label=f"eps {eps}")
    ledger.verify()
    return ledger


def _budget_show(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    status = cli.main(["budget", "show", url, *extra])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


# --------------------------------------------------------------------------- total and values


def test_a_total_edited_before_opening_is_refused_when_charging(store_url: str) -> None:
    _three_charges(store_url).close()
    run_sql(store_url, "UPDATE telemagg_ledger SET epsilon = 100")
    with Ledger.open(store_url) as ledger:  # opens with the edited total: the charge checks it
        assert ledger.total == (100.0, 1e-5)
        with pytest.raises(LedgerIntegrityError, match="total or window was edited"):
            ledger.charge(laplace(1.0), query=QUERY)
        with pytest.raises(LedgerIntegrityError, match="total or window was edited"):
            ledger.verify()
        assert len(ledger.charges()) == 3


@pytest.mark.parametrize(
    ("column", "value", "name"),
    [
        ("created_at", "yesterday", "created_at"),
        ("sum_epsilon", "abc", "running sums"),
        ("sum_rho", "1e400", "running sums"),
        ("sum_approx_delta", "1/0", "running sums"),
        ("query", "{", "query"),
    ],
)
def test_malformed_values_are_integrity_errors(
    store_url: str, capsys: pytest.CaptureFixture[str], column: str, value: str, name: str
) -> None:
    _three_charges(store_url).close()
    run_sql(store_url, f"UPDATE telemagg_ledger_charges SET {column} = ? WHERE seq = 3", (value,))
    with Ledger.open(store_url) as ledger:
        with pytest.raises(LedgerIntegrityError, match=f"charge #3 holds a malformed {name}"):
            ledger.verify()
        with pytest.raises(LedgerIntegrityError, match="charge #3 holds a malformed"):
            ledger.charge(laplace(0.1), query=QUERY)
        with pytest.raises(LedgerIntegrityError):
            ledger.charges()
        with pytest.raises(LedgerIntegrityError):
            ledger.spent  # noqa: B018 - reading it is the test
    status, shown = _budget_show(store_url, capsys)
    assert status == 2
    assert "telemagg: " in shown
    assert "malformed" in shown
    assert "Traceback" not in shown


def test_text_in_a_number_column_is_an_integrity_error_not_zero(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite keeps 'abc' in a REAL column (PostgreSQL refuses it), and SQL SUM reads it as 0."""
    _three_charges(sqlite_url).close()
    run_sql(sqlite_url, "UPDATE telemagg_ledger_charges SET epsilon = 'abc' WHERE seq = 3")
    with Ledger.open(sqlite_url) as ledger:
        with pytest.raises(LedgerIntegrityError, match="charge #3 holds a malformed epsilon"):
            ledger.charge(laplace(0.1), query=QUERY)
        with pytest.raises(LedgerIntegrityError, match="malformed epsilon: 'abc'"):
            ledger.verify()
    assert _budget_show(sqlite_url, capsys)[0] == 2


def test_an_edit_inside_the_chain_cannot_lower_what_is_spent(store_url: str) -> None:
    """Charging reads the head's running sums (covered by its hash), never a SQL SUM: a charge
    edited in the middle changes nothing it counts, and verify() names it."""
    with _three_charges(store_url) as ledger:
        run_sql(
            store_url,
            "UPDATE telemagg_ledger_charges SET epsilon = 0, approx_epsilon = 0 WHERE seq = 1",
        )
        run_sql(
            store_url, "UPDATE telemagg_ledger_charges SET created_at = 'yesterday' WHERE seq = 2"
        )
        assert ledger.spent == pytest.approx((0.6, 0.0), rel=1e-12)
        with pytest.raises(BudgetExceededError):
            ledger.charge(laplace(0.5), query=QUERY)
        with pytest.raises(LedgerIntegrityError, match="#1 was edited"):
            ledger.verify()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE telemagg_ledger_charges SET sum_epsilon = '1/100' WHERE seq = 3", "#3 was edited"),
        (
            "UPDATE telemagg_ledger_charges SET created_at = '2000-01-01T00:00:00.000000Z' "
            "WHERE seq = 2",
            "#2 was edited",
        ),
    ],
)
def test_verify_detects_edited_running_sums_and_times(
    store_url: str, sql: str, message: str
) -> None:
    with _three_charges(store_url) as ledger:
        run_sql(store_url, sql)
        with pytest.raises(LedgerIntegrityError, match=message):
            ledger.verify()


# --------------------------------------------------------------------------- truncation


def _truncate_to(url: str, seq: int, reseal_with: bytes | str | None = "no") -> None:
    """The truncation attack: delete the charges after ``seq``, copy #seq's hash into the head
    (and, when ``reseal_with`` is a key or None, recompute the head's seal with it)."""
    store = open_store(url)
    with store.transaction(write=True) as tx:
        tx.execute("DELETE FROM telemagg_ledger_charges WHERE seq > ?", (seq,))
        row = tx.fetchone("SELECT hash FROM telemagg_ledger_charges WHERE seq = ?", (seq,))
        head = row[0] if row else tx.fetchone("SELECT genesis_hash FROM telemagg_ledger")[0]  # type: ignore[index]
        tx.execute("UPDATE telemagg_ledger SET head_hash = ?, charge_count = ?", (head, seq))
        if reseal_with != "no":
            genesis = tx.fetchone("SELECT genesis_hash FROM telemagg_ledger")[0]  # type: ignore[index]
            seal = digest(
                {"telemagg_ledger_head": head, "count": seq, "genesis": genesis}, reseal_with
            )  # type: ignore[arg-type]
            tx.execute("UPDATE telemagg_ledger SET head_seal = ?", (seal,))
    store.close()


@pytest.mark.parametrize("keep", [2, 0])
def test_truncation_without_recomputing_anything_is_detected(store_url: str, keep: int) -> None:
    with _three_charges(store_url) as ledger:
        _truncate_to(store_url, keep)
        with pytest.raises(LedgerIntegrityError, match=r"head .* was edited"):
            ledger.verify()
        with pytest.raises(LedgerIntegrityError, match=r"head .* was edited"):
            ledger.charge(laplace(0.1), query=QUERY)


def test_unkeyed_ledgers_do_not_stop_someone_who_recomputes_sha256(store_url: str) -> None:
    """The documented limit: without a key, recomputing one SHA-256 makes a truncation
    consistent. Keyed ledgers exist for this."""
    with _three_charges(store_url) as ledger:
        _truncate_to(store_url, 1, reseal_with=None)
        ledger.verify()
        assert ledger.spent == (0.1, 0.0)


def test_keyed_ledgers_detect_truncation_and_rewrites_without_the_key(store_url: str) -> None:
    with _three_charges(store_url, key=KEY) as ledger:
        _truncate_to(store_url, 1, reseal_with=None)  # as if unkeyed
        with pytest.raises(LedgerIntegrityError, match=r"head .* was edited"):
            ledger.verify()
        _truncate_to(store_url, 1, reseal_with=b"a guessed key, 16+ bytes")
        with pytest.raises(LedgerIntegrityError, match=r"head .* was edited"):
            ledger.charge(laplace(0.1), query=QUERY)
        _truncate_to(store_url, 1, reseal_with=KEY)  # only the key holder can do this
        ledger.verify()


def test_a_rewritten_keyed_chain_is_detected(store_url: str) -> None:
    """Lower charge #2 and recompute every SHA-256 and the seal as an attacker without the
    key would: the keyed chain does not verify, and a keyed open with the key refuses it."""
    with _three_charges(store_url, key=KEY) as ledger:
        charges = ledger.charges()
    store = open_store(store_url)
    with store.transaction(write=True) as tx:
        tx.execute("UPDATE telemagg_ledger SET chain = 'sha256'")
        row = tx.fetchone(
            "SELECT epsilon, delta, window_seconds, created_at, chain, genesis_hash, head_hash, "
            "head_seal, charge_count FROM telemagg_ledger"
        )
        budget = Budget.from_row(row, "x")  # type: ignore[arg-type]
        previous = budget.genesis(None)
        for charge in charges:
            loss = laplace(0.01) if charge.seq == 2 else charge.loss
            rewritten = type(charge)(
                **{
                    **vars(charge),
                    "epsilon": loss.epsilon,
                    "approx_epsilon": loss.epsilon,
                    "prev_hash": previous,
                }
            ).sealed(None)
            tx.execute(
                "UPDATE telemagg_ledger_charges SET epsilon = ?, approx_epsilon = ?, "
                "prev_hash = ?, hash = ? WHERE seq = ?",
                (loss.epsilon, loss.epsilon, previous, rewritten.hash, charge.seq),
            )
            previous = rewritten.hash
        tx.execute(
            "UPDATE telemagg_ledger SET genesis_hash = ?, head_hash = ?, head_seal = ?",
            (
                budget.genesis(None),
                previous,
                Budget(**{**vars(budget), "genesis_hash": budget.genesis(None)}).seal(
                    None, previous, 3
                ),
            ),
        )
    store.close()
    with pytest.raises(LedgerError, match="created without a key, but a key was given"):
        Ledger.open(store_url, key=KEY)


# --------------------------------------------------------------------------- keys


def test_keyed_ledger_needs_its_key_and_never_shows_it(
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _three_charges(store_url, key=KEY) as ledger:
        assert ledger.keyed
        assert KEY.decode() not in repr(ledger)
    with pytest.raises(LedgerError, match="is a keyed ledger: give its key"):
        Ledger.open(store_url)
    with pytest.raises(LedgerError, match="is a keyed ledger"):
        Ledger(store_url, epsilon=1.0, delta=1e-5)
    with Ledger.open(store_url, key=b"not the key, but long enough") as wrong:
        with pytest.raises(LedgerIntegrityError, match="not the ledger's key") as info:
            wrong.charge(laplace(0.1), query=QUERY)
        assert "not the key" not in str(info.value)
    key_file = tmp_path / "ledger.key"
    key_file.write_bytes(KEY + b"\n")
    with Ledger.open(store_url, key_file=key_file) as by_file:
        by_file.charge(laplace(0.1), query=QUERY)
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    with Ledger.open(store_url) as by_env:
        by_env.verify()
        assert by_env.spent == pytest.approx((0.7, 0.0), rel=1e-12)
    status, shown = _budget_show(store_url, capsys)
    assert status == 0
    assert "keyed (HMAC-SHA256)" in shown
    assert KEY.decode() not in shown
    monkeypatch.delenv(KEY_ENV)
    assert _budget_show(store_url, capsys, "--key-file", str(key_file))[0] == 0
    status, shown = _budget_show(store_url, capsys)
    assert (status, "is a keyed ledger" in shown) == (2, True)


def test_unkeyed_ledger_opened_with_a_key_is_refused(store_url: str) -> None:
    _three_charges(store_url).close()
    with pytest.raises(LedgerError, match="created without a key, but a key was given"):
        Ledger.open(store_url, key=KEY)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"short", "at least 16 bytes"),
        ("\ud800" * 20, "valid Unicode"),
        (12345678901234567890, "bytes or str"),
    ],
)
def test_bad_keys_are_config_errors(sqlite_url: str, key: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Ledger(sqlite_url, epsilon=1.0, delta=0.0, key=key)  # type: ignore[arg-type]


def test_unreadable_key_file_names_the_file(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the ledger key file"):
        Ledger(sqlite_url, epsilon=1.0, delta=0.0, key_file=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="not both"):
        Ledger(sqlite_url, epsilon=1.0, delta=0.0, key=KEY, key_file=tmp_path / "k")


# --------------------------------------------------------------------------- read-only


def test_read_only_sqlite_ledger_reads_and_refuses_charges(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _three_charges(sqlite_url).close()
    read_only = sqlite_url + "?mode=ro"
    with Ledger.open(read_only) as ledger:
        assert ledger.read_only
        assert ledger.spent == pytest.approx((0.6, 0.0), rel=1e-12)
        assert len(ledger.charges()) == 3
        ledger.verify()
        with pytest.raises(LedgerError, match=r"read-only .* not charged"):
            ledger.charge(laplace(0.1), query=QUERY)
    assert _budget_show(read_only, capsys)[0] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes files whatever their mode")
def test_a_file_this_process_cannot_write_opens_read_only(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _three_charges(sqlite_url).close()
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    path.chmod(0o444)
    try:
        assert _budget_show(sqlite_url, capsys)[0] == 0
        with Ledger.open(sqlite_url) as ledger, pytest.raises(LedgerError, match="read-only"):
            ledger.charge(laplace(0.1), query=QUERY)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- schema 1


V1_TABLES = [
    Table(
        "telemagg_ledger",
        (
            *(Column(name, "int") for name in ("id",)),
            *(Column(name, "float") for name in ("epsilon", "delta")),
            Column("window_seconds", "int", nullable=True),
            *(Column(name, "text") for name in ("created_at", "genesis_hash", "head_hash")),
            Column("charge_count", "int"),
        ),
        ("id",),
    ),
    Table(
        "telemagg_ledger_charges",
        (
            Column("seq", "int"),
            Column("created_at", "text"),
            *(
                Column(name, "float")
                for name in ("epsilon", "delta", "approx_epsilon", "approx_delta", "rho")
            ),
            Column("query", "text"),
            Column("label", "text", nullable=True),
            *(Column(name, "text") for name in ("version", "prev_hash", "hash")),
        ),
        ("seq",),
        indexes=(("created_at",),),
    ),
]


def _v1_ledger(url: str, losses: list[PrivacyLoss], *, break_chain: bool = False) -> None:
    """A ledger exactly as telemagg's schema 1 wrote it (tables, genesis and chain)."""

    def sha(document: dict[str, Any]) -> str:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    created = "2030-01-01T00:00:00.000000Z"
    genesis = sha(
        {
            "telemagg_ledger": 1,
            "epsilon": 5.0,
            "delta": 1e-5,
            "window_seconds": None,
            "created_at": created,
        }
    )
    store = open_store(url)
    store.ensure_schema("ledger", 1, V1_TABLES)
    with store.transaction(write=True) as tx:
        previous = genesis
        for seq, loss in enumerate(losses, start=1):
            time = f"2030-01-01T00:00:{seq:02d}.000000Z"
            document = {
                "seq": seq,
                "time": time,
                "epsilon": loss.epsilon,
                "delta": loss.delta,
                "approx_epsilon": loss.approx_epsilon,
                "approx_delta": loss.approx_delta,
                "rho": loss.rho,
                "query": json.dumps(QUERY, sort_keys=True, separators=(",", ":")),
                "label": f"v1 #{seq}",
                "version": "0.1.0",
                "prev_hash": previous,
            }
            own = sha(document)
            tx.execute(
                "INSERT INTO telemagg_ledger_charges VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    time,
                    loss.epsilon,
                    loss.delta + (1e-9 if break_chain and seq == 2 else 0),
                    loss.approx_epsilon,
                    loss.approx_delta,
                    loss.rho,
                    document["query"],
                    document["label"],
                    "0.1.0",
                    previous,
                    own,
                ),
            )
            previous = own
        tx.execute(
            "INSERT INTO telemagg_ledger VALUES (1, 5.0, 1e-5, NULL, ?, ?, ?, ?)",
            (created, genesis, previous, len(losses)),
        )
    store.close()


V1_LOSSES = [laplace(0.5, 1e-7), gaussian(0.01, 1e-7), laplace(0.25)]


@pytest.mark.parametrize("key", [None, KEY])
def test_a_schema_1_ledger_is_migrated(store_url: str, key: bytes | None) -> None:
    _v1_ledger(store_url, V1_LOSSES)
    with Ledger.open(store_url, key=key) as ledger:
        assert ledger.keyed == (key is not None)
        ledger.verify()
        charges = ledger.charges()
        assert [c.label for c in charges] == ["v1 #1", "v1 #2", "v1 #3"]
        assert [c.loss for c in charges] == V1_LOSSES
        basic = math.fsum(loss.epsilon for loss in V1_LOSSES)
        zcdp = 0.75 + zcdp_to_epsilon(0.01, 1e-7)
        assert ledger.spent == pytest.approx((min(basic, zcdp), 2e-7), rel=1e-12)
        ledger.charge(laplace(1.0), query=QUERY)
        ledger.verify()
    with Ledger(store_url, epsilon=5.0, delta=1e-5, key=key) as again:  # already schema 2
        assert len(again.charges()) == 4


def test_a_broken_schema_1_ledger_is_not_migrated(store_url: str) -> None:
    _v1_ledger(store_url, V1_LOSSES, break_chain=True)
    with pytest.raises(LedgerIntegrityError, match="refusing to migrate"):
        Ledger.open(store_url)
    with pytest.raises(LedgerIntegrityError, match="refusing to migrate"):  # nothing changed
        Ledger.open(store_url)


# --------------------------------------------------------------------------- windows, exactly


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self, tx: object = None) -> datetime:
        return self.now


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 90), st.sampled_from([0.05, 0.1, 0.25, 0.3])),
        min_size=1,
        max_size=25,
    )
)
def test_window_sums_from_two_rows_equal_summing_the_window(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[int, float]],
) -> None:
    """Running sums minus the boundary's equal the composition of exactly the charges of the
    last window, computed from scratch; admissions follow it."""
    clock = _Clock()
    monkeypatch.setattr(ledger_module, "_now", clock)
    url = f"sqlite:///{tmp_path_factory.mktemp('w') / 'l.db'}"
    with Ledger(url, epsilon=1.0, delta=0.0, window="60s") as ledger:
        for seconds, eps in steps:
            clock.now += timedelta(seconds=seconds)
            since = clock.now - timedelta(seconds=60)
            counted = [c for c in ledger.charges() if c.time >= since]
            expected = math.fsum(c.epsilon for c in counted)
            assert ledger.spent[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)
            assert ledger.counted() == len(counted)
            fits = expected + eps <= 1.0 * (1 + 1e-9)
            try:
                ledger.charge(laplace(eps), query=QUERY)
                assert fits
            except BudgetExceededError:
                assert not fits
        ledger.verify()
