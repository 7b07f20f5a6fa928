"""examples/service: the FastAPI app's usage events reach a released window, end to end."""

from __future__ import annotations

import importlib.util
import json
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from collector_helpers import Clock, released_files, running, wait_until

import telemagg as tm

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # fastapi's TestClient
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

EXAMPLE = Path(__file__).parents[2] / "examples" / "service"


def test_the_example_service_feeds_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    config = tomllib.loads((EXAMPLE / "pipeline.toml").read_text())
    config["source"]["listen"] = "127.0.0.1:0"
    config["http"]["listen"] = "127.0.0.1:0"
    config["ledger"]["url"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    config["state"]["url"] = f"sqlite:///{tmp_path / 'state.db'}"
    config["output"]["dir"] = str(tmp_path / "releases")
    config["aggregate"]["epsilon"] = 50.0  # tight noise: the counts are checked
    clock = Clock(time.time())  # the records carry the wall clock's time
    collector = tm.Collector(config, clock=clock)
    with running(collector):
        assert collector.source_address is not None
        endpoint = "http://{}:{}/v1/logs".format(*collector.source_address)
        monkeypatch.setenv("TELEMAGG_OTLP_ENDPOINT", endpoint)
        spec = importlib.util.spec_from_file_location("example_service_app", EXAMPLE / "app.py")
        assert spec is not None
        assert spec.loader is not None
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        client = TestClient(app.app)
        for user in range(40):
            headers = {"X-User-Id": f"user-{user}"}
            assert client.get(f"/documents/{user}", headers=headers).status_code == 200
            assert client.put(f"/documents/{user}", headers=headers).status_code == 200
        assert client.get("/documents/1").status_code == 200  # no user: no event
        assert app.provider.force_flush(30_000)  # answered 200: checkpointed
        assert collector.metrics.get("events_absorbed") == 80
        clock.now += 130  # past the window (1m) and its allowed lateness (10s)
        wait_until(lambda: collector.metrics.get("windows_released") >= 1, 90)
        app.provider.shutdown()
    totals: dict[str, float] = {}
    variance = 0.0
    for path in released_files(config):  # the requests may straddle a minute boundary
        table = pq.read_table(path).to_pydict()
        metadata = json.loads(pq.read_schema(path).metadata[b"telemagg"])
        variance += metadata["metrics"]["count"]["stddev"] ** 2
        for name, count in zip(table["event_name"], table["count"], strict=True):
            totals[name] = totals.get(name, 0.0) + count
    bound = 8 * variance**0.5
    assert abs(totals["open_document"] - 40) <= bound
    assert abs(totals["save_document"] - 40) <= bound
    assert abs(totals["share_document"]) <= bound
