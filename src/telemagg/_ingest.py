"""Any input form -> one columnar numpy batch, plus counts of what was dropped and why.

Accepted: a pandas or polars DataFrame, a pyarrow Table, a mapping of column name to
array-like, or an iterable of mappings (one event each). Each needed column is converted
once; identifier and key columns are factorized (``codes``, ``uniques``) so that everything
downstream works on integer arrays. An event is dropped, and counted under the first reason
that applies, when its privacy unit is missing (``missing_privacy_unit``), its event time is
(``missing_time``) or a partition key is missing (``missing_partition_key``). A missing
value column (NaN, None, +-inf) does not drop the event: it stays NaN (or +-inf) and only
the metrics on that column skip it (``telemagg._plan.present``).
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg._identity import canonical_keys, int_unit_ids, unit_hashes
from telemagg._key_index import KeyColumns
from telemagg.errors import SchemaError

__all__ = ["Batch", "Encoded", "factorize", "ingest"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
ObjArray = npt.NDArray[np.object_]

MISSING_PRIVACY_UNIT = "missing_privacy_unit"
MISSING_PARTITION_KEY = "missing_partition_key"
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
    partition_keys: KeyColumns
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


# --------------------------------------------------------------------------- columns


def _missing_column(name: str, available: Iterable[str]) -> SchemaError:
    names = sorted(map(str, available))
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return SchemaError(f"column {name!r} is not in the events (columns: {shown})")


def _check_columns(names: Sequence[str], available: Sequence[Any]) -> None:
    """Every needed column present, and present once (a duplicated name is ambiguous)."""
    missing = [n for n in names if n not in available]
    if missing:
        raise _missing_column(missing[0], available)
    counts = Counter(c for c in available if isinstance(c, str | int) and c in set(names))
    duplicated = [n for n in names if counts[n] > 1]
    if duplicated:
        raise SchemaError(
            f"column {duplicated[0]!r} appears {counts[duplicated[0]]} times in the events;"
            " column names must be unique"
        )


def _raw_columns(events: Any, names: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The needed columns in their source library's form, and the number of events."""
    module = type(events).__module__.split(".")[0]
    if module == "pandas" and hasattr(events, "columns"):
        _check_columns(names, list(events.columns))
        return {n: events[n] for n in names}, len(events)
    if module == "polars" and hasattr(events, "columns"):
        if hasattr(events, "collect"):  # a LazyFrame
            events = events.collect()
        _check_columns(names, events.columns)
        return {n: events.get_column(n) for n in names}, events.height
    if module == "pyarrow" and hasattr(events, "column_names"):
        _check_columns(names, events.column_names)
        return {n: events.column(n) for n in names}, events.num_rows
    if isinstance(events, Mapping):
        missing = [n for n in names if n not in events]
        if missing:
            raise _missing_column(missing[0], events.keys())
        columns = {n: _as_array(events[n], n) for n in names}
        lengths = {_length(c) for c in columns.values()}
        if len(lengths) > 1:
            shown = {k: _length(v) for k, v in columns.items()}
            raise SchemaError(f"columns must have equal lengths; got {shown}")
        return columns, lengths.pop() if lengths else 0
    if isinstance(events, Iterable) and not isinstance(events, (str, bytes)):
        return _rows_to_columns(events, names)
    raise SchemaError(
        "events must be a pandas/polars DataFrame, a pyarrow Table, a mapping of columns or an"
        f" iterable of mappings; got {type(events).__name__}"
    )


def _length(column: Any) -> int:
    return len(column)


def _as_array(values: Any, name: str) -> Any:
    """A mapping's column: Series and Arrow arrays stay as they are (their converters know
    their nulls), anything else becomes a one-dimensional numpy array."""
    module = type(values).__module__.split(".")[0]
    if module in ("pandas", "polars", "pyarrow") and hasattr(values, "__len__"):
        if getattr(values, "ndim", 1) != 1:
            raise SchemaError(f"column {name!r} must be one-dimensional")
        return values
    if isinstance(values, list | tuple):  # numpy would coerce [1, "a"] to strings
        array = _narrow(_objects(list(values)))
    else:
        try:
            array = np.asarray(values)
        except (ValueError, TypeError, OverflowError):  # ragged nested lists, huge ints...
            array = _objects(list(values))
        if array.dtype.kind == "O":
            array = _narrow(array)
    if isinstance(array, Masked):
        return array
    if array.ndim != 1:
        raise SchemaError(f"column {name!r} must be one-dimensional; got shape {array.shape}")
    return array


def _objects(values: list[Any]) -> ObjArray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
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
    return {n: _narrow(_objects(values)) for n, values in lists.items()}, n_rows


def _narrow(array: ObjArray) -> np.ndarray[Any, Any] | Masked:
    """Object array -> integer (with a mask where values are missing) or float array when
    every non-missing value is a number; integers never pass through float64."""
    sample = next((v for v in array if v is not None), None)
    if sample is None or not isinstance(sample, int | float | np.number):
        return array  # strings, dates, ...: factorized as they are
    present_mask = np.fromiter((v is not None for v in array), bool, array.size)
    present = array[present_mask].tolist()
    integer = [isinstance(v, int | np.integer) and not isinstance(v, bool) for v in present]
    if all(integer):
        present = [int(v) for v in present]  # numpy scalars would be cast, possibly wrapping
        for dtype in (np.int64, np.uint64):
            try:
                values = np.zeros(array.size, dtype=dtype)
                values[present_mask] = present
            except OverflowError:
                continue
            return values if len(present) == array.size else Masked(values, ~present_mask)
        return array  # beyond 64 bits: Python ints, handled by canonical forms
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in present):
        if any(i and not -(2**53) < int(v) < 2**53 for i, v in zip(integer, present, strict=True)):
            return array  # exact integers beyond a float's precision: keep them exact
        return np.array([np.nan if v is None else v for v in array], dtype=np.float64)
    return array


@dataclass(frozen=True)
class Masked:
    """An integer column with missing values: ``values`` (0 where missing) and the mask.

    Nullable integer columns arrive like this instead of as float64, which would merge
    distinct ids beyond 2**53.
    """

    values: np.ndarray[Any, Any]
    missing: Bool

    def __len__(self) -> int:
        return int(self.values.size)


Column = np.ndarray[Any, Any] | Encoded | Masked


def _to_numpy(column: Any, name: str) -> Column:
    """Source column -> numpy array, an integer array with a missing mask, or codes directly
    where the source is dictionary-encoded."""
    module = type(column).__module__.split(".")[0]
    if module == "pandas":
        return _from_pandas(column, name)
    if module == "polars":
        return _from_polars(column, name)
    if module == "pyarrow":
        return _from_arrow(column, name)
    if isinstance(column, np.ndarray) and column.dtype.kind == "O":
        return _narrow(column)
    return column if isinstance(column, np.ndarray | Masked) else np.asarray(column)


def _from_pandas(column: Any, name: str) -> Column:
    dtype = column.dtype
    numpy_dtype = getattr(dtype, "numpy_dtype", dtype)  # of nullable extension dtypes
    if dtype.kind in "iu":
        if column.hasnans:  # nullable extension dtypes (Int64, UInt64) with NA
            values = column.to_numpy(dtype=numpy_dtype, na_value=0)
            return Masked(np.asarray(values), np.asarray(column.isna().to_numpy()))
        return np.asarray(column.to_numpy())
    if dtype.kind == "b" and column.hasnans:  # nullable boolean: True/False/None
        return np.asarray(column.to_numpy(dtype=object, na_value=None))
    if dtype.kind in "fb":
        if dtype is numpy_dtype:  # plain numpy-backed: no NA to replace, no copy
            return np.asarray(column.to_numpy())
        return np.asarray(column.to_numpy(dtype=numpy_dtype, na_value=np.nan))
    if dtype.kind == "M":
        if getattr(dtype, "tz", None) is not None:
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        return np.asarray(column.to_numpy())
    # strings (object, pandas' Arrow-backed str), categoricals: hash-factorized in place,
    # without first copying every value into a Python object array
    return factorize(column, name)


def _from_polars(column: Any, name: str) -> Column:
    import polars as pl

    dtype = column.dtype
    if isinstance(dtype, pl.Categorical | pl.Enum) or dtype in (pl.Categorical, pl.Enum):
        # Codes and categories of the values present; works on polars 1.x and 2.x (2.x
        # removed ``cat.get_categories``).
        present = column.drop_nulls().unique()
        physical = present.to_physical().to_numpy().astype(np.int64)
        order = np.argsort(physical)
        labels = np.asarray(present.cast(pl.String).to_list(), dtype=object)[order]
        all_codes = column.to_physical().fill_null(-1).to_numpy().astype(np.int64)
        codes = np.searchsorted(physical[order], all_codes)
        return Encoded(np.where(all_codes < 0, -1, codes).astype(np.int64), labels)
    if dtype.is_integer():
        if dtype in (pl.Int128, getattr(pl, "UInt128", pl.Int128)):
            return _narrow(_objects(column.to_list()))
        if column.null_count():
            values = column.fill_null(0).to_numpy()
            return Masked(np.asarray(values), np.asarray(column.is_null().to_numpy()))
        return np.asarray(column.to_numpy())
    if dtype.is_nested() or dtype == pl.Object:
        raise _unsupported(name, str(dtype))
    return np.asarray(column.to_numpy())


def _from_arrow(column: Any, name: str) -> Column:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type):
            column = column.unify_dictionaries()
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if isinstance(column, pa.ChunkedArray):  # an empty ChunkedArray
            column = pa.array([], type=column.type)
    kind = column.type
    if pa.types.is_dictionary(kind):
        codes = column.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        dictionary = column.dictionary.to_numpy(zero_copy_only=False)
        return Encoded(codes, np.asarray(dictionary))
    if pa.types.is_integer(kind) and column.null_count:
        values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        return Masked(
            np.asarray(values), np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        )
    if pa.types.is_nested(kind):
        raise _unsupported(name, str(kind))
    array = np.asarray(column.to_numpy(zero_copy_only=False))
    return _narrow(array) if array.dtype.kind == "O" else array


def _unsupported(name: str, dtype: str) -> SchemaError:
    return SchemaError(
        f"column {name!r} has type {dtype}: nested values (structs, lists) are not supported;"
        " select or flatten the fields you need first"
    )


def factorize(values: Any, name: str = "values", *, distinct: bool = True) -> Encoded:
    """Codes and distinct values of a column (a numpy array or a pandas Series); None/NaN
    get code -1.

    Uses pandas' hash-based factorize when pandas is installed (much faster on strings),
    otherwise numpy's sort-based unique. With ``distinct=False`` one ``str`` value may hold
    two codes (two objects): for key columns, whose values
    :class:`~telemagg._key_index.KeyIndex` makes one id by identity anyway.

    >>> enc = factorize(np.array(["b", None, "a", "b"], dtype=object))
    >>> [enc.uniques[c] if c >= 0 else None for c in enc.codes]
    ['b', None, 'a', 'b']
    """
    if values.dtype.kind == "U":
        values = values.astype(object)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.size > _MANY:
        found = _factorize_narrow_ints(values)
        if found is not None:
            return found
    try:
        import pandas as pd
    except ImportError:
        return _factorize_numpy(values, name)
    try:
        if isinstance(values, np.ndarray) and values.dtype == object and values.size > _MANY:
            found = _factorize_by_reference(values, pd, distinct)
            if found is not None:
                return found
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError:  # unhashable values (lists, dicts)
        raise _unhashable(name, values) from None
    return Encoded(np.asarray(codes, dtype=np.int64), np.asarray(uniques))


_MANY = 1 << 16
_NARROW_SPAN = 4
"""An integer column whose values span at most this many times its length is factorized
by counting (no hashing)."""


def _factorize_narrow_ints(values: npt.NDArray[Any]) -> Encoded | None:
    """Codes and distinct values of an integer column by counting over its range, in
    ascending order of value: a scatter, a cumulative sum and a gather (1M keys over a
    range of 500k: ~6 ms against pandas' 33 ms). None if the range is wider than
    ``_NARROW_SPAN`` times the column.

    >>> enc = _factorize_narrow_ints(np.array([7, 3, 7, 5] * 20_000))
    >>> enc.uniques.tolist(), enc.codes[:4].tolist()
    ([3, 5, 7], [2, 0, 2, 1])
    """
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    if span > _NARROW_SPAN * values.size or high > np.iinfo(np.int64).max:
        return None
    offsets = values.astype(np.int64, copy=bool(low))  # one copy, and only when shifted
    if low:
        offsets -= low
    present = np.zeros(span, dtype=bool)
    present[offsets] = True
    rank = np.cumsum(present, dtype=np.int64)
    rank -= 1
    uniques = (np.flatnonzero(present) + low).astype(values.dtype)
    return Encoded(rank[offsets], uniques)


def _factorize_by_reference(values: ObjArray, pd: Any, distinct: bool = True) -> Encoded | None:
    """pandas' factorize of an object column, through the objects' addresses first.

    Columns built from a vocabulary (``names[codes]``, most string columns in memory) hold
    few distinct *objects*: factorizing their addresses (integers) and then only the
    distinct objects by value is several times faster than hashing and comparing every
    value, and gives the same codes and uniques (both in order of first occurrence; equal
    values held by distinct objects still meet in the second step, which ``distinct=False``
    skips when the distinct objects are all ``str``). None (no gain expected) when the
    column's first rows suggest more distinct objects than half its rows.
    """
    values = np.ascontiguousarray(values)
    raw = (ctypes.c_char * values.nbytes).from_address(values.ctypes.data)
    addresses = np.frombuffer(memoryview(raw), dtype=np.uintp)  # read only, while ``values`` lives
    if _distinct_estimate(pd.unique(addresses[:_MANY]).size, _MANY, values.size) > values.size / 2:
        return None
    by_address, objects_at = pd.factorize(addresses)
    holder = np.empty(objects_at.size, dtype=np.int64)  # a position holding each object
    for lo in range(0, values.size, _MANY):
        chunk = by_address[lo : lo + _MANY]
        holder[chunk] = np.arange(lo, lo + chunk.size, dtype=np.int64)
    objects = values[holder]
    if not distinct and set(map(type, objects.tolist())) == {str}:
        return Encoded(by_address.astype(np.int64, copy=False), objects)
    codes, uniques = pd.factorize(objects, use_na_sentinel=True)
    return Encoded(np.asarray(codes, dtype=np.int64)[by_address], np.asarray(uniques))


def _distinct_estimate(seen: int, sampled: int, rows: int) -> float:
    """Distinct values expected among ``rows`` when ``sampled`` rows held ``seen``: the
    vocabulary V solving ``seen = V (1 - exp(-sampled / V))`` (uniform draws; skewed
    columns hold fewer), then ``V (1 - exp(-rows / V))``. ``rows`` if every sampled value
    was distinct.

    >>> round(_distinct_estimate(61_400, 65_536, 1_000_000) / 1000)  # 500k names, 1M rows
    431
    """
    if seen >= sampled:
        return float(rows)
    if 2 * seen <= sampled:
        return float(seen)  # at most half distinct already: few objects
    lo, hi = float(seen), float(seen)
    while hi * -math.expm1(-sampled / hi) < seen:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * -math.expm1(-sampled / mid) < seen else (lo, mid)
    return hi * -math.expm1(-rows / hi)


def _unhashable(name: str, values: Any) -> SchemaError:
    bad = next((v for v in values if not isinstance(v, Hashable)), None)
    return SchemaError(
        f"column {name!r} holds a {type(bad).__name__}: values must be scalars"
        " (numbers, strings, dates), not containers"
    )


def _factorize_numpy(values: np.ndarray[Any, Any], name: str) -> Encoded:
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
        if not all(isinstance(v, Hashable) for v in present):
            raise _unhashable(name, present) from None
        as_text = np.array([f"{type(v).__name__}:{v!r}" for v in present], dtype=object)
        text_uniques, first, inverse = np.unique(as_text, return_index=True, return_inverse=True)
        uniques = present[first]
        del text_uniques
    codes[~missing] = inverse
    return Encoded(codes, uniques)


def _encode(column: Any, name: str, distinct: bool = True) -> Encoded:
    """A column factorized; missing values (None, NaN, null) get code -1 (``distinct``: see
    :func:`factorize`)."""
    data = _to_numpy(column, name)
    if isinstance(data, Encoded):
        return data
    if isinstance(data, Masked):
        encoded = factorize(data.values, name)
        return Encoded(np.where(data.missing, -1, encoded.codes), encoded.uniques)
    if data.dtype.kind not in "iufbOUSmM":
        raise SchemaError(f"column {name!r} has values of unsupported dtype {data.dtype}")
    return factorize(data, name, distinct=distinct)


def _encode_keys(column: Any, name: str, distinct: bool = True) -> Encoded:
    """A key (or categorical) column factorized, its distinct values in canonical form
    (:func:`telemagg._identity.canonical_keys`); equal values of different types may still
    hold two codes: :class:`~telemagg._key_index.KeyIndex` makes them one id (and with
    ``distinct=False`` two objects of one ``str``: see :func:`factorize`)."""
    encoded = _encode(column, name, distinct)
    values, missing = canonical_keys(encoded.uniques, column=name)
    if not missing.any():
        return Encoded(encoded.codes, values)
    # distinct values that are missing after all (NaN in a dictionary, NaT, NA): code -1
    renumbered = np.append(np.where(missing, -1, np.cumsum(~missing) - 1), -1)
    return Encoded(renumbered[encoded.codes], values[~missing])


def _unit_ids(column: Any, name: str) -> tuple[U64, Encoded, Bool]:
    """64-bit identities of privacy units (:func:`telemagg._identity.unit_hash`), and where
    the unit is missing.

    Integer ids are hashed directly (vectorised, no factorization, nulls by a mask);
    anything else is factorized and each distinct id hashed once.
    """
    data = _to_numpy(column, name)
    if isinstance(data, np.ndarray) and data.dtype.kind == "f":
        missing = np.isnan(data)
        ids, _ = unit_hashes(data, column=name)  # refuses non-integral or huge floats
        data = Masked(np.where(missing, 0, data).astype(np.int64), missing)
        return ids, Encoded(np.arange(ids.size, dtype=np.int64), data.values), missing
    if isinstance(data, Masked):
        ids = int_unit_ids(data.values)
        return ids, Encoded(np.arange(ids.size, dtype=np.int64), data.values), data.missing
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
        # codes index the raw ids themselves: uniques[codes] is the column, as for strings
        ids = int_unit_ids(data)
        return ids, Encoded(np.arange(data.size, dtype=np.int64), data), np.zeros(data.size, bool)
    if isinstance(data, np.ndarray) and data.dtype.kind not in "OU":
        raise SchemaError(
            f"column {name!r} (the privacy unit) must hold integers, strings or UUIDs;"
            f" got {data.dtype}"
        )
    encoded = data if isinstance(data, Encoded) else factorize(data, name)
    hashes, missing_unique = unit_hashes(encoded.uniques, column=name)
    missing = encoded.codes < 0
    if missing_unique.any():
        missing |= np.append(missing_unique, True)[encoded.codes]
    ids = (
        hashes[np.where(missing, 0, encoded.codes)]
        if hashes.size
        else np.zeros(missing.size, np.uint64)
    )
    return ids, encoded, missing


def _numeric(column: Any, name: str) -> F64:
    data = _to_numpy(column, name)
    if isinstance(data, Masked):
        return np.where(data.missing, np.nan, data.values.astype(np.float64))
    if isinstance(data, Encoded):  # e.g. numbers in a pandas object column
        uniques = data.uniques
        if not all(_is_number(v) for v in uniques.tolist()):
            raise SchemaError(
                f"column {name!r} must be numeric; got values such as {_example(uniques)}"
            )
        values = np.append(uniques.astype(np.float64), np.nan)  # code -1 reads NaN
        return values[data.codes]
    if data.dtype.kind in "iufb":
        return data.astype(np.float64, copy=False)
    if data.dtype.kind == "O":
        values = data.tolist()
        if all(v is None or _is_number(v) for v in values):
            return np.array([np.nan if v is None else float(v) for v in values], np.float64)
        raise SchemaError(f"column {name!r} must be numeric; got values such as {_example(data)}")
    raise SchemaError(f"column {name!r} must be numeric; got values of dtype {data.dtype}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, np.datetime64)


def _example(uniques: np.ndarray[Any, Any]) -> str:
    """One non-numeric value, shortened, to name in an error."""
    bad = next(v for v in uniques.tolist() if not (v is None or _is_number(v)))
    return repr(bad)[:40]


def _times_ms(column: Any, name: str) -> tuple[I64, Bool]:
    """Event times as int64 milliseconds since the epoch, and where they are missing.

    datetime64 / timestamp columns of any unit (timezone-aware ones as UTC) or numbers of
    seconds since the epoch.
    """
    data = _to_numpy(column, name)
    if isinstance(data, Masked):
        data = np.where(data.missing, np.nan, data.values.astype(np.float64))
    if isinstance(data, Encoded):
        data = data.uniques[np.maximum(data.codes, 0)]
    if data.dtype.kind in "iuf":
        seconds = data.astype(np.float64)
        missing = ~np.isfinite(seconds) | ~(np.abs(seconds) < 1e14)  # beyond year 3 million
        return np.where(missing, 0, np.floor(np.where(missing, 0, seconds) * 1000.0)).astype(
            np.int64
        ), missing
    if data.dtype.kind != "M":
        try:
            data = data.astype("datetime64[ms]")
        except (TypeError, ValueError, OverflowError):
            raise SchemaError(
                f"column {name!r} (the event time) must hold datetimes or epoch seconds;"
                f" got values of dtype {data.dtype}"
            ) from None
    millis = data.astype("datetime64[ms]")
    missing = np.isnat(millis)
    return np.where(missing, 0, millis.astype(np.int64)), missing


def _combine_keys(encoded: list[Encoded]) -> tuple[I64, KeyColumns]:
    """Per-event partition code over several key columns (-1 where any key is missing),
    and the distinct keys, as columns."""
    missing = np.zeros(encoded[0].codes.size, dtype=bool)
    for enc in encoded:
        missing |= enc.codes < 0
    if len(encoded) == 1:
        return encoded[0].codes, KeyColumns((encoded[0].uniques,))
    combined = np.zeros(missing.size, dtype=np.int64)
    for enc in encoded:
        combined = combined * max(len(enc.uniques), 1) + np.maximum(enc.codes, 0)
    present = factorize(np.where(missing, -1, combined))
    flat = present.uniques.astype(np.int64)
    parts = []
    for enc in reversed(encoded):
        flat, code = np.divmod(flat, max(len(enc.uniques), 1))
        parts.append(enc.uniques[code])
    return np.where(missing, -1, present.codes), KeyColumns(tuple(reversed(parts)))


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
    keys_encoded = [_encode_keys(raw[c], c, distinct=False) for c in by]
    if n_events == 0:
        codes = np.zeros(0, np.int64)
        keys = KeyColumns(tuple(enc.uniques[:0] for enc in keys_encoded))
    else:
        codes, keys = _combine_keys(keys_encoded)
    values = {c: _numeric(raw[c], c) for c in numeric}
    cats = {c: _encode_keys(raw[c], c) for c in categorical}
    batch = Batch(n_events, unit_id, unit_encoded, codes, keys, values, cats)
    # Each dropped event is counted once, under the first reason that applies.
    reasons: list[tuple[str, Bool]] = [(MISSING_PRIVACY_UNIT, unit_missing)]
    if time is not None:
        batch.time_ms, time_missing = _times_ms(raw[time], time)
        reasons.append((MISSING_TIME, time_missing))
    reasons.append((MISSING_PARTITION_KEY, codes < 0))
    bad = np.zeros(n_events, dtype=bool)
    for reason, mask in reasons:
        newly = int(np.count_nonzero(mask & ~bad))
        if newly:
            batch.dropped[reason] = newly
            bad |= mask
    return batch.take(~bad, "") if bad.any() else batch
