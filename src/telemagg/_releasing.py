"""Release assembly: a release's public partitions and plan (checked before any charge),
then, from a charged plan, partition selection, noise, the table, the operator's accounting
and the publishable metadata packaged as a :class:`~telemagg.release.Release`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg._consent_gate import CONSENT
from telemagg._identity import canonical_keys, key_order
from telemagg._ingest import MISSING_PRIVACY_UNIT
from telemagg._intervals import Measured
from telemagg._key_index import KeyColumns, KeyIndex
from telemagg._plan import (
    UNIT_COUNT,
    Column,
    Plan,
    finalize,
    make_plan,
    present,
    select_partitions,
)
from telemagg._state import CONTRIBUTION_BOUNDS, State
from telemagg._tuning import provisional
from telemagg._windows import Grid
from telemagg.errors import ConfigError
from telemagg.ledger import Charge
from telemagg.policy import Metric, Policy, ReleaseParams
from telemagg.release import Accounting, Release, metric_reports, release_metadata

I64 = npt.NDArray[np.int64]

PARTITION_SELECTION = "partition_selection"
NOT_PUBLIC_PARTITION = "not_public_partition"
ALWAYS_REPORTED = (MISSING_PRIVACY_UNIT, CONTRIBUTION_BOUNDS)


def reported_reasons(consent: bool) -> Counter[str]:
    """Drop reasons every accounting lists, at zero when nothing was dropped for them."""
    reasons = (*ALWAYS_REPORTED, *((CONSENT,) if consent else ()))
    return Counter(dict.fromkeys(reasons, 0))


def check_release(
    epsilon: float,
    delta: float,
    noise: str,
    partitions: Any,
    allow_large_delta: bool,
    tuning_share: float = 0.1,
) -> ReleaseParams:
    """Validate a release's parameters before any data is read (both engines)."""
    return ReleaseParams(
        epsilon=epsilon,
        delta=delta,
        noise=noise,
        private_partitions=partitions is None,
        allow_large_delta=allow_large_delta,
        tuning_share=tuning_share,
    )


def plan_release(
    policy: Policy,
    metrics: tuple[Metric, ...],
    public: KeyColumns | None,
    epsilon: float,
    delta: float,
    noise: str,
    allow_large_delta: bool = False,
    tuning_share: float = 0.1,
) -> tuple[ReleaseParams, Plan]:
    """Validate a release's parameters and plan its measurements (before any charge).

    ``delta >= 1e-3`` is refused unless ``allow_large_delta`` (such a delta allows
    releasing a unit's data outright with that probability: see ReleaseParams)."""
    params = check_release(epsilon, delta, noise, public, allow_large_delta, tuning_share)
    # "auto" values are chosen at release (_tuning); the query is checked here with
    # placeholders so that bad parameters fail before any charge
    policy, metrics = provisional(policy, metrics)
    return params, make_plan(metrics, policy, params)


def release_partitions(
    partitions: Any,
    by: tuple[str, ...],
    listed: KeyIndex | None,
    listed_keys: KeyColumns | None,
) -> KeyColumns | None:
    """The public partitions of a release: given now, or to the constructor (``listed``,
    ``listed_keys``; a release may only name partitions among those)."""
    if partitions is None:
        return listed_keys
    _, keys = public_index(partitions, by)
    if listed is not None:
        unlisted = listed.lookup(keys) < 0
        if unlisted.any():
            missing = sorted(map(repr, keys.take(unlisted).tolist()))[:5]
            raise ConfigError(
                "partitions at release must be among the Aggregator's partitions (the"
                f" events of others were dropped before bounding); not listed there: {missing}"
            )
    return keys


def assemble(
    state: State,
    plan: Plan,
    params: ReleaseParams,
    public: KeyColumns | None,
    *,
    query: dict[str, Any],
    policy: Policy,
    metrics: tuple[Metric, ...],
    query_metrics: tuple[Metric, ...],
    by: tuple[str, ...],
    partitions: KeyIndex,
    categories: Mapping[str, KeyIndex],
    noise: mech.Noise,
    seeded: bool,
    charge: Charge | None,
    tuning: dict[str, Any] | None,
    reported: Counter[str],
    grid: Grid | None,
    window: int | None,
) -> Release:
    """Select partitions, add noise and package the release of a charged ``plan``.

    ``metrics`` and ``policy`` are the released ones ("auto" values chosen);
    ``query_metrics`` the Aggregator's, whose value columns the accounting counts missing
    values for; ``reported`` the drop reasons every accounting lists."""
    index = partitions.copy()  # public keys never seen are added to the copy only
    noisy: dict[str, npt.NDArray[np.float64]] = {}
    if public is None:
        assert plan.selection is not None
        n = len(index)
        units = UNIT_COUNT.compute(state, n)[:, 0]
        kept, noisy_units = select_partitions(plan.selection, units, noise)
        order = _key_order(kept, index.keys)
        released = kept[order]
        if noisy_units is not None:  # threshold selection: its noisy counts are released
            noisy["unit_count"] = noisy_units[order][:, None]
        reason = PARTITION_SELECTION
    else:
        released = index.ids(public)
        n = len(index)
        reason = NOT_PUBLIC_PARTITION
    category_keys = {c: values.keys for c, values in categories.items()}
    measured, value_counts = plan.measure(state, released, n, noise, category_keys)
    noisy.update(measured)
    columns: dict[str, Column] = {}
    for metric in metrics:
        columns.update(finalize(metric, noisy, value_counts, plan.measurements))

    key_columns = _released_keys(index, released, by)
    reports = metric_reports(metrics, plan, policy.l0)
    accounting = release_accounting(state, released, reason, query_metrics, reported)
    metadata = release_metadata(
        plan=plan,
        params=params,
        query=query,
        reports=reports,
        n_released=len(released),
        charge=charge,
        seeded=seeded,
        metrics=metrics,
        policy=policy,
    )
    if tuning is not None:  # DP outputs of the tuning step, and their cost
        metadata["tuning"] = tuning
    if window is not None:  # window_start, window_end first: key-like, from the grid
        assert grid is not None
        key_columns = {**grid.key_columns(window, len(released)), **key_columns}
    return Release(
        keys=key_columns,
        columns=columns,
        metrics=reports,
        loss=plan.loss,
        metadata=metadata,
        accounting=accounting,
        measured=Measured(noisy, plan.measurements, _threshold(plan)),
        metric_specs=metrics,
    )


def release_accounting(
    state: State,
    released: I64,
    reason: str,
    metrics: Sequence[Metric],
    reported: Counter[str],
) -> Accounting:
    """Exact fate of the events of ``state`` in a release of partitions ``released``:
    events of other partitions are dropped under ``reason``; per metric on a value
    column, how many aggregated events miss that value (operator side only)."""
    in_release = np.isin(state.partition, released)
    aggregated = int(np.count_nonzero(in_release))
    dropped = Counter(reported)
    dropped.update(state.dropped)
    dropped[reason] += len(state) - aggregated
    missing = {
        metric.name: int(np.count_nonzero(in_release & ~present(state.numeric[column])))
        for metric in metrics
        for column in metric.columns
    }
    return Accounting(
        received=state.received, aggregated=aggregated, dropped=dropped, missing_values=missing
    )


def _threshold(plan: Plan) -> mech.ThresholdPlan | None:
    """The partition threshold whose noisy counts are the ``unit_count`` column, if any."""
    selection = plan.selection
    return selection if isinstance(selection, mech.ThresholdPlan) else None


# --------------------------------------------------------------------------- partition keys


def partition_keys(partitions: Any, by: tuple[str, ...]) -> KeyColumns:
    """Public partitions in any accepted form -> canonical key columns (validated here, in
    the planning step, before any charge), a whole column at a time."""
    if isinstance(partitions, KeyColumns) and len(partitions.parts) == len(by):
        return partitions  # an Aggregator's own, already canonical
    if hasattr(partitions, "columns") or isinstance(partitions, Mapping):
        columns = [c for c in by if c not in partitions]
        if columns:
            raise ConfigError(f"partitions has no key column {columns[0]!r}")
        raw = [_key_values(partitions[c]) for c in by]
        if len({v.size for v in raw}) > 1:
            raise ConfigError("partitions' key columns must have equal lengths")
    elif isinstance(partitions, np.ndarray) and partitions.ndim == 1 and len(by) == 1:
        raw = [_key_values(partitions)]
    elif isinstance(partitions, str | bytes) or not isinstance(partitions, Iterable):
        raise ConfigError(f"partitions must be None or a sequence of keys; got {partitions!r}")
    else:
        rows = [tuple(key) if isinstance(key, tuple | list) else (key,) for key in partitions]
        bad = next((key for key in rows if len(key) != len(by)), None)
        if bad is not None:
            raise ConfigError(
                f"partitions must have one value per by column {list(by)}; got {bad!r}"
            )
        raw = [_object_array(list(part)) for part in zip(*rows, strict=True)] or [
            np.zeros(0, dtype=object) for _ in by
        ]
    parts, missing = [], np.zeros(raw[0].size, dtype=bool)
    for values, column in zip(raw, by, strict=True):
        part, part_missing = canonical_keys(
            values, column=f"partitions[{column!r}]", error=ConfigError
        )
        parts.append(part)
        missing |= part_missing
    if missing.any():
        first = int(np.argmax(missing))
        key = tuple(_scalar(values, first) for values in raw)
        raise ConfigError(f"partitions must not hold missing keys; got {key!r}")
    return KeyColumns(tuple(parts))


def public_index(partitions: Any, by: tuple[str, ...]) -> tuple[KeyIndex, KeyColumns]:
    """The public partitions, validated and unique: an index whose ids are their
    positions, and the keys."""
    keys = partition_keys(partitions, by)
    index = KeyIndex()
    ids = index.ids(keys)
    if len(index) < len(keys):
        seen_before = np.maximum.accumulate(np.append(-1, ids[:-1]))
        twice = int(np.argmax(ids <= seen_before))
        key = keys.take(np.array([twice])).tolist()[0]
        raise ConfigError(f"partitions must be unique; {key!r} is listed twice")
    return index, keys


def _key_values(column: Any) -> npt.NDArray[Any]:
    """One key column of a partitions table as an array (full precision)."""
    if hasattr(column, "to_list"):  # pandas / polars Series
        return _object_array(column.to_list())
    if hasattr(column, "to_pylist"):  # pyarrow
        return _object_array(column.to_pylist())
    array = np.asarray(column)
    if array.dtype.kind in "OSUmMfiub":
        return array if array.ndim == 1 else _object_array(list(array))
    return _object_array(list(array))


def _scalar(values: npt.NDArray[Any], i: int) -> Any:
    return values[i] if values.dtype.kind in "mMO" else values[i].item()


def _object_array(values: list[Any]) -> npt.NDArray[np.object_]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _key_order(ids: I64, keys: list[Any]) -> I64:
    """Positions of ``ids`` in the canonical order of their keys (never arrival order)."""
    return key_order([keys[int(i)] for i in ids])


def _released_keys(index: KeyIndex, released: I64, by: tuple[str, ...]) -> dict[str, Any]:
    """The key columns of the released rows."""
    if index.columns is None:
        return {c: _column(np.zeros(0, dtype=object)) for c in by}
    parts = index.columns.take(released).parts
    return {c: _column(part) for c, part in zip(by, parts, strict=True)}


def _column(values: npt.NDArray[Any]) -> np.ndarray[Any, Any]:
    """Released key values as a column: int64 (or uint64) when every value is an integer
    that fits, objects otherwise."""
    if values.dtype.kind == "i" and values.size:
        return values.astype(np.int64, copy=False)
    if values.dtype != object:  # booleans: released as Python objects, as other keys
        return _object_array(values.tolist())
    items = values.tolist()
    if items and all(type(v) is int for v in items):
        for dtype in (np.int64, np.uint64):
            if min(items) >= np.iinfo(dtype).min and max(items) <= np.iinfo(dtype).max:
                return np.asarray(items, dtype=dtype)
    return values
