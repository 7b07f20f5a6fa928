"""Crash safety on the real servers: SIGKILL in a loop, SIGTERM checkpoints and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from collector_helpers import (
    HOUR,
    T0,
    cleanup,
    config,
    drained,
    jsonl_bodies,
    make_events,
    publish,
    released_files,
    wait_until,
)
from test_collector import check_releases

import telemagg as tm
from telemagg.collector._checkpoint import CheckpointStore
from telemagg.collector._config import load_config
from telemagg.collector._engine import Engine

RUNNER = Path(__file__).with_name("run_collector.py")
SRC = Path(tm.__file__).parents[1]


class Process:
    """The collector in a subprocess on a file clock."""

    def __init__(self, cfg: dict[str, Any], tmp_path: Path) -> None:
        self.config_path = tmp_path / "collector.json"
        self.config_path.write_text(json.dumps(cfg))
        self.clock_path = tmp_path / "clock"
        self.ready = Path(f"{self.config_path}.ready")
        self.log = tmp_path / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def set_clock(self, now: float) -> None:
        tmp = self.clock_path.with_suffix(".tmp")
        tmp.write_text(repr(now))
        os.replace(tmp, self.clock_path)

    def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), str(self.config_path), str(self.clock_path)],
                stdout=log,
                stderr=log,
                env=env,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_until(lambda: self.ready.exists() or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_sigkill_loop_loses_nothing_and_releases_each_window_once(
    tmp_path: Path, kind: str
) -> None:
    rng = np.random.default_rng()
    cfg = config(tmp_path, kind, fetch_messages=5)
    cfg["state"]["checkpoint_events"] = 20_000
    events = make_events(200_000, windows=4, seed=11)
    try:
        publish(cfg, jsonl_bodies(events, 1000))
        process = Process(cfg, tmp_path)
        process.set_clock(T0 + 4 * HOUR - 1)  # every event is in; no window is due yet
        kills = 0
        for _ in range(6):  # while absorbing
            process.start()
            process.wait_ready()
            time.sleep(rng.uniform(0.0, 1.0))
            assert process.kill() == -signal.SIGKILL
            kills += 1
        process.start()
        process.wait_ready()
        wait_until(lambda: drained(cfg), 60, step=0.2)
        process.set_clock(T0 + 8 * HOUR)  # windows 0..3 are due (end + 4h lateness)
        for _ in range(4):  # while releasing
            time.sleep(rng.uniform(0.0, 1.2))
            assert process.kill() == -signal.SIGKILL
            kills += 1
            process.start()
            process.wait_ready()
        store_cfg = load_config(cfg).state

        def all_published() -> bool:
            recorded = _observer(store_cfg.url, store_cfg.name)
            return len(recorded) == 4 and all(published for _, _, published in recorded)

        wait_until(all_published, 60, step=0.2)
        assert process.kill(signal.SIGTERM) == 0
        assert kills >= 10
    finally:
        cleanup(cfg)

    check_releases(cfg, events, windows=4)
    ledger = tm.Ledger.open(cfg["ledger"]["url"])
    ledger.verify()
    charges = {c.seq: c for c in ledger.charges()}
    recorded = _observer(load_config(cfg).state.url, load_config(cfg).state.name)
    assert len({start for start, _, _ in recorded}) == 4  # each window recorded once
    for path, (start, charge, _) in zip(released_files(cfg), recorded, strict=True):
        metadata = json.loads(pq.read_table(path).schema.metadata[b"telemagg"])
        assert metadata["window"]["start"] == start
        assert metadata["ledger"]["charge"] == charge  # the file is the committed release
        assert charges[charge].query["window"]["start"] == start
    ledger.close()


def _observer(url: str, name: str) -> list[tuple[str, int, bool]]:
    """The released windows as the state store records them (read-only)."""
    from telemagg._storage import open_store

    store = open_store(url)
    try:
        with store.transaction() as tx:
            rows = tx.fetchall(
                "SELECT window_start, charge, published FROM collector_windows"
                " WHERE name = ? ORDER BY window_start",
                (name,),
            )
    finally:
        store.close()
    return [(str(r[0]), int(r[1]), bool(r[2])) for r in rows]


def test_sigterm_checkpoints_and_exits(tmp_path: Path) -> None:
    cfg = config(tmp_path, "nats")
    del cfg["aggregate"]["start"]  # the grid starts at the wall clock, floored
    now = time.time()
    events = make_events(3_000, windows=1, seed=5)
    events["ts"] = np.full(3_000, now)
    try:
        publish(cfg, jsonl_bodies(events, 1000))
        toml = tmp_path / "pipeline.toml"
        toml.write_text(_toml(cfg))
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "telemagg.cli", "serve", "--config", str(toml)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: drained(cfg) or proc.poll() is not None, 60, step=0.2)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, output
        assert "collector stopped" in output
    finally:
        cleanup(cfg)
    state = load_config(cfg)
    store = CheckpointStore(state.state.url, state.state.name)
    checkpoint = store.load()
    store.close()
    assert checkpoint is not None
    assert checkpoint.engine is not None
    engine = Engine.loads(checkpoint.engine, state.aggregate, None)
    assert engine.accounting()["received"] == 3_000


def _toml(data: dict[str, Any]) -> str:
    """A TOML file for the flat two-level configurations of these tests."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
