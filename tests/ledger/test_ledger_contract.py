"""The ledger contract: the same tests on SQLite and PostgreSQL (fixture ``store_url``)."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledger_helpers import QUERY, gaussian, laplace, run_sql

from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerError,
    LedgerIntegrityError,
)
from telemagg.ledger import Charge, Ledger
from telemagg.ledger import _ledger as ledger_module


class Clock:
    """A settable UTC clock standing in for the ledger's."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self, tx: object = None) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ledger_module, "_now", fake)
    return fake


# --------------------------------------------------------------------------- totals


def test_new_ledger_stores_total_and_starts_empty(store_url: str) -> None:
    with Ledger(store_url, epsilon=2.0, delta=1e-6) as ledger:
        assert ledger.total == (2.0, 1e-6)
        assert ledger.spent == (0.0, 0.0)
        assert ledger.remaining == (2.0, 1e-6)
        assert ledger.charges() == []
        assert ledger.window is None
        ledger.verify()
    with Ledger.open(store_url) as reopened:
        assert reopened.total == (2.0, 1e-6)


@pytest.mark.parametrize(
    ("epsilon", "delta", "window"),
    [(3.0, 1e-6, None), (2.0, 1e-7, None), (2.0, 1e-6, "30d")],
)
def test_reopening_with_another_total_is_config_error(
    store_url: str, epsilon: float, delta: float, window: str | None
) -> None:
    Ledger(store_url, epsilon=2.0, delta=1e-6).close()
    with pytest.raises(
        ConfigError, match=r"was created with epsilon=2\.0, delta=1e-06, window=None"
    ):
        Ledger(store_url, epsilon=epsilon, delta=delta, window=window)
    with Ledger(store_url, epsilon=2, delta=1e-6) as same:  # an int total equal to the float
        assert same.total == (2.0, 1e-6)


def test_equal_windows_in_other_units_match(store_url: str) -> None:
    Ledger(store_url, 1.0, 0.0, window="1w").close()
    with Ledger(store_url, 1.0, 0.0, window="168h") as ledger:
        assert ledger.window == "1w"


@pytest.mark.parametrize(
    ("epsilon", "delta", "message"),
    [
        (0.0, 0.0, "epsilon must be finite and > 0; got 0.0"),
        (math.inf, 0.0, "epsilon must be finite and > 0; got inf"),
        (True, 0.0, "epsilon must be finite and > 0; got True"),
        ("1", 0.0, "epsilon must be finite and > 0; got '1'"),
        (1.0, 1.0, r"delta must be in \[0, 1\); got 1.0"),
        (1.0, -1e-9, r"delta must be in \[0, 1\); got -1e-09"),
        (1.0, math.nan, r"delta must be in \[0, 1\); got nan"),
    ],
)
def test_invalid_total_is_config_error(
    sqlite_url: str, epsilon: object, delta: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Ledger(sqlite_url, epsilon=epsilon, delta=delta)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- charging


def test_charge_records_everything_oldest_first(store_url: str) -> None:
    with Ledger(store_url, epsilon=1.0, delta=1e-5) as ledger:
        first = ledger.charge(laplace(0.25), query=QUERY, label="hourly")
        second = ledger.charge(gaussian(0.01, 1e-6), query={"by": ["os"]})
        assert ledger.charges() == [first, second]
        assert [c.seq for c in ledger.charges()] == [1, 2]
    assert first.query == QUERY
    assert (first.label, second.label) == ("hourly", None)
    assert first.loss == laplace(0.25)
    assert second.loss == gaussian(0.01, 1e-6)
    assert second.prev_hash == first.hash != second.hash
    assert first.time.tzinfo == UTC
    assert first.time <= second.time <= datetime.now(UTC)
    assert first.version
    assert len(first.hash) == 64


def test_spent_and_remaining_follow_charges(store_url: str) -> None:
    with Ledger(store_url, epsilon=1.0, delta=1e-5) as ledger:
        ledger.charge(laplace(0.25, 1e-6), query=QUERY)
        ledger.charge(laplace(0.5, 2e-6), query=QUERY)
        assert ledger.spent == pytest.approx((0.75, 3e-6), rel=1e-12)
        assert ledger.remaining == pytest.approx((0.25, 7e-6), rel=1e-12)


def test_budget_fills_exactly_then_refuses_and_records_nothing(store_url: str) -> None:
    with Ledger(store_url, epsilon=1.0, delta=0.0) as ledger:
        for _ in range(10):  # 0.1 ten times sums to 0.9999999999999999: fits
            ledger.charge(laplace(0.1), query=QUERY)
        before = (ledger.charges(), ledger.spent, ledger.head)
        with pytest.raises(BudgetExceededError) as info:
            ledger.charge(laplace(0.1), query=QUERY, label="one too many")
        assert (ledger.charges(), ledger.spent, ledger.head) == before
        ledger.verify()
    message = str(info.value)
    assert "asks epsilon=0.1" in message
    assert "remaining epsilon=1.11022e-16" in message or "remaining epsilon=0" in message
    assert "nothing was recorded" in message


def test_delta_coordinate_is_enforced(store_url: str) -> None:
    with Ledger(store_url, epsilon=100.0, delta=1e-6) as ledger:
        ledger.charge(laplace(0.1, 6e-7), query=QUERY)
        with pytest.raises(BudgetExceededError, match="delta=6e-07"):
            ledger.charge(laplace(0.1, 6e-7), query=QUERY)
        assert len(ledger.charges()) == 1


def test_pure_dp_ledger_refuses_any_delta(store_url: str) -> None:
    with Ledger(store_url, epsilon=10.0, delta=0.0) as ledger:
        with pytest.raises(BudgetExceededError):
            ledger.charge(gaussian(0.001, 1e-9), query=QUERY)
        assert ledger.charges() == []


def test_gaussian_releases_compose_in_zcdp(store_url: str) -> None:
    """Ten Gaussian releases cost OpenDP's conversion of 10 rho, far below 10x standalone."""
    release = gaussian(0.01, 1e-7)
    with Ledger(store_url, epsilon=50.0, delta=1e-5) as ledger:
        for _ in range(10):
            ledger.charge(release, query=QUERY)
        spent_eps, spent_delta = ledger.spent
    assert spent_delta == pytest.approx(1e-6, rel=1e-12)
    assert spent_eps == pytest.approx(zcdp_to_epsilon(0.1, 1e-6), rel=1e-9)
    assert spent_eps < 0.5 * 10 * release.epsilon


def test_mixed_releases_add_the_approximate_part(store_url: str) -> None:
    mixed = PrivacyLoss(
        epsilon=0.5 + zcdp_to_epsilon(0.02, 1e-7),
        delta=2e-7,
        approx_epsilon=0.5,
        approx_delta=1e-7,
        rho=0.02,
    )
    with Ledger(store_url, epsilon=50.0, delta=1e-5) as ledger:
        for _ in range(4):
            ledger.charge(mixed, query=QUERY)
        spent_eps, spent_delta = ledger.spent
    assert spent_delta == pytest.approx(8e-7, rel=1e-12)
    assert spent_eps == pytest.approx(2.0 + zcdp_to_epsilon(0.08, 4e-7), rel=1e-9)
    assert spent_eps < 4 * mixed.epsilon


def test_zcdp_composition_admits_what_basic_composition_would_refuse(store_url: str) -> None:
    release = gaussian(0.005, 1e-8)
    total = 5 * release.epsilon  # basic composition fits exactly 5
    with Ledger(store_url, epsilon=total, delta=1e-6) as ledger:
        admitted = 0
        while admitted < 100:
            try:
                ledger.charge(release, query=QUERY)
            except BudgetExceededError:
                break
            admitted += 1
    # Exactly as many as OpenDP's conversion of n * rho at n * delta allows.
    expected = max(n for n in range(1, 101) if zcdp_to_epsilon(n * 0.005, n * 1e-8) <= total)
    assert admitted == expected > 5


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (PrivacyLoss(-0.1, 0.0, -0.1, 0.0), r"loss.epsilon must be finite and >= 0"),
        (PrivacyLoss(math.nan, 0.0, 0.1, 0.0), r"loss.epsilon must be finite and >= 0"),
        (PrivacyLoss(0.1, 0.0, 0.1, 1e-6), r"loss.approx_delta must be <= loss.delta"),
        (PrivacyLoss(1.0, 1e-6, 0.0, 1e-6, 0.1), r"needs delta > approx_delta"),
        (PrivacyLoss(0.1, 1e-6, 0.0, 0.0, 0.1), r"loss.epsilon=0.1 is below its own parts"),
        (PrivacyLoss(0.1, 1.0, 0.1, 0.0), r"loss.delta must be < 1"),
    ],
)
def test_inconsistent_loss_is_config_error(
    sqlite_url: str, loss: PrivacyLoss, message: str
) -> None:
    with Ledger(sqlite_url, epsilon=10.0, delta=1e-3) as ledger:
        with pytest.raises(ConfigError, match=message):
            ledger.charge(loss, query=QUERY)
        assert ledger.charges() == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"seeded": True}, "seeded test noise"),
        ({"by": {1, 2}}, "JSON-serialisable"),
        ({"x": math.nan}, "JSON-serialisable"),
        (["by"], "query must be a mapping"),
        ({"by": ["\ud800"]}, "query must be valid Unicode text"),
    ],
)
def test_bad_query_is_config_error(sqlite_url: str, query: object, message: str) -> None:
    with Ledger(sqlite_url, epsilon=10.0, delta=0.0) as ledger:
        with pytest.raises(ConfigError, match=message):
            ledger.charge(laplace(0.1), query=query)  # type: ignore[arg-type]
        assert ledger.charges() == []


@pytest.mark.parametrize("label", ["\ud800", "a\udfffb", "nul\x00"])
def test_unstorable_label_is_config_error(store_url: str, label: str) -> None:
    with Ledger(store_url, epsilon=10.0, delta=0.0) as ledger:
        with pytest.raises(ConfigError, match="label must be valid Unicode text"):
            ledger.charge(laplace(0.1), query=QUERY, label=label)
        assert ledger.charges() == []


def test_threads_sharing_one_ledger_never_overspend(store_url: str) -> None:
    admitted: list[Charge] = []
    with Ledger(store_url, epsilon=2.0, delta=0.0) as ledger:

        def spend() -> None:
            while True:
                try:
                    admitted.append(ledger.charge(laplace(0.125), query=QUERY))
                except BudgetExceededError:
                    return

        threads = [threading.Thread(target=spend) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(admitted) == 16
        assert sorted(c.seq for c in admitted) == [c.seq for c in ledger.charges()]
        ledger.verify()


# --------------------------------------------------------------------------- windows


def test_window_forgets_old_charges_but_keeps_them(store_url: str, clock: Clock) -> None:
    with Ledger(store_url, epsilon=1.0, delta=0.0, window="1d") as ledger:
        ledger.charge(laplace(0.75), query=QUERY)
        clock.now += timedelta(hours=12)
        with pytest.raises(BudgetExceededError, match="in the last 1d"):
            ledger.charge(laplace(0.5), query=QUERY)
        ledger.charge(laplace(0.25), query=QUERY)
        clock.now += timedelta(hours=12)  # the first charge is exactly 1d old: still counts
        assert ledger.spent == (1.0, 0.0)
        clock.now += timedelta(seconds=1)
        assert ledger.spent == (0.25, 0.0)
        assert ledger.counted() == 1
        ledger.charge(laplace(0.75), query=QUERY)
        assert len(ledger.charges()) == 3
        ledger.verify()


def test_charge_times_never_go_backwards(store_url: str, clock: Clock) -> None:
    with Ledger(store_url, epsilon=1.0, delta=0.0, window="1h") as ledger:
        first = ledger.charge(laplace(0.5), query=QUERY)
        clock.now -= timedelta(days=1)  # a clock set back must not age charges early
        second = ledger.charge(laplace(0.25), query=QUERY)
        assert second.time == first.time
        with pytest.raises(BudgetExceededError):
            ledger.charge(laplace(0.5), query=QUERY)
        ledger.verify()


@pytest.mark.parametrize("window", ["3 weeks", "30", "0d", "1.5h", "30D", "d", 30])
def test_bad_window_is_config_error(sqlite_url: str, window: object) -> None:
    with pytest.raises(ConfigError, match=f"window must look like .*; got {window!r}"):
        Ledger(sqlite_url, epsilon=1.0, delta=0.0, window=window)  # type: ignore[arg-type]
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


# --------------------------------------------------------------------------- tampering


def _three_charges(url: str) -> Ledger:
    ledger = Ledger(url, epsilon=10.0, delta=1e-5)
    for eps in (0.1, 0.2, 0.3):
        ledger.charge(laplace(eps), query=QUERY, label=f"eps {eps}")
    ledger.verify()
    return ledger


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE telemagg_ledger_charges SET epsilon = 0.01 WHERE seq = 2", "#2 was edited"),
        ("UPDATE telemagg_ledger_charges SET label = 'x' WHERE seq = 1", "#1 was edited"),
        (
            "UPDATE telemagg_ledger_charges SET created_at = '2000-01-01T00:00:00.000000Z' "
            "WHERE seq = 3",
            "#3 was edited",
        ),
        ("DELETE FROM telemagg_ledger_charges WHERE seq = 2", "#3 is where #2 should be"),
        ("DELETE FROM telemagg_ledger_charges WHERE seq = 1", "#2 is where #1 should be"),
        ("DELETE FROM telemagg_ledger_charges WHERE seq = 3", "charges were deleted or added"),
        ("UPDATE telemagg_ledger SET epsilon = 1000.0", "total or window was edited"),
        ("UPDATE telemagg_ledger SET window_seconds = 1", "total or window was edited"),
        (
            "INSERT INTO telemagg_ledger_charges SELECT seq + 10, created_at, epsilon, delta, "
            "approx_epsilon, approx_delta, rho, query, label, version, sum_epsilon, "
            "sum_approx_epsilon, sum_approx_delta, sum_rho, sum_gaussian_delta, prev_hash, hash "
            "FROM telemagg_ledger_charges WHERE seq = 3",
            "#13 is where #4 should be",
        ),
    ],
)
def test_verify_detects_tampering(store_url: str, sql: str, message: str) -> None:
    with _three_charges(store_url) as ledger:
        run_sql(store_url, sql)
        with pytest.raises(LedgerIntegrityError, match=message):
            ledger.verify()


def test_charging_after_the_tail_was_deleted_is_refused(store_url: str) -> None:
    with _three_charges(store_url) as ledger:
        run_sql(store_url, "DELETE FROM telemagg_ledger_charges WHERE seq = 3")
        with pytest.raises(LedgerIntegrityError, match="refusing to charge"):
            ledger.charge(laplace(0.1), query=QUERY)


def test_raising_the_total_behind_the_ledgers_back_is_refused(store_url: str) -> None:
    with _three_charges(store_url) as ledger:
        run_sql(store_url, "UPDATE telemagg_ledger SET epsilon = 1000.0")
        with pytest.raises(LedgerIntegrityError, match="total changed"):
            ledger.charge(laplace(0.1), query=QUERY)


# --------------------------------------------------------------------------- bad stores


def test_foreign_charges_table_is_refused_without_change(store_url: str) -> None:
    run_sql(store_url, "CREATE TABLE telemagg_ledger_charges (id INTEGER, amount REAL)")
    with pytest.raises(LedgerError, match=r"telemagg_ledger_charges.*did not create"):
        Ledger(store_url, epsilon=1.0, delta=0.0)
    with pytest.raises(LedgerError, match="holds no telemagg ledger"):
        Ledger.open(store_url)


def test_ledger_with_altered_columns_is_refused(store_url: str) -> None:
    Ledger(store_url, epsilon=1.0, delta=0.0).close()
    run_sql(store_url, "ALTER TABLE telemagg_ledger_charges ADD COLUMN extra TEXT")
    with pytest.raises(LedgerError, match=r"columns .* are not the telemagg ledger schema"):
        Ledger(store_url, epsilon=1.0, delta=0.0)


def test_file_that_is_not_a_database_is_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "privacy.db"
    path.write_text("id,epsilon\n1,0.5\n" * 200)
    with pytest.raises(LedgerError, match="is not a usable telemagg store"):
        Ledger(f"sqlite:///{path}", epsilon=1.0, delta=0.0)
    assert path.read_text().startswith("id,epsilon")


def test_open_refuses_an_empty_store(store_url: str) -> None:
    run_sql(store_url, "CREATE TABLE unrelated (a INTEGER)")
    with pytest.raises(LedgerError, match="holds no telemagg ledger store"):
        Ledger.open(store_url)


def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Ledger("sqlite:///privacy.db", epsilon=1.0, delta=0.0) as ledger:
        ledger.charge(laplace(0.5), query=QUERY)
    assert (tmp_path / "privacy.db").is_file()
    with Ledger.open("sqlite:///privacy.db") as reopened:
        assert reopened.spent == (0.5, 0.0)


def test_closed_ledger_refuses(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url, epsilon=1.0, delta=0.0)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.charge(laplace(0.5), query=QUERY)
