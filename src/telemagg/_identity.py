"""What "the same privacy unit" and "the same partition key" mean, in one place.

Bounding, consent, pseudonymisation and the Dask engine all decide whether two events
belong to one person, and the release decides whether two events fall into one partition.
If any two of them disagreed, one person could be bounded twice (issue 9, hole 4) or two
partitions could share one bounding slot (hole 5). So every such decision goes through the
functions below.

**Units** are compared by their *canonical form*, a string:

* a ``str`` is itself (no trimming, no case folding); it must be valid Unicode without NUL
  (SQLite's ``json_each`` and C libraries cut strings at NUL, so such an id could not be
  stored and looked up reliably: it is refused rather than silently mismatched);
* an integer (Python or numpy, any size) is its decimal digits: ``42``, ``np.int32(42)`` and
  ``"42"`` are one unit;
* a float is the integer it equals when it is an exact integer below 2**53 in magnitude
  (pandas turns an integer column with gaps into floats); any other float (``1.5``, ``1e20``,
  infinities) is refused, since beyond 2**53 distinct ids round onto one float;
* a :class:`uuid.UUID` is its canonical hyphenated lowercase form;
* ``None``, NaN, ``pandas.NA`` and ``NaT`` are missing; anything else is refused.

The 64-bit identity used by bounding is a function of the canonical form only: SplitMix64
of the integer when the form is a decimal integer within int64 (so integer columns hash
vectorised, without building strings), BLAKE2b of the UTF-8 form otherwise.

**Partition keys** (and categorical values) are compared by value, across types: equal
numbers are one key whatever their type (``Decimal(7)``, ``7``, ``7.0``, ``np.int64(7)``),
one instant is one key (``pd.Timestamp``, ``datetime``, ``np.datetime64``; timezone-aware
values by their UTC time, naive ones read as UTC, the way timezone-aware columns are read),
a UUID is its string. Booleans stay booleans (``True`` is not the key ``1``). Each key part has a
canonical released value and an *identity* ``(rank, value)``; identities are hashed to 64
bits for bounding, and the key index (:mod:`telemagg._key_index`) checks those hashes for
collisions. Identities also give the canonical order of released rows (rank first, then
value), which never depends on arrival order.

Errors name the column (or parameter) and the rule, never an identifier's value: ids are
personal data and error messages end up in logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import sys
import uuid
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import SchemaError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

__all__ = [
    "FactorizedIds",
    "as_1d_array",
    "canonical_key",
    "canonical_keys",
    "canonical_unit",
    "factorize_ids",
    "int_unit_ids",
    "is_missing",
    "key_hash",
    "key_identity",
    "key_order",
    "mix64",
    "unit_hash",
    "unit_hashes",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_EXACT_FLOAT = 2**53
"""Floats at or beyond this magnitude do not identify a unit: neighbouring integers round
onto the same float."""
MAX_KEY_BITS = 128
"""Integer keys must fit in 128 bits (signed; polars' Int128 is the widest integer column)."""

# --------------------------------------------------------------------------- mixing

_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN_INT = 0x9E3779B97F4A7C15
_MIX1_INT = 0xBF58476D1CE4E5B9
_MIX2_INT = 0x94D049BB133111EB
_GOLDEN = np.uint64(_GOLDEN_INT)
_MIX1 = np.uint64(_MIX1_INT)
_MIX2 = np.uint64(_MIX2_INT)


def mix64(x: U64, *, inplace: bool = False) -> U64:
    """SplitMix64 finalizer: a bijective, well-mixing map on 64-bit integers (vectorised).

    Works in place (``inplace=True`` overwrites ``x``) with one scratch array: on large
    batches fresh memory, not arithmetic, is the cost. A long array is mixed a chunk at a
    time, so the scratch array and the passes stay cache-sized (10M ids: 0.03 CPU s against
    0.06-0.3 with one 80 MB scratch array).

    >>> int(mix64(np.array([0], dtype=np.uint64))[0]) == _mix64_int(0)
    True
    """
    with np.errstate(over="ignore"):
        z = np.add(x, _GOLDEN, out=x if inplace else None, dtype=np.uint64)
        if z.ndim != 1:
            _mix_rest(z, np.empty_like(z))
            return z
        t = np.empty(min(z.size, _MIX_CHUNK), dtype=np.uint64)
        for at in range(0, z.size, _MIX_CHUNK):
            part = z[at : at + _MIX_CHUNK]
            _mix_rest(part, t[: part.size])
        return z


_MIX_CHUNK = 1 << 16


def _mix_rest(z: U64, t: U64) -> None:
    """The steps of :func:`mix64` after the first addition, in place (``t``: scratch)."""
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        np.right_shift(z, np.uint64(shift), out=t)
        np.bitwise_xor(z, t, out=z)
        np.multiply(z, multiplier, out=z)
    np.right_shift(z, np.uint64(31), out=t)
    np.bitwise_xor(z, t, out=z)


def _mix64_int(x: int) -> int:
    """:func:`mix64` of one value, in Python integers (``x`` taken modulo 2**64)."""
    z = (x + _GOLDEN_INT) & _M64
    z = ((z ^ (z >> 30)) * _MIX1_INT) & _M64
    z = ((z ^ (z >> 27)) * _MIX2_INT) & _M64
    return z ^ (z >> 31)


def _blake(tag: bytes, data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(tag + data, digest_size=8).digest(), "little")


# --------------------------------------------------------------------------- units


class _RefusedError(Exception):
    """A value that is not an identifier / key; ``rule`` says why (never the value)."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


_DECIMAL_INT = re.compile(r"0|-?[1-9][0-9]*")
_DECIMAL_START = frozenset("-0123456789")


def is_missing(value: Any) -> bool:
    """Whether ``value`` stands for a missing value: None, NaN, ``pandas.NA`` or ``NaT``.

    >>> is_missing(None), is_missing(float("nan")), is_missing(0), is_missing("")
    (True, True, False, False)
    """
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return True
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    pandas = sys.modules.get("pandas")  # if pandas is not loaded, no value can be pandas.NA
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _check_text(text: str) -> str:
    if "\x00" in text:
        raise _RefusedError("an identifier must not contain NUL characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _RefusedError(
                "an identifier must be valid Unicode (no lone surrogates)"
            ) from None
    return text


def _canonical_unit(value: Any) -> str | None:
    """The canonical form of one unit id, None if missing; raises :class:`_RefusedError`."""
    if isinstance(value, str):
        return _check_text(value)
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        raise _RefusedError("a boolean is not an identifier")
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
        if not (number.is_integer() and abs(number) < MAX_EXACT_FLOAT):
            raise _RefusedError(
                "floats must be exact integers below 2**53 in magnitude"
                " (larger or fractional floats cannot tell neighbouring ids apart)"
            )
        return str(int(number))
    if isinstance(value, uuid.UUID):
        return str(value)
    if is_missing(value):
        return None
    raise _RefusedError("ids must be str, int, integral float or UUID")


def canonical_unit(value: Any, *, column: str = "unit") -> str | None:
    """The canonical form of one privacy-unit id (None if missing); the one definition of
    "the same unit".

    >>> canonical_unit(42) == canonical_unit("42") == canonical_unit(42.0) == "42"
    True
    >>> canonical_unit(uuid.UUID(int=1))
    '00000000-0000-0000-0000-000000000001'
    >>> canonical_unit(1e20, column="user")
    Traceback (most recent call last):
    ...
    telemagg.errors.SchemaError: column 'user' holds a float: floats must be exact integers \
below 2**53 in magnitude (larger or fractional floats cannot tell neighbouring ids \
apart) (the value is not shown: it is an identifier)
    """
    try:
        return _canonical_unit(value)
    except _RefusedError as refused:
        raise _unit_error(column, value, refused.rule) from None


def _unit_error(column: str, value: Any, rule: str) -> SchemaError:
    return SchemaError(
        f"column {column!r} holds a {type(value).__name__}: {rule}"
        " (the value is not shown: it is an identifier)"
    )


def _all_text(values: list[Any]) -> bool:
    pandas = sys.modules.get("pandas")
    if pandas is not None:  # one pass in C
        return bool(pandas.api.types.infer_dtype(values, skipna=False) == "string")
    return all(type(v) is str for v in values)


def _form_hash(form: str) -> int:
    """The 64-bit identity of a canonical form."""
    if len(form) <= 20 and form[:1] in _DECIMAL_START and _DECIMAL_INT.fullmatch(form):
        number = int(form)
        if INT64_MIN <= number <= INT64_MAX:
            return _mix64_int(number)
    return _blake(b"s:", form.encode("utf-8"))


def unit_hash(value: Any, *, column: str = "unit") -> int:
    """The 64-bit bounding identity of one unit id: a function of its canonical form.

    >>> unit_hash(42) == unit_hash("42") == unit_hash(42.0) == unit_hash(np.int32(42))
    True
    >>> unit_hash(2**64 + 5) == unit_hash("18446744073709551621") != unit_hash(5)
    True
    """
    form = canonical_unit(value, column=column)
    if form is None:
        raise SchemaError(f"column {column!r}: a missing id has no identity")
    return _form_hash(form)


def int_unit_ids(values: npt.NDArray[Any]) -> U64:
    """:func:`unit_hash` of every value of an integer array, vectorised (a new array).

    int64 values are mixed directly; uint64 values beyond int64 (rare) are hashed by their
    decimal form, each distinct one once.

    >>> int(int_unit_ids(np.array([42], dtype=np.int32))[0]) == unit_hash(42)
    True
    >>> int(int_unit_ids(np.array([2**63], dtype=np.uint64))[0]) == unit_hash(str(2**63))
    True
    """
    if values.dtype.kind == "u" and values.dtype.itemsize == 8:
        ids = mix64(values.astype(np.uint64, copy=True), inplace=True)
        big = values > np.uint64(INT64_MAX)
        if big.any():
            distinct, inverse = np.unique(values[big], return_inverse=True)
            hashes = np.fromiter((_form_hash(str(v)) for v in distinct.tolist()), np.uint64)
            ids[big] = hashes[inverse]
        return ids
    return mix64(values.astype(np.int64).view(np.uint64), inplace=True)


def unit_hashes(uniques: npt.NDArray[Any], *, column: str) -> tuple[U64, Bool]:
    """:func:`unit_hash` of each DISTINCT value of a column, and which are missing.

    Integer arrays are hashed vectorised; anything else one value at a time (these are
    the distinct values of a column, never its events).

    >>> hashes, missing = unit_hashes(np.array(["42", None, 42.0], dtype=object), column="u")
    >>> bool(hashes[0] == hashes[2] == unit_hash(42)), missing.tolist()
    (True, [False, True, False])
    """
    if uniques.dtype.kind in "iu":
        return int_unit_ids(uniques), np.zeros(uniques.size, dtype=bool)
    if uniques.dtype.kind == "f":
        missing = np.isnan(uniques)
        present = uniques[~missing]
        if not (np.all(present == np.round(present)) and np.all(np.abs(present) < MAX_EXACT_FLOAT)):
            bad = present[(present != np.round(present)) | ~(np.abs(present) < MAX_EXACT_FLOAT)]
            canonical_unit(float(bad[0]), column=column)  # raises, naming the rule
        ids = int_unit_ids(np.where(missing, 0, uniques).astype(np.int64))
        return ids, missing
    if uniques.dtype.kind not in "OUS":
        raise SchemaError(
            f"column {column!r} (the privacy unit) must hold integers, strings or UUIDs;"
            f" got values of dtype {uniques.dtype}"
        )
    if uniques.dtype.kind == "S":
        raise SchemaError(
            f"column {column!r} (the privacy unit) holds bytes: ids must be str, int,"
            " integral float or UUID"
        )
    values = uniques.tolist()
    if _all_text(values):  # the common case, checked and hashed without per-value dispatch
        text = "".join(values)
        if "\x00" in text or not text.isascii():
            for value in values:
                try:
                    _check_text(value)
                except _RefusedError as refused:
                    raise _unit_error(column, value, refused.rule) from None
        hashes = np.fromiter(map(_form_hash, values), dtype=np.uint64, count=len(values))
        return hashes, np.zeros(len(values), dtype=bool)
    hashes = np.zeros(uniques.size, dtype=np.uint64)
    missing = np.zeros(uniques.size, dtype=bool)
    for i, value in enumerate(values):
        try:
            form = _canonical_unit(value)
        except _RefusedError as refused:
            raise _unit_error(column, value, refused.rule) from None
        if form is None:
            missing[i] = True
        else:
            hashes[i] = _form_hash(form)
    return hashes, missing


# --------------------------------------------------------------------------- factorized ids


@dataclass(frozen=True)
class FactorizedIds:
    """``distinct[codes[i]]`` is the canonical form of id ``i``; ``codes[i] == -1`` if missing."""

    distinct: list[str]
    codes: npt.NDArray[np.intp]

    @property
    def missing(self) -> npt.NDArray[np.bool_]:
        """Where the input held no id (None, NaN, NA)."""
        return self.codes < 0


def as_1d_array(values: Iterable[Any] | npt.ArrayLike, *, param: str) -> npt.NDArray[Any]:
    """``values`` (numpy array, pandas/polars Series, list, any iterable) as a 1-d array.

    Lists become object arrays so that numpy never coerces ``[42, "a"]`` to strings or
    ``[True, 2]`` to integers behind our back.

    >>> as_1d_array([42, "a"], param="ids").dtype
    dtype('O')
    """
    if isinstance(values, np.ndarray):
        array = values
    elif hasattr(values, "to_numpy"):  # pandas / polars Series, pyarrow arrays
        array = np.asarray(values.to_numpy())
    elif isinstance(values, str | bytes):
        raise SchemaError(
            f"{param} must be a sequence of ids, not a single {type(values).__name__}"
        )
    else:
        items = list(values)  # type: ignore[arg-type]
        array = np.empty(len(items), dtype=object)
        array[:] = items
    if array.ndim != 1:
        raise SchemaError(f"{param} must be one-dimensional; got an array of shape {array.shape}")
    return array


def factorize_ids(values: Iterable[Any] | npt.ArrayLike, *, param: str = "ids") -> FactorizedIds:
    """Factorise ids by their canonical form (:func:`canonical_unit`).

    >>> f = factorize_ids([42, "42", None, 7.0])
    >>> f.distinct, f.codes.tolist()
    (['42', '7'], [0, 0, -1, 1])
    """
    array = as_1d_array(values, param=param)
    kind = array.dtype.kind
    if kind in "iu":
        uniques, codes = np.unique(array, return_inverse=True)
        return FactorizedIds([str(v) for v in uniques.tolist()], codes.astype(np.intp))
    if kind == "f":
        return _factorize_floats(array, param)
    if kind in "UO":
        return _factorize_objects(array.tolist(), param)
    raise SchemaError(
        f"{param} must hold strings or integers (or integral floats, UUIDs); "
        f"got an array of dtype {array.dtype}"
    )


def _factorize_floats(array: npt.NDArray[np.floating[Any]], param: str) -> FactorizedIds:
    missing = np.isnan(array)
    present = array[~missing]
    bad = ~(np.abs(present) < MAX_EXACT_FLOAT) | (present != np.round(present))
    if bad.any():
        position = int(np.flatnonzero(~missing)[np.argmax(bad)])
        raise SchemaError(
            f"{param}[{position}] is a float: floats must be exact integers below 2**53 in"
            " magnitude (the value is not shown: it is an identifier)"
        )
    uniques, inverse = np.unique(present, return_inverse=True)
    codes = np.full(array.shape[0], -1, dtype=np.intp)
    codes[~missing] = inverse
    return FactorizedIds([str(int(v)) for v in uniques.tolist()], codes)


def _factorize_objects(items: list[Any], param: str) -> FactorizedIds:
    types = set(map(type, items))
    for rejected in (bool, np.bool_):
        if rejected in types:  # before the dict below, where True would merge with 1
            raise _bad_id(param, items, rejected, "a boolean is not an identifier")
    pandas = sys.modules.get("pandas")
    if pandas is not None and types & {type(pandas.NA), type(pandas.NaT)}:
        # NA compares as NA, which a dict lookup cannot use: make it None first.
        items = [None if is_missing(item) else item for item in items]
    # First by the raw value (a dict: one hash per item, no sorting), then the few distinct
    # raw values to canonical strings, merging 42 and "42".
    first_code: dict[Any, int] = {}
    try:
        raw_codes = np.fromiter(
            (first_code.setdefault(item, len(first_code)) for item in items), np.intp, len(items)
        )
    except TypeError:  # unhashable: a list or dict is no identifier
        bad = next(item for item in items if not isinstance(item, Hashable))
        raise _bad_id(param, items, bad, "ids must be str, int, integral float or UUID") from None
    canonical_code: dict[str, int] = {}
    raw_to_canonical = np.empty(len(first_code), dtype=np.intp)
    for raw_code, raw in enumerate(first_code):
        try:
            form = _canonical_unit(raw)
        except _RefusedError as refused:
            raise _bad_id(param, items, raw, refused.rule) from None
        raw_to_canonical[raw_code] = (
            -1 if form is None else canonical_code.setdefault(form, len(canonical_code))
        )
    return FactorizedIds(list(canonical_code), raw_to_canonical[raw_codes])


def _bad_id(param: str, items: list[Any], value: Any, rule: str) -> SchemaError:
    """``value`` is an offending item (the very object) or, for a type check, its type."""
    position, item = next(
        (i, item)
        for i, item in enumerate(items)
        if item is value or type(item) is value or _same(item, value)
    )
    return SchemaError(
        f"{param}[{position}] is a {type(item).__name__}: {rule} "
        "(the value is not shown: it is an identifier)"
    )


def _same(item: Any, value: Any) -> bool:
    try:
        return bool(type(item) is type(value) and item == value)
    except Exception:  # an exotic __eq__: not the one we are looking for
        return False


# --------------------------------------------------------------------------- partition keys

# Ranks order the kinds of key values in released rows (then each kind by value).
_BOOL, _NUMBER, _TEXT, _BYTES, _DATE, _TIME, _DURATION = range(7)
_RANK_TAGS = {
    _BOOL: b"?",
    _NUMBER: b"n",
    _TEXT: b"s",
    _BYTES: b"b",
    _DATE: b"d",
    _TIME: b"t",
    _DURATION: b"r",
}
_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NS.update({"D": 86_400 * 10**9, "W": 7 * 86_400 * 10**9})
_EPOCH = dt.datetime(1970, 1, 1)

Identity = tuple[int, Any]
"""A key part's identity: (rank, comparable value); equal identities are one key part."""


def _number(value: Any) -> tuple[Any, Identity] | None:
    """Canonical number: an int if integral (within :data:`MAX_KEY_BITS`), else a float,
    else (a Decimal no float equals) the Decimal."""
    if isinstance(value, int):
        if value.bit_length() >= MAX_KEY_BITS:
            raise _RefusedError(f"integer keys must be below 2**{MAX_KEY_BITS - 1} in magnitude")
        return value, (_NUMBER, value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return None
        if value.is_finite() and value == value.to_integral_value():
            return _number(int(value))
        as_float = float(value)
        if math.isinf(as_float) or Decimal(as_float) == value:
            return _number(as_float)
        return value, (_NUMBER, value)
    number = float(value)
    if math.isnan(number):
        return None
    if number.is_integer() and abs(number) < 2.0 ** (MAX_KEY_BITS - 1):
        return _number(int(number))
    return number, (_NUMBER, number)


def _timestamp(ns: int) -> tuple[Any, Identity]:
    """An instant (nanoseconds since the epoch, UTC) as a key part: released as a naive UTC
    pandas Timestamp when pandas is loaded (else a datetime, microseconds), as columnar
    inputs release timezone-aware columns."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and INT64_MIN < ns <= INT64_MAX:
        return pandas.Timestamp(ns), (_TIME, ns)
    return _EPOCH + dt.timedelta(microseconds=ns // 1000), (_TIME, ns)


def _key_part(value: Any) -> tuple[Any, Identity] | None:
    """(released value, identity) of one key part, None if missing; raises _RefusedError."""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _RefusedError("keys must be valid Unicode (no lone surrogates)") from None
        return value, (_TEXT, value)
    if kind is int:
        return _number(value)
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value), (_BOOL, bool(value))
    if isinstance(value, int | np.integer):
        return _number(int(value))
    if isinstance(value, float | np.floating | Decimal):
        return _number(value)
    if isinstance(value, str):  # a str subclass (numpy str_)
        return _key_part(str(value))
    if isinstance(value, bytes):
        return bytes(value), (_BYTES, bytes(value))
    if isinstance(value, uuid.UUID):
        return _key_part(str(value))
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        unit, count = np.datetime_data(value.dtype)
        if unit not in _NS:
            raise _RefusedError(f"datetime64 keys in unit {unit!r} are not supported")
        ns = int(value.astype(np.int64)) * count * _NS[unit]
        return _timestamp(ns)
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            return None
        unit, count = np.datetime_data(value.dtype)
        if unit not in _NS:
            raise _RefusedError(f"timedelta64 keys in unit {unit!r} are not supported")
        return _duration(int(value.astype(np.int64)) * count * _NS[unit])
    if isinstance(value, dt.datetime):
        if is_missing(value):
            return None
        nanos = int(getattr(value, "nanosecond", 0))
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(dt.UTC)  # an aware instant: its UTC time
        micros = (value.replace(tzinfo=None) - _EPOCH) // dt.timedelta(microseconds=1)
        return _timestamp(micros * 1000 + nanos)
    if isinstance(value, dt.date):
        return value, (_DATE, value.toordinal())
    if isinstance(value, dt.timedelta):
        if is_missing(value):
            return None
        micro = value // dt.timedelta(microseconds=1)
        return _duration(micro * 1000 + int(getattr(value, "nanoseconds", 0)))
    if is_missing(value):
        return None
    raise _RefusedError(
        "a key must be a number, string, bytes, bool, date, time or UUID"
        f" (a {type(value).__name__} is not)"
    )


def _duration(ns: int) -> tuple[Any, Identity]:
    pandas = sys.modules.get("pandas")
    released = (
        pandas.Timedelta(ns, unit="ns")
        if pandas is not None and INT64_MIN < ns <= INT64_MAX
        else dt.timedelta(microseconds=ns // 1000)
    )
    return released, (_DURATION, ns)


def _key_error(column: str, value: Any, rule: str, error: type[SchemaError] | type[Any]) -> Any:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return error(f"column {column!r} holds {shown}, which cannot be a key or category: {rule}")


def canonical_key(value: Any, *, column: str, error: type[Exception] = SchemaError) -> Any:
    """The released value of one key part (None if missing); the one definition of "the
    same key": equal values of any type give the same canonical value.

    ``error`` is the exception raised for a value that cannot be a key (a
    :class:`~telemagg.errors.SchemaError` for data, a ConfigError for a parameter).

    >>> canonical_key(Decimal(7), column="k"), canonical_key(np.int64(7), column="k")
    (7, 7)
    >>> canonical_key(7.5, column="k"), canonical_key(True, column="k")
    (7.5, True)
    >>> canonical_key({"a": 1}, column="k")
    Traceback (most recent call last):
    ...
    telemagg.errors.SchemaError: column 'k' holds {'a': 1}, which cannot be a key or category: \
a key must be a number, string, bytes, bool, date, time or UUID (a dict is not)
    """
    try:
        part = _key_part(value)
    except _RefusedError as refused:
        raise _key_error(column, value, refused.rule, error) from None
    return None if part is None else part[0]


def canonical_keys(
    uniques: npt.NDArray[Any], *, column: str, error: type[Exception] = SchemaError
) -> tuple[npt.NDArray[Any], Bool]:
    """:func:`canonical_key` of every value of an array, and which are missing.

    Whole columns at once where the dtype allows: integers (and floats that are all exact
    integers within int64) give an int64 array, booleans a bool array, all-``str`` object
    columns stay as they are (checked in one pass); anything else is an object array of
    canonical values, converted value by value (exotic columns only).

    >>> values, missing = canonical_keys(np.array([7.0, np.nan, 7.5]), column="k")
    >>> values.tolist(), missing.tolist()
    ([7, None, 7.5], [False, True, False])
    >>> canonical_keys(np.array([7.0, 8.0]), column="k")[0].dtype
    dtype('int64')
    """
    none = np.zeros(uniques.size, dtype=bool)
    kind = uniques.dtype.kind
    if kind == "b":
        return uniques, none
    if kind in "iu":
        if kind == "i" or uniques.dtype.itemsize < 8 or not uniques.size:
            return uniques.astype(np.int64, copy=False), none
        if int(uniques.max()) <= INT64_MAX:
            return uniques.astype(np.int64), none
        return _object_array(uniques.tolist()), none  # beyond int64: Python ints
    if kind == "f":
        missing = np.isnan(uniques)
        with np.errstate(invalid="ignore"):
            integral = (uniques == np.floor(uniques)) & (np.abs(uniques) < 2.0**63)
        if np.all(integral | missing):
            return np.where(missing, 0, uniques).astype(np.int64), missing
    elif kind in "OU":
        items = uniques.tolist()
        types = set(map(type, items))
        if types == {str} and _valid_keys_text(items):
            return _object_array(items) if kind == "U" else uniques, none
        if types == {int}:
            try:
                return np.array(items, dtype=np.int64), none
            except OverflowError:
                pass  # beyond int64: value by value below
    released = [canonical_key(v, column=column, error=error) for v in _scalars(uniques)]
    missing = np.fromiter((v is None for v in released), bool, len(released))
    return _object_array(released), missing


def _valid_keys_text(items: list[str]) -> bool:
    """Whether every string is valid Unicode (no lone surrogates), checked in one pass."""
    text = "".join(items)
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # the value-by-value path names the rule
    return True


def _object_array(values: list[Any]) -> npt.NDArray[np.object_]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _scalars(uniques: npt.NDArray[Any]) -> Iterable[Any]:
    """The values of an array as Python/numpy scalars that keep their full precision (a
    datetime64[ns] array's ``tolist`` gives bare integers)."""
    if uniques.dtype.kind in "mM":
        return list(uniques)
    return uniques.tolist()  # type: ignore[no-any-return]


def key_identity(key: Any) -> Any:
    """The identity of a key (a tuple of parts, or one value): equal identities are one
    key; identities of one key's parts sort in the canonical order of released rows.

    >>> key_identity((7,)) == key_identity((Decimal("7.0"),)) != key_identity((True,))
    True
    """
    if isinstance(key, tuple):
        return tuple(_identity(part) for part in key)
    return _identity(key)


def _identity(part: Any) -> Identity:
    if type(part) is str:  # the common case, already canonical
        return (_TEXT, part)
    try:
        found = _key_part(part)
    except _RefusedError as refused:
        raise SchemaError(f"{part!r} is no partition key: {refused.rule}") from None
    if found is None:
        raise SchemaError("a missing value is no partition key")
    return found[1]


def _identity_hash(identity: Identity) -> int:
    rank, value = identity
    if rank == _NUMBER and isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return _mix64_int(value)  # as the integers of an int64 column
    if rank == _NUMBER:
        text = (value.hex() if isinstance(value, float) else str(value)).encode()
    elif rank == _TEXT:
        text = value.encode("utf-8")
    elif rank == _BYTES:
        text = value
    else:
        text = str(value).encode()
    tag = _RANK_TAGS[rank] + (b"f:" if isinstance(value, float | Decimal) else b":")
    return _blake(tag, text)


def key_hash(identity: Any) -> int:
    """A stable 64-bit hash of a key identity (see :func:`key_identity`).

    Unchecked: :class:`KeyIndex` resolves the (improbable) collisions.

    >>> key_hash(key_identity((5,))) != key_hash(key_identity((5 + 2**64,)))
    True
    """
    parts = identity if isinstance(identity, tuple) and not isinstance(identity[0], int) else None
    if parts is None:
        return _identity_hash(identity)
    h = len(parts)
    for part in parts:
        h = _mix64_int(h ^ _identity_hash(part))
    return h


def key_order(keys: Sequence[Any]) -> I64:
    """Positions of ``keys`` in the canonical order of released rows: by kind (booleans,
    numbers, strings, bytes, dates, times, durations), then by value; never by arrival.

    >>> key_order([("timeout",), (404,), (2.5,)]).tolist()
    [2, 1, 0]
    """
    identities = [key_identity(key) for key in keys]
    return np.asarray(sorted(range(len(keys)), key=identities.__getitem__), dtype=np.int64)
