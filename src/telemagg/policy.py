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

import itertools
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from telemagg._identity import canonical_key, key_identity
from telemagg.errors import ConfigError

__all__ = [
    "Count",
    "FixedPointMetric",
    "Histogram",
    "Mean",
    "Metric",
    "Policy",
    "Quantiles",
    "ReleaseParams",
    "Sum",
    "TopK",
    "UnitCount",
    "ValueMetric",
    "Variance",
    "count",
    "default_resolution",
    "exponential_buckets",
    "format_duration",
    "histogram",
    "mean",
    "parse_duration",
    "quantiles",
    "sum",
    "top_k",
    "unit_count",
    "variance",
]


def _describe(error: dict[str, Any], model: str) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a model validator: its message names the field and the value
        return f"{model}.{message}"
    where = ".".join(str(part) for part in error["loc"])
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


MAX_BOUND = 1e150
"""Largest magnitude of a metric bound: squares of centred values (variance) and their
sums must stay finite floats."""


def _finite_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lower, upper = bounds
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ValueError("must be finite (lower, upper)")
    if not lower < upper:
        raise ValueError("must satisfy lower < upper")
    if max(abs(lower), abs(upper)) > MAX_BOUND:
        raise ValueError(f"must lie within [-{MAX_BOUND:g}, {MAX_BOUND:g}]")
    return (float(lower), float(upper))


def _number(value: Any) -> float:
    """A real number parameter: int or float (numpy included), never a string or bool."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError("must be a number (int or float)")
    return float(value)


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

MAX_PARTITIONS = 10_000
MAX_CONTRIBUTIONS = 100_000
AUTO = "auto"
"""A contribution bound or value bounds chosen privately at release (``_tuning``)."""


class Policy(_Model):
    """Who is protected, and how much one of them may contribute to one release.

    ``privacy_unit`` names the column identifying the protected person, device or tenant.
    Each unit contributes to at most ``max_partitions`` partitions (L0) and at most
    ``max_contributions`` events to each (Linf) of one release; the events and partitions
    kept are chosen uniformly at random. ``content_columns`` names columns holding customer
    content (message text, recordings, file names): they may be aggregated only under an
    opt-in purpose.

    ``"auto"`` for either: chosen at release from the data, privately, with a share of the
    release's epsilon (``tuning_share=``; :mod:`telemagg._tuning`); the chosen values are in
    ``release.metadata["tuning"]``.

    Ranges: ``max_partitions`` in [1, 10_000], ``max_contributions`` in [1, 100_000]. Noise
    grows with L0 x Linf (L1 sensitivity), so at those ceilings a count's noise already
    has a standard deviation of about 1.4e9 / epsilon: larger values release nothing
    useful, and they would let one parameter drive the cost of bounding and calibration.

    >>> Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2).max_partitions
    4
    """

    privacy_unit: Annotated[str, Field(min_length=1)]
    max_partitions: int | Literal["auto"] = 1
    max_contributions: int | Literal["auto"] = 1
    content_columns: tuple[str, ...] = ()

    @field_validator("max_partitions", "max_contributions", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> int | str:
        if isinstance(value, str):
            if value != AUTO:
                raise ValueError("must be an integer >= 1 or 'auto'")
            return AUTO
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("must be an integer >= 1")
        ceiling = MAX_PARTITIONS if info.field_name == "max_partitions" else MAX_CONTRIBUTIONS
        if value > ceiling:
            raise ValueError(
                f"must be at most {ceiling:,} (noise grows with max_partitions x"
                " max_contributions: beyond this a release carries no signal)"
            )
        return value

    @property
    def auto(self) -> bool:
        """Whether a contribution bound is chosen privately at release (``"auto"``)."""
        return AUTO in (self.max_partitions, self.max_contributions)

    @property
    def bounding_limits(self) -> tuple[int, int]:
        """(L0, Linf) the held state is bounded with: the ceilings where ``"auto"`` (the
        release bounds again with the chosen values; memory stays O(events))."""
        l0, linf = self.max_partitions, self.max_contributions
        return (
            MAX_PARTITIONS if l0 == AUTO else int(l0),
            MAX_CONTRIBUTIONS if linf == AUTO else int(linf),
        )

    @property
    def l0(self) -> int:
        """``max_partitions`` as an integer (a chosen policy; ConfigError if ``"auto"``)."""
        return _chosen(self.max_partitions, "max_partitions")

    @property
    def linf(self) -> int:
        """``max_contributions`` as an integer (a chosen policy; ConfigError if ``"auto"``)."""
        return _chosen(self.max_contributions, "max_contributions")


def _chosen(value: int | str, parameter: str) -> int:
    if value == AUTO:
        raise ConfigError(f"Policy.{parameter} must be an integer here (not 'auto'); got 'auto'")
    return int(value)


# --------------------------------------------------------------------------- metrics


class Metric(_Model):
    """A statistic released per partition. Every metric takes ``name=`` for its column.

    Build metrics with the functions (:func:`count`, :func:`mean`, ...), not the classes:

    >>> import telemagg as tm
    >>> metric = tm.count(name="events")
    >>> isinstance(metric, tm.Metric), metric.output_names
    (True, ('events',))
    """

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
    def categorical_columns(self) -> tuple[str, ...]:
        """Input columns this metric reads as categories (values compared, not summed)."""
        return ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Columns this metric adds to the release table."""
        return (self.name,)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (for metadata and the ledger)."""
        return {"kind": self.kind, **self.model_dump(mode="json")}


class Count(Metric):
    """Number of events per partition kept within the contribution bounds (at most
    ``max_contributions`` events of each unit in each of at most ``max_partitions``
    partitions), plus noise: not the number of events received, which
    ``release.accounting`` gives the operator. Events with missing values count too.

    >>> import telemagg as tm
    >>> tm.count()
    Count(name='count')
    """

    kind: ClassVar[str] = "count"


class UnitCount(Metric):
    """Number of distinct privacy units per partition.

    >>> import telemagg as tm
    >>> tm.unit_count(name="users")
    UnitCount(name='users')
    """

    kind: ClassVar[str] = "unit_count"


class ValueMetric(Metric):
    """A metric over a numeric column, each value clamped to ``bounds``. Events whose value
    is missing (NaN, None, +-inf) are left out of this metric only.

    ``max_contributions`` (None: the policy's): the metric reads at most this many of the
    events the policy keeps of each unit in each partition, a uniform sample of them (the
    same random priorities as bounding), and its noise is calibrated to that smaller
    bound. Means and quantiles of units with many events gain most: their noise grows
    with the bound while their value does not. Under ``Policy(max_contributions="auto")``
    a metric left at None gets its own bound chosen privately with the policy's
    (``release.metadata["tuning"]["metric_max_contributions"]``).

    >>> import telemagg as tm
    >>> metric = tm.quantiles("latency_ms", [0.5], bounds=(1, 10_000))
    >>> isinstance(metric, ValueMetric), metric.column, metric.bounds
    (True, 'latency_ms', (1.0, 10000.0))
    """

    column: Annotated[str, Field(min_length=1)]
    bounds: tuple[float, float] | Literal["auto"]
    max_contributions: int | None = None

    @field_validator("max_contributions", mode="before")
    @classmethod
    def _contributions(cls, value: Any) -> int | None:
        if value is None:
            return None
        return _integer_in(value, 1, MAX_CONTRIBUTIONS)

    @field_validator("bounds", mode="before")
    @classmethod
    def _bounds(cls, value: Any) -> tuple[float, float] | str:
        if isinstance(value, str):
            if value != AUTO:
                raise ValueError("must be (lower, upper) or 'auto'")
            return AUTO
        pair = _floats(value, "must be (lower, upper) or 'auto'")
        if len(pair) != 2:
            raise ValueError("must be (lower, upper) or 'auto'")
        return _finite_bounds((pair[0], pair[1]))

    @property
    def value_bounds(self) -> tuple[float, float]:
        """``bounds`` of a chosen metric (ConfigError if ``"auto"``)."""
        if isinstance(self.bounds, str):
            raise ConfigError(f"{self.name}.bounds must be (lower, upper) here; got 'auto'")
        return self.bounds

    def with_bounds(self, bounds: tuple[float, float]) -> ValueMetric:
        """This metric with chosen ``bounds`` (same name)."""
        return type(self)(**{**self.model_dump(), "bounds": bounds})

    def with_contributions(self, max_contributions: int) -> ValueMetric:
        """This metric reading at most ``max_contributions`` events per unit and partition
        (same name)."""
        return type(self)(**{**self.model_dump(), "max_contributions": max_contributions})

    def default_name(self) -> str:
        return f"{self.kind}_{self.column}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


DEFAULT_STEPS_BITS = 20
"""Automatic resolution: the largest value the measurement sums (``max(|lower|, |upper|)``
for a sum, ``(upper - lower) / 2`` for a centred sum) is at most 2**20 steps, or the
resolution is 1 if that is coarser and the value is below 2**30 (integers stay exact)."""
MAX_STEPS_BITS = 30
"""A given ``resolution`` may cut that value into at most 2**30 steps: sums of int64 then
cannot overflow below 2**32 events per partition, far beyond what fits in memory."""


def default_resolution(
    largest: float, bits: int = DEFAULT_STEPS_BITS, *, integers_exact: bool = True
) -> float:
    """The power of two cutting ``largest`` into at most ``2**bits`` steps (or 1, see
    :data:`DEFAULT_STEPS_BITS`).

    >>> default_resolution(60_000.0), default_resolution(1_234_567.0), default_resolution(1e12)
    (0.0625, 1.0, 1048576.0)
    """
    exponent = math.frexp(largest)[1]  # largest < 2**exponent
    step = math.ldexp(1.0, exponent - bits)
    if integers_exact and step > 1.0 and exponent <= MAX_STEPS_BITS:
        return 1.0
    return step


class FixedPointMetric(ValueMetric):
    """A metric summing clamped values as integers at ``resolution`` (None: automatic).

    Values are clamped to ``bounds``, centred for mean and variance, then rounded to the
    nearest multiple of the resolution and summed as int64, so the sensitivity holds
    exactly (no float summation error; Casacuberta et al., CCS 2022).

    >>> import telemagg as tm
    >>> tm.sum("duration_ms", bounds=(0, 60_000)).step     # automatic resolution
    0.0625
    >>> tm.sum("duration_ms", bounds=(0, 60_000), resolution=1).step
    1.0
    """

    resolution: float | None = None

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, value: Any) -> float | None:
        if value is None:
            return None
        number = _number(value)
        if not (math.isfinite(number) and number > 0):
            raise ValueError("must be None (automatic) or a finite number > 0")
        return number

    @property
    def largest(self) -> float:
        """The largest magnitude summed: the bound for a sum, the half-width when centred."""
        lower, upper = self.value_bounds
        if self.kind == "sum":
            return max(abs(lower), abs(upper))
        return (upper - lower) / 2.0

    @property
    def step(self) -> float:
        """The resolution in use: given, or :func:`default_resolution` of :attr:`largest`."""
        return self.resolution if self.resolution is not None else default_resolution(self.largest)

    @model_validator(mode="after")
    def _steps_in_range(self) -> FixedPointMetric:
        if self.resolution is not None and self.bounds == AUTO:
            raise ValueError(
                "resolution needs explicit bounds (bounds='auto' picks its own);"
                f" got {self.resolution!r}"
            )
        if self.resolution is not None:
            steps = self.largest / self.resolution
            if not 1.0 <= steps <= 2.0**MAX_STEPS_BITS:
                raise ValueError(
                    f"resolution must cut {self.largest:g} (the largest value summed) into 1"
                    f" to 2**{MAX_STEPS_BITS} steps; got {self.resolution!r}"
                )
        return self


class Sum(FixedPointMetric):
    """Sum of the clamped values per partition.

    >>> import telemagg as tm
    >>> tm.sum("duration_ms", bounds=(0, 60_000)).output_names
    ('sum_duration_ms',)
    """

    kind: ClassVar[str] = "sum"


class Mean(FixedPointMetric):
    """Mean of the clamped values per partition; inside ``bounds``, or NaN when the noisy
    count of present values is too small to say anything (``insufficient_data`` in the
    release metadata).

    >>> import telemagg as tm
    >>> tm.mean("duration_ms", bounds=(0, 60_000)).output_names
    ('mean_duration_ms',)
    """

    kind: ClassVar[str] = "mean"


class Variance(FixedPointMetric):
    """Population variance of the clamped values; in [0, ((upper - lower) / 2) ** 2], or NaN
    as for :class:`Mean`.

    >>> import telemagg as tm
    >>> tm.variance("duration_ms", bounds=(0, 60_000)).output_names
    ('variance_duration_ms',)
    """

    kind: ClassVar[str] = "variance"


MAX_BINS = 4096
"""Most buckets a histogram (or a quantiles grid) may have: each costs memory per partition."""


def _floats(value: Any, rule: str) -> tuple[float, ...]:
    """A list/tuple/array of numbers as floats; anything else breaks ``rule``."""
    if isinstance(value, str | bytes | set | frozenset | dict):
        raise ValueError(rule)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(rule) from None


def _integer_in(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be an integer in [{low}, {high}]")
    return value


def _percent_label(level: float) -> str:
    """``0.5`` -> ``"50"``, ``0.999`` -> ``"99_9"``: a level as a column-name-safe percent."""
    return f"{level * 100:.10g}".replace(".", "_")


class Quantiles(ValueMetric):
    """Several quantiles of the clamped values per partition, from one noisy tree histogram.

    The bounded domain is cut into ``bins`` equal leaf bins (equal in log space for
    ``scale="log"``; rounded up to a power of 4), counted in a 4-ary tree whose every node
    gets noise; the consistent tree (Hay et al. 2010) is the only measurement, and every
    level is read from it, so more levels cost nothing. Outputs are monotone in the level
    and inside ``bounds``. Columns: ``p50_<name>``, ``p90_<name>``, ``p99_9_<name>`` for
    0.999, ...; ``name`` defaults to the column.

    >>> import telemagg as tm
    >>> tm.quantiles("latency_ms", [0.5, 0.9, 0.999], bounds=(1, 10_000), scale="log").output_names
    ('p50_latency_ms', 'p90_latency_ms', 'p99_9_latency_ms')
    """

    kind: ClassVar[str] = "quantiles"
    levels: tuple[float, ...]
    scale: Literal["linear", "log"] = "linear"
    bins: int = 64

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, value: Any) -> tuple[float, ...]:
        levels = _floats(value, "must be a sequence of levels in (0, 1), e.g. [0.5, 0.9, 0.99]")
        if not levels:
            raise ValueError("must name at least one level")
        if not all(0.0 < v < 1.0 for v in levels):
            raise ValueError("must each be in (0, 1), exclusive")
        if len(set(levels)) != len(levels):
            raise ValueError("must not repeat a level")
        if list(levels) != sorted(levels):
            raise ValueError("must be sorted in increasing order")
        return levels

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, value: Any) -> str:
        if value not in ("linear", "log"):
            raise ValueError("must be 'linear' or 'log'")
        return str(value)

    @field_validator("bins", mode="before")
    @classmethod
    def _bins(cls, value: Any) -> int:
        return _integer_in(value, 2, MAX_BINS)

    @model_validator(mode="after")
    def _log_needs_positive_bounds(self) -> Quantiles:
        if self.scale == "log" and not isinstance(self.bounds, str) and self.bounds[0] <= 0:
            raise ValueError(
                "bounds must have lower > 0 when scale='log' (bins are log-spaced);"
                f" got {self.bounds!r}"
            )
        return self

    def default_name(self) -> str:
        return self.column

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f"p{_percent_label(level)}_{self.name}" for level in self.levels)


class Histogram(Metric):
    """Counts per bucket of a numeric column; buckets from increasing ``bins`` edges.

    Bucket ``i`` holds values in ``(bins[i], bins[i + 1]]`` (upper-inclusive, as
    OpenTelemetry's), the first also ``bins[0]`` itself; values outside the edges are
    clamped into the first or last bucket. The release has one column, ``histogram_<col>``,
    holding per partition a list of ``len(bins) - 1`` noisy counts, clipped at zero. One
    list-valued column, not a column per bucket: float edges make poor column names,
    exponential histograms have a hundred buckets or more, and pandas (lists in an object
    column), pyarrow (``list<double>``) and polars (``List(Float64)``) all carry lists; the
    edges travel in the release metadata (``query.metrics``).

    >>> import telemagg as tm
    >>> metric = tm.histogram("latency_ms", bins=[0, 10, 100, 1000])
    >>> metric.output_names, len(metric.bins) - 1     # one list column, three buckets
    (('histogram_latency_ms',), 3)
    """

    kind: ClassVar[str] = "histogram"
    column: Annotated[str, Field(min_length=1)]
    bins: tuple[float, ...]

    @field_validator("bins", mode="before")
    @classmethod
    def _edges(cls, value: Any) -> tuple[float, ...]:
        edges = _floats(value, "must be a sequence of increasing bucket edges")
        if not 2 <= len(edges) <= MAX_BINS + 1:
            raise ValueError(f"must have between 2 and {MAX_BINS + 1} edges")
        if not all(math.isfinite(e) for e in edges):
            raise ValueError("must be finite")
        if not all(a < b for a, b in itertools.pairwise(edges)):
            raise ValueError("must be strictly increasing")
        return edges

    def default_name(self) -> str:
        return f"{self.kind}_{self.column}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class TopK(Metric):
    """The ``k`` most frequent values of a categorical column per partition, with counts.

    Two columns: ``top_<col>`` (a list of at most ``k`` values, most frequent first) and
    ``top_<col>_count`` (their noisy event counts). Missing values (None, NaN) are not
    counted.

    Without ``candidates``, values are chosen privately: a value is listed only when its
    noisy count passes a threshold (``release.metadata["metrics"][...]["selection"]`` gives
    the bounded events a value needs to appear), so values seen by few units are never
    released, and small partitions often list none. With public ``candidates`` (a list
    that does not come from the data, e.g. the documented error codes), each partition's
    candidates get noisy counts and every released partition lists its top ``k`` of them;
    values outside the list are ignored by this metric.

    >>> import telemagg as tm
    >>> tm.top_k("error_code", k=3).output_names
    ('top_error_code', 'top_error_code_count')
    """

    kind: ClassVar[str] = "top_k"
    column: Annotated[str, Field(min_length=1)]
    k: int
    candidates: tuple[Any, ...] | None = None

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: Any) -> int:
        return _integer_in(value, 1, 1000)

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates(cls, value: Any) -> tuple[Any, ...] | None:
        if value is None:
            return None
        rule = f"must be None or a sequence of 1 to {MAX_BINS} distinct values"
        if isinstance(value, str | bytes | dict) or not isinstance(value, Sequence | np.ndarray):
            raise ValueError(rule)
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        if not 1 <= len(items) <= MAX_BINS:
            raise ValueError(f"{rule}; got {len(items)} values")
        canonical = [canonical_key(v, column="candidates", error=ValueError) for v in items]
        if any(v is None for v in canonical):
            raise ValueError(f"{rule}, none of them missing (None, NaN)")
        seen: set[Any] = set()
        for item, identity in zip(items, map(key_identity, canonical), strict=True):
            if identity in seen:
                raise ValueError(f"{rule}; {item!r} is listed twice")
            seen.add(identity)
        return tuple(canonical)

    def default_name(self) -> str:
        return f"top_{self.column}"

    @property
    def categorical_columns(self) -> tuple[str, ...]:
        return (self.column,)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_count")


def count(*, name: str = "") -> Count:
    """Events per partition kept within the contribution bounds (see :class:`Count`).

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


def sum(
    column: str,
    bounds: tuple[float, float] | Literal["auto"],
    *,
    resolution: float | None = None,
    max_contributions: int | None = None,
    name: str = "",
) -> Sum:
    """Sum of ``column`` per partition, each value clamped to ``bounds``.

    Values are summed as integers at ``resolution`` (default: a power of two cutting
    ``max(|lower|, |upper|)`` into at most 2**20 steps, never coarser than 1 below 2**30;
    stated in the release's metadata).

    >>> sum("duration_ms", bounds=(0, 60_000)).name
    'sum_duration_ms'
    """
    return Sum(
        column=column,
        bounds=bounds,
        resolution=resolution,
        max_contributions=max_contributions,
        name=name,
    )


def mean(
    column: str,
    bounds: tuple[float, float] | Literal["auto"],
    *,
    resolution: float | None = None,
    max_contributions: int | None = None,
    name: str = "",
) -> Mean:
    """Mean of ``column`` per partition, each value clamped to ``bounds``.

    >>> mean("duration_ms", bounds=(0, 60_000)).bounds
    (0.0, 60000.0)
    """
    return Mean(
        column=column,
        bounds=bounds,
        resolution=resolution,
        max_contributions=max_contributions,
        name=name,
    )


def variance(
    column: str,
    bounds: tuple[float, float] | Literal["auto"],
    *,
    resolution: float | None = None,
    max_contributions: int | None = None,
    name: str = "",
) -> Variance:
    """Variance of ``column`` per partition, each value clamped to ``bounds``.

    >>> variance("x", bounds=(5, 1))
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: Variance.bounds must satisfy lower < upper; got (5, 1)
    """
    return Variance(
        column=column,
        bounds=bounds,
        resolution=resolution,
        max_contributions=max_contributions,
        name=name,
    )


def quantiles(
    column: str,
    levels: Sequence[float],
    bounds: tuple[float, float] | Literal["auto"],
    *,
    scale: Literal["linear", "log"] = "linear",
    bins: int = 64,
    max_contributions: int | None = None,
    name: str = "",
) -> Quantiles:
    """Quantiles of ``column`` at every level in ``levels``, per partition, in one release.

    Values are clamped to ``bounds`` and counted in ``bins`` leaf bins (log-spaced for
    ``scale="log"``, which needs ``bounds[0] > 0`` and suits heavy-tailed latencies) of a
    noisy 4-ary tree histogram; all levels are read from that one measurement, so they
    share one budget share. Outputs are monotone in the level and inside ``bounds``. The
    tree's noise on any quantile grows with the log of ``bins``, not with ``bins``: the
    default 64 log bins over (1, 10_000) are 15% wide (read with interpolation inside).
    ``release.to_pandas(intervals=...)`` gives each quantile's confidence interval
    (:func:`telemagg._quantiles.quantile_intervals`).

    >>> q = quantiles("latency_ms", [0.5, 0.9, 0.99, 0.999], bounds=(1, 10_000), scale="log")
    >>> q.output_names
    ('p50_latency_ms', 'p90_latency_ms', 'p99_latency_ms', 'p99_9_latency_ms')
    >>> quantiles("latency_ms", [0.9, 0.5], bounds=(0, 10_000))
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: Quantiles.levels must be sorted in increasing order; got [0.9, 0.5]
    """
    return Quantiles(
        column=column,
        levels=levels,
        bounds=bounds,
        scale=scale,
        bins=bins,
        max_contributions=max_contributions,
        name=name,
    )


def histogram(column: str, bins: Sequence[float], *, name: str = "") -> Histogram:
    """Counts of ``column`` per bucket and partition; ``bins`` are the bucket edges.

    Give explicit edges, or OpenTelemetry-style exponential ones from
    :func:`exponential_buckets`. Values outside the edges count in the end buckets.

    >>> histogram("latency_ms", bins=[0, 10, 100, 1000, 10_000]).name
    'histogram_latency_ms'
    >>> histogram("latency_ms", bins=[0, 100, 10])
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: Histogram.bins must be strictly increasing; got [0, 100, 10]
    """
    return Histogram(column=column, bins=bins, name=name)


def exponential_buckets(lower: float, upper: float, *, scale: int = 3) -> tuple[float, ...]:
    """OpenTelemetry exponential bucket edges covering ``[lower, upper]``.

    As in OpenTelemetry's exponential histogram, ``scale`` fixes the growth factor
    ``base = 2 ** (2 ** -scale)`` (scale 3: each bucket 9% wider than the one before) and
    edges are the integer powers of ``base``, so histograms with the same scale line up
    whatever their range. Pass the result as ``tm.histogram(col, bins=...)``.

    >>> exponential_buckets(1, 16, scale=0)
    (1.0, 2.0, 4.0, 8.0, 16.0)
    >>> len(exponential_buckets(1, 10_000, scale=3))
    108
    """
    if not (isinstance(scale, int) and not isinstance(scale, bool) and -10 <= scale <= 20):
        raise ConfigError(
            f"exponential_buckets scale must be an integer in [-10, 20]; got {scale!r}"
        )
    if not (math.isfinite(lower) and math.isfinite(upper) and 0 < lower < upper):
        raise ConfigError(
            "exponential_buckets needs finite 0 < lower < upper;"
            f" got lower={lower!r}, upper={upper!r}"
        )
    per_doubling = 2.0**scale  # buckets per doubling of the value
    first = math.floor(math.log2(lower) * per_doubling + 1e-9)
    last = math.ceil(math.log2(upper) * per_doubling - 1e-9)
    if last - first > MAX_BINS:
        raise ConfigError(
            f"exponential_buckets would make {last - first} buckets, more than {MAX_BINS};"
            f" lower the scale (got {scale}) or narrow [lower, upper]"
        )
    return tuple(float(2.0 ** (i / per_doubling)) for i in range(first, last + 1))


def top_k(column: str, k: int, *, candidates: Sequence[Any] | None = None, name: str = "") -> TopK:
    """The ``k`` most frequent values of a categorical ``column`` per partition.

    ``candidates``: a public list of the values to rank (not taken from the data). With it
    no threshold is needed and every released partition lists ``k`` of them; without it,
    a value appears only when its noisy count passes a threshold (see :class:`TopK`).

    >>> top_k("error_code", k=5).output_names
    ('top_error_code', 'top_error_code_count')
    >>> top_k("error_code", k=2, candidates=["E1", "E2", "E3"]).candidates
    ('E1', 'E2', 'E3')
    >>> top_k("error_code", k=0)
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: TopK.k must be an integer in [1, 1000]; got 0
    """
    return TopK(column=column, k=k, candidates=candidates, name=name)


# --------------------------------------------------------------------------- release


MIN_EPSILON = 1e-6
MAX_EPSILON = 100.0
LARGE_DELTA = 1e-3


class ReleaseParams(_Model):
    """The privacy budget of one release and how its noise is drawn.

    ``noise="laplace"`` (default) gives pure epsilon-DP values; ``noise="gaussian"`` is
    accounted in zero-concentrated DP and needs ``delta > 0``. Private partition selection
    (``private_partitions=True``) needs ``delta > 0``.

    ``tuning_share``: the share of ``epsilon`` spent choosing ``"auto"`` bounds (used only
    when the query has some, see :mod:`telemagg._tuning`).

    Ranges: ``epsilon`` in [1e-6, 100] (beyond 100 a release is no longer private in any
    useful sense, and e^epsilon overflows the accounting; below 1e-6 the noise is pure
    noise); ``delta`` in [0, 1), and at least 1e-3 only with ``allow_large_delta=True``
    (delta is a probability of failing outright and should be far below 1 / units).

    >>> ReleaseParams(epsilon="1.0")
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: ReleaseParams.epsilon must be a number (int or float); got '1.0'
    """

    epsilon: float
    delta: float = 0.0
    noise: Literal["laplace", "gaussian"] = "laplace"
    private_partitions: bool = True
    allow_large_delta: bool = False
    tuning_share: float = 0.1

    @field_validator("tuning_share", mode="before")
    @classmethod
    def _tuning_share(cls, value: Any) -> float:
        number = _number(value)
        if not 0.0 < number < 1.0:
            raise ValueError("must be in (0, 1), the share of epsilon spent choosing 'auto' values")
        return number

    @field_validator("epsilon", mode="before")
    @classmethod
    def _epsilon(cls, value: Any) -> float:
        number = _number(value)
        if not (math.isfinite(number) and number > 0):
            raise ValueError("must be finite and > 0")
        if number < MIN_EPSILON:
            raise ValueError(f"must be at least {MIN_EPSILON:g} (below, the release is all noise)")
        if number > MAX_EPSILON:
            raise ValueError(
                f"must be at most {MAX_EPSILON:g} (beyond, a release protects no one and"
                " e^epsilon overflows the accounting)"
            )
        return number

    @field_validator("delta", mode="before")
    @classmethod
    def _delta(cls, value: Any) -> float:
        number = _number(value)
        if not (math.isfinite(number) and 0 <= number < 1):
            raise ValueError("must be in [0, 1)")
        return number

    @field_validator("private_partitions", "allow_large_delta", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> bool:
        if not isinstance(value, bool | np.bool_):
            raise ValueError("must be True or False")
        return bool(value)

    @model_validator(mode="after")
    def _delta_needed(self) -> ReleaseParams:
        if self.delta == 0 and self.private_partitions:
            raise ValueError(
                "delta must be > 0 when partitions are selected privately (partitions=None);"
                " pass delta, e.g. 1e-6, or list the partitions"
            )
        if self.delta == 0 and self.noise == "gaussian":
            raise ValueError("delta must be > 0 for noise='gaussian'")
        if self.delta >= LARGE_DELTA and not self.allow_large_delta:
            raise ValueError(
                f"delta must be < {LARGE_DELTA:g} (the chance that the release fails to be"
                f" private outright; use ~1e-6 or below); got {self.delta!r}. Pass"
                " allow_large_delta=True if you really mean it"
            )
        return self


def check_metrics(metrics: Sequence[Metric]) -> tuple[Metric, ...]:
    """Validate a metric list: non-empty, known metrics, unique names and output columns
    (a quantiles metric's name, the suffix of its columns, counts too: reports key on it)."""
    if not metrics:
        raise ConfigError("metrics must name at least one metric; got []")
    seen: set[str] = set()
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise ConfigError(
                f"metrics must be telemagg metrics (tm.count(), tm.sum(...), ...); got {metric!r}"
            )
        for out in dict.fromkeys([metric.name, *metric.output_names]):
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
