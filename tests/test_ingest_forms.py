"""Hostile or unusual input (issue 10): every input form, weird values, never a raw error.

Each input is either refused with a telemagg error naming the column (before any ledger
charge) or released correctly: no NaN or infinity in a count column, no raw Python,
numpy, pandas, polars or pyarrow exception.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

import telemagg as tm
from telemagg.errors import SchemaError
from telemagg.testing import seeded

WEIRD = [
    0, -1, 42, 2**53 + 1, 2**62 + 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64 + 5,
    -(2**70), 0.0, -0.0, 0.5, 42.0, 1e20, float("nan"), float("inf"), -float("inf"),
    "", "42", "042", "a", "é", "\ud800", "a\x00b", " 42", None, True, False, b"raw",
    Decimal(7), Decimal("1.5"), dt.datetime(2026, 1, 1), pd.Timestamp("2026-01-01"),
    {"a": 1}, [1, 2],
]  # fmt: skip
FORMS = [
    "mapping", "mapping_object", "rows", "pandas", "pandas_object", "pandas_nullable",
    "pandas_categorical", "polars", "pyarrow", "pyarrow_chunked", "pyarrow_dictionary",
]  # fmt: skip
COLUMNS = ("user", "event", "value")


def column_values(kind: str) -> st.SearchStrategy[list[Any]]:
    """A column: homogeneous (the way real columns are) or a mix of weird values."""
    return {
        "ints": st.lists(st.one_of(st.integers(-3, 3), st.sampled_from(WEIRD[:10]))),
        "nullable_ints": st.lists(st.one_of(st.integers(-3, 3), st.none(), st.just(2**62 + 1))),
        "floats": st.lists(st.one_of(st.floats(), st.integers(-3, 3).map(float))),
        "strings": st.lists(st.one_of(st.sampled_from(["a", "b", "42", ""]), st.text(max_size=3))),
        "mixed": st.lists(st.sampled_from(WEIRD)),
    }[kind]


@st.composite
def events(draw: st.DrawFn) -> dict[str, list[Any]]:
    n = draw(st.integers(1, 12))
    out = {}
    for name in COLUMNS:
        kind = draw(st.sampled_from(["ints", "nullable_ints", "floats", "strings", "mixed"]))
        values = draw(column_values(kind).filter(lambda v: len(v) >= 1))
        out[name] = [values[i % len(values)] for i in range(n)]
    return out


def object_array(values: list[Any]) -> np.ndarray[Any, Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def build(form: str, columns: dict[str, list[Any]]) -> Any:
    """``columns`` in the given input form; the library's own refusal is not our test."""
    try:
        if form == "mapping":
            return {k: np.asarray(v) for k, v in columns.items()}
        if form == "mapping_object":
            return {k: object_array(v) for k, v in columns.items()}
        if form == "rows":
            n = len(columns["user"])
            return [{k: v[i] for k, v in columns.items()} for i in range(n)]
        if form == "pandas":
            return pd.DataFrame(columns)
        if form == "pandas_object":
            series = {k: pd.Series(object_array(v), dtype=object) for k, v in columns.items()}
            return pd.DataFrame(series)
        if form == "pandas_nullable":
            return pd.DataFrame(columns).convert_dtypes()
        if form == "pandas_categorical":
            return pd.DataFrame(columns).astype({"event": "category", "user": "category"})
        if form == "polars":
            return pl.DataFrame(columns, strict=False)
        table = pa.table(columns)
        if form == "pyarrow":
            return table
        if form == "pyarrow_chunked":
            half = table.num_rows // 2
            return pa.concat_tables([table.slice(0, half), table.slice(half)])
        if form == "pyarrow_dictionary":
            return table.set_column(1, "event", table.column("event").dictionary_encode())
    except Exception:
        reject()
    raise AssertionError(form)


def check_release(events: Any, partitions: Any) -> None:
    message = ""
    try:
        release = tm.aggregate(
            events,
            by="event",
            metrics=[tm.count(), tm.unit_count(), tm.sum("value", bounds=(0, 10))],
            policy=tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=2),
            epsilon=1.0,
            delta=1e-6 if partitions is None else 0.0,
            partitions=partitions,
            randomness=seeded(5),
        )
    except tm.TelemaggError as error:
        message = str(error)
        event(f"refused: {type(error).__name__}")
    if message:
        assert any(repr(c) in message for c in COLUMNS), message  # names the column
        return
    event("released")
    table = release.to_dict()
    for name in ("count", "unit_count", "sum_value"):
        assert np.isfinite(table[name].astype(np.float64)).all(), name
    assert len(table["event"]) == len(release)
    release.to_pandas()


@settings(
    max_examples=int(os.environ.get("TELEMAGG_SWEEP_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(events(), st.sampled_from(FORMS), st.booleans())
def test_every_input_form_gives_a_release_or_a_telemagg_error(
    columns: dict[str, list[Any]], form: str, public: bool
) -> None:
    partitions = [v for v in columns["event"][:3] if isinstance(v, str | int)] if public else None
    if public and not partitions:
        partitions = ["a"]
    if partitions is not None:
        partitions = list(dict.fromkeys(p for p in partitions if not isinstance(p, bool)))
        partitions = partitions or ["a"]
    check_release(build(form, columns), partitions)


# --------------------------------------------------------------------------- regressions


def test_duplicate_column_names_are_named() -> None:
    frame = pd.DataFrame([[1, "a", 1.0, 2.0]], columns=["user", "event", "value", "value"])
    with pytest.raises(SchemaError, match="column 'value' appears 2 times"):
        check_or_raise(frame)


def check_or_raise(events: Any) -> tm.Release:
    return tm.aggregate(
        events,
        by="event",
        metrics=[tm.count(), tm.sum("value", bounds=(0, 10))],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=1.0,
        partitions=["a", "b"],
        randomness=seeded(1),
    )


@pytest.mark.parametrize(
    "dtype", [pl.Categorical, pl.Enum(["b", "a", "c"])], ids=["categorical", "enum"]
)
def test_polars_categorical_and_enum_columns_on_polars_1_and_2(dtype: Any) -> None:
    frame = pl.DataFrame(
        {
            "user": [1, 2, 3, 4],
            "event": pl.Series(["a", "b", None, "a"], dtype=dtype),
            "value": [1.0, 2.0, 3.0, 4.0],
        }
    )
    plain = frame.with_columns(pl.col("event").cast(pl.String))
    got, expected = check_or_raise(frame), check_or_raise(plain)
    assert got.to_dict()["event"].tolist() == expected.to_dict()["event"].tolist()
    assert got.to_dict()["count"].tolist() == expected.to_dict()["count"].tolist()


def test_polars_struct_columns_are_schema_errors_and_int128_works() -> None:
    struct = pl.DataFrame({"user": [1], "event": [{"x": 1}], "value": [1.0]})
    with pytest.raises(SchemaError, match=r"column 'event' has type Struct"):
        check_or_raise(struct)
    wide = pl.DataFrame(
        {
            "user": pl.Series([2**100, 2**100 + 1, None], dtype=pl.Int128),
            "event": ["a", "a", "a"],
            "value": pl.Series([1, 2, 3], dtype=pl.Int128),
        }
    )
    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="user", max_contributions=1),
        by="event",
        metrics=[tm.count()],
        randomness=seeded(1),
    )
    agg.add(wide)
    assert len(agg._state) == 2  # two distinct 128-bit units, the null one dropped


@pytest.mark.parametrize("column", ["user", "event", "value"])
def test_two_to_the_63_in_any_column_is_handled(column: str) -> None:
    rows = [{"user": 1, "event": "a", "value": 1.0}, {"user": 2, "event": "b", "value": 2.0}]
    rows[0][column] = 2**63
    partitions = ["a", "b", 2**63] if column == "event" else ["a", "b"]
    release = tm.aggregate(
        rows,
        by="event",
        metrics=[tm.count(), tm.sum("value", bounds=(0, 10))],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=1.0,
        partitions=partitions,
        randomness=seeded(1),
    )
    assert release.to_dict()["event"].tolist() == partitions


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_consent_refuses_ids_the_store_cannot_hold_on_every_backend(
    bad: str, store_url: str
) -> None:
    registry = tm.ConsentRegistry(store_url)
    with pytest.raises(SchemaError, match=r"units\[1\] is a str: .*(NUL|surrogates)"):
        registry.opt_out(["ok", bad], purpose="model_training")
    with pytest.raises(SchemaError, match=r"units\[0\] is a str"):
        registry.allowed([bad], purpose="model_training")
    registry.opt_out(["ok"], purpose="model_training")
    assert registry.allowed(["ok", "a"], purpose="model_training").tolist() == [False, True]
    # the aggregation path refuses the same ids, naming the column
    with pytest.raises(SchemaError, match="column 'user'"):
        tm.aggregate(
            {"user": object_array([bad, "ok"]), "event": ["a", "a"]},
            by="event",
            metrics=[tm.count()],
            policy=tm.Policy(privacy_unit="user"),
            epsilon=1.0,
            partitions=["a"],
            consent=registry,
            purpose="model_training",
            randomness=seeded(1),
        )


@settings(max_examples=60, deadline=None)
@given(
    low=st.sampled_from([0, -(2**63), 2**63 - 2**20, 7]),
    width=st.integers(1, 300_000),
    dtype=st.sampled_from([np.int64, np.int32, np.uint64, np.uint8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_integer_keys_factorized_by_counting_match_pandas(
    low: int, width: int, dtype: Any, seed: int
) -> None:
    """The counting path (narrow integer ranges) gives every value back and the same
    grouping as pandas' hash factorize; wide or out-of-dtype ranges take pandas' path."""
    from telemagg._ingest import _MANY, factorize

    info = np.iinfo(dtype)
    low = min(max(low, int(info.min)), int(info.max))
    high = min(low + width, int(info.max))
    values = np.random.default_rng(seed).integers(low, high, _MANY + 1, endpoint=True)
    values = values.astype(dtype)
    enc = factorize(values)
    np.testing.assert_array_equal(enc.uniques[enc.codes], values)
    assert len(set(enc.uniques.tolist())) == enc.uniques.size
    codes, _ = pd.factorize(values)
    pairs = set(zip(enc.codes.tolist(), codes.tolist(), strict=True))
    assert len(pairs) == enc.uniques.size  # one pandas code per code, and back
