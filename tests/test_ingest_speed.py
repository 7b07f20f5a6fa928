"""Factorizing object columns through their objects' addresses gives pandas' result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemagg import _ingest
from telemagg._ingest import factorize
from telemagg.errors import SchemaError


def column(vocabulary: list[Any], codes: list[int], copies: bool) -> np.ndarray:
    """``vocabulary[codes]`` as objects; ``copies``: equal strings as distinct objects."""
    values = np.empty(len(codes), dtype=object)
    values[:] = [vocabulary[c] for c in codes]
    if copies:
        values[::3] = [("#" + v)[1:] if isinstance(v, str) else v for v in values[::3]]
    return values


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=3), st.none(), st.just(float("nan")), st.integers(0, 3)),
        min_size=1,
        max_size=20,
    ),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_same_codes_and_uniques_as_pandas(vocabulary: list[Any], seed: int, copies: bool) -> None:
    rng = np.random.default_rng(seed)
    values = column(vocabulary, rng.integers(0, len(vocabulary), 3 * _ingest._MANY).tolist(),
                    copies)  # fmt: skip
    assert _ingest._factorize_by_reference(values, pd) is not None  # the path under test
    found = factorize(values)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    assert found.codes.tolist() == codes.tolist()
    assert len(found.uniques) == len(uniques)
    assert all(a is b for a, b in zip(found.uniques, uniques, strict=True))  # same objects


def test_mostly_distinct_objects_take_pandas_directly() -> None:
    values = np.array([str(i) for i in range(2 * _ingest._MANY)], dtype=object)
    assert _ingest._factorize_by_reference(values, pd) is None
    assert factorize(values).codes.tolist() == list(range(values.size))


def test_unhashable_values_are_schema_errors() -> None:
    values = column(["a", "b"], [0, 1] * _ingest._MANY, copies=False)
    values[5] = [1, 2]
    with pytest.raises(SchemaError, match="column 'c' holds a list"):
        factorize(values, "c")
