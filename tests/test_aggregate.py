"""tm.aggregate / tm.Aggregator end to end: partitions, accounting, inputs, errors."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.releases import published
from tests.strategies import event_rows

import telemagg as tm
from telemagg.testing import seeded

POLICY = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3)
METRICS = [tm.count(), tm.unit_count(), tm.sum("value", bounds=(0, 100))]


def events(n_users: int = 300, per_user: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    return {
        "user": np.repeat(np.arange(n_users), per_user),
        "event": np.asarray(["open", "save", "share"], dtype=object)[rng.integers(0, 3, n)],
        "os": np.asarray(["linux", "macos"], dtype=object)[rng.integers(0, 2, n)],
        "value": rng.uniform(0, 100, n),
    }


def exact_counts(agg: tm.Aggregator) -> dict[tuple, float]:
    """Noise-free counts per partition from the bounded state (white-box)."""
    state = agg._state
    counts = np.bincount(state.partition, minlength=len(agg._partitions))
    return {agg._partitions.keys[i]: float(c) for i, c in enumerate(counts)}


# --------------------------------------------------------------------------- partitions


def test_public_partitions_are_released_in_order_with_absent_ones_as_noisy_zeros() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        partitions=["share", "open", "never-seen"],
        randomness=seeded(1),
    )
    table = release.to_pandas()
    assert table["event"].tolist() == ["share", "open", "never-seen"]
    assert list(table.columns) == ["event", "count", "unit_count", "sum_value"]
    assert table.loc[2, "count"] < 60  # noisy zero: Laplace scale 6 / 0.33 = 18 stddev ~25
    dropped = release.accounting.dropped
    assert dropped["not_public_partition"] > 0  # the unlisted "save" events


def test_private_selection_releases_busy_partitions_and_needs_delta() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        randomness=seeded(2),
    )
    assert sorted(release.to_pandas()["event"]) == ["open", "save", "share"]
    assert release.metadata["partitions"]["mechanism"]["mechanism"] == "laplace_threshold"
    with pytest.raises(tm.ConfigError, match="delta must be > 0"):
        tm.aggregate(events(), by="event", metrics=METRICS, policy=POLICY, epsilon=1.0)


def test_multi_column_by() -> None:
    release = tm.aggregate(
        events(),
        by=["event", "os"],
        metrics=[tm.count()],
        policy=POLICY,
        epsilon=2.0,
        delta=1e-6,
        randomness=seeded(3),
    )
    table = release.to_pandas()
    assert set(zip(table["event"], table["os"], strict=True)) == {
        (e, o) for e in ("open", "save", "share") for o in ("linux", "macos")
    }
    public = tm.aggregate(
        events(),
        by=["event", "os"],
        metrics=[tm.count()],
        policy=POLICY,
        epsilon=2.0,
        partitions=[("open", "linux"), ("open", "windows")],
        randomness=seeded(3),
    )
    assert public.to_pandas()["os"].tolist() == ["linux", "windows"]


def test_public_partitions_given_as_a_dataframe_and_validated() -> None:
    keys = pd.DataFrame({"event": ["open", "save"]})
    release = tm.aggregate(
        events(),
        by="event",
        metrics=[tm.count()],
        policy=POLICY,
        epsilon=1.0,
        partitions=keys,
        randomness=seeded(0),
    )
    assert release.to_pandas()["event"].tolist() == ["open", "save"]
    with pytest.raises(tm.ConfigError, match="listed twice"):
        tm.aggregate(
            events(),
            by="event",
            metrics=[tm.count()],
            policy=POLICY,
            epsilon=1.0,
            partitions=["open", "open"],
        )
    with pytest.raises(tm.ConfigError, match="one value per by column"):
        tm.aggregate(
            events(),
            by=["event", "os"],
            metrics=[tm.count()],
            policy=POLICY,
            epsilon=1.0,
            partitions=["open"],
        )


# --------------------------------------------------------------------------- accounting


def test_every_event_is_aggregated_or_dropped_under_a_reason() -> None:
    data = events()
    data["user"] = data["user"].astype(object)
    data["user"][:7] = None
    data["value"][10:15] = np.nan
    data["value"][15] = np.inf
    release = tm.aggregate(
        data,
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        randomness=seeded(4),
    )
    acc = release.accounting
    assert acc.received == data["user"].size
    assert acc.received == acc.aggregated + sum(acc.dropped.values())
    assert acc.dropped["missing_privacy_unit"] == 7
    assert "non_finite_value" not in acc.dropped  # a missing value drops no event
    assert 0 < acc.missing_values["sum_value"] <= 6  # some may fall to the bounds
    assert acc.dropped["contribution_bounds"] > 0
    assert not release.to_pandas().isna().any().any()


def test_metadata_is_json_and_describes_the_release() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        randomness=seeded(5),
    )
    meta = json.loads(json.dumps(release.metadata))
    assert meta["query"]["policy"]["max_partitions"] == 2
    assert meta["telemagg_version"]
    assert meta["seeded"] is True
    assert set(meta["metrics"]) == {"count", "unit_count", "sum_value"}
    assert meta["privacy"]["epsilon"] == meta["epsilon"] == release.epsilon <= 1.0
    assert meta["delta"] == release.delta
    assert meta["policy"] == {
        "privacy_unit": "user",
        "max_partitions": 2,
        "max_contributions": 3,
        "content_columns": [],
    }
    assert meta["privacy"]["delta"] == release.delta <= 1e-6


def test_metric_reports_follow_from_the_policy() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        partitions=["open"],
        randomness=seeded(6),
    )
    count = release.metrics["count"]
    # L1 sensitivity of counts: max_partitions * max_contributions = 2 * 3
    assert count.sensitivity == 6.0
    assert count.mechanism == "laplace"
    # three measurements share epsilon = 1 equally (public partitions: no selection share)
    assert math.isclose(count.epsilon, 1 / 3, rel_tol=1e-9)
    # discrete Laplace at scale b = 18: stddev sqrt(2r) / (1 - r), r = exp(-1 / b), within
    # 2e-4 of the continuous sqrt(2) b
    assert math.isclose(count.stddev, math.sqrt(2) * 6 / (1 / 3), rel_tol=1e-3)
    assert release.metrics["sum_value"].sensitivity == 2 * 3 * 100
    assert release.epsilon <= 1.0
    assert release.delta == 0.0


def test_gaussian_noise_is_accounted_in_zcdp() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        noise="gaussian",
        randomness=seeded(7),
    )
    assert release.metrics["count"].mechanism == "gaussian"
    assert release.metrics["count"].rho > 0
    assert release.loss.rho > 0
    assert release.epsilon <= 1.0 + 1e-9
    assert release.delta <= 1e-6 * (1 + 1e-9)
    # Gaussian noise uses the L2 sensitivity sqrt(L0) * Linf
    assert math.isclose(release.metrics["count"].sensitivity, math.sqrt(2) * 3)


# --------------------------------------------------------------------------- bounding


def test_a_heavy_unit_moves_counts_by_at_most_l0_times_linf() -> None:
    base = events()
    heavy = {
        "user": np.full(5000, 10_000),
        "event": np.asarray(["open", "save", "share"], dtype=object)[np.arange(5000) % 3],
        "os": np.full(5000, "linux", dtype=object),
        "value": np.full(5000, 50.0),
    }
    with_heavy = {k: np.concatenate([base[k], heavy[k]]) for k in base}
    a = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], randomness=seeded(8))
    a.add(base)
    b = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], randomness=seeded(8))
    b.add(with_heavy)
    before, after = exact_counts(a), exact_counts(b)
    moved = sum(abs(after[k] - before[k]) for k in before)
    assert 0 < moved <= POLICY.max_partitions * POLICY.max_contributions


@given(data=event_rows(), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_batching_and_merging_give_the_same_distribution_inputs(data, seed) -> None:
    """Split one input over add() calls and merged shards: every unit's kept events
    stay within its limits, and all events are accounted for."""
    n = data["user"].size
    cut = n // 3
    agg = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()], randomness=seeded(seed))
    agg.add({k: v[:cut] for k, v in data.items()})
    shard = agg.spawn()
    shard.add({k: v[cut:] for k, v in data.items()})
    agg.merge(pickle.loads(pickle.dumps(shard)))
    state = agg._state
    assert state.received == n
    assert len(state) + sum(state.dropped.values()) == n
    per_unit: dict[int, set[int]] = {}
    per_pair: dict[tuple[int, int], int] = {}
    for u, p in zip(state.unit_id.tolist(), state.partition.tolist(), strict=True):
        per_unit.setdefault(u, set()).add(p)
        per_pair[(u, p)] = per_pair.get((u, p), 0) + 1
    assert all(len(s) <= POLICY.max_partitions for s in per_unit.values())
    assert all(c <= POLICY.max_contributions for c in per_pair.values())


def test_merge_refuses_different_queries() -> None:
    a = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()])
    b = tm.Aggregator(policy=POLICY, by="os", metrics=[tm.count()])
    with pytest.raises(tm.ConfigError, match="different by"):
        a.merge(b)
    c = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.unit_count()])
    with pytest.raises(tm.ConfigError, match="different metrics"):
        a.merge(c)


# --------------------------------------------------------------------------- inputs


def _forms(data: dict[str, np.ndarray]):
    df = pd.DataFrame(data)
    rows = df.to_dict("records")
    return {
        "mapping": data,
        "pandas": df,
        "pandas_categorical": df.astype({"event": "category"}),
        "polars": pl.from_pandas(df),
        "arrow": pa.Table.from_pandas(df),
        "rows": rows,
    }


def test_every_input_form_gives_the_same_release() -> None:
    data = events(n_users=60)
    tables = []
    for form, value in _forms(data).items():
        release = tm.aggregate(
            value,
            by="event",
            metrics=METRICS,
            policy=POLICY,
            epsilon=1.0,
            delta=1e-6,
            randomness=seeded(9),
        )
        tables.append((form, release.to_pandas()))
    first = tables[0][1]
    for form, table in tables[1:]:
        pd.testing.assert_frame_equal(table, first, obj=form)


def test_empty_input() -> None:
    empty = {"user": np.zeros(0, np.int64), "event": np.zeros(0, object), "value": np.zeros(0)}
    private = tm.aggregate(
        empty, by="event", metrics=METRICS, policy=POLICY, epsilon=1.0, delta=1e-6
    )
    assert len(private) == 0
    public = tm.aggregate(
        empty,
        by="event",
        metrics=METRICS,
        policy=POLICY,
        epsilon=1.0,
        partitions=["open"],
        randomness=seeded(1),
    )
    assert public.to_pandas()["event"].tolist() == ["open"]
    assert public.accounting.to_dict() == {
        "received": 0,
        "aggregated": 0,
        "pending": 0,
        "dropped": {
            "contribution_bounds": 0,
            "missing_privacy_unit": 0,
            "not_public_partition": 0,
        },
        "missing_values": {"sum_value": 0},
    }


def test_string_units_and_missing_partition_keys() -> None:
    data = {"user": ["u1", "u2", "u2", "u3", None], "event": ["a", "a", None, "b", "a"]}
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.unit_count()],
        policy=POLICY,
        epsilon=1.0,
        partitions=["a", "b"],
        randomness=seeded(1),
    )
    dropped = release.accounting.dropped
    assert dropped["missing_privacy_unit"] == 1
    assert dropped["missing_partition_key"] == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0}, r"epsilon must be finite and > 0; got 0.0"),
        ({"epsilon": -1.0}, r"epsilon must be finite and > 0; got -1.0"),
        ({"epsilon": float("nan")}, r"epsilon must be finite and > 0; got nan"),
        ({"epsilon": float("inf")}, r"epsilon must be finite and > 0; got inf"),
        ({"delta": 1.0}, r"delta must be in \[0, 1\); got 1.0"),
        ({"delta": -1e-9}, r"delta must be in \[0, 1\)"),
        ({"metrics": []}, r"metrics must name at least one metric"),
        ({"metrics": ["count"]}, r"metrics must be telemagg metrics"),
        ({"by": []}, r"by must be one or more column names"),
        ({"by": ["user"]}, r"must not contain the privacy unit"),
    ],
)
def test_bad_parameters_name_the_parameter_rule_and_value(kwargs, message) -> None:
    args = {
        "by": "event",
        "metrics": METRICS,
        "policy": POLICY,
        "epsilon": 1.0,
        "delta": 1e-6,
        **kwargs,
    }
    with pytest.raises(tm.ConfigError, match=message):
        tm.aggregate(events(n_users=5), **args)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: tm.Policy(privacy_unit="u", max_partitions=0),
            "max_partitions must be an integer >= 1; got 0",
        ),
        (
            lambda: tm.Policy(privacy_unit="u", max_contributions=1.5),
            "max_contributions must be an integer >= 1; got 1.5",
        ),
        (lambda: tm.Policy(privacy_unit=""), "privacy_unit"),
        (lambda: tm.Policy(privacy_unit="u", bogus=1), "has no parameter 'bogus'"),
        (lambda: tm.sum("x", bounds=(1, 0)), r"bounds must satisfy lower < upper; got \(1, 0\)"),
        (lambda: tm.mean("x", bounds=(0, float("inf"))), "bounds must be finite"),
        (lambda: tm.count(name="not a column!"), "name must be a valid column name"),
    ],
)
def test_bad_declarations_fail_where_declared(make, message) -> None:
    with pytest.raises(tm.ConfigError, match=message):
        make()


def test_unknown_and_non_numeric_columns_are_schema_errors() -> None:
    with pytest.raises(tm.SchemaError, match="'nope' is not in the events"):
        tm.aggregate(events(), by="nope", metrics=METRICS, policy=POLICY, epsilon=1, delta=1e-6)
    with pytest.raises(tm.SchemaError, match="column 'event' must be numeric"):
        tm.aggregate(
            events(),
            by="os",
            metrics=[tm.sum("event", bounds=(0, 1))],
            policy=POLICY,
            epsilon=1,
            delta=1e-6,
        )
    with pytest.raises(tm.SchemaError, match="'user'"):
        tm.aggregate(
            {"event": ["a"]}, by="event", metrics=METRICS, policy=POLICY, epsilon=1, delta=1e-6
        )


def test_duplicate_metric_names_are_refused() -> None:
    with pytest.raises(tm.ConfigError, match="unique names"):
        tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count(), tm.count()])


# --------------------------------------------------------------------------- ledger


def test_release_is_charged_to_the_ledger_before_anything_is_released(store_url) -> None:
    ledger = tm.Ledger(store_url, epsilon=1.5, delta=1e-5)
    agg = tm.Aggregator(policy=POLICY, by="event", metrics=METRICS)
    agg.add(events())
    first = agg.release(1.0, 1e-6, ledger=ledger, label="hourly")
    assert ledger.spent[0] == pytest.approx(first.epsilon)
    assert first.metadata["ledger"]["charge"] == ledger.charges()[-1].seq
    assert ledger.charges()[-1].label == "hourly"
    assert ledger.charges()[-1].query["by"] == ["event"]
    with pytest.raises(tm.BudgetExceededError):
        agg.release(1.0, 1e-6, ledger=ledger)
    assert len(ledger.charges()) == 1  # the refused release recorded nothing
    ledger.verify()


def test_ledgers_refuse_seeded_releases(sqlite_url) -> None:
    ledger = tm.Ledger(sqlite_url, epsilon=1.0, delta=1e-5)
    with pytest.raises(tm.ConfigError, match="seeded"):
        tm.aggregate(
            events(),
            by="event",
            metrics=METRICS,
            policy=POLICY,
            epsilon=0.5,
            delta=1e-6,
            ledger=ledger,
            randomness=seeded(0),
        )
    assert ledger.charges() == []


def test_public_partitions_known_up_front_are_filtered_before_bounding() -> None:
    """A unit's max_partitions is not spent on keys that will not be released."""
    policy = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=1)
    data = {
        "user": np.repeat(np.arange(50), 4),
        "event": np.tile(np.asarray(["open", "x", "y", "z"], dtype=object), 50),
    }
    agg = tm.Aggregator(
        policy=policy, by="event", metrics=[tm.count()], partitions=["open"], randomness=seeded(3)
    )
    agg.add(data)
    kept = {k: v for k, v in exact_counts(agg).items() if v}
    assert kept == {("open",): 50.0}  # every unit kept its "open" event
    release = agg.release(1.0)
    assert release.accounting.dropped["not_public_partition"] == 150
    with pytest.raises(tm.ConfigError, match="among the Aggregator's partitions"):
        agg.release(1.0, partitions=["x"])


# --------------------------------------------------------------------------- consent


def test_opted_out_unit_has_no_influence_on_the_release(sqlite_url) -> None:
    """Events of a unit without consent are dropped before bounding: the release is the
    same as if the unit had never sent them (same seed, same output), and counted."""
    registry = tm.ConsentRegistry(sqlite_url)
    registry.opt_out(777_777, purpose="model_training")
    base = events()
    heavy = {
        "user": np.full(4000, 777_777),
        "event": np.asarray(["open", "save", "share"], dtype=object)[np.arange(4000) % 3],
        "os": np.full(4000, "linux", dtype=object),
        "value": np.full(4000, 99.0),
    }
    with_heavy = {k: np.concatenate([base[k], heavy[k]]) for k in base}
    kwargs = {
        "by": "event",
        "metrics": METRICS,
        "policy": POLICY,
        "epsilon": 1.0,
        "partitions": ["open", "save", "share"],
    }
    for seed in range(20):
        without = tm.aggregate(base, randomness=seeded(seed), **kwargs)
        released = tm.aggregate(
            with_heavy,
            consent=registry,
            purpose="model_training",
            randomness=seeded(seed),
            **kwargs,
        )
        pd.testing.assert_frame_equal(released.to_pandas(), without.to_pandas())
    assert released.accounting.dropped["consent"] == 4000
    registry.opt_in(777_777, purpose="model_training")  # opting back in restores the unit
    restored = tm.aggregate(
        with_heavy, consent=registry, purpose="model_training", randomness=seeded(0), **kwargs
    )
    assert restored.accounting.dropped["consent"] == 0


def test_content_columns_need_an_opt_in_purpose(sqlite_url) -> None:
    registry = tm.ConsentRegistry(sqlite_url)
    registry.declare("content_training", default="opt_in")
    policy = tm.Policy(privacy_unit="user", content_columns=("event",))
    with pytest.raises(tm.ConfigError, match=r"customer content .* opt-out"):
        tm.Aggregator(
            policy=policy,
            by="event",
            metrics=[tm.count()],
            consent=registry,
            purpose="model_training",
        )
    with pytest.raises(tm.ConfigError, match="needs consent="):
        tm.Aggregator(policy=policy, by="event", metrics=[tm.count()])
    registry.opt_in([1, 2], purpose="content_training")
    release = tm.aggregate(
        events(n_users=5),
        by="event",
        metrics=[tm.count()],
        policy=policy,
        consent=registry,
        purpose="content_training",
        epsilon=1.0,
        partitions=["open"],
        randomness=seeded(1),
    )
    assert release.accounting.dropped["consent"] == 15  # users 0, 3, 4


def test_metrics_with_nearby_bounds_never_share_a_measurement() -> None:
    """Measurement keys spell bounds exactly: 1234567 and 1234568 (the same to 6 digits)
    are two sums, each with its own clamping and sensitivity."""
    release = tm.aggregate(
        events(),
        by="event",
        metrics=[
            tm.sum("value", bounds=(0, 1_234_567), name="a"),
            tm.sum("value", bounds=(0, 1_234_568), name="b"),
        ],
        policy=POLICY,
        epsilon=1.0,
        partitions=["open"],
        randomness=seeded(1),
    )
    a, b = release.metrics["a"], release.metrics["b"]
    assert a.measurement != b.measurement
    assert (a.sensitivity, b.sensitivity) == (2 * 3 * 1_234_567, 2 * 3 * 1_234_568)
    assert math.isclose(a.epsilon, 0.5, rel_tol=1e-9)  # two measurements, not one


# --------------------------------------------------------------------------- publishable


def one_unit(unit: int, n: int, event: str) -> dict[str, np.ndarray]:
    return {
        "user": np.full(n, unit),
        "event": np.full(n, event, dtype=object),
        "os": np.full(n, "linux", dtype=object),
        "value": np.full(n, 99.0),
    }


def plus(base: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([base[k], extra[k]]) for k in base}


NEIGHBOURS = {
    # D' = D + one unit with 7 events, public partitions
    "seven_events": ({"partitions": ["open", "save", "share"]}, one_unit(10**6, 7, "open")),
    # D' = D + one unit alone in its partition: private selection must not reveal it
    "lone_partition": ({"delta": 1e-6}, one_unit(10**6, 7, "lonely")),
}


@pytest.mark.parametrize("case", sorted(NEIGHBOURS))
def test_neighbouring_inputs_publish_the_same_metadata(case: str, tmp_path) -> None:
    """D and D' = D + one unit: metadata, every export's metadata, repr, str and the
    schema are identical (the values differ only by calibrated noise); only the
    operator-side accounting tells them apart."""
    kwargs, extra = NEIGHBOURS[case]
    base = events()
    query = {"by": "event", "metrics": METRICS, "policy": POLICY, "epsilon": 1.0, **kwargs}
    d = tm.aggregate(base, randomness=seeded(3), **query)
    d_prime = tm.aggregate(plus(base, extra), randomness=seeded(3), **query)
    assert published(d, tmp_path) == published(d_prime, tmp_path)
    assert d_prime.accounting.received == d.accounting.received + 7
    if case == "lone_partition":
        assert "lonely" not in d_prime.to_pandas()["event"].tolist()
        selected_out = d_prime.accounting.dropped["partition_selection"]
        kept = POLICY.max_contributions  # the rest of its 7 events went to bounding
        assert selected_out == d.accounting.dropped["partition_selection"] + kept
    for text in (d_prime.metadata_json(), repr(d_prime)):
        assert "received" not in text
        assert "dropped" not in text


def test_merged_shards_of_neighbouring_inputs_publish_the_same_metadata(tmp_path) -> None:
    """The same neighbouring pair through spawn + pickle + merge (D' has one more unit,
    alone in its partition, on a shard of its own)."""

    def sharded(extra: bool) -> tm.Release:
        agg = tm.Aggregator(policy=POLICY, by="event", metrics=METRICS, randomness=seeded(6))
        shard = agg.spawn()
        agg.add(events(n_users=200))
        shard.add(events(n_users=200, seed=1))
        if extra:
            shard.add(one_unit(10**6, 7, "lonely"))
        agg.merge(pickle.loads(pickle.dumps(shard)))
        return agg.release(1.0, 1e-6)

    d, d_prime = sharded(extra=False), sharded(extra=True)
    assert published(d, tmp_path) == published(d_prime, tmp_path)
    assert d_prime.accounting.received == d.accounting.received + 7


def test_an_opted_out_unit_leaves_no_trace_in_what_is_published(sqlite_url, tmp_path) -> None:
    registry = tm.ConsentRegistry(sqlite_url)
    registry.opt_out(10**6, purpose="model_training")
    query = {
        "by": "event",
        "metrics": METRICS,
        "policy": POLICY,
        "epsilon": 1.0,
        "partitions": ["open", "save"],
        "consent": registry,
        "purpose": "model_training",
    }
    base = events()
    d = tm.aggregate(base, randomness=seeded(4), **query)
    d_prime = tm.aggregate(plus(base, one_unit(10**6, 13, "open")), randomness=seeded(4), **query)
    assert published(d, tmp_path) == published(d_prime, tmp_path)
    pd.testing.assert_frame_equal(d.to_pandas(), d_prime.to_pandas())
    assert (d.accounting.dropped["consent"], d_prime.accounting.dropped["consent"]) == (0, 13)


def test_accounting_is_operator_side_and_adds_up() -> None:
    from telemagg.release import Accounting

    release = tm.aggregate(
        events(), by="event", metrics=METRICS, policy=POLICY, epsilon=1.0, delta=1e-6
    )
    acc = release.accounting
    assert isinstance(acc, Accounting)
    assert acc.pending == 0
    assert acc.received == acc.aggregated + sum(acc.dropped.values()) == 1500
    with pytest.raises(tm.TelemaggError, match="does not add up"):
        Accounting(received=3, aggregated=1, dropped={"consent": 1})
    agg = tm.Aggregator(policy=POLICY, by="event", metrics=METRICS)
    agg.add(events())
    held = agg.accounting()
    assert held.received == 1500
    assert held.aggregated == 0
    assert held.pending + held.dropped["contribution_bounds"] == 1500
    released = agg.release(1.0, 1e-6).accounting  # a release reads every pending event
    assert released.received == held.received
    assert released.aggregated + released.dropped["partition_selection"] == held.pending


# --------------------------------------------------------------------------- ledger=, consent=


def test_ledger_and_consent_may_be_urls(sqlite_url, tmp_path) -> None:
    tm.Ledger(sqlite_url, epsilon=3.0, delta=1e-5).close()
    consent_url = f"sqlite:///{tmp_path / 'consent.db'}"
    registry = tm.ConsentRegistry(consent_url)
    registry.opt_out([0, 1], purpose="model_training")
    registry.close()
    release = tm.aggregate(
        events(n_users=20),
        by="event",
        metrics=[tm.count()],
        policy=POLICY,
        epsilon=1.0,
        partitions=["open"],
        ledger=sqlite_url,
        consent=consent_url,
        purpose="model_training",
    )
    assert release.accounting.dropped["consent"] == 10
    assert release.metadata["ledger"]["charge"] == 1
    reopened = tm.Ledger.open(sqlite_url)
    assert reopened.spent[0] == pytest.approx(release.epsilon)
    reopened.close()


def test_bad_ledger_or_consent_fails_before_reading_any_event(tmp_path) -> None:
    unreadable = {"user": [1], "event": ["a"], "value": ["not a number"]}  # SchemaError if read
    query = {"by": "event", "metrics": METRICS, "policy": POLICY, "epsilon": 1.0}
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(tm.ConfigError, match=r"ledger \(a URL string\) must name an existing"):
        tm.aggregate(unreadable, partitions=["a"], ledger=missing, **query)
    with pytest.raises(tm.ConfigError, match=r"ledger must be a tm.Ledger.* got int"):
        tm.aggregate(unreadable, partitions=["a"], ledger=42, **query)
    with pytest.raises(tm.ConfigError, match=r"consent must be a tm.ConsentRegistry.* got int"):
        tm.aggregate(unreadable, partitions=["a"], consent=42, purpose="x", **query)
    with pytest.raises(tm.ConfigError, match=r"consent \(a URL string\) cannot be opened"):
        tm.aggregate(unreadable, partitions=["a"], consent="mysql://db/x", purpose="x", **query)


def test_a_release_without_a_ledger_warns_once_per_aggregator(sqlite_url) -> None:
    from telemagg.errors import UntrackedReleaseWarning

    agg = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()])
    agg.add(events(n_users=20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agg.release(1.0, partitions=["open"])
        agg.release(1.0, partitions=["open"])
    assert [w.category for w in caught] == [UntrackedReleaseWarning]
    assert "charged to no ledger" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's release()
    tracked = tm.Aggregator(policy=POLICY, by="event", metrics=[tm.count()])
    seeded_agg = tm.Aggregator(
        policy=POLICY, by="event", metrics=[tm.count()], randomness=seeded(1)
    )
    ledger = tm.Ledger(sqlite_url, epsilon=2.0, delta=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrackedReleaseWarning)
        tracked.release(1.0, partitions=["open"], ledger=ledger)
        seeded_agg.release(1.0, partitions=["open"])  # test noise: no ledger would take it
    ledger.close()


def test_a_large_delta_needs_allow_large_delta_on_every_release_path() -> None:
    """delta >= 1e-3 is a ConfigError unless the caller says so, on aggregate, release and
    release_closed alike (ReleaseParams.allow_large_delta)."""
    events = {"u": [1, 2, 3], "e": ["a", "a", "b"], "t": [10, 20, 30]}
    options = {"by": "e", "metrics": [tm.count()], "policy": tm.Policy(privacy_unit="u")}
    with pytest.raises(tm.ConfigError, match="allow_large_delta"):
        tm.aggregate(events, epsilon=1.0, delta=0.01, randomness=seeded(1), **options)
    release = tm.aggregate(
        events, epsilon=1.0, delta=0.01, allow_large_delta=True, randomness=seeded(1), **options
    )
    assert release.delta <= 0.01
    windowed = tm.Aggregator(window="1h", time="t", start=0, randomness=seeded(1), **options)
    windowed.add(events, now=60)
    with pytest.raises(tm.ConfigError, match="allow_large_delta"):
        windowed.release_closed(1.0, 0.01, now=7200)
    assert len(windowed.release_closed(1.0, 0.01, now=7200, allow_large_delta=True)) == 2


def test_integer_keys_beyond_64_bits_export_to_arrow_exactly() -> None:
    """Negative keys beside keys >= 2**63 fit no 64-bit Arrow type: decimal128, exact."""
    keys = [-5, 2**63, 2**64 + 1]
    release = tm.aggregate(
        {"u": [1, 2, 3], "k": keys},
        by="k",
        metrics=[tm.count()],
        policy=tm.Policy(privacy_unit="u"),
        epsilon=1.0,
        partitions=keys,
        randomness=seeded(0),
    )
    column = release.to_arrow().column("k")
    assert [int(v) for v in column.to_pylist()] == keys
    assert str(column.type) == "decimal128(38, 0)"


def test_a_pickled_aggregator_of_another_state_format_is_refused_naming_it() -> None:
    import pickle

    from telemagg import _aggregator

    agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()])
    data = pickle.dumps(agg)
    assert isinstance(pickle.loads(data), tm.Aggregator)  # this version reads its own
    old = _aggregator.STATE_FORMAT
    _aggregator.STATE_FORMAT = old + 1  # a later version reading this one's
    try:
        with pytest.raises(tm.ConfigError, match=f"state format {old}"):
            pickle.loads(data)
    finally:
        _aggregator.STATE_FORMAT = old
