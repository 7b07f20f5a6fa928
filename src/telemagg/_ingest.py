"""Any input form -> one columnar numpy batch, plus counts of what was dropped and why.

Accepted: a pandas or polars DataFrame, a pyarrow Table, a mapping of column name to
array-like, or an iterable of mappings (one event each). Each needed column is converted
once; identifier and key columns are factorized (``codes``, ``uniques``) so that everything
downstream works on integer arrays. An event is dropped, and counted under the first reason
that applies, when its privacy unit is missing (``missing_privacy_unit``), a partition key
is missing (``missing_partition_key``), or a value a metric reads is NaN, infinite or
missing (``non_finite_value``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import SchemaError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
ObjArray = npt.NDArray[np.object_]

MISSING_PRIVACY_UNIT = "missing_privacy_unit"
MISSING_PARTITION_KEY = "missing_partition_key"
NON_FINITE_VALUE = "non_finite_value"
MISSING_TIME = "missing_time"


@dataclass(frozen=True)
class Encoded:
    """A factorized column: ``uniques[codes]`` is the column, code -1 marks a missing value."""

    codes: I64
    uniques: np.ndarray[Any, Any]


@dataclass
class Batch:
    """The valid events of one input, columnar, and the accounting of the rest."""

    received: int
    unit_id: U64
    unit: Encoded
    partition_codes: I64
    partition_keys: list[tuple[Any, ...]]
    numeric: dict[str, F64]
    categorical: dict[str, Encoded]
    time_ms: I64 | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.unit_id.size)

    def take(self, keep: Bool, reason: str) -> Batch:
        """The batch restricted to ``keep``; the rest is counted as dropped under ``reason``."""
        n_dropped = int(keep.size - np.count_nonzero(keep))
        if n_dropped == 0:
            return self
        dropped = dict(self.dropped)
        if reason:  # "": the caller has counted the reasons itself
            dropped[reason] = dropped.get(reason, 0) + n_dropped
        return Batch(
            received=self.received,
            unit_id=self.unit_id[keep],
            unit=Encoded(self.unit.codes[keep], self.unit.uniques),
            partition_codes=self.partition_codes[keep],
            partition_keys=self.partition_keys,
            numeric={k: v[keep] for k, v in self.numeric.items()},
            categorical={k: Encoded(v.codes[keep], v.uniques) for k, v in self.categorical.items()},
            time_ms=None if self.time_ms is None else self.time_ms[keep],
            dropped=dropped,
        )


# --------------------------------------------------------------------------- hashing

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(x: U64, *, inplace: bool = False) -> U64:
    """SplitMix64 finalizer: a bijective, well-mixing map on 64-bit integers (vectorised).

    Works in place (``inplace=True`` overwrites ``x``) with one scratch array: on large
    batches fresh memory, not arithmetic, is the cost.

    >>> int(mix64(np.array([0], dtype=np.uint64))[0]) != 0
    True
    """
    with np.errstate(over="ignore"):
        z = np.add(x, _GOLDEN, out=x if inplace else None, dtype=np.uint64)
        t = np.empty_like(z)
        for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
            np.right_shift(z, np.uint64(shift), out=t)
            np.bitwise_xor(z, t, out=z)
            np.multiply(z, multiplier, out=z)
        np.right_shift(z, np.uint64(31), out=t)
        np.bitwise_xor(z, t, out=z)
        return z


def hash_value(value: Any) -> int:
    """A stable 64-bit identity of one key or identifier value (type-tagged, unkeyed).

    Integers hash as :func:`mix64` of their value, so the vectorised integer path and this
    one agree; other values by BLAKE2b of a type-tagged encoding.

    >>> hash_value(42) == int(mix64(np.array([42], dtype=np.uint64))[0])
    True
    >>> hash_value("42") != hash_value(42)
    True
    """
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (int, np.integer)):
        return int(mix64(np.array([int(value) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return hash_value(int(value))
    if isinstance(value, bytes):
        data = b"b:" + value
    elif isinstance(value, str):
        data = b"s:" + value.encode("utf-8", "surrogatepass")
    else:
        data = b"r:" + repr(value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def hash_uniques(uniques: np.ndarray[Any, Any]) -> U64:
    """:func:`hash_value` of each distinct value; vectorised for integer arrays."""
    if uniques.dtype.kind in "iub":
        return mix64(uniques.astype(np.int64).view(np.uint64))
    return np.fromiter((hash_value(v) for v in uniques), dtype=np.uint64, count=uniques.size)


# --------------------------------------------------------------------------- columns


def _missing_column(name: str, available: Iterable[str]) -> SchemaError:
    names = sorted(map(str, available))
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return SchemaError(f"column {name!r} is not in the events (columns: {shown})")


def _raw_columns(events: Any, names: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The needed columns in their source library's form, and the number of events."""
    module = type(events).__module__.split(".")[0]
    if module == "pandas" and hasattr(events, "columns"):
        missing = [n for n in names if n not in events.columns]
        if missing:
            raise _missing_column(missing[0], events.columns)
        return {n: events[n] for n in names}, len(events)
    if module == "polars" and hasattr(events, "columns"):
        if hasattr(events, "collect"):  # a LazyFrame
            events = events.collect()
        missing = [n for n in names if n not in events.columns]
        if missing:
            raise _missing_column(missing[0], events.columns)
        return {n: events.get_column(n) for n in names}, events.height
    if module == "pyarrow" and hasattr(events, "column_names"):
        missing = [n for n in names if n not in events.column_names]
        if missing:
            raise _missing_column(missing[0], events.column_names)
        return {n: events.column(n) for n in names}, events.num_rows
    if isinstance(events, Mapping):
        missing = [n for n in names if n not in events]
        if missing:
            raise _missing_column(missing[0], events.keys())
        columns = {n: _as_array(events[n], n) for n in names}
        lengths = {c.shape[0] for c in columns.values()}
        if len(lengths) > 1:
            raise SchemaError(f"columns must have equal lengths; got {dict(_lengths(columns))}")
        return columns, lengths.pop() if lengths else 0
    if isinstance(events, Iterable) and not isinstance(events, (str, bytes)):
        return _rows_to_columns(events, names)
    raise SchemaError(
        "events must be a pandas/polars DataFrame, a pyarrow Table, a mapping of columns or an"
        f" iterable of mappings; got {type(events).__name__}"
    )


def _lengths(columns: Mapping[str, np.ndarray[Any, Any]]) -> Iterable[tuple[str, int]]:
    return ((k, int(v.shape[0])) for k, v in columns.items())


def _as_array(values: Any, name: str) -> np.ndarray[Any, Any]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise SchemaError(f"column {name!r} must be one-dimensional; got shape {array.shape}")
    return array


def _rows_to_columns(events: Iterable[Any], names: Sequence[str]) -> tuple[dict[str, Any], int]:
    # The one place that walks events in Python: the input *is* Python objects, one per event.
    lists: dict[str, list[Any]] = {n: [] for n in names}
    n_rows = 0
    for n_rows, event in enumerate(events, start=1):
        if not isinstance(event, Mapping):
            raise SchemaError(
                f"events must be mappings; event {n_rows - 1} is {type(event).__name__}"
            )
        for n in names:
            lists[n].append(event.get(n))
    if n_rows:
        for n in names:
            if all(v is None for v in lists[n]):
                raise SchemaError(f"column {n!r} is not in the events")
    columns = {}
    for n, values in lists.items():
        array = np.empty(len(values), dtype=object)
        array[:] = values
        columns[n] = _narrow(array)
    return columns, n_rows


def _narrow(array: ObjArray) -> np.ndarray[Any, Any]:
    """Object array -> numeric dtype when every non-missing value is a number."""
    present = [v for v in array if v is not None]
    if present and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present
    ):
        if len(present) == array.size:
            return array.astype(np.int64)
        return array
    if present and all(isinstance(v, (int, float, np.number)) for v in present):
        return np.array([np.nan if v is None else v for v in array], dtype=np.float64)
    return array


def _to_numpy(column: Any) -> np.ndarray[Any, Any] | Encoded:
    """Source column -> numpy array, or codes directly where the source is dictionary-encoded."""
    module = type(column).__module__.split(".")[0]
    if module == "pandas":
        dtype = column.dtype
        if dtype.kind in "iufb":
            if column.hasnans:  # nullable extension dtypes (Int64, Float64, boolean) with NA
                return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan))
            return np.asarray(column.to_numpy())
        if dtype.kind == "M":
            if getattr(dtype, "tz", None) is not None:
                column = column.dt.tz_convert("UTC").dt.tz_localize(None)
            return np.asarray(column.to_numpy())
        # strings (object, pandas' Arrow-backed str), categoricals: hash-factorized in place,
        # without first copying every value into a Python object array
        return factorize(column)
    if module == "polars":
        if str(column.dtype).startswith(("Categorical", "Enum")):
            codes = column.to_physical().fill_null(-1).to_numpy().astype(np.int64)
            return Encoded(codes, np.asarray(column.cat.get_categories().to_list(), dtype=object))
        return np.asarray(column.to_numpy())
    if module == "pyarrow":
        import pyarrow as pa

        combined = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        if pa.types.is_dictionary(combined.type):
            codes = combined.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            return Encoded(codes, np.asarray(combined.dictionary.to_pylist(), dtype=object))
        return np.asarray(combined.to_numpy(zero_copy_only=False))
    return np.asarray(column)


def factorize(values: Any) -> Encoded:
    """Codes and distinct values of a column (a numpy array or a pandas Series); None/NaN
    get code -1.

    Uses pandas' hash-based factorize when pandas is installed (much faster on strings),
    otherwise numpy's sort-based unique.

    >>> enc = factorize(np.array(["b", None, "a", "b"], dtype=object))
    >>> [enc.uniques[c] if c >= 0 else None for c in enc.codes]
    ['b', None, 'a', 'b']
    """
    if values.dtype.kind == "U":
        values = values.astype(object)
    try:
        import pandas as pd
    except ImportError:
        return _factorize_numpy(values)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return Encoded(np.asarray(codes, dtype=np.int64), np.asarray(uniques))


def _factorize_numpy(values: np.ndarray[Any, Any]) -> Encoded:
    if values.dtype.kind == "f":
        missing = np.isnan(values)
    elif values.dtype.kind == "O":
        missing = np.fromiter(
            (v is None or (isinstance(v, float) and v != v) for v in values), bool, values.size
        )
    else:
        missing = np.zeros(values.size, dtype=bool)
    codes = np.full(values.size, -1, dtype=np.int64)
    present = values[~missing]
    try:
        uniques, inverse = np.unique(present, return_inverse=True)
    except TypeError:  # mixed types: order them by their repr
        as_text = np.array([f"{type(v).__name__}:{v!r}" for v in present], dtype=object)
        text_uniques, first, inverse = np.unique(as_text, return_index=True, return_inverse=True)
        uniques = present[first]
        del text_uniques
    codes[~missing] = inverse
    return Encoded(codes, uniques)


def _encode(column: Any) -> Encoded:
    data = _to_numpy(column)
    return data if isinstance(data, Encoded) else factorize(data)


def _unit_ids(column: Any, name: str) -> tuple[U64, Encoded, Bool]:
    """64-bit identities of privacy units, and where the unit is missing.

    Integer ids are hashed directly (vectorised, no factorization); anything else is
    factorized and each distinct id hashed once.
    """
    data = _to_numpy(column)
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
        ids = mix64(data.astype(np.int64).view(np.uint64), inplace=True)
        # codes index the raw ids themselves: uniques[codes] is the column, as for strings
        return ids, Encoded(np.arange(data.size, dtype=np.int64), data), np.zeros(data.size, bool)
    if isinstance(data, np.ndarray) and data.dtype.kind == "f" and _integral(data):
        return _unit_ids(data.astype(np.int64), name)
    if isinstance(data, np.ndarray) and data.dtype.kind not in "OUSf":
        raise SchemaError(
            f"column {name!r} (the privacy unit) must hold integers or strings; got {data.dtype}"
        )
    encoded = data if isinstance(data, Encoded) else factorize(data)
    hashes = hash_uniques(encoded.uniques)
    missing = encoded.codes < 0
    ids = (
        hashes[np.where(missing, 0, encoded.codes)]
        if hashes.size
        else np.zeros(missing.size, np.uint64)
    )
    return ids, encoded, missing


def _integral(values: F64) -> bool:
    return bool(np.isfinite(values).all() and np.array_equal(values, np.floor(values)))


def _numeric(column: Any, name: str) -> F64:
    data = _to_numpy(column)
    if isinstance(data, Encoded):  # e.g. numbers in a pandas object column
        uniques = data.uniques
        if not all(isinstance(v, int | float | np.number) for v in uniques.tolist()):
            raise SchemaError(
                f"column {name!r} must be numeric; got values such as {_example(uniques)}"
            )
        values = np.append(uniques.astype(np.float64), np.nan)  # code -1 reads NaN
        return values[data.codes]
    if data.dtype.kind in "iufb":
        return data.astype(np.float64, copy=False)
    if data.dtype.kind == "O":
        try:
            return np.array([np.nan if v is None else v for v in data], dtype=np.float64)
        except (TypeError, ValueError):
            pass
    raise SchemaError(f"column {name!r} must be numeric; got values of dtype {data.dtype}")


def _example(uniques: np.ndarray[Any, Any]) -> str:
    """One non-numeric value, shortened, to name in an error."""
    bad = next(v for v in uniques.tolist() if not isinstance(v, int | float | np.number))
    return repr(bad)[:40]


def _times_ms(column: Any, name: str) -> tuple[I64, Bool]:
    """Event times as int64 milliseconds since the epoch, and where they are missing.

    datetime64 / timestamp columns of any unit (timezone-aware ones as UTC) or numbers of
    seconds since the epoch.
    """
    data = _to_numpy(column)
    if isinstance(data, Encoded):
        data = data.uniques[np.maximum(data.codes, 0)]
    if data.dtype.kind in "iuf":
        seconds = data.astype(np.float64)
        missing = ~np.isfinite(seconds)
        return np.where(missing, 0, np.floor(seconds * 1000.0)).astype(np.int64), missing
    if data.dtype.kind != "M":
        try:
            data = data.astype("datetime64[ms]")
        except (TypeError, ValueError):
            raise SchemaError(
                f"column {name!r} (the event time) must hold datetimes or epoch seconds;"
                f" got values of dtype {data.dtype}"
            ) from None
    millis = data.astype("datetime64[ms]")
    missing = np.isnat(millis)
    return np.where(missing, 0, millis.astype(np.int64)), missing


def _combine_keys(encoded: list[Encoded]) -> tuple[I64, list[tuple[Any, ...]]]:
    """Per-event partition code over several key columns (-1 where any key is missing),
    and the distinct key tuples."""
    missing = np.zeros(encoded[0].codes.size, dtype=bool)
    for enc in encoded:
        missing |= enc.codes < 0
    if len(encoded) == 1:
        uniques = encoded[0].uniques
        return encoded[0].codes, [(_python(v),) for v in uniques]
    combined = np.zeros(missing.size, dtype=np.int64)
    for enc in encoded:
        combined = combined * max(len(enc.uniques), 1) + np.maximum(enc.codes, 0)
    present = factorize(np.where(missing, -1, combined))
    keys: list[tuple[Any, ...]] = []
    for flat in present.uniques.astype(np.int64):
        parts = []
        for enc in reversed(encoded):
            flat, code = divmod(int(flat), max(len(enc.uniques), 1))
            parts.append(_python(enc.uniques[code]))
        keys.append(tuple(reversed(parts)))
    return np.where(missing, -1, present.codes), keys


def _python(value: Any) -> Any:
    """numpy scalars -> plain Python values (keys must be JSON- and dict-friendly)."""
    return value.item() if isinstance(value, np.generic) else value


def ingest(
    events: Any,
    *,
    unit: str,
    by: Sequence[str],
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    time: str | None = None,
) -> Batch:
    """Convert ``events`` to a :class:`Batch` of valid events, counting what was dropped.

    >>> b = ingest({"u": [1, None, 2], "e": ["a", "a", None]}, unit="u", by=["e"])
    >>> b.received, len(b), b.dropped
    (3, 1, {'missing_privacy_unit': 1, 'missing_partition_key': 1})
    """
    names = list(dict.fromkeys([unit, *by, *numeric, *categorical, *([time] if time else [])]))
    raw, n_events = _raw_columns(events, names)
    unit_id, unit_encoded, unit_missing = _unit_ids(raw[unit], unit)
    keys_encoded = [_encode(raw[c]) for c in by]
    if n_events == 0:
        codes = np.zeros(0, np.int64)
        keys: list[tuple[Any, ...]] = []
    else:
        codes, keys = _combine_keys(keys_encoded)
    values = {c: _numeric(raw[c], c) for c in numeric}
    cats = {c: _encode(raw[c]) for c in categorical}
    batch = Batch(n_events, unit_id, unit_encoded, codes, keys, values, cats)
    # Each dropped event is counted once, under the first reason that applies.
    reasons: list[tuple[str, Bool]] = [(MISSING_PRIVACY_UNIT, unit_missing)]
    if time is not None:
        batch.time_ms, time_missing = _times_ms(raw[time], time)
        reasons.append((MISSING_TIME, time_missing))
    reasons.append((MISSING_PARTITION_KEY, codes < 0))
    finite = np.ones(n_events, dtype=bool)
    for v in values.values():
        finite &= np.isfinite(v)
    reasons.append((NON_FINITE_VALUE, ~finite))
    bad = np.zeros(n_events, dtype=bool)
    for reason, mask in reasons:
        newly = int(np.count_nonzero(mask & ~bad))
        if newly:
            batch.dropped[reason] = newly
            bad |= mask
    return batch.take(~bad, "") if bad.any() else batch
