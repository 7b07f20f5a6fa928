"""The collector's configuration: the issue's keys are the contract; errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import telemagg as tm
from telemagg.collector import load_config, parse_metric

ISSUE_EXAMPLE = """
[source]
kind = "nats"
url = "nats://127.0.0.1:4222"
stream = "TELEMETRY"
subject = "telemetry.events"
durable = "telemagg"
format = "jsonl"

[aggregate]
privacy_unit = "user_id"
by = ["event_name"]
metrics = ["count", "unit_count", "mean(duration_ms, 0, 60000)"]
max_partitions = 4
max_contributions = 2
time = "ts"
window = "1h"
allowed_lateness = "5m"
epsilon = 0.5
delta = 1e-7

[ledger]
url = "sqlite:///ledger.db"
epsilon = 10.0
delta = 1e-5

[output]
dir = "releases"

[state]
url = "sqlite:///collector-state.db"
"""


def test_the_issue_example_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_config(path)
    assert config.source.durable == "telemagg"
    assert config.aggregate.policy() == tm.Policy(
        privacy_unit="user_id", max_partitions=4, max_contributions=2
    )
    assert [m.name for m in config.aggregate.metric_specs()] == [
        "count",
        "unit_count",
        "mean_duration_ms",
    ]
    assert config.output.dir == Path("releases")


def edited(section: str, key: str, value: Any) -> dict[str, Any]:
    import tomllib

    data = tomllib.loads(ISSUE_EXAMPLE)
    if value is None:
        del data[section][key]
    else:
        data[section][key] = value
    return data


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("aggregate", "epsilon", None, "aggregate.epsilon is required"),
        ("aggregate", "epsilon", -1.0, "aggregate.epsilon"),
        ("aggregate", "window", "an hour", "aggregate.window"),
        ("aggregate", "allowed_lateness", "5 minutes", "aggregate.allowed_lateness"),
        ("aggregate", "metrics", ["mean(duration_ms)"], "aggregate.metrics metric 'mean"),
        ("aggregate", "metrics", [], "aggregate.metrics"),
        ("aggregate", "colour", "blue", "aggregate.colour is not a known key"),
        ("source", "format", "xml", "source.format must be one of"),
        ("source", "ack_wait", "soon", "source.ack_wait"),
        ("ledger", "delta", 1.5, "ledger.delta"),
        ("state", "url", None, "state.url is required"),
    ],
)
def test_errors_name_the_key(section: str, key: str, value: Any, message: str) -> None:
    with pytest.raises(tm.ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_config(edited(section, key, value))


def test_a_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(tm.ConfigError, match="cannot be read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(tm.ConfigError, match="not valid TOML"):
        load_config("[source\nkind = 1")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("count", "count"),
        ("unit_count", "unit_count"),
        ("sum(bytes, 0, 1e6)", "sum_bytes"),
        ("variance(latency_ms, 0, 100)", "variance_latency_ms"),
        ("quantiles(latency_ms, 0.5 0.9, 0, 1000)", "latency_ms"),
        ("histogram(latency_ms, 0, 10, 100)", "histogram_latency_ms"),
        ("top_k(error_code, 3)", "top_error_code"),
    ],
)
def test_metric_texts(text: str, name: str) -> None:
    metric = parse_metric(text)
    assert metric.name == name


def test_pseudonymisation_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    data = tomllib.loads(ISSUE_EXAMPLE)
    data["hygiene"] = {"pseudonymize_key_env": "TM_TEST_KEY"}
    monkeypatch.delenv("TM_TEST_KEY", raising=False)
    config = load_config(data)
    with pytest.raises(tm.ConfigError, match="TM_TEST_KEY"):
        tm.Collector(config)
    monkeypatch.setenv("TM_TEST_KEY", "00" * 16)
    assert config.hygiene is not None
    assert config.hygiene.key() == bytes(16)
