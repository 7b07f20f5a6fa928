"""The collector's configuration: a TOML file validated by pydantic models.

Every error is a :class:`~telemagg.errors.ConfigError` naming the key (``aggregate.epsilon``),
the rule and the value. Secrets are never read from the file: the pseudonymisation key
comes from an environment variable the file names.

>>> config = load_config('''
... [source]
... kind = "nats"
... stream = "TELEMETRY"
... subject = "telemetry.events"
... [aggregate]
... privacy_unit = "user_id"
... by = ["event_name"]
... metrics = ["count", "mean(duration_ms, 0, 60000)"]
... time = "ts"
... window = "1h"
... epsilon = 0.5
... [ledger]
... url = "sqlite:///ledger.db"
... epsilon = 10.0
... [output]
... dir = "releases"
... [state]
... url = "sqlite:///state.db"
... ''')
>>> config.source.kind, config.aggregate.window, [m.name for m in config.aggregate.metric_specs()]
('nats', '1h', ['count', 'mean_duration_ms'])
>>> load_config('[source]\\nkind = "kafka"')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
telemagg.errors.ConfigError: source.kind must be one of 'nats', 'redis' or 'otlp'; got 'kafka'
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemagg import policy as tm
from telemagg._metric_spec import parse_metric
from telemagg.errors import ConfigError
from telemagg.policy import Metric, parse_duration

__all__ = ["CollectorConfig", "load_config", "parse_metric"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _duration(value: str, key: str, *, allow_zero: bool = False) -> str:
    parse_duration(value, key, allow_zero=allow_zero)
    return value


class SourceConfig(_Section):
    """``[source]``: where events come from."""

    kind: Literal["nats", "redis", "otlp"]
    url: str = ""
    stream: str = "TELEMETRY"
    subject: str = "telemetry.events"
    durable: str = "telemagg"
    consumer: str = "telemagg-collector"  # redis: this collector's name in the group
    format: Literal["jsonl", "arrow"] = "jsonl"
    fetch_messages: int = Field(default=100, ge=1, le=100_000)  # one fetch, at most
    ack_wait: str = "30s"  # nats: redelivery of unacknowledged messages after this
    listen: str = "127.0.0.1:4318"  # otlp: host:port of the OTLP/HTTP receiver
    # otlp: a request whose body repeats one committed this long ago or less is a retry
    dedupe_window: str = "10m"

    @field_validator("ack_wait")
    @classmethod
    def _ack_wait(cls, value: str) -> str:
        return _duration(value, "source.ack_wait")

    @field_validator("dedupe_window")
    @classmethod
    def _dedupe_window(cls, value: str) -> str:
        return _duration(value, "source.dedupe_window", allow_zero=True)

    def server_url(self) -> str:
        """The URL, defaulting to the local server of ``kind``."""
        defaults = {"nats": "nats://127.0.0.1:4222", "redis": "redis://127.0.0.1:6379/0"}
        return self.url or defaults.get(self.kind, "")


class AggregateConfig(_Section):
    """``[aggregate]``: the query, its policy and the budget of each window."""

    privacy_unit: str
    by: list[str]
    metrics: list[str]
    max_partitions: int = Field(default=1, ge=1)
    max_contributions: int = Field(default=1, ge=1)
    time: str
    window: str
    allowed_lateness: str = "0s"
    max_clock_skew: str = "5m"
    start: str | float | None = None  # the window grid; default: first start floored
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(default=0.0, ge=0, lt=1)
    partitions: list[Any] | None = None
    noise: Literal["laplace", "gaussian"] = "laplace"

    @field_validator("by", mode="before")
    @classmethod
    def _by(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        return _duration(value, "aggregate.window")

    @field_validator("allowed_lateness", "max_clock_skew")
    @classmethod
    def _lateness(cls, value: str) -> str:
        return _duration(value, "aggregate.allowed_lateness", allow_zero=True)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one metric")
        for text in value:
            parse_metric(text)
        return value

    def metric_specs(self) -> list[Metric]:
        return [parse_metric(text) for text in self.metrics]

    def policy(self) -> tm.Policy:
        return tm.Policy(
            privacy_unit=self.privacy_unit,
            max_partitions=self.max_partitions,
            max_contributions=self.max_contributions,
        )


class LedgerConfig(_Section):
    """``[ledger]``: the privacy budget every window is charged to."""

    url: str
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(default=0.0, ge=0, lt=1)
    window: str | None = None


class OutputConfig(_Section):
    """``[output]``: where released windows are written."""

    dir: Path


class StateConfig(_Section):
    """``[state]``: checkpoints, source positions and released windows."""

    url: str
    name: str = "default"  # several collectors may share one state store under other names
    checkpoint_interval: str = "1s"
    checkpoint_events: int = Field(default=200_000, ge=1)  # events held before a checkpoint

    @field_validator("checkpoint_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        return _duration(value, "state.checkpoint_interval")


class ConsentConfig(_Section):
    """``[consent]``: drop events of units that did not consent to ``purpose``."""

    url: str
    purpose: str


class HygieneConfig(_Section):
    """``[hygiene]``: pseudonymise the privacy unit, scrub free-text columns.

    Pseudonymisation happens first, so everything after it (bounding, the state store, the
    consent registry) sees pseudonyms only: record opt-outs in the registry under
    ``tm.pseudonymize(unit, key=<the same key>)``.
    """

    pseudonymize_key_env: str | None = None  # environment variable holding the key (hex)
    scrub: list[str] = []

    def key(self) -> bytes | None:
        """The pseudonymisation key from the environment (never from the file)."""
        if self.pseudonymize_key_env is None:
            return None
        raw = os.environ.get(self.pseudonymize_key_env)
        if not raw:
            raise ConfigError(
                f"hygiene.pseudonymize_key_env names {self.pseudonymize_key_env!r}, which is"
                " not set in the environment"
            )
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise ConfigError(
                f"hygiene.pseudonymize_key_env: {self.pseudonymize_key_env} must hold the key"
                " in hex"
            ) from None


class HttpConfig(_Section):
    """``[http]``: the ``/healthz`` and ``/metrics`` endpoint (``listen = ""``: none)."""

    listen: str = "127.0.0.1:9464"


class CollectorConfig(_Section):
    """The whole configuration of one collector: what :func:`load_config` returns.

    >>> config = load_config('''
    ... [source]
    ... kind = "otlp"
    ... listen = "127.0.0.1:4318"
    ... [aggregate]
    ... privacy_unit = "user_id"
    ... by = ["event_name"]
    ... metrics = ["count", "mean(duration_ms, 0, 1000)"]
    ... time = "ts"
    ... window = "1m"
    ... epsilon = 1.0
    ... partitions = ["open", "save"]
    ... [ledger]
    ... url = "sqlite:///ledger.db"
    ... epsilon = 100.0
    ... [output]
    ... dir = "releases"
    ... [state]
    ... url = "sqlite:///state.db"
    ... ''')
    >>> isinstance(config, CollectorConfig), config.aggregate.window
    (True, '1m')
    """

    source: SourceConfig
    aggregate: AggregateConfig
    ledger: LedgerConfig
    output: OutputConfig
    state: StateConfig
    consent: ConsentConfig | None = None
    hygiene: HygieneConfig | None = None
    http: HttpConfig = HttpConfig()


def _message(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"{where} is required"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a known key"
    if error["type"] == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{where} must be one of {allowed}; got {error['input']!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where} {message}; got {error['input']!r}"


def load_config(config: str | Path | Mapping[str, Any] | CollectorConfig) -> CollectorConfig:
    """Validate a configuration: a path to a TOML file, TOML text, a mapping, or a model.

    Relative ``output.dir`` paths stay relative to the working directory.

    >>> config = load_config('''
    ... [source]
    ... kind = "otlp"
    ... listen = "127.0.0.1:4318"
    ... [aggregate]
    ... privacy_unit = "user_id"
    ... by = ["event_name"]
    ... metrics = ["count", "mean(duration_ms, 0, 1000)"]
    ... time = "ts"
    ... window = "1m"
    ... epsilon = 1.0
    ... partitions = ["open", "save"]
    ... [ledger]
    ... url = "sqlite:///ledger.db"
    ... epsilon = 100.0
    ... [output]
    ... dir = "releases"
    ... [state]
    ... url = "sqlite:///state.db"
    ... ''')
    >>> config.source.kind, config.aggregate.metrics
    ('otlp', ['count', 'mean(duration_ms, 0, 1000)'])
    """
    if isinstance(config, CollectorConfig):
        return config
    if isinstance(config, Path) or (isinstance(config, str) and "\n" not in config):
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    elif isinstance(config, str):
        text = config
    else:
        text = None
    data: Mapping[str, Any]
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config is not valid TOML: {exc}") from None
    else:
        assert not isinstance(config, str | Path)
        data = config
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors(include_url=False)[0])) from None
