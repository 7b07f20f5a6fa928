"""One unit, one identity; one key, one identity; one canonical row order (issue 9, holes 4-6).

Each hole is tested on neighbouring inputs or on the same data typed differently: the
release (seeded), the bounded state and the accounting must not change with the typing,
the batching, the shard an event arrives on, or the arrival order.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.strategies import ID_CHARACTERS

import telemagg as tm
from telemagg import _identity, _key_index
from telemagg._identity import (
    canonical_unit,
    factorize_ids,
    key_identity,
    key_order,
    unit_hash,
)
from telemagg._key_index import KeyIndex
from telemagg.errors import ConfigError, SchemaError
from telemagg.testing import seeded

METRICS = [tm.count(), tm.unit_count(), tm.sum("value", bounds=(0, 10))]

# Ids whose float64 images collide (beyond 2**53) or sit at the edges of int64.
BIG_IDS = [2**62 + 1, 2**62 + 2, 2**53 + 1, 2**63 - 1, -(2**63), 7, 0, -5]


def typings(value: int) -> list[Any]:
    """Every way one integer id may arrive."""
    forms: list[Any] = [value, str(value)]
    if abs(value) < 2**53:
        forms.append(float(value))
    if -(2**63) <= value < 2**63:
        forms.append(np.int64(value))
    if 0 <= value < 2**31:
        forms.append(np.int32(value))
    return forms


def state_of(agg: tm.Aggregator) -> tuple[Any, ...]:
    """The bounded state, as comparable arrays (white-box)."""
    s = agg._state
    return (
        s.unit_id.tolist(),
        s.partition.tolist(),
        s.pair_key.tolist(),
        s.numeric["value"].tolist(),
        s.received,
        dict(s.dropped),
    )


def release_of(agg: tm.Aggregator, partitions: Any = ("a", "b", "c")) -> dict[str, list[Any]]:
    table = agg.release(epsilon=1.0, partitions=list(partitions))
    return {k: v.tolist() for k, v in table.to_dict().items()}


def aggregator(seed: int = 3, max_partitions: int = 1, max_contributions: int = 1) -> Any:
    policy = tm.Policy(
        privacy_unit="user", max_partitions=max_partitions, max_contributions=max_contributions
    )
    return tm.Aggregator(policy=policy, by="event", metrics=METRICS, randomness=seeded(seed))


@st.composite
def typed_events(draw: st.DrawFn) -> tuple[list[int], list[Any], list[str], list[float], list[int]]:
    """Events with integer ids, the same ids typed at random, keys, values, batch cuts."""
    n = draw(st.integers(1, 40))
    ids = draw(st.lists(st.sampled_from(BIG_IDS), min_size=n, max_size=n))
    typed = [draw(st.sampled_from(typings(i))) for i in ids]
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    values = draw(st.lists(st.floats(0, 10), min_size=n, max_size=n))
    cuts = sorted(draw(st.lists(st.integers(1, n), max_size=3, unique=True)))
    return ids, typed, keys, values, cuts


def batches(ids: list[Any], keys: list[str], values: list[float], cuts: list[int]) -> Iterator[Any]:
    bounds = [0, *cuts, len(ids)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            column = np.empty(hi - lo, dtype=object)
            column[:] = ids[lo:hi]
            yield {"user": column, "event": keys[lo:hi], "value": values[lo:hi]}


# --------------------------------------------------------------------------- hole 4: units


@settings(max_examples=60, deadline=None)
@given(typed_events())
def test_any_typing_of_the_same_ids_gives_the_same_state_and_release(
    events: tuple[list[int], list[Any], list[str], list[float], list[int]],
) -> None:
    ids, typed, keys, values, cuts = events
    plain, mixed = aggregator(), aggregator()
    for batch in batches(ids, keys, values, cuts):  # 42 in one add ...
        plain.add(batch)
    for batch in batches(typed, keys, values, cuts):  # ... "42" in the next
        mixed.add(batch)
    assert state_of(mixed) == state_of(plain)
    assert release_of(mixed) == release_of(plain)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_events())
def test_shards_typing_one_unit_differently_merge_into_one_unit(
    events: tuple[list[int], list[Any], list[str], list[float], list[int]],
) -> None:
    ids, typed, keys, values, cuts = events
    plain, mixed = aggregator(), aggregator()
    plain_shards = [plain.spawn() for _ in range(len(cuts) + 1)]
    mixed_shards = [mixed.spawn() for _ in range(len(cuts) + 1)]
    for shard, batch in zip(plain_shards, batches(ids, keys, values, cuts), strict=False):
        shard.add(batch)
    for shard, batch in zip(mixed_shards, batches(typed, keys, values, cuts), strict=False):
        shard.add(batch)
    plain.merge(*plain_shards)
    mixed.merge(*mixed_shards)
    assert state_of(mixed) == state_of(plain)
    assert release_of(mixed) == release_of(plain)
    # bounding is global: no unit in more than max_partitions=1 partition
    units = mixed._state.unit_id
    assert len(set(zip(units.tolist(), mixed._state.partition.tolist(), strict=True))) == len(
        set(units.tolist())
    )


def nullable_frames(ids: list[int | None]) -> list[Any]:
    """One integer id column with a null, in every library's nullable form."""
    data = {"event": ["a"] * len(ids), "value": [1.0] * len(ids)}
    return [
        pd.DataFrame({"user": pd.array(ids, dtype="Int64"), **data}),
        pl.DataFrame({"user": ids, **data}, schema_overrides={"user": pl.Int64}),
        pa.table({"user": pa.array(ids, type=pa.int64()), **data}),
        pa.table({"user": pa.chunked_array([ids[:2], ids[2:]], type=pa.int64()), **data}),
        [{"user": u, **{k: v[0] for k, v in data.items()}} for u in ids],
        {"user": ids, **data},
    ]


def test_nullable_integer_ids_never_pass_through_float64() -> None:
    ids: list[int | None] = [2**62 + 1, 2**62 + 2, None, 2**62 + 1, 2**62 + 2]
    # float64 would merge 2**62+1 and 2**62+2 into one unit and keep 2 events, not 4
    reference = aggregator(max_contributions=2)
    plain = np.array([2**62 + 1, 2**62 + 2, 2**62 + 1, 2**62 + 2])
    reference.add({"user": plain, "event": ["a"] * 4, "value": [1.0] * 4})
    for frame in nullable_frames(ids):
        agg = aggregator(max_contributions=2)
        agg.add(frame)
        assert len(agg._state) == 4, type(frame)
        assert sorted(agg._state.unit_id.tolist()) == sorted(reference._state.unit_id.tolist())
        assert agg._state.dropped["missing_privacy_unit"] == 1


@pytest.mark.parametrize("ids", [[1e20, 2e20, 3e20], [0.5], [2.0**53], [float("inf")]])
def test_float_ids_that_are_no_exact_integers_are_refused(ids: list[float]) -> None:
    agg = aggregator()
    for events in ({"user": np.array(ids), "event": ["a"] * len(ids), "value": [1.0] * len(ids)},
                   [{"user": u, "event": "a", "value": 1.0} for u in ids],
                   pd.DataFrame({"user": ids, "event": "a", "value": 1.0})):  # fmt: skip
        with pytest.raises(SchemaError, match=r"column 'user' .*exact integers below 2\*\*53"):
            agg.add(events)
    with pytest.raises(SchemaError) as caught:
        agg.add({"user": np.array([1e20]), "event": ["a"], "value": [1.0]})
    assert "1e+20" not in str(caught.value)  # ids are personal data: never in a message
    assert "100000000000000000000" not in str(caught.value)


def test_ids_beyond_64_bits_are_units_hashed_by_their_decimal_form() -> None:
    ids = [2**63, 2**64 + 5, 5, -(2**70)]
    agg = aggregator(max_partitions=3, max_contributions=3)
    agg.add([{"user": u, "event": "a", "value": 1.0} for u in ids])
    agg.add([{"user": str(u), "event": "a", "value": 1.0} for u in ids])
    assert len(set(agg._state.unit_id.tolist())) == 4  # 4 units, each seen twice
    assert len(agg._state) == 8
    agg.add({"user": np.array([2**63], dtype=np.uint64), "event": ["a"], "value": [1.0]})
    assert len(set(agg._state.unit_id.tolist())) == 4
    assert unit_hash(2**64 + 5) != unit_hash(5)


def test_uuids_and_their_canonical_strings_are_one_unit() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert canonical_unit(u) == str(u)
    assert unit_hash(u) == unit_hash(str(u))
    assert factorize_ids([u, str(u)]).distinct == [str(u)]
    agg = aggregator(max_contributions=1)
    agg.add({"user": [u, str(u)], "event": ["a", "a"], "value": [1.0, 1.0]})
    assert len(agg._state) == 1


ids_of_any_type = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-(2**53) + 1, 2**53 - 1).map(float),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(-(2**70), 2**70).map(str),
    st.text(ID_CHARACTERS, max_size=5),
    st.uuids(),
)


@settings(max_examples=300, deadline=None)
@given(ids_of_any_type, ids_of_any_type)
def test_bounding_consent_and_pseudonyms_agree_on_the_same_unit(a: Any, b: Any) -> None:
    """One definition: the bounding hash is equal exactly when the canonical forms are."""
    same = canonical_unit(a) == canonical_unit(b)
    assert same == (factorize_ids([a, b]).codes.tolist() == [0, 0])
    assert (unit_hash(a) == unit_hash(b)) == same
    key = bytes(range(16))
    pseudonyms = tm.pseudonymize([a, b], key=key)
    assert (pseudonyms[0] == pseudonyms[1]) == same


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800", True, b"raw", {"a": 1}, [1]])
def test_values_that_are_no_ids_are_schema_errors_naming_the_column(bad: Any) -> None:
    agg = aggregator()
    column = np.empty(2, dtype=object)
    column[:] = [bad, "x"]
    with pytest.raises(SchemaError, match="column 'user'"):
        agg.add({"user": column, "event": ["a", "a"], "value": [1.0, 1.0]})
    frame = pd.DataFrame({"user": pd.Series(column, dtype=object), "event": ["a", "a"]})
    with pytest.raises(SchemaError, match="column 'user'"):
        agg.add(frame.assign(value=1.0))


# --------------------------------------------------------------------------- hole 5: keys


def unit_partitions(agg: tm.Aggregator) -> int:
    """The most partitions any one unit holds rows in (white-box)."""
    s = agg._state
    pairs = set(zip(s.unit_id.tolist(), s.partition.tolist(), strict=True))
    per_unit: dict[int, int] = {}
    for unit, _ in pairs:
        per_unit[unit] = per_unit.get(unit, 0) + 1
    return max(per_unit.values(), default=0)


def test_keys_whose_64_bit_images_coincide_never_share_a_bounding_slot() -> None:
    keys = [5 + k * 2**64 for k in range(4)]
    agg = aggregator(max_partitions=1)
    agg.add([{"user": 1, "event": k, "value": 1.0} for k in keys])
    assert len(agg._partitions) == 4
    assert len(set(agg._partitions.hashes.tolist())) == 4
    assert unit_partitions(agg) == 1
    released = agg.release(epsilon=1.0, partitions=keys)
    assert released.to_dict()["event"].tolist() == keys  # big keys released exactly


def test_colliding_key_hashes_are_rehashed_deterministically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_key_index, "key_hash", lambda identity: 12345)
    index = KeyIndex()
    index.ids([("a",), ("b",), ("c",), ("a",)])
    assert index.hashes.tolist()[0] == 12345  # the patched hash is the one in use
    assert len(set(index.hashes.tolist())) == 3
    again = KeyIndex()
    again.ids([("a",), ("b",), ("c",)])
    assert again.hashes.tolist() == index.hashes.tolist()
    agg = aggregator(max_partitions=1)
    agg.add({"user": [1, 1, 1], "event": ["a", "b", "c"], "value": [1.0] * 3})
    assert unit_partitions(agg) == 1


EQUAL_KEYS = [
    (7, Decimal(7), 7.0, np.int64(7), np.uint8(7), Decimal("7.000")),
    (pd.Timestamp("2026-01-02 03:04:05"), dt.datetime(2026, 1, 2, 3, 4, 5),
     np.datetime64("2026-01-02T03:04:05")),
    (pd.Timestamp("2026-01-02 03:04:05", tz="UTC"), pd.Timestamp("2026-01-02 03:04:05"),
     dt.datetime(2026, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))),
    ("x", np.str_("x")),
    (uuid.UUID(int=5), str(uuid.UUID(int=5))),
    (1.5, Decimal("1.5"), np.float32(1.5)),
]  # fmt: skip


@pytest.mark.parametrize("equal", EQUAL_KEYS)
def test_equal_keys_of_different_types_are_one_key_across_shards(equal: tuple[Any, ...]) -> None:
    assert len({key_identity((k,)) for k in equal}) == 1
    agg = aggregator(max_partitions=1, max_contributions=1)
    shards = [agg.spawn() for _ in equal]
    for shard, key in zip(shards, equal, strict=True):
        column = np.empty(1, dtype=object)
        column[0] = key
        shard.add({"user": [1], "event": column, "value": [1.0]})
    agg.merge(*shards)
    assert len(agg._partitions) == 1
    assert len(agg._state) == 1  # one unit, one event in one partition


def test_booleans_are_not_the_numbers_one_and_zero() -> None:
    assert key_identity((True,)) != key_identity((1,))
    index = KeyIndex()
    assert index.ids([(True,), (1,), (1.0,), (False,), (0,)]).tolist() == [0, 1, 1, 2, 3]


key_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-100, 100).map(lambda i: 5 + i * 2**64),
    st.integers(-10, 10).map(lambda i: [i, float(i), Decimal(i), np.int64(i)][abs(i) % 4]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=3),
    st.booleans(),
    st.datetimes().map(pd.Timestamp),
    st.datetimes(),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(key_values, min_size=1, max_size=12), st.integers(1, 3))
def test_one_unit_with_max_partitions_1_is_never_in_two_partitions(
    keys: list[Any], n_shards: int
) -> None:
    agg = aggregator(max_partitions=1, max_contributions=1)
    shards = [agg.spawn() for _ in range(n_shards)]
    for i, key in enumerate(keys):
        column = np.empty(1, dtype=object)
        column[0] = key
        shards[i % n_shards].add({"user": [42 if i % 2 else "42"], "event": column, "value": [1.0]})
    agg.merge(*shards)
    assert len(agg._state) <= 1
    distinct = {key_identity((k,)) for k in keys}
    assert len(agg._partitions) == len(distinct)
    assert len(set(agg._partitions.hashes.tolist())) == len(distinct)


def test_merge_recomputes_pair_keys_from_the_receiving_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agg = aggregator(max_partitions=2, max_contributions=2)
    shard = agg.spawn()
    agg.add({"user": [1], "event": ["b"], "value": [1.0]})
    real = _identity.key_hash
    b = key_identity(("b",))

    def colliding(identity: Any) -> int:  # on the shard, "b" collides with "a" seen first
        return real(key_identity(("a",))) if identity == b else real(identity)

    monkeypatch.setattr(_key_index, "key_hash", colliding)
    shard.add({"user": [1, 2], "event": ["a", "b"], "value": [1.0, 1.0]})
    monkeypatch.undo()
    in_shard = shard._partitions.hashes[shard._partitions.find(("b",))]
    here = agg._partitions.hashes[agg._partitions.find(("b",))]
    assert in_shard != here  # the two indexes hash "b" differently
    agg.merge(shard)
    s = agg._state
    assert s.pair_key.tolist() == agg._pair_keys(s.unit_id, s.partition).tolist()
    # unit 1's "b" from here and from the shard: one pair key, one bounding slot
    pairs = set(zip(s.unit_id.tolist(), s.partition.tolist(), strict=True))
    assert len(pairs) == len(set(s.pair_key.tolist()))


@pytest.mark.parametrize("bad", [2**200, {"a": 1}, [1, 2], "\ud800", None])
def test_bad_public_partition_keys_fail_before_any_charge(bad: Any, tmp_path: Any) -> None:
    ledger = tm.Ledger(f"sqlite:///{tmp_path / 'l.db'}", epsilon=5.0, delta=0.0)
    agg = tm.Aggregator(policy=tm.Policy(privacy_unit="user"), by="event", metrics=[tm.count()])
    agg.add({"user": [1], "event": ["a"]})
    with pytest.raises(ConfigError, match="partitions"):
        agg.release(epsilon=1.0, partitions=[bad], ledger=ledger)
    assert ledger.spent[0] == 0.0
    with pytest.raises(ConfigError, match="partitions"):
        tm.aggregate({"user": [1], "event": ["a"]}, by="event", metrics=[tm.count()],
                     policy=tm.Policy(privacy_unit="user"), epsilon=1.0, partitions=[bad],
                     ledger=ledger)  # fmt: skip
    assert ledger.spent[0] == 0.0


@pytest.mark.parametrize("key", [2**63, 2**64 - 1, -(2**63), 2**100])
def test_public_keys_beyond_int64_are_released_exactly(key: int) -> None:
    release = tm.aggregate(
        {"user": [1], "event": np.array([key], dtype=object)}, by="event",
        metrics=[tm.count()], policy=tm.Policy(privacy_unit="user"), epsilon=1.0,
        partitions=[key, 0], randomness=seeded(1),
    )  # fmt: skip
    assert release.to_dict()["event"].tolist() == [key, 0]
    assert release.to_pandas()["event"].tolist() == [key, 0]


# --------------------------------------------------------------------------- hole 6: order


def busy_events(keys: list[Any], first: list[dict[str, Any]] | None = None) -> list[Any]:
    rows = [{"user": f"{k!r}-{u}", "event": k, "value": 1.0} for k in keys for u in range(80)]
    return (first or []) + rows


def test_row_order_does_not_reveal_arrival_order() -> None:
    keys: list[Any] = ["timeout", 404, 2.5, True, b"x", dt.date(2026, 1, 1)]
    query: dict[str, Any] = {"by": "event", "metrics": [tm.count()], "epsilon": 1.0,
                             "delta": 1e-6, "policy": tm.Policy(privacy_unit="user")}  # fmt: skip
    d = tm.aggregate(busy_events(keys), randomness=seeded(1), **query)
    # D': one extra unit arriving first, with a key that sorts last
    extra = [{"user": 999, "event": 404, "value": 1.0}]
    d2 = tm.aggregate(busy_events(keys[::-1], extra), randomness=seeded(1), **query)
    order = d.to_dict()["event"].tolist()
    assert sorted(map(repr, order)) == sorted(map(repr, keys))
    assert d2.to_dict()["event"].tolist() == order
    assert order == [True, 2.5, 404, "timeout", b"x", dt.date(2026, 1, 1)]


@settings(max_examples=100, deadline=None)
@given(st.lists(key_values, max_size=12), st.randoms())
def test_key_order_is_canonical_for_any_input_order(keys: list[Any], random: Any) -> None:
    tuples = [(k,) for k in keys]
    shuffled = list(tuples)
    random.shuffle(shuffled)
    first = [key_identity(tuples[i]) for i in key_order(tuples)]
    second = [key_identity(shuffled[i]) for i in key_order(shuffled)]
    assert first == second


# --------------------------------------------------------------------------- Dask parity


def kept_events(release: Any) -> int:
    """The operator's exact count of aggregated events, wherever this version keeps it."""
    accounting = getattr(release, "accounting", None)
    if accounting is None:
        accounting = release.metadata["events"]
    if isinstance(accounting, dict):
        return int(accounting["aggregated"])
    return int(accounting.aggregated)


@pytest.mark.slow
def test_dask_bounds_one_unit_typed_many_ways_as_the_local_engine_does() -> None:
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    import telemagg.dask as tm_dask

    # unit 42 typed 4 ways, one per Dask partition; two 64-bit ids a float64 would merge
    user = pd.Series([42, "42", 42.0, np.int64(42), 2**62 + 1, 2**62 + 2, 2**62 + 1, None],
                     dtype=object)  # fmt: skip
    frame = pd.DataFrame({"user": user, "event": ["a"] * 8, "value": [1.0] * 8})
    nullable = pd.DataFrame(
        {"user": pd.array([2**62 + 1, 2**62 + 2, None, 2**62 + 1], dtype="Int64"),
         "event": ["a"] * 4, "value": [1.0] * 4}
    )  # fmt: skip
    query: dict[str, Any] = {
        "by": "event", "metrics": [tm.count()], "epsilon": 1.0, "partitions": ["a"],
        "policy": tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=1),
    }  # fmt: skip
    dask = pytest.importorskip("dask")
    with (
        # Dask would otherwise turn the object column into strings itself ("42.0")
        dask.config.set({"dataframe.convert-string": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        for events, expected in ((frame, 3), (nullable, 2)):
            local = tm.aggregate(events, randomness=seeded(2), **query)
            on_dask = tm_dask.aggregate(
                dd.from_pandas(events, npartitions=4, sort=False), randomness=seeded(2), **query
            )
            assert kept_events(local) == kept_events(on_dask) == expected


@pytest.mark.parametrize("bad", [2**200, -(2**127), {"a": 1}, [1]])
def test_keys_the_encoding_cannot_hold_are_schema_errors_naming_the_column(bad: Any) -> None:
    agg = aggregator()
    with pytest.raises(SchemaError, match="column 'event'"):
        agg.add({"user": [1, 2], "event": object_array([bad, "a"]), "value": [1.0, 1.0]})
    assert agg._state.received == 0  # nothing absorbed


def object_array(values: list[Any]) -> np.ndarray[Any, Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


@pytest.mark.parametrize("equal", EQUAL_KEYS)
def test_released_key_values_do_not_depend_on_which_type_arrived_first(
    equal: tuple[Any, ...],
) -> None:
    released = []
    for first in equal:
        agg = aggregator(max_partitions=1)
        agg.add({"user": [1, 2], "event": object_array([first, equal[-1]]), "value": [1.0, 1.0]})
        released.append(agg.release(epsilon=1.0, partitions=[equal[0]]).to_dict()["event"][0])
        assert agg._partitions.keys == [(released[-1],)]
    assert len({repr(r) for r in released}) == 1


def test_timezone_aware_instants_are_one_key_in_every_input_form() -> None:
    aware = pd.Series(pd.to_datetime(["2026-01-02 04:04:05+01:00"] * 2, utc=True))
    forms = [
        pd.DataFrame({"user": [1, 2], "event": aware, "value": [1.0, 1.0]}),
        pl.DataFrame({"user": [1, 2], "event": aware.tolist(), "value": [1.0, 1.0]}),
        pa.table({"user": [1, 2], "event": pa.array(aware), "value": [1.0, 1.0]}),
        [{"user": u, "event": t, "value": 1.0} for u, t in zip([1, 2], aware, strict=True)],
    ]
    released = set()
    for events in forms:
        agg = aggregator()
        agg.add(events)
        assert len(agg._partitions) == 1, type(events)
        released.add(agg._partitions.keys[0][0])
    assert released == {pd.Timestamp("2026-01-02 03:04:05")}
