"""telemagg aggregate: event files in, one release file out; every error exits 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import telemagg as tm
from telemagg import _event_files
from telemagg.cli import main

EVENTS = ("open", "save", "quit")


def write_events(folder: Path, n: int = 6_000, seed: int = 0) -> dict[str, Any]:
    """One event per user (no bounding drops), split over Parquet, CSV and JSON lines."""
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "user_id": np.arange(n),
            "event_name": rng.choice(["open", "open", "save", "quit"], n),
            "duration_ms": rng.uniform(0, 1000, n),
            "latency_ms": rng.lognormal(4, 1, n),
        }
    )
    third = n // 3
    (folder / "day1").mkdir(parents=True)
    pq.write_table(table.slice(0, third), folder / "day1" / "a.parquet")
    table.slice(third, third).to_pandas().to_csv(folder / "b.csv", index=False)
    table.slice(2 * third).to_pandas().to_json(folder / "c.jsonl", orient="records", lines=True)
    names, counts = np.unique(
        table.column("event_name").to_numpy(zero_copy_only=False), return_counts=True
    )
    return dict(zip(names.tolist(), counts.tolist(), strict=True))


BASE = [
    "--by", "event_name",
    "--metric", "count",
    "--metric", "mean(duration_ms, 0, 1000)",
    "--metric", "quantiles(latency_ms, 0.5 0.9 0.99, 1, 60000, log)",
    "--privacy-unit", "user_id",
    "--epsilon", "1",
    "--delta", "1e-6",
]  # fmt: skip


def test_files_globs_and_folders_become_one_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = write_events(tmp_path / "in")
    monkeypatch.setattr(_event_files, "BATCH_EVENTS", 500)  # many chunks
    added: list[int] = []
    add = tm.Aggregator.add
    monkeypatch.setattr(
        tm.Aggregator, "add", lambda self, ev, now=None: (added.append(len(ev)), add(self, ev, now))
    )
    inputs = [
        str(tmp_path / "in" / "day1"),
        str(tmp_path / "in" / "*.csv"),
        str(tmp_path / "in" / "c.jsonl"),
    ]
    out = tmp_path / "release.parquet"
    assert main(["aggregate", *inputs, *BASE, "--out", str(out)]) == 0
    assert sum(added) == 6_000
    assert max(added) <= 500
    captured = capsys.readouterr()
    assert "partitions released to" in captured.out
    assert "6,000 received" in captured.out  # the operator's exact accounting, on the console
    assert "charged to no ledger" in captured.err
    assert "Traceback" not in captured.err
    data = tm.read_release(out)
    assert data.metadata["query"]["by"] == ["event_name"]
    assert "received" not in json.dumps(data.metadata)  # never in the file
    assert data.table.column_names == [
        "event_name", "count", "mean_duration_ms",
        "p50_latency_ms", "p90_latency_ms", "p99_latency_ms",
    ]  # fmt: skip
    stddev = data.metadata["metrics"]["count"]["stddev"]
    for name, count in zip(
        *(data.table.column(c).to_pylist() for c in ("event_name", "count")), strict=True
    ):
        assert abs(count - truth[name]) <= 8 * stddev


def test_public_partitions_from_a_csv_and_a_policy_file(tmp_path: Path) -> None:
    write_events(tmp_path / "in")
    (tmp_path / "keys.csv").write_text("event_name\nopen\nsave\nquit\nclose\n")
    (tmp_path / "policy.toml").write_text('privacy_unit = "nobody"\nmax_partitions = 1\n')
    out = tmp_path / "r.parquet"
    argv = [
        "aggregate", str(tmp_path / "in"), "--by", "event_name", "--metric", "count",
        "--policy", str(tmp_path / "policy.toml"), "--privacy-unit", "user_id",
        "--max-contributions", "2", "--epsilon", "1", "--partitions", str(tmp_path / "keys.csv"),
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    data = tm.read_release(out)
    assert data.table.column("event_name").to_pylist() == ["open", "save", "quit", "close"]
    assert data.metadata["policy"] == {
        "privacy_unit": "user_id", "max_partitions": 1, "max_contributions": 2,
        "content_columns": [],
    }  # fmt: skip
    assert data.metadata["partitions"]["selection"] == "public"


def test_the_ledger_is_charged_and_reported(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tmp_path / "in")
    tm.Ledger(sqlite_url, epsilon=3.0, delta=1e-5).close()
    out = str(tmp_path / "r.parquet")
    assert (
        main(["aggregate", str(tmp_path / "in"), *BASE, "--ledger", sqlite_url, "--out", out]) == 0
    )
    assert "spent epsilon=1, remaining epsilon=2" in capsys.readouterr().out
    with tm.Ledger.open(sqlite_url) as ledger:
        assert [c.label for c in ledger.charges()] == ["telemagg aggregate"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--metric": "median(x)"}, "metric 'median(x)' is not one of"),
        ({"--by": "nope"}, "column 'nope' is not in the event files"),
        ({"--delta": "0"}, "delta must be > 0 when partitions are selected privately"),
        ({"--epsilon": "1000"}, "epsilon must be at most 100"),
        (
            {"--noise": "gaussian", "--delta": "0", "--partitions": "{tmp}/ok.csv"},
            "delta must be > 0 for noise='gaussian'",
        ),
        ({"--purpose": "ads"}, "purpose='ads' needs consent="),
        ({"--max-partitions": "0"}, "Policy.max_partitions must be an integer >= 1; got 0"),
        ({"--ledger": "sqlite:///{tmp}/none.db"}, "ledger (a URL string) must name an existing"),
        ({"--policy": "{tmp}/bad.toml"}, "Policy has no parameter 'epsilon'"),
        ({"--partitions": "{tmp}/keys.csv"}, "must have a header naming every --by column"),
        ({"INPUT": "{tmp}/missing.parquet"}, "input '{tmp}/missing.parquet' does not exist"),
        ({"INPUT": "{tmp}/*.xlsx"}, "matches no file"),
        ({"--out": "{tmp}/no/such/dir/r.parquet"}, "does not exist"),
    ],
)
def test_every_error_exits_2_with_its_message_before_any_charge(
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    write_events(tmp_path / "in")
    (tmp_path / "bad.toml").write_text("epsilon = 1.0\n")
    (tmp_path / "keys.csv").write_text("event\nopen\n")
    (tmp_path / "ok.csv").write_text("event_name\nopen\n")
    options = {"INPUT": str(tmp_path / "in"), **dict(zip(BASE[::2], BASE[1::2], strict=True))}
    options["--out"] = str(tmp_path / "r.parquet")
    options.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    argv = ["aggregate", options.pop("INPUT")]
    for key, value in options.items():
        argv += [key, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.parquet").exists()


def test_version_and_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(tm.__file__).parents[1])}
    version = subprocess.run(
        [sys.executable, "-m", "telemagg.cli", "--version"], capture_output=True, text=True, env=env
    )
    assert version.stdout.strip() == f"telemagg {tm.__version__}"
    write_events(tmp_path / "in")
    out = tmp_path / "r.parquet"
    command = [
        sys.executable,
        "-m",
        "telemagg.cli",
        "aggregate",
        str(tmp_path / "in" / "day1"),
        *BASE,
        "--out",
        str(out),
    ]
    piped = subprocess.run(command, capture_output=True, text=True, env=env)
    assert piped.returncode == 0
    assert "events/s" not in piped.stderr
    if shutil.which("script") is None:
        pytest.skip("util-linux 'script' is needed to run the command on a terminal")
    shell = " ".join(f"'{part}'" for part in command)
    tty = subprocess.run(
        ["script", "-qec", shell, "/dev/null"], capture_output=True, text=True, env=env
    )
    assert tty.returncode == 0
    assert "events/s" in tty.stdout
    assert "2,000 events" in tty.stdout


def test_consent_drops_the_units_that_opted_out(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tmp_path / "in")
    registry = tm.ConsentRegistry(sqlite_url)
    for unit in range(100):
        registry.opt_out(unit, purpose="model_training")
    registry.close()
    argv = ["aggregate", str(tmp_path / "in"), *BASE, "--out", str(tmp_path / "r.parquet")]
    assert main([*argv, "--consent", sqlite_url, "--purpose", "model_training"]) == 0
    out = capsys.readouterr().out
    assert "100 consent" in out
    assert tm.read_release(tmp_path / "r.parquet").metadata["query"]["purpose"] == "model_training"


def test_intervals_add_low_and_high_columns_and_a_bad_level_exits_2_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tmp_path / "in")
    out = tmp_path / "release.parquet"
    args = ["aggregate", str(tmp_path / "in" / "day1"), *BASE, "--out", str(out), "--quiet"]
    assert main([*args, "--intervals", "0.9"]) == 0
    table = pq.read_table(out)
    names = table.column_names
    assert names[names.index("count") + 1 : names.index("count") + 3] == ["count_low", "count_high"]
    low, value, high = (table.column(c).to_numpy() for c in ("count_low", "count", "count_high"))
    assert np.all(low <= value)
    assert np.all(value <= high)
    metadata = json.loads(table.schema.metadata[b"telemagg"])
    assert metadata["intervals"]["level"] == 0.9
    bad = tmp_path / "bad.parquet"
    assert main([*args[:-3], "--out", str(bad), "--intervals", "1.5"]) == 2
    assert "intervals" in capsys.readouterr().err
    assert not bad.exists()
