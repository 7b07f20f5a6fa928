"""The collector end to end on the real NATS JetStream and Redis servers (no mocks)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from collector_helpers import (
    HOUR,
    PARTITIONS,
    T0,
    Clock,
    bounded_truth,
    cleanup,
    config,
    jsonl_bodies,
    make_events,
    publish,
    released_files,
    running,
    wait_until,
    window_iso,
)

import telemagg as tm


@pytest.fixture(params=["nats", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cfg(tmp_path: Path, kind: str) -> Any:
    made = config(tmp_path, kind)
    yield made
    cleanup(made)


def check_releases(cfg: dict[str, Any], events: dict[str, np.ndarray], windows: int) -> None:
    """Every window's file: the bounded truth within noise, publishable metadata only."""
    truth = bounded_truth(events)
    files = released_files(cfg)
    assert [f.parent.name for f in files] == [
        f"window_start={window_iso(w)}" for w in range(windows)
    ]
    for w, path in enumerate(files):
        table = pq.read_table(path)
        metadata = json.loads(table.schema.metadata[b"telemagg"])
        assert "events" not in metadata
        assert "accounting" not in metadata
        assert "received" not in json.dumps(metadata)  # no exact accounting, anywhere
        assert metadata["window"]["start"] == window_iso(w)
        stddev = metadata["metrics"]["count"]["stddev"]
        rows = table.to_pydict()
        assert rows["event_name"] == PARTITIONS
        for name, count in zip(rows["event_name"], rows["count"], strict=True):
            assert abs(count - truth[(window_iso(w), name)]) <= 8 * stddev + 1e-9, (w, name)
    dataset = ds.dataset(cfg["output"]["dir"], format="parquet", partitioning="hive")
    assert dataset.to_table().num_rows == windows * len(PARTITIONS)


def test_releases_every_window_once_with_the_bounded_counts(cfg: dict[str, Any]) -> None:
    events = make_events(20_000, windows=2, seed=1)
    publish(cfg, jsonl_bodies(events, 500))
    clock = Clock(T0 + 2 * HOUR - 1)
    collector = tm.Collector(cfg, clock=clock)
    with running(collector):
        wait_until(lambda: collector.metrics.get("events_absorbed") == 20_000, 90)
        assert released_files(cfg) == []  # nothing is due before the clock says so
        clock.now = T0 + 6 * HOUR  # end of window 1 + allowed lateness
        wait_until(lambda: collector.metrics.get("windows_released") == 2, 90)
    check_releases(cfg, events, windows=2)
    ledger = tm.Ledger.open(cfg["ledger"]["url"])
    assert len(ledger.charges()) == 2
    ledger.verify()
    ledger.close()


def test_restart_resumes_from_the_checkpoint_without_double_counting(cfg: dict[str, Any]) -> None:
    events = make_events(20_000, windows=1, seed=2)
    bodies = jsonl_bodies(events, 1000)
    clock = Clock(T0 + HOUR - 1)
    publish(cfg, bodies[:10])
    first = tm.Collector(cfg, clock=clock)
    with running(first):
        wait_until(lambda: first.metrics.get("events_absorbed") == 10_000, 90)
    publish(cfg, bodies[10:])
    second = tm.Collector(cfg, clock=clock)
    with running(second):
        wait_until(lambda: second.metrics.get("events_absorbed") == 10_000, 90)
        clock.now = T0 + 5 * HOUR
        wait_until(lambda: second.metrics.get("windows_released") == 1, 90)
        assert second.metrics.get("events_received") == 10_000  # only the new half
    check_releases(cfg, events, windows=1)


def test_restart_replays_the_journal_after_the_snapshot(cfg: dict[str, Any]) -> None:
    from telemagg.collector._checkpoint import CheckpointStore
    from telemagg.collector._config import CollectorConfig
    from telemagg.collector._engine import Engine

    events = make_events(6_000, windows=1, seed=3)
    bodies = jsonl_bodies(events, 200)
    clock = Clock(T0 + HOUR - 1)
    first = tm.Collector(cfg, clock=clock)
    with running(first):
        publish(cfg, bodies[:10])
        wait_until(lambda: first.metrics.get("checkpoints") >= 1, 90)
        for i in range(10, len(bodies)):  # small checkpoints: journal appends
            publish(cfg, bodies[i : i + 1])
            wait_until(lambda i=i: first.metrics.get("events_absorbed") == (i + 1) * 200, 90)
        wait_until(lambda: first.metrics.get("held_events") == 0, 90)
        assert first.metrics.get("snapshots") < first.metrics.get("checkpoints")
    store = CheckpointStore(cfg["state"]["url"], "default")
    checkpoint = store.load()
    store.close()
    assert checkpoint is not None
    assert checkpoint.journal  # the state is a snapshot and a journal after it
    # exactly the events sent, no noise: the snapshot plus its journal hold each event
    # once (a duplicate here is the store's, not the release's)
    restored = Engine.loads(checkpoint.engine, CollectorConfig.model_validate(cfg).aggregate, None)
    restored.replay(checkpoint.journal)
    assert restored.accounting()["received"] == len(events["ts"])
    second = tm.Collector(cfg, clock=clock)
    with running(second):
        clock.now = T0 + 5 * HOUR
        wait_until(lambda: second.metrics.get("windows_released") == 1, 90)
        assert second.metrics.get("events_received") == 0  # all of it came from the store
    check_releases(cfg, events, windows=1)


def test_malformed_messages_are_counted_and_skipped(cfg: dict[str, Any]) -> None:
    events = make_events(2_000, windows=1, seed=3)
    publish(cfg, [b'{"user_id": 1, "event_name": "open", "ts": ', *jsonl_bodies(events, 500)])
    clock = Clock(T0 + HOUR - 1)
    collector = tm.Collector(cfg, clock=clock)
    with running(collector):
        wait_until(lambda: collector.metrics.get("events_absorbed") == 2_000, 90)
        assert collector.metrics.get("messages_malformed") == 1
        clock.now = T0 + 5 * HOUR
        wait_until(lambda: collector.metrics.get("windows_released") == 1, 90)
    check_releases(cfg, events, windows=1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_refused_charge_keeps_windows_pending_and_says_why(tmp_path: Path) -> None:
    cfg = config(tmp_path, "nats", epsilon=5.0, ledger_epsilon=1.0)
    try:
        publish(cfg, jsonl_bodies(make_events(1_000, windows=1, seed=4), 500))
        clock = Clock(T0 + HOUR - 1)
        collector = tm.Collector(cfg, clock=clock)
        with running(collector):
            assert collector.http_address is not None
            base = "http://{}:{}".format(*collector.http_address)
            wait_until(lambda: collector.metrics.get("events_absorbed") == 1_000, 90)
            assert get(base + "/healthz")[0] == 200
            clock.now = T0 + 5 * HOUR
            wait_until(lambda: collector.metrics.get("releases_refused") >= 1, 90)
            status, body = get(base + "/healthz")
            assert status == 503
            assert "cannot cover" in json.loads(body)["problems"]["ledger"]
            status, text = get(base + "/metrics")
            assert status == 200
            assert "telemagg_collector_events_received_total 1000" in text.splitlines()
            assert "telemagg_collector_budget_epsilon_remaining 1" in text.splitlines()
        assert released_files(cfg) == []
        assert tm.Ledger.open(cfg["ledger"]["url"]).charges() == []
    finally:
        cleanup(cfg)


def test_empty_windows_are_released_on_schedule(cfg: dict[str, Any]) -> None:
    clock = Clock(T0 + 10)
    collector = tm.Collector(cfg, clock=clock)
    with running(collector):
        clock.now = T0 + 7 * HOUR  # windows 0..2 are due (end + 4h lateness)
        wait_until(lambda: collector.metrics.get("windows_released") == 3, 90)
    assert len(released_files(cfg)) == 3


def test_an_output_dir_with_foreign_releases_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, "nats")
    foreign = Path(cfg["output"]["dir"]) / f"window_start={window_iso(0)}" / "release.parquet"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"")
    with pytest.raises(tm.ConfigError, match=r"output\.dir .* never released"):
        tm.Collector(cfg).run()


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_an_unreachable_source_is_a_telemagg_error(tmp_path: Path, kind: str) -> None:
    cfg = config(tmp_path, kind)
    cfg["source"]["url"] = "nats://127.0.0.1:9" if kind == "nats" else "redis://127.0.0.1:9/0"
    with pytest.raises(tm.TelemaggError, match=f"source {kind} at .* (unreachable|failed)"):
        tm.Collector(cfg).run()


def test_consent_and_pseudonymisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Units are pseudonymised before anything else sees them; the consent registry is
    consulted with those pseudonyms (the identity the collector works with)."""
    key = bytes(range(16))
    monkeypatch.setenv("TM_COLLECTOR_KEY", key.hex())
    cfg = config(tmp_path, "nats")
    cfg["consent"] = {"url": f"sqlite:///{tmp_path / 'consent.db'}", "purpose": "analytics"}
    cfg["hygiene"] = {"pseudonymize_key_env": "TM_COLLECTOR_KEY"}
    events = make_events(8_000, windows=1, seed=6, users=2_000)
    opted_out = np.arange(0, 2_000, 2)  # every other user
    registry = tm.ConsentRegistry(cfg["consent"]["url"])
    registry.opt_out(tm.pseudonymize(opted_out.tolist(), key=key).tolist(), purpose="analytics")
    registry.close()
    try:
        publish(cfg, jsonl_bodies(events, 1000))
        clock = Clock(T0 + HOUR - 1)
        collector = tm.Collector(cfg, clock=clock)
        with running(collector):
            wait_until(lambda: collector.metrics.get("events_absorbed") == 8_000, 90)
            clock.now = T0 + 5 * HOUR
            wait_until(lambda: collector.metrics.get("windows_released") == 1, 90)
        kept = events["user_id"] % 2 == 1
        check_releases(cfg, {k: v[kept] for k, v in events.items()}, windows=1)
        assert collector.metrics.get("events_dropped", reason="consent") == (~kept).sum()
    finally:
        cleanup(cfg)


@pytest.mark.postgres
def test_state_and_ledger_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    cfg = config(tmp_path, "nats")
    cfg["state"]["url"] = postgres_url
    cfg["ledger"]["url"] = postgres_url
    events = make_events(4_000, windows=1, seed=7)
    bodies = jsonl_bodies(events, 1000)
    clock = Clock(T0 + HOUR - 1)
    try:
        publish(cfg, bodies[:2])
        first = tm.Collector(cfg, clock=clock)
        with running(first):
            wait_until(lambda: first.metrics.get("events_absorbed") == 2_000, 90)
        publish(cfg, bodies[2:])
        second = tm.Collector(cfg, clock=clock)  # resumes from the PostgreSQL checkpoint
        with running(second):
            wait_until(lambda: second.metrics.get("events_absorbed") == 2_000, 90)
            clock.now = T0 + 5 * HOUR
            wait_until(lambda: second.metrics.get("windows_released") == 1, 90)
    finally:
        cleanup(cfg)
    check_releases(cfg, events, windows=1)
    ledger = tm.Ledger.open(postgres_url)
    ledger.verify()
    assert len(ledger.charges()) == 1
    ledger.close()


def test_dictionary_encoded_keys_are_the_same_units_and_partitions() -> None:
    """The collector dictionary-encodes string unit and ``by`` columns before ``add``: the
    aggregator must see the same units, partitions and drops as from plain strings."""
    import pyarrow as pa

    from telemagg.testing import seeded

    plain = pa.table({"u": ["a", "b", "a", None, "c"], "e": ["x", "y", "x", "x", "z"]})
    encoded = pa.table({name: plain.column(name).dictionary_encode() for name in ("u", "e")})
    results = []
    for table in (plain, encoded):
        agg = tm.Aggregator(
            policy=tm.Policy(privacy_unit="u", max_partitions=1, max_contributions=1),
            by="e",
            metrics=[tm.count(), tm.unit_count()],
            randomness=seeded(7),
        )
        agg.add(table)
        release = agg.release(epsilon=1.0, partitions=["x", "y", "z"])
        columns = {name: np.asarray(v).tolist() for name, v in release.to_dict().items()}
        results.append((columns, release.accounting))
    assert results[0] == results[1]
