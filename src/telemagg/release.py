"""A differentially private release: the table, how each column was made, and metadata.

What a release may publish and what stays with the operator are two types:

- :attr:`Release.metadata` is JSON-serialisable and travels with the data into model
  training (every export carries it): the query, the policy, the privacy loss (total and per
  metric), mechanisms and noise scales, the partition selection's parameters, the window
  bounds, the ledger charge and the library version. Nothing in it is computed exactly from
  the data; the one count it holds, ``partitions.released``, is the number of rows of the
  released (already private) table.
- :class:`Accounting` is the exact fate of every input event (received, aggregated,
  dropped by reason). It is NOT differentially private: one unit's events change it. It is
  for the operator's logs and monitoring and no export ever serialises it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg._intervals import (
    Measured,
    check_level,
    half_width,
    interval_columns,
    interval_description,
)
from telemagg._mechanisms import PrivacyLoss
from telemagg._plan import Column, insufficient_rule, value_counts_key
from telemagg._version import library_version
from telemagg.errors import TelemaggError, require
from telemagg.policy import (
    Count,
    Histogram,
    Mean,
    Metric,
    Policy,
    Quantiles,
    Sum,
    TopK,
    UnitCount,
    ValueMetric,
    Variance,
)

if TYPE_CHECKING:
    from telemagg._plan import Plan
    from telemagg.ledger import Charge
    from telemagg.policy import ReleaseParams

F64 = npt.NDArray[np.float64]


METADATA_KEY = b"telemagg"  # Arrow / Parquet schema metadata key of the publishable metadata


@dataclass(frozen=True)
class Accounting:
    """Where every input event went: operator-side, exact, NOT differentially private.

    ``received == aggregated + pending + sum(dropped.values())`` always (checked on
    construction). ``aggregated`` events reached a released table; ``pending`` ones sit in
    an Aggregator's state waiting for a release (always 0 for a release's own accounting);
    ``dropped`` counts the rest by reason (``missing_privacy_unit``, ``missing_partition_key``,
    ``contribution_bounds``, ``consent``, ``partition_selection``, ``not_public_partition``,
    ``late``, ``future``, ...). ``missing_values`` counts, per metric on a value column,
    the aggregated events whose value was missing (NaN, None or +-inf): they count for
    ``count`` and ``unit_count`` but not for that metric. One privacy unit's events change
    these numbers exactly, so they belong in the service's logs and monitoring, never with
    the released data: no export of a :class:`Release` serialises them.

    >>> acc = Accounting(received=10, aggregated=7, dropped={"consent": 3})
    >>> acc
    Accounting(received=10, aggregated=7, pending=0, dropped={'consent': 3}, missing_values={})
    >>> acc.to_dict()["dropped"], acc["received"]  # acc[...]: the dict shape of API.md
    ({'consent': 3}, 10)
    """

    received: int
    aggregated: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0
    missing_values: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropped", dict(sorted(self.dropped.items())))
        object.__setattr__(self, "missing_values", dict(self.missing_values))
        if self.received != self.aggregated + self.pending + sum(self.dropped.values()):
            raise TelemaggError(
                "internal: event accounting does not add up:"
                f" {self.received} received != {self.aggregated} aggregated + {self.pending}"
                f" pending + {sum(self.dropped.values())} dropped"
            )

    def __repr__(self) -> str:
        return (
            f"Accounting(received={self.received}, aggregated={self.aggregated},"
            f" pending={self.pending}, dropped={dict(self.dropped)},"
            f" missing_values={dict(self.missing_values)})"
        )

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for logs and monitoring; not for publication)."""
        return {
            "received": self.received,
            "aggregated": self.aggregated,
            "pending": self.pending,
            "dropped": dict(self.dropped),
            "missing_values": dict(self.missing_values),
        }


@dataclass(frozen=True)
class MetricReport:
    """How one metric's column was made.

    ``mechanism``, ``sensitivity`` and ``stddev`` describe the noise added to each value of
    ``measurement``, the main measurement of the metric; ``components`` lists every
    measurement it is computed from (a mean: a count and a centred sum). ``epsilon``,
    ``delta`` and ``rho`` are the budget of those measurements; measurements shared by
    several metrics are paid once, so metric budgets can add up to more than the release's.

    >>> import telemagg as tm
    >>> events = {"user_id": [1, 2, 3], "page": ["home", "home", "docs"]}
    >>> release = tm.aggregate(events, by="page", metrics=[tm.count()], epsilon=1.0,
    ...                        policy=tm.Policy(privacy_unit="user_id"),
    ...                        partitions=["home", "docs"])
    >>> report = release.metrics["count"]
    >>> report.mechanism, report.epsilon, report.sensitivity
    ('laplace', 1.0, 1.0)
    """

    mechanism: str
    epsilon: float
    delta: float
    rho: float
    sensitivity: float | None
    stddev: float
    measurement: str
    components: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["components"] = [dict(c) for c in self.components]
        return out


class Release:
    """The result of one release: key columns, then one column per metric output.

    Construct through :func:`telemagg.aggregate` or :meth:`telemagg.Aggregator.release`.
    ``metadata`` is what may be published with the table (every export carries it);
    ``accounting`` is the operator's exact event accounting, which no export carries.

    Every export takes ``intervals=``: a confidence level such as 0.95 adds
    ``<column>_low`` and ``<column>_high`` right after each value column (``top_k`` columns
    excepted), and ``metadata["intervals"]`` in the exported metadata says how they were
    made (:mod:`telemagg._intervals`). They are computed from the noisy measurements the
    release keeps (already differentially private), at no privacy cost.

    >>> import telemagg as tm
    >>> events = {"user_id": [1, 2, 3], "page": ["home", "home", "docs"]}
    >>> release = tm.aggregate(events, by="page", metrics=[tm.count()], epsilon=1.0,
    ...                        policy=tm.Policy(privacy_unit="user_id"),
    ...                        partitions=["home", "docs"])
    >>> release
    Release(2 partitions, columns=['page', 'count'], epsilon=1, delta=0)
    >>> release.key_columns, release.epsilon
    (('page',), 1.0)
    >>> list(release.to_pandas(intervals=0.95).columns)
    ['page', 'count', 'count_low', 'count_high']
    >>> release.accounting.received     # exact: for the operator's logs, never published
    3
    """

    def __init__(
        self,
        *,
        keys: dict[str, np.ndarray[Any, Any]],
        columns: dict[str, Column],
        metrics: dict[str, MetricReport],
        loss: PrivacyLoss,
        metadata: dict[str, Any],
        accounting: Accounting,
        measured: Measured | None = None,
        metric_specs: Sequence[Metric] = (),
    ) -> None:
        self._keys = keys
        self._columns = columns
        self.metrics = metrics
        self.loss = loss
        self.metadata = metadata
        self.accounting = accounting
        self._measured = measured  # noisy measurements (DP outputs), for intervals
        self._metric_specs = tuple(metric_specs)

    @property
    def epsilon(self) -> float:
        """Total epsilon of this release, partition selection included."""
        return self.loss.epsilon

    @property
    def delta(self) -> float:
        """Total delta of this release, partition selection included."""
        return self.loss.delta

    def __len__(self) -> int:
        first = next(iter(self._columns.values()), None)
        return 0 if first is None else int(first.size)

    def __repr__(self) -> str:
        return (
            f"Release({len(self)} partitions, columns={list(self.to_dict())},"
            f" epsilon={self.epsilon:.4g}, delta={self.delta:.3g})"
        )

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The columns that say which row is which (``window_start``/``window_end`` of a
        windowed release, then ``by``), not measured values."""
        return tuple(self._keys)

    def to_dict(self, intervals: float | None = None) -> dict[str, np.ndarray[Any, Any]]:
        """Columns as numpy arrays: keys first, then metrics (in the order given), each
        followed by ``<column>_low`` and ``<column>_high`` when ``intervals`` is a level."""
        if intervals is None:
            return {**self._keys, **self._columns}
        bounds = self._intervals(intervals)
        out: dict[str, np.ndarray[Any, Any]] = dict(self._keys)
        for name, values in self._columns.items():
            out[name] = values
            if name in bounds:
                out[f"{name}_low"], out[f"{name}_high"] = bounds[name]
        return out

    def _intervals(self, level: Any) -> dict[str, tuple[Column, Column]]:
        level = check_level(level)
        if self._measured is None:
            raise TelemaggError("this release keeps no noisy measurements to derive intervals")
        return interval_columns(self._metric_specs, self._measured, level, self._columns)

    def export_metadata(self, intervals: float | None = None) -> dict[str, Any]:
        """The publishable metadata as exported: :attr:`metadata`, plus ``"intervals"`` (the
        level and how each interval is made) when an export adds intervals."""
        if intervals is None:
            return self.metadata
        level = check_level(intervals)
        return {**self.metadata, "intervals": interval_description(self._metric_specs, level)}

    def to_pandas(self, intervals: float | None = None) -> Any:
        """A pandas DataFrame (needs ``telemagg[pandas]``); ``attrs["telemagg"]`` holds a copy
        of the publishable metadata."""
        pd: Any = require("pandas", "pandas")
        frame = pd.DataFrame(self.to_dict(intervals))
        for name in self._datetimes():
            frame[name] = frame[name].dt.tz_localize("UTC")
        frame.attrs["telemagg"] = json.loads(self.metadata_json(intervals))
        return frame

    def to_arrow(self, intervals: float | None = None) -> Any:
        """A pyarrow Table (needs ``telemagg[pyarrow]``) whose schema metadata holds the
        publishable metadata as JSON under the key ``b"telemagg"``."""
        pa: Any = require("pyarrow", "pyarrow")
        utc = pa.timestamp("ms", tz="UTC")
        table = pa.table(
            {
                k: pa.array(v, type=utc) if k in self._datetimes() else _arrow_array(pa, v)
                for k, v in self.to_dict(intervals).items()
            }
        )
        metadata = self.metadata_json(intervals).encode()
        return table.replace_schema_metadata({METADATA_KEY: metadata})

    def to_parquet(self, path: Any, intervals: float | None = None) -> None:
        """Write :meth:`to_arrow` to a Parquet file (the metadata in its schema)."""
        require("pyarrow", "pyarrow")
        parquet: Any = require("pyarrow.parquet", "pyarrow")
        parquet.write_table(self.to_arrow(intervals), path)

    def to_polars(self, intervals: float | None = None) -> Any:
        """A polars DataFrame (needs ``telemagg[polars]``); the table only (polars frames
        carry no metadata: keep :meth:`metadata_json` beside it)."""
        pl: Any = require("polars", "polars")
        datetimes = self._datetimes()
        return pl.DataFrame(
            {
                k: pl.Series(k, v).dt.replace_time_zone("UTC") if k in datetimes else v.tolist()
                for k, v in self.to_dict(intervals).items()
            }
        )

    def _datetimes(self) -> list[str]:
        """Datetime columns (``window_start``, ``window_end``): UTC, milliseconds."""
        return [k for k, v in self._keys.items() if v.dtype.kind == "M"]

    def metadata_json(self, intervals: float | None = None) -> str:
        """The publishable metadata as a JSON string (never the accounting)."""
        return json.dumps(self.export_metadata(intervals), sort_keys=True)

    def dataset_card(self) -> str:
        """A Markdown datasheet: columns, privacy guarantee, noise, what is not in the data."""
        from telemagg._dataset import dataset_card

        return dataset_card(self.metadata, list(self.to_dict()))


# --------------------------------------------------------------------------- assembly


def metric_reports(
    metrics: Sequence[Metric], plan: Plan, max_partitions: int
) -> dict[str, MetricReport]:
    """How each output column is made, from the plan alone (never from the data)."""
    reports = {}
    for metric in metrics:
        components = []
        for key in plan.metric_measurements[metric.name]:
            if key in plan.measurements:
                components.append(plan.measurements[key].report())
            elif key in plan.value_thresholds:  # top_k
                components.append(plan.value_thresholds[key].report())
            else:  # unit_count released by the partition selection itself
                selection = plan.selection_report
                assert selection is not None
                components.append(
                    {
                        **selection,
                        "measurement": key,
                        "rho": 0.0,
                        "sensitivity": 1.0 * max_partitions,
                    }
                )
        main = components[-1]
        report = MetricReport(
            mechanism=str(main["mechanism"]),
            epsilon=math.fsum(float(c["epsilon"]) for c in components),
            delta=math.fsum(float(c["delta"]) for c in components),
            rho=math.fsum(float(c["rho"]) for c in components),
            sensitivity=main["sensitivity"],
            stddev=float(main["stddev"]),
            measurement=str(main["measurement"]),
            components=tuple(components),
        )
        for column in metric.output_names:  # release.metrics[column], as documented
            reports[column] = report
    return reports


def column_descriptions(metrics: Sequence[Metric], policy: Policy) -> dict[str, str]:
    """What each released value column is, in words (metadata ``"columns"``).

    >>> import telemagg as tm
    >>> policy = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)
    >>> column_descriptions([tm.count()], policy)["count"][:60]
    'number of events kept within the contribution bounds (max_pa'
    """
    all_kept = (
        "events kept within the contribution bounds (max_partitions="
        f"{policy.max_partitions} partitions per {policy.privacy_unit},"
        f" max_contributions={policy.max_contributions} events per"
        f" {policy.privacy_unit} and partition)"
    )
    out: dict[str, str] = {}
    for metric in metrics:
        kept = all_kept
        if isinstance(metric, ValueMetric) and metric.max_contributions is not None:
            own = min(metric.max_contributions, policy.linf)
            kept = (
                f"{all_kept} (of these, at most {own} per {policy.privacy_unit} and"
                " partition: a uniform sample)"
            )
        if isinstance(metric, Count):
            out[metric.name] = (
                f"number of {kept}, plus noise; events beyond the bounds are not counted, so"
                " this is not the total number of events"
            )
        elif isinstance(metric, UnitCount):
            out[metric.name] = (
                f"number of distinct {policy.privacy_unit} values with events in the"
                " partition, plus noise"
            )
        elif isinstance(metric, Sum | Mean | Variance):
            what = {Sum: "sum", Mean: "mean", Variance: "population variance"}[type(metric)]
            lo, hi = metric.value_bounds
            text = (
                f"{what} of {metric.column!r} clamped to [{lo:g}, {hi:g}] over the {kept}"
                f" whose {metric.column!r} is present, plus noise"
            )
            if not isinstance(metric, Sum):
                text += (
                    " (a noisy sum over a noisy count of present values); NaN when that count"
                    " is too small (see metrics[...].insufficient_data)"
                )
            out[metric.name] = text
        elif isinstance(metric, Quantiles):
            lo, hi = metric.value_bounds
            for level, name in zip(metric.levels, metric.output_names, strict=True):
                out[name] = (
                    f"the {level:g} quantile of {metric.column!r} clamped to [{lo:g}, {hi:g}]"
                    f" over the {kept} whose {metric.column!r} is present, read from a noisy"
                    f" histogram of {metric.bins} {metric.scale} bins"
                )
        elif isinstance(metric, Histogram):
            out[metric.name] = (
                f"per bucket of {metric.column!r} (edges in query.metrics), the number of"
                f" {kept} whose value falls in it, plus noise, floored at 0"
            )
        elif isinstance(metric, TopK):
            name, count_name = metric.output_names
            if metric.candidates is not None:
                chosen = (
                    f"the {metric.k} public candidates of {metric.column!r} with the largest"
                    f" noisy counts among the {kept}; other values are ignored"
                )
            else:
                chosen = (
                    f"up to {metric.k} values of {metric.column!r} with the largest noisy"
                    f" counts among the {kept}, listed only when that count passes a"
                    " threshold (see metrics[...].selection)"
                )
            out[name] = chosen
            out[count_name] = f"the noisy event counts of the values in {name!r}"
    return out


def _metric_notes(metric: Metric, plan: Plan) -> dict[str, Any]:
    """Per-metric metadata beyond the noise: the NaN rule of means and variances, how
    ``top_k`` selects its values. From the plan only."""
    if isinstance(metric, Mean | Variance):
        return {"insufficient_data": insufficient_rule(metric, plan.measurements)}
    if not isinstance(metric, TopK):
        return {}
    if metric.candidates is not None:
        return {
            "selection": {
                "mechanism": "public candidates",
                "candidates": len(metric.candidates),
                "outside_candidates": "values not in the candidates are ignored",
            }
        }
    threshold = plan.value_thresholds[value_counts_key(metric.column)].threshold
    return {"selection": top_k_selection(threshold)}


def top_k_selection(threshold: mech.ThresholdPlan) -> dict[str, Any]:
    """When a ``top_k`` value (without candidates) appears: its noisy count of bounded
    events must pass ``threshold``; with ``c`` bounded events in the partition it appears
    with probability ``P(c + Z >= T)``: one half at ``c = T``, 95% at ``c = T + h`` (``h``
    the noise's one-sided 95% quantile)."""
    h = half_width("laplace", threshold.scale, 0.1)
    return {
        "mechanism": "laplace_threshold",
        "threshold": threshold.threshold,
        "min_events_to_appear": {
            "half_the_time": threshold.threshold,
            "95_percent_of_the_time": threshold.threshold + h,
        },
        "note": (
            "a value is listed only when its noisy count of events kept within the bounds"
            " passes the threshold; partitions smaller than this list no values"
        ),
    }


def release_metadata(
    *,
    plan: Plan,
    params: ReleaseParams,
    query: dict[str, Any],
    reports: Mapping[str, MetricReport],
    n_released: int,
    charge: Charge | None,
    seeded: bool,
    metrics: Sequence[Metric] = (),
    policy: Policy | None = None,
) -> dict[str, Any]:
    """The publishable metadata of a release.

    Every entry is a parameter of the query or the plan, the time of the release, the ledger
    charge, or ``n_released`` (the number of rows of the released table, itself private):
    nothing here is computed exactly from the events, so it may travel with the data.
    Exact event counts live in :class:`Accounting` instead.
    """
    loss = plan.loss
    out: dict[str, Any] = {
        "telemagg_version": library_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "epsilon": loss.epsilon,  # the release's total loss, as release.epsilon/.delta
        "delta": loss.delta,
        "policy": dict(query["policy"]),
        "query": query,
        "privacy": {
            "epsilon": loss.epsilon,
            "delta": loss.delta,
            "approx_epsilon": loss.approx_epsilon,
            "approx_delta": loss.approx_delta,
            "rho": loss.rho,
            "requested_epsilon": params.epsilon,
            "requested_delta": params.delta,
            "neighbouring": "add or remove all events of one privacy unit",
        },
        "partitions": {
            "selection": "private" if plan.selection is not None else "public",
            "released": n_released,
            **({"mechanism": plan.selection_report} if plan.selection is not None else {}),
        },
        "metrics": {name: r.to_dict() for name, r in reports.items()},
        "seeded": seeded,
    }
    for metric in metrics:
        notes = _metric_notes(metric, plan)
        for name in metric.output_names:
            out["metrics"][name].update(notes)
    if policy is not None:
        out["columns"] = column_descriptions(metrics, policy)
    if "window" in query:
        out["window"] = query["window"]
    if charge is not None:
        out["ledger"] = {"charge": charge.seq, "hash": charge.hash}
    return out


def _arrow_array(pa: Any, values: np.ndarray[Any, Any]) -> Any:
    """One column as an Arrow array. Integer keys that no 64-bit type holds (negative ones
    beside ones >= 2**63; keys are below 2**127 in magnitude, see ``telemagg._identity``)
    become ``decimal128(38, 0)``, which holds them exactly, instead of an OverflowError."""
    items = values.tolist()
    try:
        return pa.array(items)
    except (OverflowError, pa.ArrowInvalid):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise
        return pa.array([Decimal(v) for v in items], type=pa.decimal128(38, 0))
