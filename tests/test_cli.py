"""The telemagg command line: the demo and the budget commands behind one parser."""

from __future__ import annotations

import re

import pytest

from telemagg.cli import main


def test_demo_prints_the_release_the_loss_and_every_dropped_event(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--events", "50000", "--ledger", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "Privacy loss: epsilon=1.000" in out
    received = int(re.search(r"Events: ([\d,]+) received", out).group(1).replace(",", ""))
    aggregated = int(re.search(r"([\d,]+) aggregated", out).group(1).replace(",", ""))
    dropped = [int(n.replace(",", "")) for n in re.findall(r"dropped\s+([\d,]+)", out)]
    assert received == 50_000 == aggregated + sum(dropped)
    # the demo's ledger was charged, and the budget command reads it back
    assert main(["budget", "show", sqlite_url]) == 0
    assert "remaining" in capsys.readouterr().out


def test_telemagg_errors_become_an_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--events", "1000", "--epsilon", "-1"]) == 2
    assert "epsilon must be finite and > 0" in capsys.readouterr().err
