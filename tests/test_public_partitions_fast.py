"""The fast paths of public partitions against the paths they shortcut (issue 11).

* An Aggregator's partition index starts as its public index, so that a batch's keys are
  looked up once and their ids gathered: releases must equal those of an Aggregator whose
  index starts empty and takes every batch's keys through ``remap`` (the path before).
* ``KeyIndex.lookup`` finds keys held as the index's own objects by address and sorts
  large queries: it must agree with the reference index on fresh objects and shared ones.
* ``_text_hashes`` encodes all strings at once: the same hash as one BLAKE2b per string.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.test_key_index import ReferenceKeyIndex, key_batches

import telemagg as tm
from telemagg import _identity, _ingest
from telemagg._identity import KeyColumns, KeyIndex, _blake, _text_hashes, key_columns
from telemagg.errors import UntrackedReleaseWarning
from telemagg.testing import seeded


class EmptyIndexAggregator(tm.Aggregator):
    """An Aggregator whose partition index starts empty (as before the fast path)."""

    def _reset(self) -> None:
        super()._reset()
        self._partitions = KeyIndex()


@st.composite
def public_workloads(draw: st.DrawFn) -> tuple[Any, list[dict[str, Any]], int, int | None]:
    """Public partitions (int or str keys, in any order), batches of events over them and
    over unlisted keys, a seed, and which of the events' strings are objects of their own
    (one in every n, all for 0; None: all are the listed objects)."""
    as_text = draw(st.booleans())
    scale = draw(st.sampled_from([1, 10**15]))  # integers in a narrow range, or spread out
    size = draw(st.sampled_from([1, 7, 64, 90]))  # below and above _VECTOR_MIN
    listed = draw(st.lists(st.integers(-5, 200), min_size=size, max_size=size, unique=True))
    others = draw(st.lists(st.integers(201, 210), max_size=3))
    names = [f"p{k}" if as_text else k * scale for k in listed]
    pool = names + [f"p{k}" if as_text else k * scale for k in others]
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.sampled_from([0, 3, 60, 150]))
        picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n))
        values = draw(st.lists(st.floats(0, 10), min_size=n, max_size=n))
        users = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
        key = np.empty(n, dtype=object)
        key[:] = [pool[i] for i in picks]
        if not as_text:
            key = key.astype(np.int64)
        batches.append({"user": np.asarray(users, np.int64), "key": key, "value": values})
    partitions = np.empty(len(names), dtype=object)
    partitions[:] = names
    shared = draw(st.sampled_from([None, *range(4)]))  # None: every object shared
    return partitions, batches, draw(st.integers(0, 2**16)), shared


def fresh(values: Any, every: int) -> Any:
    """The same strings, one in ``every`` (all if 0) as a new object (no address shared
    with the listed keys)."""
    if values.dtype != object:
        return values
    out = values.copy()
    out[:: every or 1] = ["".join(list(v)) for v in values[:: every or 1].tolist()]
    return out


def released(cls: type[tm.Aggregator], partitions: Any, batches: list[dict[str, Any]],
             seed: int, shards: int) -> dict[str, list[Any]]:  # fmt: skip
    policy = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=2)
    metrics = [tm.count(), tm.sum("value", bounds=(0, 10))]
    agg = cls(policy=policy, by="key", metrics=metrics, partitions=partitions,
              randomness=seeded(seed))  # fmt: skip
    parts = [agg] + [agg.spawn() for _ in range(shards - 1)]
    for i, batch in enumerate(batches):
        parts[i % shards].add(batch)
    agg.merge(*parts[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrackedReleaseWarning)
        table = agg.release(epsilon=1.0).to_dict()
    return {c: np.asarray(v).tolist() for c, v in table.items()}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(public_workloads(), st.integers(1, 2), st.booleans())
def test_releases_equal_those_of_an_index_starting_empty(
    workload: tuple[Any, list[dict[str, Any]], int, int | None], shards: int, small: bool
) -> None:
    partitions, batches, seed, shared = workload
    if shared is not None:  # some or all strings as objects of their own
        batches = [{**b, "key": fresh(b["key"], shared)} for b in batches]
    with pytest.MonkeyPatch.context() as patch:
        if small:  # the sorted, by-address and table lookups on small batches too, and
            patch.setattr(_identity, "_SORTED_QUERIES", 1)  # the factorization of key
            patch.setattr(_ingest, "_MANY", 8)  # columns by object address
        got = released(tm.Aggregator, partitions, batches, seed, shards)
    expected = released(EmptyIndexAggregator, partitions, batches, seed, shards)
    assert got == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_batches(width=0), st.data())
def test_lookup_by_address_and_sorted_agrees_with_the_reference(
    batches: list[list[Any]], data: st.DataObject
) -> None:
    keys = [k for batch in batches for k in batch]
    reference = ReferenceKeyIndex()
    try:
        reference.ids(keys)
    except Exception:
        return
    index = KeyIndex()
    index.ids(keys)
    columns = index.columns
    if columns is None:
        return
    # Queries: the index's own objects (some), fresh equal values, and unlisted ones.
    own = data.draw(st.lists(st.integers(0, len(index) - 1), max_size=40))
    queried = [columns.parts[0][i] for i in own] + list(keys[:20]) + ["§new", 10**6]
    query = key_columns(queried)
    if query is None:
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_identity, "_SORTED_QUERIES", 1)
        got = index.lookup(query).tolist()
    expected = [reference._ids.get(_identity.key_identity(k), -1) for k in query.tolist()]
    assert got == expected


def test_lookup_finds_shared_objects_without_hashing_them() -> None:
    names = np.array([f"p{i}" for i in range(60_000)], dtype=object)
    index = KeyIndex()
    index.ids(KeyColumns((names,)))
    query = KeyColumns((names[::-3],))
    assert index.lookup(query).tolist() == list(range(59_999, -1, -3))
    assert not query._hashes  # found by address: no key was hashed


@given(st.lists(st.text(max_size=4).filter(lambda t: not any(
    "\ud800" <= c <= "\udfff" for c in t)), max_size=30))  # fmt: skip
def test_text_hashes_are_one_blake2b_per_string(items: list[str]) -> None:
    expected = [_blake(b"s:", t.encode("utf-8")) for t in items]  # NUL and "" included
    assert _text_hashes(items).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "ccc", None]), min_size=9, max_size=80), st.data())
def test_factorize_by_reference_keeps_every_value(pool: list[Any], data: st.DataObject) -> None:
    """Key columns factorized by object address: each event's value is its unique's;
    other columns (``distinct=True``) get exactly pandas' codes and uniques."""
    objects = {v: v for v in pool}  # one object per value...
    values = np.empty(len(pool), dtype=object)
    values[:] = [objects[v] for v in pool]
    fresh_at = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=5))
    for i in fresh_at:  # ...and some as objects of their own
        if values[i] is not None:
            values[i] = "".join(list(values[i]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_ingest, "_MANY", 8)
        keys = _ingest.factorize(values, distinct=False)
        other = _ingest.factorize(values)
    expected_codes, expected_uniques = pd.factorize(values, use_na_sentinel=True)
    assert other.codes.tolist() == expected_codes.tolist()
    assert other.uniques.tolist() == list(expected_uniques)
    got = [None if c < 0 else keys.uniques[c] for c in keys.codes.tolist()]
    assert got == values.tolist()


def test_a_pickled_index_forgets_the_addresses_of_its_objects() -> None:
    names = np.array([f"p{i}" for i in range(60_000)], dtype=object)
    index = KeyIndex()
    index.ids(KeyColumns((names,)))
    assert index.lookup(KeyColumns((names[::-3],)))[0] == 59_999  # addresses cached
    assert index._addresses is not None
    restored = pickle.loads(pickle.dumps(index))
    assert restored._addresses is None  # another process's objects: recomputed from its own
    query = np.array(["".join(list(v)) for v in names[::-3].tolist()], dtype=object)
    assert restored.lookup(KeyColumns((query,))).tolist() == list(range(59_999, -1, -3))
    del restored.__dict__["_dense"]  # as pickled before the cache existed
    again = pickle.loads(pickle.dumps(restored))
    assert again._dense is None
    assert again.lookup(KeyColumns((query,))).tolist() == list(range(59_999, -1, -3))
