"""``telemagg budget show`` and ``telemagg budget history``, through a parser built here."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from ledger_helpers import QUERY, gaussian, laplace, run_sql

from telemagg import cli
from telemagg.errors import BudgetExceededError, ConfigError, LedgerError
from telemagg.ledger import Ledger
from telemagg.ledger._cli import register


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="telemagg")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def fields(output: str) -> dict[str, str]:
    return {line[:10].strip(): line[11:] for line in output.splitlines()}


def test_show_reports_the_budget(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(store_url, epsilon=2.0, delta=1e-5, window="30d") as ledger:
        ledger.charge(laplace(0.5, 1e-6), query=QUERY)
        ledger.charge(laplace(0.25), query=QUERY)
        head = ledger.head
    assert run("budget", "show", store_url) == 0
    shown = fields(capsys.readouterr().out)
    assert shown["total"] == "epsilon=2  delta=1e-05"
    assert shown["spent"] == "epsilon=0.75  delta=1e-06"
    assert shown["remaining"] == "epsilon=1.25  delta=9e-06"
    assert shown["window"].startswith("30d: only charges of the last 30d count")
    assert shown["charges"] == "2 recorded, 2 counted now"
    assert shown["chain"] == f"verified; head {head}"


def test_show_flags_a_broken_chain(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(sqlite_url, epsilon=2.0, delta=0.0) as ledger:
        ledger.charge(laplace(0.5), query=QUERY)
    run_sql(sqlite_url, "UPDATE telemagg_ledger_charges SET epsilon = 0.0")
    assert run("budget", "show", sqlite_url) == 1
    assert fields(capsys.readouterr().out)["chain"].startswith("BROKEN: ")


def test_history_lists_charges_oldest_first(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger(store_url, epsilon=5.0, delta=1e-5) as ledger:
        ledger.charge(laplace(0.5), query=QUERY, label="daily active users")
        ledger.charge(gaussian(0.01, 1e-7), query={"by": ["os"] * 40}, label="crash rates")
    assert run("budget", "history", store_url) == 0
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "#",
        "time",
        "(UTC)",
        "epsilon",
        "delta",
        "rho",
        "label",
        "version",
        "query",
    ]
    assert set(rule) == {"-", " "}
    assert [row.split()[0] for row in rows] == ["1", "2"]
    assert "daily active users" in rows[0]
    assert "crash rates" in rows[1]
    assert rows[1].endswith("…")  # long queries are cut
    assert datetime.now(UTC).strftime("%Y-%m-%d") in rows[0]


def test_history_of_an_empty_ledger(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(sqlite_url, epsilon=1.0, delta=0.0).close()
    assert run("budget", "history", sqlite_url) == 0
    assert capsys.readouterr().out == "no charges recorded\n"


def test_missing_ledger_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(LedgerError, match="does not exist"):
        run("budget", "show", f"sqlite:///{path}")
    assert not path.exists()


def test_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="got 'mysql'"):
        run("budget", "history", "mysql://u:pw@h/db")


def test_budget_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("budget")
    assert "show" in capsys.readouterr().err


@pytest.mark.parametrize("password", ["Zq#?/@:%é 9X", "Zq%zz&password=x9X", "Zq@[::1]:5/a?b#c9X"])
def test_budget_commands_never_show_a_password(
    postgres_url: str, capsys: pytest.CaptureFixture[str], password: str
) -> None:
    """The local server trusts every connection, so any password connects: output, reprs and
    errors must still hide it, whatever characters it holds."""
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)
    with Ledger(url, epsilon=1.0, delta=0.0) as ledger:
        ledger.charge(laplace(0.5), query=QUERY)
        shown = [repr(ledger), ledger.url]
        with pytest.raises(BudgetExceededError) as refused:
            ledger.charge(laplace(0.75), query=QUERY)
        shown.append(str(refused.value))
    for command in ("show", "history"):
        assert cli.main(["budget", command, url]) == 0
        captured = capsys.readouterr()
        shown += [captured.out, captured.err]
    assert "postgres:***@127.0.0.1" in shown[1]
    for text in shown:
        assert password not in text
        assert unquote(password) not in text
