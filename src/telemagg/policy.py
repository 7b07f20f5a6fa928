"""What a release may reveal: the privacy policy and the metric specifications.

All parameter validation lives here, in pydantic models. A bad parameter raises
:class:`~telemagg.errors.ConfigError` naming the parameter, the rule and the value:

>>> import telemagg as tm
>>> tm.Policy(privacy_unit="user_id", max_partitions=0)
Traceback (most recent call last):
...
telemagg.errors.ConfigError: Policy.max_partitions must be an integer >= 1; got 0
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from telemagg.errors import ConfigError

__all__ = [
    "Count",
    "Mean",
    "Metric",
    "Policy",
    "ReleaseParams",
    "Sum",
    "UnitCount",
    "ValueMetric",
    "Variance",
    "count",
    "format_duration",
    "mean",
    "parse_duration",
    "sum",
    "unit_count",
    "variance",
]


def _describe(error: dict[str, Any], model: str) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "value"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{model}.{where} {message}; got {error['input']!r}"


class _Model(BaseModel):
    """Immutable, strictly validated; pydantic's errors become ConfigError."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            if first["type"] == "extra_forbidden":
                raise ConfigError(
                    f"{type(self).__name__} has no parameter {first['loc'][0]!r}"
                ) from None
            raise ConfigError(_describe(dict(first), type(self).__name__)) from None


def _finite_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lower, upper = bounds
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ValueError("must be finite (lower, upper)")
    if not lower < upper:
        raise ValueError("must satisfy lower < upper")
    return (float(lower), float(upper))


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_DURATION = re.compile(r"^([0-9]+)([smhdw])$")
_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(value: str, parameter: str, *, allow_zero: bool = False) -> int:
    """Seconds in a duration such as ``"30d"``, ``"1h"``, ``"15m"`` (units s, m, h, d, w).

    >>> parse_duration("1h", "window"), parse_duration("0s", "allowed_lateness", allow_zero=True)
    (3600, 0)
    >>> parse_duration("an hour", "window")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: window must look like '1h', '30m', ... got 'an hour'
    """
    match = _DURATION.match(value) if isinstance(value, str) else None
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else -1
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(
            f"{parameter} must look like '1h', '30m', '7d', '45s' or '2w'"
            f" (a whole number and one unit); got {value!r}"
        )
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest spelling of a whole number of seconds.

    >>> format_duration(7200), format_duration(90)
    ('2h', '90s')
    """
    if seconds == 0:
        return "0s"
    unit = next(u for u, s in _UNIT_SECONDS.items() if seconds % s == 0)
    return f"{seconds // _UNIT_SECONDS[unit]}{unit}"


# --------------------------------------------------------------------------- policy


class Policy(_Model):
    """Who is protected, and how much one of them may contribute to one release.

    ``privacy_unit`` names the column identifying the protected person, device or tenant.
    Each unit contributes to at most ``max_partitions`` partitions (L0) and at most
    ``max_contributions`` events to each (Linf) of one release; the events and partitions
    kept are chosen uniformly at random. ``content_columns`` names columns holding customer
    content (message text, recordings, file names): they may be aggregated only under an
    opt-in purpose.

    >>> Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2).max_partitions
    4
    """

    privacy_unit: Annotated[str, Field(min_length=1)]
    max_partitions: int = 1
    max_contributions: int = 1
    content_columns: tuple[str, ...] = ()

    @field_validator("max_partitions", "max_contributions", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("must be an integer >= 1")
        return value


# --------------------------------------------------------------------------- metrics


class Metric(_Model):
    """A statistic released per partition. Every metric takes ``name=`` for its column."""

    kind: ClassVar[str]
    name: str = ""

    @model_validator(mode="after")
    def _default_name(self) -> Metric:
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        if not _IDENTIFIER.match(self.name):
            raise ValueError(f"name must be a valid column name; got {self.name!r}")
        return self

    def default_name(self) -> str:
        return self.kind

    @property
    def columns(self) -> tuple[str, ...]:
        """Input columns this metric reads (besides the privacy unit and ``by``)."""
        return ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Columns this metric adds to the release table."""
        return (self.name,)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (for metadata and the ledger)."""
        return {"kind": self.kind, **self.model_dump(mode="json")}


class Count(Metric):
    """Number of events per partition, after contribution bounding."""

    kind: ClassVar[str] = "count"


class UnitCount(Metric):
    """Number of distinct privacy units per partition."""

    kind: ClassVar[str] = "unit_count"


class ValueMetric(Metric):
    """A metric over a numeric column, each value clamped to ``bounds``."""

    column: Annotated[str, Field(min_length=1)]
    bounds: tuple[float, float]

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _finite_bounds(value)

    def default_name(self) -> str:
        return f"{self.kind}_{self.column}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class Sum(ValueMetric):
    """Sum of the clamped values per partition."""

    kind: ClassVar[str] = "sum"


class Mean(ValueMetric):
    """Mean of the clamped values per partition; always inside ``bounds``."""

    kind: ClassVar[str] = "mean"


class Variance(ValueMetric):
    """Population variance of the clamped values; in [0, ((upper - lower) / 2) ** 2]."""

    kind: ClassVar[str] = "variance"


def count(*, name: str = "") -> Count:
    """Events per partition.

    >>> count().name
    'count'
    """
    return Count(name=name)


def unit_count(*, name: str = "") -> UnitCount:
    """Distinct privacy units per partition.

    >>> unit_count(name="users").name
    'users'
    """
    return UnitCount(name=name)


def sum(column: str, bounds: tuple[float, float], *, name: str = "") -> Sum:
    """Sum of ``column`` per partition, each value clamped to ``bounds``.

    >>> sum("duration_ms", bounds=(0, 60_000)).name
    'sum_duration_ms'
    """
    return Sum(column=column, bounds=bounds, name=name)


def mean(column: str, bounds: tuple[float, float], *, name: str = "") -> Mean:
    """Mean of ``column`` per partition, each value clamped to ``bounds``.

    >>> mean("duration_ms", bounds=(0, 60_000)).bounds
    (0.0, 60000.0)
    """
    return Mean(column=column, bounds=bounds, name=name)


def variance(column: str, bounds: tuple[float, float], *, name: str = "") -> Variance:
    """Variance of ``column`` per partition, each value clamped to ``bounds``.

    >>> variance("x", bounds=(5, 1))
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: Variance.bounds must satisfy lower < upper; got (5, 1)
    """
    return Variance(column=column, bounds=bounds, name=name)


# --------------------------------------------------------------------------- release


class ReleaseParams(_Model):
    """The privacy budget of one release and how its noise is drawn.

    ``noise="laplace"`` (default) gives pure epsilon-DP values; ``noise="gaussian"`` is
    accounted in zero-concentrated DP and needs ``delta > 0``. Private partition selection
    (``private_partitions=True``) needs ``delta > 0``.
    """

    epsilon: float
    delta: float = 0.0
    noise: Literal["laplace", "gaussian"] = "laplace"
    private_partitions: bool = True

    @field_validator("epsilon")
    @classmethod
    def _epsilon(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be finite and > 0")
        return value

    @field_validator("delta")
    @classmethod
    def _delta(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ValueError("must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _delta_needed(self) -> ReleaseParams:
        if self.delta == 0 and self.private_partitions:
            raise ValueError(
                "delta must be > 0 when partitions are selected privately (partitions=None);"
                " pass delta, e.g. 1e-6, or list the partitions"
            )
        if self.delta == 0 and self.noise == "gaussian":
            raise ValueError("delta must be > 0 for noise='gaussian'")
        return self


def check_metrics(metrics: Sequence[Metric]) -> tuple[Metric, ...]:
    """Validate a metric list: non-empty, known metrics, unique output column names."""
    if not metrics:
        raise ConfigError("metrics must name at least one metric; got []")
    seen: set[str] = set()
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise ConfigError(
                f"metrics must be telemagg metrics (tm.count(), tm.sum(...), ...); got {metric!r}"
            )
        for out in metric.output_names:
            if out in seen:
                raise ConfigError(f"metrics must have unique names; {out!r} appears twice")
            seen.add(out)
    return tuple(metrics)


def check_by(by: str | Sequence[str]) -> tuple[str, ...]:
    """Validate ``by``: one or more distinct column names."""
    columns = (by,) if isinstance(by, str) else tuple(by)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"by must be one or more column names; got {by!r}")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"by must not repeat a column; got {list(columns)!r}")
    return columns
