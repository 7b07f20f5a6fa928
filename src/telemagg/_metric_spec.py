"""The one-line metric syntax of the command line (and of configuration files).

====================================================  =========================================
``count``, ``unit_count``                             :func:`telemagg.count`, ``unit_count``
``sum(col, lo, hi)``, ``mean(...)``, ``variance(...)``  clamped to ``[lo, hi]``
``quantiles(col, 0.5 0.9 0.99, lo, hi[, log])``        levels separated by spaces
``histogram(col, 0 10 100 1000)``                      bucket edges (spaces or commas)
``top_k(col, k)``                                     the ``k`` most frequent values
====================================================  =========================================

Any of them takes a last argument ``name=<column name>``: ``count(name=events)``; the
value metrics (sum, mean, variance, quantiles) also ``max_contributions=N``, their own
contribution bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from telemagg.errors import ConfigError
from telemagg.policy import (
    Metric,
    count,
    histogram,
    mean,
    quantiles,
    sum,
    top_k,
    unit_count,
    variance,
)

__all__ = ["METRIC_SYNTAX", "parse_metric", "parse_metrics"]

METRIC_SYNTAX = (
    "count | unit_count | sum(col, lo, hi) | mean(col, lo, hi) | variance(col, lo, hi)"
    " | quantiles(col, 0.5 0.9, lo, hi[, log]) | histogram(col, e0 e1 e2 ...) | top_k(col, k)"
    " [, name=...] [, max_contributions=N (sum, mean, variance, quantiles)]"
)

_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\((.*)\))?\s*$", re.S)


def parse_metric(spec: str) -> Metric:
    """One metric from its one-line spelling.

    >>> parse_metric("mean(duration_ms, 0, 60000)").describe()["bounds"]
    [0.0, 60000.0]
    >>> parse_metric("quantiles(latency_ms, 0.5 0.9, 1, 10000, log)").output_names
    ('p50_latency_ms', 'p90_latency_ms')
    >>> parse_metric("count(name=events)").name
    'events'
    >>> parse_metric("mean(duration_ms, 0, 60000, max_contributions=3)").max_contributions
    3
    >>> parse_metric("top_k(x)")
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: metric 'top_k(x)': top_k takes (column, k), not 1 argument
    """
    if not isinstance(spec, str):
        raise ConfigError(f"metric must be a string such as 'mean(x, 0, 10)'; got {spec!r}")
    match = _CALL.match(spec)
    if match is None or match.group(1) not in _KINDS:
        raise ConfigError(f"metric {spec!r} is not one of: {METRIC_SYNTAX}")
    kind, inner = match.group(1), match.group(2)
    args = [a.strip() for a in inner.split(",")] if inner and inner.strip() else []
    options: dict[str, Any] = {}
    while args and "=" in args[-1]:
        key, _, value = (part.strip() for part in args.pop().partition("="))
        if key not in ("name", "max_contributions") or key in options:
            raise ConfigError(
                f"metric {spec!r}: {key!r} is not an option here (name=, and for sum, mean,"
                " variance and quantiles max_contributions=)"
            )
        options[key] = value
    if "max_contributions" in options:
        if kind not in _VALUE_KINDS:
            raise ConfigError(f"metric {spec!r}: {kind} takes no max_contributions")
        try:
            options["max_contributions"] = _integer(options["max_contributions"])
        except ValueError as exc:
            raise ConfigError(f"metric {spec!r}: max_contributions: {exc}") from None
    shape, build = _KINDS[kind]
    if not shape.low <= len(args) <= shape.high:
        plural = "" if len(args) == 1 else "s"
        raise ConfigError(
            f"metric {spec!r}: {kind} takes {shape.text}, not {len(args)} argument{plural}"
        )
    try:
        return build(args, options)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"metric {spec!r}: {exc}") from None
        raise ConfigError(f"metric {spec!r}: {kind} takes {shape.text}; {exc}") from None


def parse_metrics(specs: Sequence[str]) -> list[Metric]:
    """Every metric of a list of spellings (e.g. repeated ``--metric`` options)."""
    return [parse_metric(s) for s in specs]


class _Shape:
    """How a metric is spelled: ``low`` to ``high`` arguments."""

    def __init__(self, text: str, low: int, high: int | None = None) -> None:
        self.text, self.low, self.high = text, low, low if high is None else high


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _numbers(text: str) -> list[float]:
    return [_number(t) for t in text.split()]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


Builder = Callable[[list[str], dict[str, Any]], Metric]
_BOUNDED = _Shape("(column, lower, upper)", 3)
_VALUE_KINDS = ("sum", "mean", "variance", "quantiles")
_KINDS: dict[str, tuple[_Shape, Builder]] = {
    "count": (_Shape("no arguments", 0), lambda a, o: count(**o)),
    "unit_count": (_Shape("no arguments", 0), lambda a, o: unit_count(**o)),
    "sum": (_BOUNDED, lambda a, o: sum(a[0], (_number(a[1]), _number(a[2])), **o)),
    "mean": (_BOUNDED, lambda a, o: mean(a[0], (_number(a[1]), _number(a[2])), **o)),
    "variance": (_BOUNDED, lambda a, o: variance(a[0], (_number(a[1]), _number(a[2])), **o)),
    "quantiles": (
        _Shape("(column, levels, lower, upper[, log|linear])", 4, 5),
        lambda a, o: quantiles(
            a[0],
            _numbers(a[1]),
            (_number(a[2]), _number(a[3])),
            scale=a[4] if len(a) > 4 else "linear",  # type: ignore[arg-type]  # validated
            **o,
        ),
    ),
    "histogram": (
        _Shape("(column, edges)", 2, 10_001),
        lambda a, o: histogram(a[0], _numbers(" ".join(a[1:])), **o),
    ),
    "top_k": (_Shape("(column, k)", 2), lambda a, o: top_k(a[0], _integer(a[1]), **o)),
}
