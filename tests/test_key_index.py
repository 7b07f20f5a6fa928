"""The vectorised key index against the value-by-value one it replaced (issue 11).

``ReferenceKeyIndex`` is the previous :class:`~telemagg._key_index.KeyIndex`, verbatim in
behaviour: a dict from key identity to id, one hash per new key, a colliding hash moved.
The columnar index must give the same ids, released keys and hashes on any sequence of
batches, whichever path (whole columns, or value by value) each batch takes, and refuse
the same keys.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import telemagg as tm
from telemagg import _identity, _key_index
from telemagg._identity import _mix64_int, canonical_keys, key_hash, key_identity
from telemagg._key_index import (
    _VECTOR_MIN,
    KeyColumns,
    KeyIndex,
    _released,
    key_columns,
    key_hashes,
)
from telemagg.errors import SchemaError
from telemagg.testing import seeded


class ReferenceKeyIndex:
    """The value-by-value index (telemagg before issue 11's key columns)."""

    def __init__(self, hash_of: Callable[[Any], int] = key_hash) -> None:
        self.keys: list[Any] = []
        self._ids: dict[Any, int] = {}
        self.hashes: list[int] = []
        self._taken: set[int] = set()
        self._hash_of = hash_of

    def ids(self, keys: Iterable[Any]) -> list[int]:
        out = []
        for key in keys:
            identity = key_identity(key)
            found = self._ids.get(identity)
            if found is None:
                found = self._ids[identity] = len(self.keys)
                self.keys.append(_released(key))
                h = self._hash_of(identity)
                while h in self._taken:
                    h = _mix64_int(h ^ 0x5851F42D4C957F2D)
                self._taken.add(h)
                self.hashes.append(h)
            out.append(found)
        return out


# Adversarial key parts: equal values of many types, bools beside 0 and 1, integers at and
# beyond the int64 edges and 2**64 apart, integral and fractional floats, unicode that only
# normalisation would merge, bytes beside str, instants of several types.
PARTS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**64 + 5, 5, -(2**100), 2**53 + 1]),
    st.integers(-3, 3).map(float),
    st.integers(-3, 3).map(Decimal),
    st.integers(-3, 3).map(np.int64),
    st.integers(0, 3).map(np.uint8),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.sampled_from([0.5, -0.0, 1e300, 2.0**70, Decimal("0.1"), Decimal("1.50"), 1.5]),
    st.sampled_from(["é", "e\u0301", "Å", "A\u030a", "", "a", "1", "True", "日本"]),
    st.text(max_size=3).filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t)),
    st.sampled_from([b"a", b"", b"\xff"]),
    st.sampled_from(
        [
            dt.date(2026, 1, 1),
            dt.datetime(2026, 1, 1),
            pd.Timestamp("2026-01-01"),
            np.datetime64("2026-01-01T00:00:00"),
            pd.Timestamp("2026-01-01", tz="UTC"),
            dt.timedelta(seconds=1),
            pd.Timedelta(1, unit="s"),
            uuid.UUID(int=7),
            str(uuid.UUID(int=7)),
        ]
    ),
)


@st.composite
def key_batches(draw: st.DrawFn, width: int | None = None) -> list[list[Any]]:
    """Batches of keys of one shape (tuples of ``width`` parts, or single values), each
    batch big enough for the columnar path or small enough for the value-by-value one."""
    width = draw(st.sampled_from([0, 1, 2, 3])) if width is None else width
    pool = draw(st.lists(PARTS, min_size=1, max_size=24))
    part = st.sampled_from(pool)
    key = part if width == 0 else st.tuples(*[part] * width)
    sizes = st.one_of(st.integers(0, 5), st.integers(_VECTOR_MIN, _VECTOR_MIN + 60))
    return draw(st.lists(sizes.flatmap(lambda n: st.lists(key, min_size=n, max_size=n)),
                         min_size=1, max_size=4))  # fmt: skip


def as_given(batch: list[Any], columns: bool) -> Any:
    """A batch as a list of keys, or (where it can be) as canonical columns."""
    if columns:
        found = key_columns(batch)
        if found is not None:
            return found
    return batch


def assert_same(index: KeyIndex, reference: ReferenceKeyIndex) -> None:
    assert len(index) == len(reference.keys)
    assert repr(index.keys) == repr(reference.keys)  # values AND types (True is not 1)
    assert index.hashes.tolist() == reference.hashes
    assert len(set(reference.hashes)) == len(reference.hashes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_batches(), st.lists(st.booleans(), min_size=4, max_size=4))
def test_same_ids_keys_and_hashes_as_the_value_by_value_index(
    batches: list[list[Any]], columns: list[bool]
) -> None:
    index, reference = KeyIndex(), ReferenceKeyIndex()
    for batch, as_columns in zip(batches, columns, strict=False):
        try:
            expected = reference.ids(batch)
        except SchemaError:
            with pytest.raises(SchemaError):
                index.ids(as_given(batch, as_columns))
            return
        assert index.ids(as_given(batch, as_columns)).tolist() == expected
        assert_same(index, reference)
        copy = index.copy()
        assert copy.ids(batch).tolist() == expected  # a copy finds every key
        assert_same(index, reference)  # and changes nothing in the original


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_batches(), st.lists(st.booleans(), min_size=4, max_size=4))
def test_colliding_hashes_are_found_and_moved_as_before(
    monkeypatch_batches: list[list[Any]], columns: list[bool]
) -> None:
    """With 2-bit hashes every batch collides: the index must still tell keys apart (by
    their identity) and move the newcomers' hashes exactly as the reference does."""
    real, real_columns = key_hash, key_hashes
    tiny = lambda identity: real(identity) & 3  # noqa: E731

    def tiny_columns(keys: KeyColumns) -> Any:
        return real_columns(keys) & np.uint64(3)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_key_index, "key_hash", tiny)
        patch.setattr(_key_index, "_LOOKUP_HASH", tiny)
        patch.setattr(_key_index, "key_hashes", tiny_columns)
        index, reference = KeyIndex(), ReferenceKeyIndex(tiny)
        for batch, as_columns in zip(monkeypatch_batches, columns, strict=False):
            try:
                expected = reference.ids(batch)
            except SchemaError:
                return
            assert index.ids(as_given(batch, as_columns)).tolist() == expected
            assert_same(index, reference)


def test_the_columnar_path_runs_and_agrees_on_a_large_batch() -> None:
    keys = [(i, f"k{i % 7}") for i in range(5_000)] + [(i, f"k{i % 7}") for i in range(50)]
    columns = key_columns(keys)
    assert columns is not None
    assert columns.parts[0].dtype == np.int64  # whole columns, no objects
    index, reference = KeyIndex(), ReferenceKeyIndex()
    assert index._ids_vectorised(columns) is not None  # no collision: the fast path decides
    index = KeyIndex()
    assert index.ids(columns).tolist() == reference.ids(keys)
    assert_same(index, reference)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (np.array([3, -1, 2**62]), np.int64),
        (np.array([3.0, -1.0, np.nan]), np.int64),
        (np.array([True, False]), np.bool_),
        (np.array(["a", "é"], dtype=object), np.object_),
        (np.array([1, 2**63], dtype=np.uint64), np.object_),
        (np.array([0.5, 1.0]), np.object_),
    ],
)
def test_whole_columns_canonicalise_as_value_by_value(values: Any, dtype: Any) -> None:
    canonical, missing = canonical_keys(values, column="k")
    assert canonical.dtype == dtype
    expected = [_identity.canonical_key(v, column="k") for v in values.tolist()]
    got = [None if m else v for v, m in zip(canonical.tolist(), missing.tolist(), strict=True)]
    assert repr(got) == repr(expected)


def test_release_with_many_public_partitions_matches_small_batches() -> None:
    """The same events and public partitions released through whole columns and through
    batches too small for them give the same table."""
    rng = np.random.default_rng(3)
    keys = np.array([f"p{i}" for i in range(400)], dtype=object)
    events = {"user": rng.integers(0, 50, 2_000), "key": keys[rng.integers(0, 400, 2_000)]}
    policy = tm.Policy(privacy_unit="user", max_partitions=3)
    query: dict[str, Any] = {"by": "key", "metrics": [tm.count()], "policy": policy}
    whole = tm.aggregate(events, partitions=keys, epsilon=1.0, randomness=seeded(5), **query)
    agg = tm.Aggregator(policy=query["policy"], by="key", metrics=query["metrics"],
                        partitions=list(keys), randomness=seeded(5))  # fmt: skip
    for lo in range(0, 2_000, 40):  # batches of 40 events: fewer than 64 distinct keys
        agg.add({c: v[lo : lo + 40] for c, v in events.items()})
    pieces = agg.release(epsilon=1.0)
    assert whole.to_dict()["key"].tolist() == pieces.to_dict()["key"].tolist() == keys.tolist()
    assert whole.to_dict()["count"].tolist() == pieces.to_dict()["count"].tolist()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(-60, 60), min_size=_VECTOR_MIN - 1, max_size=_VECTOR_MIN + 9, unique=True),
    st.sampled_from([None, 0, -1]),
    st.booleans(),
    st.sampled_from([0, 2**62]),
    key_batches(width=0),
)
def test_first_integers_without_a_sort_as_the_value_by_value_index(
    first: list[int], repeated: int | None, single: bool, offset: int, later: list[list[Any]]
) -> None:
    """An empty index given integers of a narrow range registers them without sorting
    (the hash-sorted arrays are built on first need): same ids, keys and hashes as the
    reference, then and after any later batches; a value listed twice (``repeated``: the
    first or last again) takes the general path."""
    if repeated is not None:
        first = [*first, first[repeated]]
    values = np.array(first, dtype=np.int64) + np.int64(offset)
    keys = KeyColumns((values,), single=single)
    index, reference = KeyIndex(), ReferenceKeyIndex()
    expected = reference.ids(keys.tolist())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_key_index, "_SORTED_QUERIES", 1)
        assert index.ids(keys).tolist() == expected
        vectorised = len(first) >= _VECTOR_MIN  # fewer keys go value by value
        assert (index._sorted is None) == (vectorised and repeated is None)  # sorted: none
        assert_same(index, reference)
        assert index.lookup(keys).tolist() == expected
        for batch in later:
            if len(batch) and not single:
                batch = [(k,) for k in batch]
            try:
                expected = reference.ids(batch)
            except SchemaError:
                return
            assert index.ids(batch).tolist() == expected
            assert_same(index, reference)
