"""Processes racing for one budget, and processes SIGKILLed mid-charge, on both backends."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledger_helpers import QUERY, gaussian, laplace

import telemagg
from telemagg._mechanisms import zcdp_to_epsilon
from telemagg.errors import BudgetExceededError
from telemagg.ledger import Ledger

pytestmark = pytest.mark.slow

SRC = str(Path(telemagg.__file__).resolve().parents[1])

# Waits for the start file, then charges `step` until the budget refuses; prints its seqs.
# The pause between charges lets the others in (SQLite's busy handler favours the last writer).
RACER = """
import json, os, sys, time
from telemagg._mechanisms import PrivacyLoss
from telemagg.errors import BudgetExceededError
from telemagg.ledger import Ledger

url, step, start = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ledger = Ledger.open(url)
open(f"{start}.ready.{os.getpid()}", "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
seqs = []
while True:
    try:
        charge = ledger.charge(PrivacyLoss(step, 0.0, step, 0.0), query={"pid": os.getpid()})
    except BudgetExceededError:
        break
    seqs.append(charge.seq)
    time.sleep(0.005)
print(json.dumps(seqs))
"""

# Charges Laplace and Gaussian releases alternately, forever, until killed.
SPENDER = """
import sys
from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg.ledger import Ledger

ledger = Ledger.open(sys.argv[1])
print("ready", flush=True)
gaussian = PrivacyLoss(zcdp_to_epsilon(0.001, 1e-9), 1e-9, 0.0, 0.0, 0.001)
laplace = PrivacyLoss(0.01, 0.0, 0.01, 0.0)
while True:
    ledger.charge(laplace, query={"kind": "laplace"}, label="killed loop")
    ledger.charge(gaussian, query={"kind": "gaussian"}, label="killed loop")
"""


# Opens the ledger, says so, waits for the start file, then tries one charge of `epsilon`.
ONE_CHARGE = """
import os, sys, time
from telemagg._mechanisms import PrivacyLoss
from telemagg.errors import BudgetExceededError
from telemagg.ledger import Ledger

url, epsilon, start = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ledger = Ledger.open(url)
print("ready", flush=True)
while not os.path.exists(start):
    time.sleep(0.001)
try:
    ledger.charge(PrivacyLoss(epsilon, 0.0, epsilon, 0.0), query={"pid": os.getpid()})
except BudgetExceededError:
    print("refused")
else:
    print("admitted")
"""


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_racing_processes_spend_exactly_the_budget(store_url: str, tmp_path: Path) -> None:
    step, total = 0.0625, 4.0  # binary fractions: exactly 64 charges fit
    Ledger(store_url, epsilon=total, delta=0.0).close()
    start = tmp_path / "start"
    racers = [_child(RACER, store_url, str(step), str(start)) for _ in range(6)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("start.ready.*"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)  # every racer has imported and opened the ledger: start together
    start.touch()
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 6, [err for _, err in results]
    won = {racer.pid: json.loads(out) for racer, (out, _) in zip(racers, results, strict=True)}

    assert sum(len(seqs) for seqs in won.values()) == math.floor(total / step) == 64
    with Ledger.open(store_url) as ledger:
        charges = ledger.charges()
        ledger.verify()
        assert ledger.spent == (4.0, 0.0)
    # Every success is recorded, under the process that won it, and nothing else is.
    assert sorted(seq for seqs in won.values() for seq in seqs) == [c.seq for c in charges]
    assert {c.seq: c.query["pid"] for c in charges} == {
        seq: pid for pid, seqs in won.items() for seq in seqs
    }
    assert sum(1 for seqs in won.values() if seqs) >= 2  # they really raced


def _wait_for_charges(url: str, count: int, timeout: float = 60.0) -> None:
    """Block until the ledger at ``url`` holds at least ``count`` charges."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Ledger.open(url) as ledger:
            if len(ledger.charges()) >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"the spender made fewer than {count} charges in {timeout} s")


def test_sigkilled_processes_leave_a_consistent_ledger(store_url: str) -> None:
    Ledger(store_url, epsilon=1e6, delta=0.5).close()
    rng = random.Random(20240611)
    for _ in range(5):
        with Ledger.open(store_url) as ledger:
            before = len(ledger.charges())
        spender = _child(SPENDER, store_url)
        assert spender.stdout is not None
        assert spender.stdout.readline().strip() == "ready", spender.stderr
        _wait_for_charges(store_url, before + 3)  # a loaded machine may start it slowly
        time.sleep(rng.uniform(0.0, 0.3))
        spender.send_signal(signal.SIGKILL)
        spender.communicate(timeout=30)
        assert spender.returncode == -signal.SIGKILL

    with Ledger.open(store_url) as ledger:
        ledger.verify()
        charges = ledger.charges()
        assert len(charges) > 10
        assert [c.seq for c in charges] == list(range(1, len(charges) + 1))
        # spent is exactly the composition of the recorded charges, computed independently.
        basic = math.fsum(c.epsilon for c in charges)
        zcdp = math.fsum(c.approx_epsilon for c in charges) + zcdp_to_epsilon(
            math.fsum(c.rho for c in charges), math.fsum(c.delta - c.approx_delta for c in charges)
        )
        delta = math.fsum(c.delta for c in charges)
        assert ledger.spent == pytest.approx((min(basic, zcdp), delta), rel=1e-9)
        # ... and it keeps working.
        ledger.charge(laplace(0.5), query=QUERY, label="after the kills")
        ledger.charge(gaussian(0.01, 1e-7), query=QUERY)
        ledger.verify()
        assert len(ledger.charges()) == len(charges) + 2
    if store_url.startswith("sqlite:"):
        import sqlite3

        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_exhausted_budget_refuses_in_every_process(store_url: str, tmp_path: Path) -> None:
    with Ledger(store_url, epsilon=0.0625, delta=0.0) as ledger:
        ledger.charge(laplace(0.0625), query=QUERY)
    start = tmp_path / "start"
    start.touch()
    late = _child(RACER, store_url, "0.0625", str(start))
    out, err = late.communicate(timeout=60)
    assert (late.returncode, json.loads(out)) == (0, []), err
    with Ledger.open(store_url) as ledger, pytest.raises(BudgetExceededError):
        ledger.charge(laplace(1e-9), query=QUERY)


def test_a_long_running_service_charges_at_the_time_of_each_charge(
    store_url: str, tmp_path: Path
) -> None:
    """Charge times are read when charging (not once per process), so a rolling window holds
    across processes: a second process is refused while the service's charge still counts."""
    window = 2.0
    start = tmp_path / "start"
    with Ledger(store_url, epsilon=1.0, delta=0.0, window="2s") as service:
        other = _child(ONE_CHARGE, store_url, "0.5", str(start))
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready", other.stderr
        first = service.charge(laplace(0.75), query=QUERY, label="first")
        with pytest.raises(BudgetExceededError, match="in the last 2s"):
            service.charge(laplace(0.5), query=QUERY)
        time.sleep(window + 0.2)
        assert service.spent == (0.0, 0.0)  # the first charge left the window: live clock
        assert service.counted() == 0
        second = service.charge(laplace(0.75), query=QUERY, label="after the window")
        start.touch()  # the other process charges now, well inside the second charge's window
        out, err = other.communicate(timeout=60)
        assert (other.returncode, out.split()) == (0, ["ready", "refused"][1:]), err
        assert (second.time - first.time).total_seconds() >= window
        assert [c.label for c in service.charges()] == ["first", "after the window"]
        service.verify()
