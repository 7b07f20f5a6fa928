"""A privacy audit: an empirical lower bound on the privacy loss of a query.

:func:`audit` runs a query many times on a dataset D and on a neighbour D' (D plus one
privacy unit, by default a heavy one placed to stress every metric), looks at what the
releases published, and asks how much better than chance an observer can tell D from D'.

Method (Jagielski, Ullman & Oprea, "Auditing differentially private machine learning:
how private is private SGD?", NeurIPS 2020; Nasr et al., "Adversary instantiation: lower
bounds for differentially private machine learning", IEEE S&P 2021; for SQL-style queries
Kong et al., "DP-Auditorium: a large scale library for auditing differential privacy",
IEEE S&P 2024). A mechanism M is (epsilon, delta)-DP only if, for every output event E,

    P[M(D') in E] <= e^epsilon * P[M(D) in E] + delta      (and with D, D' swapped),

so epsilon >= log((P1 - delta) / P2) for every event and direction. The runs of each side
are split in halves: the first half chooses the events (which released value, which cut
point, which row's presence), the second estimates their probabilities, so the choice does
not bias the estimate. Each probability gets an exact one-sided Clopper-Pearson bound
(Clopper & Pearson, Biometrika 1934), all 4 bounds of each of the K events evaluated at
level (1 - confidence) / (4 K) (Bonferroni), so with probability >= ``confidence`` every
bound holds at once and

    epsilon_lower = max over events, directions of log((lower(P1) - delta) / upper(P2))

is a valid lower confidence bound on the true epsilon of the mechanism at the claimed delta.
``epsilon_lower > epsilon_claimed`` therefore refutes the claim (a privacy bug) at that
confidence. The reverse is not a proof: the audit tries one neighbouring pair and a few
hundred events, so a pass is evidence, not proof.

The audit's releases are never charged to a ledger and never leave this module.
"""

from __future__ import annotations

import math
import secrets
import time as _time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from telemagg._aggregator import Aggregator, Randomness
from telemagg.errors import ConfigError, SchemaError, UntrackedReleaseWarning
from telemagg.policy import (
    Histogram,
    Metric,
    Policy,
    TopK,
    check_by,
    parse_duration,
)
from telemagg.release import Release
from telemagg.testing import seeded

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Columns = dict[str, np.ndarray[Any, Any]]

__all__ = ["AuditResult", "Observation", "audit", "clopper_pearson"]

CUT_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
"""Quantiles of the held-out values at which numeric outputs are cut into events."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Observation:
    """One output event, how often it happened on D and on D', and what that proves.

    ``count``/``count_neighbour`` are over ``runs`` held-out runs of each side;
    ``bounds``/``bounds_neighbour`` are the Clopper-Pearson bounds (at the Bonferroni-
    corrected level) of its probability on D and on D'; ``epsilon_lower`` is the loss this
    event alone proves (best direction; 0 when it proves nothing).

    >>> import telemagg as tm
    >>> events = {"user": list(range(60)), "page": ["home", "docs"] * 30}
    >>> result = audit(events, by="page", metrics=[tm.count()], epsilon=1.0,
    ...                policy=tm.Policy(privacy_unit="user"), partitions=["home", "docs"],
    ...                runs=200, seed=1)
    >>> strongest = result.events[0]
    >>> strongest.epsilon_lower <= result.epsilon_lower, 0 <= strongest.count <= strongest.runs
    (True, True)
    """

    description: str
    count: int
    count_neighbour: int
    runs: int
    bounds: tuple[float, float]
    bounds_neighbour: tuple[float, float]
    epsilon_lower: float

    def __str__(self) -> str:
        lo, hi = self.bounds
        lo2, hi2 = self.bounds_neighbour
        return (
            f"{self.description}: D {self.count}/{self.runs} [{lo:.3g}, {hi:.3g}],"
            f" D' {self.count_neighbour}/{self.runs} [{lo2:.3g}, {hi2:.3g}]"
            f" -> epsilon >= {self.epsilon_lower:.3f}"
        )


@dataclass(frozen=True)
class AuditResult:
    """What an audit found.

    ``passed`` is ``epsilon_lower <= epsilon_claimed``: the claim survived this audit
    (evidence, not proof). ``events`` lists every output event evaluated, strongest
    evidence first; ``delta_events`` those never seen on one side but seen on the other
    (events of probability ~0 on D, e.g. a partition released only because of the added
    unit). ``delta_lower`` is the delta the observations prove at ``epsilon_claimed``
    (it exceeds ``delta_claimed`` exactly when ``passed`` is false).

    >>> import telemagg as tm
    >>> events = {"user": list(range(60)), "page": ["home", "docs"] * 30}
    >>> result = audit(events, by="page", metrics=[tm.count()], epsilon=1.0,
    ...                policy=tm.Policy(privacy_unit="user"), partitions=["home", "docs"],
    ...                runs=200, seed=1)
    >>> result.epsilon_claimed, result.passed == (result.epsilon_lower <= 1.0)
    (1.0, True)
    """

    epsilon_lower: float
    epsilon_claimed: float
    delta_claimed: float
    delta_lower: float
    passed: bool
    runs: int
    confidence: float
    candidates: int
    events: tuple[Observation, ...]
    delta_events: tuple[Observation, ...]
    neighbour: str
    seconds: float

    def summary(self, events: int = 5) -> str:
        """A human-readable report: verdict, bounds, the strongest ``events`` events."""
        verdict = "PASSED" if self.passed else "FAILED: the privacy claim is refuted"
        lines = [
            f"Privacy audit {verdict}",
            f"  claimed: epsilon={self.epsilon_claimed:.4g}, delta={self.delta_claimed:.3g}",
            f"  observed: epsilon >= {self.epsilon_lower:.4g}"
            f" (lower bound at {self.confidence:.0%} confidence),"
            f" delta >= {self.delta_lower:.3g} at the claimed epsilon",
            f"  {self.runs} runs on D and on D' ({self.runs - self.runs // 2} held out),"
            f" {len(self.events)} events evaluated of {self.candidates} tried,"
            f" {self.seconds:.1f} s",
            f"  D': {self.neighbour}",
        ]
        if self.events:
            proved = self.events[0].epsilon_lower > 0
            lines.append(
                "  strongest evidence:" if proved else "  no event proves a loss; nearest:"
            )
            lines += [f"    {e}" for e in self.events[:events]]
        shown = set(self.events[:events])
        one_sided = [e for e in self.delta_events if e not in shown][:events]
        if one_sided:
            lines.append("  more events seen on one side only (the delta side):")
            lines += [f"    {e}" for e in one_sided]
        lines.append("  A passing audit is evidence, not proof: it tries one neighbouring pair.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------- statistics


def clopper_pearson(
    successes: npt.ArrayLike, trials: npt.ArrayLike, alpha: float
) -> tuple[F64, F64]:
    """Exact one-sided Clopper-Pearson bounds on binomial proportions.

    ``lower`` solves P[Bin(n, p) >= k] = alpha (0 when k = 0), ``upper`` solves
    P[Bin(n, p) <= k] = alpha (1 when k = n): each holds with probability >= 1 - alpha.
    These are the Beta(alpha; k, n - k + 1) and Beta(1 - alpha; k + 1, n - k) quantiles,
    found by bisection on the binomial tail (no scipy needed).

    >>> lower, upper = clopper_pearson([0, 5, 10], [10, 10, 10], 0.025)
    >>> lower.round(4).tolist(), upper.round(4).tolist()
    ([0.0, 0.1871, 0.6915], [0.3085, 0.8129, 1.0])
    """
    k = np.asarray(successes, dtype=np.int64).ravel()
    n = np.broadcast_to(np.asarray(trials, dtype=np.int64), k.shape).ravel()
    if np.any((k < 0) | (k > n)) or not 0.0 < alpha < 1.0:
        raise ConfigError(f"clopper_pearson needs 0 <= k <= n and 0 < alpha < 1; got {alpha}")
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(n.max(initial=0)) + 1)))])
    j = np.arange(log_fact.size)

    def tail_at_least(kk: I64, nn: I64, p: F64) -> F64:
        """P[Bin(nn, p) >= kk], row by row."""
        jj = j[None, :]
        valid = jj <= nn[:, None]
        log_pmf = (
            log_fact[nn][:, None]
            - log_fact[np.minimum(jj, nn[:, None])]
            - log_fact[np.maximum(nn[:, None] - jj, 0)]
            + jj * np.log(p)[:, None]
            + (nn[:, None] - jj) * np.log1p(-p)[:, None]
        )
        pmf = np.where(valid & (jj >= kk[:, None]), np.exp(log_pmf), 0.0)
        return np.asarray(pmf.sum(axis=1), dtype=np.float64)

    def solve(kk: I64, nn: I64, at_least: bool) -> F64:
        # at_least: P[Bin >= kk] = alpha (increasing in p); else P[Bin <= kk] = alpha,
        # i.e. P[Bin >= kk + 1] = 1 - alpha (also increasing in p).
        target_k, target = (kk, alpha) if at_least else (kk + 1, 1.0 - alpha)
        lo, hi = np.zeros(kk.size), np.ones(kk.size)
        for _ in range(50):
            mid = (lo + hi) / 2.0
            below = tail_at_least(target_k, nn, np.clip(mid, 1e-300, 1 - 1e-16)) < target
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return (lo + hi) / 2.0

    lower, upper = np.zeros(k.size), np.ones(k.size)
    some = k > 0
    if some.any():
        lower[some] = solve(k[some], n[some], at_least=True)
    short = k < n
    if short.any():
        upper[short] = solve(k[short], n[short], at_least=False)
    return lower, upper


def _epsilon_of(lower1: F64, upper2: F64, delta: float) -> F64:
    """log((lower(P1) - delta) / upper(P2)), -inf where the numerator is not positive."""
    numerator = lower1 - delta
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.where(numerator > 0, numerator, 1.0) / np.maximum(upper2, 1e-300))
    return np.where(numerator > 0, out, -np.inf)


def _proxy(k1: F64, k2: F64, n: int, delta: float) -> F64:
    """A cheap, smoothed, pessimistic estimate of log((P1 - delta) / P2), used only to rank
    candidate events on the selection half (two standard errors of the log ratio off)."""
    p1, p2 = (k1 + 0.5) / (n + 1.0), (k2 + 0.5) / (n + 1.0)
    spread = 2.0 * np.sqrt((1.0 - p1) / (k1 + 0.5) + (1.0 - p2) / (k2 + 0.5))
    numerator = np.maximum(p1 - delta, 1e-300)
    return np.asarray(np.log(numerator / p2) - spread, dtype=np.float64)


# --------------------------------------------------------------------------- the audit


def audit(
    events: Any,
    *,
    by: str | Sequence[str],
    metrics: Sequence[Metric],
    policy: Policy,
    epsilon: float,
    delta: float = 0.0,
    partitions: Any = None,
    neighbour: Any = None,
    runs: int = 2000,
    window: str | None = None,
    time: str | None = None,
    noise: Literal["laplace", "gaussian"] = "laplace",
    shards: int = 1,
    max_events: int = 32,
    metadata: bool = True,
    confidence: float = 0.95,
    seed: int | None = None,
    randomness: Callable[[int], Randomness | None] = seeded,
) -> AuditResult:
    """Audit a query's privacy claim on D = ``events`` and a neighbour D'.

    The query is what :func:`telemagg.aggregate` takes (``by``, ``metrics``, ``policy``,
    ``epsilon``, ``delta``, ``partitions``, ``noise``); with ``window``/``time`` it is a
    windowed :class:`telemagg.Aggregator` whose windows are all released; with
    ``shards > 1`` the events are dealt round-robin to spawned shards that are merged before
    the release. ``neighbour`` is D' (any input form); by default D plus one heavy unit:
    ``max_contributions``-exceeding events in ``max_partitions`` partitions (a fresh one when
    partitions are chosen privately), values beyond the metrics' bounds, a fresh value for
    ``top_k`` columns. Everything a release publishes is observed: its rows, their order
    and values, and (``metadata=True``) every number and string of ``release.metadata``.
    ``runs`` releases are made on each side, each run's randomness from
    ``randomness(seed_i)`` (default :func:`telemagg.testing.seeded`; ``lambda s: None``
    audits the production samplers, slower); per-run seeds derive from ``seed`` (fresh
    entropy if None). Keep D small: a few hundred events.

    >>> import telemagg as tm
    >>> events = {"user": list(range(60)), "page": ["home", "docs"] * 30}
    >>> result = audit(events, by="page", metrics=[tm.count()], epsilon=1.0,
    ...                policy=tm.Policy(privacy_unit="user"), partitions=["home", "docs"],
    ...                runs=200, seed=1)
    >>> round(result.epsilon_claimed, 6), result.runs, result.passed == (
    ...     result.epsilon_lower <= result.epsilon_claimed)
    (1.0, 200, True)
    """
    started = _time.perf_counter()
    by = check_by(by)
    _check_int(runs, "runs", 20, 1_000_000)
    _check_int(shards, "shards", 1, 1024)
    _check_int(max_events, "max_events", 1, 10_000)
    if not (isinstance(confidence, float | int) and 0.0 < confidence < 1.0):
        raise ConfigError(f"confidence must be in (0, 1); got {confidence!r}")
    data = _columns(events, "events")
    # One operator clock for both sides, from D: the schedule must not follow D'.
    clock = _window_clock(data, window, time) if window is not None else None
    query = _Query(
        by=by,
        metrics=tuple(metrics),
        policy=policy,
        epsilon=epsilon,
        delta=delta,
        partitions=partitions,
        window=window,
        time=time,
        noise=noise,
        shards=shards,
        clock=clock,
    )
    if neighbour is None:
        other, description = _heavy_neighbour(data, query)
    else:
        other, description = _columns(neighbour, "neighbour"), "given by the caller"

    entropy = np.random.SeedSequence(seed if seed is not None else secrets.randbits(128))
    run_seeds = [int(s) for s in entropy.generate_state(2 * runs, dtype=np.uint64)]
    # The first run validates the query (typed errors before anything else runs).
    first = query.run(data, randomness(run_seeds[0]))
    composed = window is not None and neighbour is not None
    epsilon_claimed, delta_claimed = _claim(first, combine=composed)

    features = [_features(first, query, metadata)]
    for i, s in enumerate(run_seeds[1:], start=1):
        releases = query.run(data if i < runs else other, randomness(s))
        features.append(_features(releases, query, metadata))
    return _evaluate(
        features,
        runs=runs,
        delta=delta_claimed,
        epsilon_claimed=epsilon_claimed,
        confidence=float(confidence),
        max_events=max_events,
        neighbour=description,
        started=started,
    )


def _check_int(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}]; got {value!r}")


def _claim(releases: list[Release], *, combine: bool) -> tuple[float, float]:
    """The claimed loss: of one release (one window holds the added unit), or of all of
    them composed (a caller's D' may differ in every window)."""
    if combine:
        return math.fsum(r.epsilon for r in releases), math.fsum(r.delta for r in releases)
    return max(r.epsilon for r in releases), max(r.delta for r in releases)


@dataclass(frozen=True)
class _Query:
    """The audited query, run through the public Aggregator API only."""

    by: tuple[str, ...]
    metrics: tuple[Metric, ...]
    policy: Policy
    epsilon: float
    delta: float
    partitions: Any
    window: str | None
    time: str | None
    noise: Literal["laplace", "gaussian"]
    shards: int
    clock: tuple[float, float] | None  # the window grid's start and the operator's now

    def run(self, data: Columns, randomness: Randomness | None) -> list[Release]:
        """One execution: add (to shards), merge, release; every window when windowed.

        The audit's releases are never charged nor handed on: no ledger, and the warning
        that says so is silenced."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrackedReleaseWarning)
            return self._run(data, randomness)

    def _run(self, data: Columns, randomness: Randomness | None) -> list[Release]:
        options: dict[str, Any] = {}
        clock: dict[str, Any] = {}
        if self.clock is not None:
            options["start"], clock["now"] = self.clock
        agg = Aggregator(
            policy=self.policy,
            by=self.by,
            metrics=self.metrics,
            window=self.window,
            time=self.time,
            partitions=self.partitions,
            randomness=randomness,
            **options,
        )
        n = _length(data)
        if self.shards == 1:
            agg.add(data, **clock)
        else:
            shards = [agg.spawn() for _ in range(self.shards)]
            for i, shard in enumerate(shards):
                shard.add({c: v[np.arange(i, n, self.shards)] for c, v in data.items()}, **clock)
            agg.merge(*shards)
        if self.window is None:
            return [agg.release(self.epsilon, self.delta, noise=self.noise)]
        return agg.release_closed(self.epsilon, self.delta, noise=self.noise, flush=True, **clock)


def _window_clock(data: Columns, window: str, time: str | None) -> tuple[float, float]:
    """The grid start (the earliest event time floored to the window) and an operator clock
    at the latest event, so that every window of the data is released once."""
    if time is None or time not in data:
        raise ConfigError(f"window={window!r} needs time=<an event-time column>; got {time!r}")
    seconds = _epoch_seconds(data[time])
    size = parse_duration(window, "window")
    return math.floor(float(seconds.min()) / size) * size, float(seconds.max())


def _epoch_seconds(values: np.ndarray[Any, Any]) -> F64:
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[ms]").astype(np.int64) / 1000.0
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------- data


def _columns(events: Any, name: str) -> Columns:
    """Any input form :func:`telemagg.aggregate` takes, as numpy columns of equal length."""
    if hasattr(events, "column_names") and hasattr(events, "column"):  # pyarrow Table
        out = {c: events.column(c).to_numpy(zero_copy_only=False) for c in events.column_names}
    elif hasattr(events, "columns") and hasattr(events, "__getitem__"):  # pandas, polars
        out = {str(c): np.asarray(events[c].to_numpy()) for c in events.columns}
    elif isinstance(events, Mapping):
        out = {str(c): np.asarray(v) for c, v in events.items()}
    elif isinstance(events, Iterable) and not isinstance(events, str | bytes):
        rows = list(events)
        if not all(isinstance(r, Mapping) for r in rows):
            raise SchemaError(f"{name} must be a table, a mapping of columns or event mappings")
        names = list(dict.fromkeys(k for r in rows for k in r))
        out = {str(c): _array([r.get(c) for r in rows]) for c in names}
    else:
        raise SchemaError(f"{name} must be a table, a mapping of columns or event mappings")
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise SchemaError(f"{name} columns must have equal lengths; got {sorted(lengths)}")
    return out


def _array(values: list[Any]) -> np.ndarray[Any, Any]:
    array = np.asarray(values)
    if array.dtype.kind in "OUS" or array.ndim != 1:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    return array


def _length(data: Columns) -> int:
    return len(next(iter(data.values()))) if data else 0


def _fresh(values: np.ndarray[Any, Any], label: str) -> Any:
    """A value not in ``values``, of a type that fits the column."""
    if values.dtype.kind in "iu" and values.size:
        return int(values.max()) + 1
    if values.dtype.kind in "iu":
        return 0
    taken = set(values.tolist())
    candidate, i = f"telemagg-audit-{label}", 0
    while candidate in taken:
        i += 1
        candidate = f"telemagg-audit-{label}-{i}"
    return candidate


def _heavy_neighbour(data: Columns, query: _Query) -> tuple[Columns, str]:
    """D plus one unit placed to stress the query (see :func:`audit`)."""
    policy = query.policy
    needed = [policy.privacy_unit, *query.by]
    if query.time:
        needed.append(query.time)
    for metric in query.metrics:
        needed += [*metric.columns, *metric.categorical_columns]
    missing = [c for c in dict.fromkeys(needed) if c not in data]
    if missing:
        raise SchemaError(f"events have no column {missing[0]!r} (the query reads it)")
    n = _length(data)
    if n == 0:
        raise SchemaError("events must hold at least one event to audit")
    unit = _fresh(data[policy.privacy_unit], "unit")
    keys = _heavy_partitions(data, query)
    per_partition = policy.linf + min(policy.linf, 64)
    rows = per_partition * len(keys)
    heavy: Columns = {}
    for column, values in data.items():  # columns the query does not read: the first row's
        heavy[column] = np.repeat(values[:1], rows)
    heavy[policy.privacy_unit] = _filled(data[policy.privacy_unit], unit, rows)
    for j, column in enumerate(query.by):
        key_values = [key[j] for key in keys for _ in range(per_partition)]
        heavy[column] = _like(data[column], key_values)
    values_text = []
    for column, value in _extreme_values(data, query.metrics).items():
        heavy[column] = _filled(data[column], value, rows)
        values_text.append(f"{column}={value}")
    for metric in query.metrics:
        if isinstance(metric, TopK):
            value = _fresh(data[metric.column], "value")
            heavy[metric.column] = _filled(data[metric.column], value, rows)
            values_text.append(f"{metric.column}={value!r} (new)")
    if query.time is not None:  # all in the window holding the median event time
        times = data[query.time]
        heavy[query.time] = np.repeat(np.sort(times)[n // 2 : n // 2 + 1], rows)
    out = {c: np.concatenate([data[c], heavy[c]]) for c in data}
    shown = ", ".join(repr(k[0] if len(k) == 1 else k) for k in keys)
    description = (
        f"D plus unit {unit!r} with {per_partition} events in each of {len(keys)}"
        f" partition{'s' if len(keys) > 1 else ''}"
        f": {shown}{'; ' + ', '.join(values_text) if values_text else ''}"
    )
    return out, description


def _filled(like: np.ndarray[Any, Any], value: Any, rows: int) -> np.ndarray[Any, Any]:
    return _like(like, [value] * rows)


def _like(like: np.ndarray[Any, Any], values: list[Any]) -> np.ndarray[Any, Any]:
    """``values`` as an array that concatenates with ``like`` without changing its type."""
    if like.dtype.kind in "iuf":
        return np.asarray(values, dtype=like.dtype if like.dtype.kind == "f" else None)
    return _array(values) if like.dtype.kind == "O" else np.asarray(values)


def _partition_counts(data: Columns, by: tuple[str, ...]) -> dict[tuple[Any, ...], int]:
    keys = zip(*(data[c].tolist() for c in by), strict=True)
    counts: dict[tuple[Any, ...], int] = {}
    for key in keys:  # a loop over the audit's small D, never in a release
        counts[key] = counts.get(key, 0) + 1
    return counts


def _heavy_partitions(data: Columns, query: _Query) -> list[tuple[Any, ...]]:
    """Where the heavy unit goes: ``max_partitions`` partitions. Public partitions: the
    least populated listed ones (a unit moves their means and quantiles most). Private:
    a fresh partition (released only through the selection's delta) and the most
    populated ones (released reliably, so the unit's effect on values shows)."""
    l0 = query.policy.l0
    counts = _partition_counts(data, query.by)
    if query.partitions is not None:
        listed = _listed_keys(query.partitions, query.by)
        return sorted(listed, key=lambda k: counts.get(k, 0))[:l0]
    first = next(iter(counts))
    fresh = (_fresh(data[query.by[0]], "partition"), *first[1:])
    busiest = sorted(counts, key=lambda k: -counts[k])[: l0 - 1]
    return [fresh, *busiest]


def _listed_keys(partitions: Any, by: tuple[str, ...]) -> list[tuple[Any, ...]]:
    if hasattr(partitions, "columns") or isinstance(partitions, Mapping):
        columns = _columns(partitions, "partitions")
        return [tuple(row) for row in zip(*(columns[c].tolist() for c in by), strict=True)]
    return [tuple(k) if isinstance(k, tuple | list) else (k,) for k in partitions]


def _extreme_values(data: Columns, metrics: Sequence[Metric]) -> dict[str, float]:
    """Per numeric column: a value beyond its bounds on the side farther from D's median."""
    spans: dict[str, tuple[float, float]] = {}
    for metric in metrics:
        if isinstance(metric, TopK) or not metric.columns:
            continue
        column = metric.columns[0]
        if isinstance(metric, Histogram):
            lo, hi = metric.bins[0], metric.bins[-1]
        else:
            bounds = getattr(metric, "bounds", None)
            if isinstance(bounds, tuple):
                lo, hi = float(bounds[0]), float(bounds[1])
            else:  # bounds chosen from the data ("auto"): the data's own range
                finite = _finite(data[column])
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0, 1)
        old = spans.get(column, (lo, hi))
        spans[column] = (min(lo, old[0]), max(hi, old[1]))
    out = {}
    for column, (lo, hi) in spans.items():
        finite = _finite(data[column])
        middle = float(np.median(finite)) if finite.size else (lo + hi) / 2.0
        width = max(hi - lo, 1.0)
        value = hi + width if hi - middle >= middle - lo else lo - width
        if data[column].dtype.kind in "iu":
            value = math.ceil(value) if value > 0 else math.floor(value)
        out[column] = value
    return out


def _finite(values: np.ndarray[Any, Any]) -> F64:
    numbers = np.asarray(values, dtype=np.float64)
    return numbers[np.isfinite(numbers)]


# --------------------------------------------------------------------------- outputs


def _features(releases: list[Release], query: _Query, metadata: bool) -> dict[str, float]:
    """Everything one run published, as named numbers: which rows, in which order, their
    values (histogram bins, top_k items, ranks and counts one by one), the number of rows
    and releases, and (``metadata``) every number and string of the metadata."""
    out: dict[str, float] = {}
    windowed = query.window is not None
    if windowed:
        out["number of releases"] = float(len(releases))
    top = {m.output_names[0]: m.output_names[1] for m in query.metrics if isinstance(m, TopK)}
    for w, release in enumerate(releases):
        where = f"window #{w} " if windowed else ""
        table = release.to_dict()
        keys = list(zip(*(table[c].tolist() for c in query.by), strict=True))
        out[f"{where}number of rows"] = float(len(keys))
        for i, key in enumerate(keys):
            row = repr(key[0] if len(key) == 1 else key)
            out[f"{where}row {row}"] = 1.0
            out[f"{where}position of row {row}"] = float(i)
            for column, values in table.items():
                if column in release.key_columns or column in top.values():
                    continue
                value = values[i]
                if column in top:
                    counts = table[top[column]][i]
                    for rank, (item, number) in enumerate(zip(value, counts, strict=True)):
                        out[f"{where}{column}[{row}] item {item!r}"] = 1.0
                        out[f"{where}{column}[{row}] rank of {item!r}"] = float(rank)
                        out[f"{where}{top[column]}[{row}] of {item!r}"] = float(number)
                elif isinstance(value, list | tuple | np.ndarray):
                    for b, number in enumerate(value):
                        out[f"{where}{column}[{row}][{b}]"] = float(number)
                elif isinstance(value, bool | int | float | np.number):
                    out[f"{where}{column}[{row}]"] = float(value)
                else:  # e.g. a window's start and end: which value, as an indicator
                    out[f"{where}{column}[{row}] = {value!r}"] = 1.0
        if metadata:
            _flatten(release.metadata, f"{where}metadata ", out)
    return out


# The creation time is the one metadata field that varies by itself (the operator's clock).
_UNAUDITED_METADATA = frozenset({"created_at"})


def _flatten(value: Any, path: str, out: dict[str, float]) -> None:
    """Numbers (and booleans) of a JSON-like value as features; strings as indicators."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key not in _UNAUDITED_METADATA:
                _flatten(item, f"{path}{'.' if path[-1] != ' ' else ''}{key}", out)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    elif isinstance(value, bool | int | float):
        out[path] = float(value)
    elif value is not None:
        out[f"{path} = {value!r}"] = 1.0


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Event:
    """``feature`` is present (kind "present"), absent ("absent"), > cut ("gt") or <= cut
    ("le"; both false when absent). Feature -1 is the combined score."""

    feature: int
    kind: str
    cut: float = 0.0

    def happened(self, matrix: F64) -> npt.NDArray[np.bool_]:
        column = matrix[:, self.feature]
        if self.kind == "present":
            return ~np.isnan(column)
        if self.kind == "absent":
            return np.isnan(column)
        if self.kind == "gt":
            return column > self.cut
        return column <= self.cut

    def describe(self, name: str) -> str:
        if self.kind == "present":
            return f"{name}: published"
        if self.kind == "absent":
            return f"{name}: not published"
        return f"{name} {'>' if self.kind == 'gt' else '<='} {self.cut:.6g}"


def _evaluate(
    features: list[dict[str, float]],
    *,
    runs: int,
    delta: float,
    epsilon_claimed: float,
    confidence: float,
    max_events: int,
    neighbour: str,
    started: float,
) -> AuditResult:
    half = runs // 2
    select = [*range(half), *range(runs, runs + half)]
    names: dict[str, int] = {}
    for i in select:
        for key in features[i]:
            names.setdefault(key, len(names))
    matrix = np.full((2 * runs, len(names) + 1), np.nan)
    for r, run in enumerate(features):
        for key, value in run.items():
            j = names.get(key)
            if j is not None:
                matrix[r, j] = value
    score = _score_weights(matrix[:half, :-1], matrix[runs : runs + half, :-1])
    if score is not None:  # the last column: a weighted sum of the values that moved
        weights, fill = score
        matrix[:, -1] = np.where(np.isnan(matrix[:, :-1]), fill, matrix[:, :-1]) @ weights
    d_sel, n_sel = matrix[:half], matrix[runs : runs + half]
    d_eval, n_eval = matrix[half:runs], matrix[runs + half :]

    candidates = _candidates(d_sel, n_sel, with_score=score is not None)
    chosen = _choose(candidates, d_sel, n_sel, half, delta, max_events)
    labels = [*names, "combined score"]
    m = runs - half
    k_d = np.array([int(e.happened(d_eval).sum()) for e in chosen], dtype=np.int64)
    k_n = np.array([int(e.happened(n_eval).sum()) for e in chosen], dtype=np.int64)
    alpha = (1.0 - confidence) / (4.0 * max(len(chosen), 1))
    lo_d, up_d = clopper_pearson(k_d, m, alpha) if chosen else (np.zeros(0), np.zeros(0))
    lo_n, up_n = clopper_pearson(k_n, m, alpha) if chosen else (np.zeros(0), np.zeros(0))
    per_event = np.maximum(_epsilon_of(lo_n, up_d, delta), _epsilon_of(lo_d, up_n, delta))
    growth = math.exp(min(epsilon_claimed, 700.0))
    delta_seen = np.maximum(lo_n - growth * up_d, lo_d - growth * up_n)
    observations = [
        Observation(
            description=event.describe(labels[event.feature]),
            count=int(k_d[i]),
            count_neighbour=int(k_n[i]),
            runs=m,
            bounds=(float(lo_d[i]), float(up_d[i])),
            bounds_neighbour=(float(lo_n[i]), float(up_n[i])),
            epsilon_lower=max(float(per_event[i]), 0.0),
        )
        for i, event in enumerate(chosen)
    ]
    # Strongest first; among equals (e.g. none proves anything) the most different rates.
    gap = np.abs(np.log((k_n + 0.5) / (k_d + 0.5)))
    order = sorted(
        range(len(observations)), key=lambda i: (-observations[i].epsilon_lower, -gap[i])
    )
    events = tuple(observations[i] for i in order)
    one_sided = tuple(e for e in events if (e.count == 0) != (e.count_neighbour == 0))
    epsilon_lower = max(0.0, float(per_event.max(initial=0.0)))
    return AuditResult(
        epsilon_lower=epsilon_lower,
        epsilon_claimed=epsilon_claimed,
        delta_claimed=delta,
        delta_lower=max(0.0, float(delta_seen.max(initial=0.0))),
        passed=epsilon_lower <= epsilon_claimed,
        runs=runs,
        confidence=confidence,
        candidates=len(candidates),
        events=events,
        delta_events=one_sided,
        neighbour=neighbour,
        seconds=_time.perf_counter() - started,
    )


def _score_weights(d: F64, n: F64) -> tuple[F64, F64] | None:
    """Linear weights combining the released values that moved between D and D' on the
    selection half (mean difference over pooled variance, significant ones only), and the
    values standing in for absent ones. None when fewer than two values moved."""
    if d.shape[1] == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: absent rows
        mean_d, mean_n = np.nanmean(d, axis=0), np.nanmean(n, axis=0)
        var = (np.nanvar(d, axis=0) + np.nanvar(n, axis=0)) / 2.0
        present = np.minimum((~np.isnan(d)).mean(axis=0), (~np.isnan(n)).mean(axis=0))
        shift = mean_n - mean_d
        stderr = np.sqrt(var * 2.0 / max(d.shape[0], 1))
        moved = (present >= 0.5) & (var > 0) & (np.abs(shift) > 3.0 * stderr)
    if int(moved.sum()) < 2:
        return None
    weights = np.where(moved, shift / np.where(moved, var, 1.0), 0.0)
    return weights, np.where(np.isnan(mean_d), 0.0, mean_d)


def _candidates(d: F64, n: F64, *, with_score: bool) -> list[_Event]:
    """Events chosen on the selection half: presence when it varies, cuts at the held-out
    values' quantiles otherwise."""
    pooled = np.concatenate([d, n])
    out: list[_Event] = []
    width = pooled.shape[1] if with_score else pooled.shape[1] - 1
    for j in range(width):
        column = pooled[:, j]
        present = ~np.isnan(column)
        if not present.all():
            out += [_Event(j, "present"), _Event(j, "absent")]
        values = column[present]
        if values.size == 0 or values.min() == values.max():
            continue
        cuts = np.unique(np.quantile(values, CUT_LEVELS))
        cuts = cuts[cuts < values.max()]
        out += [_Event(j, kind, float(c)) for c in cuts for kind in ("gt", "le")]
    return out


def _choose(
    candidates: list[_Event], d: F64, n: F64, runs: int, delta: float, limit: int
) -> list[_Event]:
    """The ``limit`` candidates with the strongest evidence on the selection half, events
    seen on one side only among them (up to a quarter of the places)."""
    if not candidates:
        return []
    k_d = np.array([e.happened(d).sum() for e in candidates], dtype=np.float64)
    k_n = np.array([e.happened(n).sum() for e in candidates], dtype=np.float64)
    strength = np.maximum(_proxy(k_n, k_d, runs, delta), _proxy(k_d, k_n, runs, delta))
    one_sided = np.flatnonzero((k_d == 0) != (k_n == 0))
    one_sided = one_sided[np.argsort(-np.maximum(k_d, k_n)[one_sided], kind="stable")]
    picked = list(dict.fromkeys(one_sided[: max(limit // 4, 1)].tolist()))
    for i in np.argsort(-strength, kind="stable").tolist():
        if len(picked) >= limit:
            break
        if i not in picked:
            picked.append(i)
    return [candidates[i] for i in picked[:limit]]
