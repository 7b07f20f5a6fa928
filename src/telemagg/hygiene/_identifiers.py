"""Identifiers in canonical string form, factorised: each distinct identifier handled once.

Pseudonymisation and consent both work on *identifiers* (privacy units, user ids, device ids)
that arrive as numpy arrays, pandas Series or plain lists, as strings or integers. Both
compare them by one canonical string form, so an id means the same unit whichever way it was
typed:

* a ``str`` is itself (no trimming, no case folding);
* an integer (Python or numpy) is its decimal digits: ``42`` and ``"42"`` are the same id;
* a float with an integral value is the integer (pandas turns an integer column with gaps
  into floats): ``42.0`` is ``"42"``; any other float is rejected;
* a :class:`uuid.UUID` is its canonical hyphenated lowercase form;
* ``None``, NaN, ``pandas.NA`` and ``NaT`` are *missing*;
* anything else (bool, bytes, ...) is a :class:`~telemagg.errors.SchemaError`.

Errors name the position and the type of an offending id, never its value: ids are personal
data and error messages end up in logs.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import SchemaError

__all__ = ["FactorizedIds", "as_1d_array", "factorize_ids", "is_missing"]


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
    """Factorise ids by their canonical string form (see the module docstring).

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


def is_missing(value: Any) -> bool:
    """Whether ``value`` stands for a missing value: None, NaN, ``pandas.NA`` or ``NaT``.

    >>> is_missing(None), is_missing(float("nan")), is_missing(0), is_missing("")
    (True, True, False, False)
    """
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return True
    pandas = sys.modules.get("pandas")  # if pandas is not loaded, no value can be pandas.NA
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _factorize_floats(array: npt.NDArray[np.floating[Any]], param: str) -> FactorizedIds:
    missing = np.isnan(array)
    present = array[~missing]
    bad = ~np.isfinite(present) | (present != np.round(present))
    if bad.any():
        position = int(np.flatnonzero(~missing)[np.argmax(bad)])
        raise SchemaError(
            f"{param}[{position}] is a float: floats must be integral "
            "(the value is not shown: it is an identifier)"
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
    raw_codes = np.fromiter(
        (first_code.setdefault(item, len(first_code)) for item in items), np.intp, len(items)
    )
    canonical_code: dict[str, int] = {}
    raw_to_canonical = np.empty(len(first_code), dtype=np.intp)
    for raw_code, raw in enumerate(first_code):
        form = _canonical(raw, param, items)
        raw_to_canonical[raw_code] = (
            -1 if form is None else canonical_code.setdefault(form, len(canonical_code))
        )
    return FactorizedIds(list(canonical_code), raw_to_canonical[raw_codes])


def _canonical(value: Any, param: str, items: list[Any]) -> str | None:
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        raise _bad_id(param, items, value, "floats must be integral")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _bad_id(param, items, value, "ids must be str, int, integral float or UUID")


def _bad_id(param: str, items: list[Any], value: Any, rule: str) -> SchemaError:
    """``value`` is an offending item (the very object) or, for a type check, its type."""
    position, item = next(
        (i, item) for i, item in enumerate(items) if item is value or type(item) is value
    )
    return SchemaError(
        f"{param}[{position}] is a {type(item).__name__}: {rule} "
        "(the value is not shown: it is an identifier)"
    )
