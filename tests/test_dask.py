"""telemagg.dask on a real distributed.LocalCluster with worker processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.releases import published

import telemagg as tm
from telemagg._identity import unit_hash
from telemagg.ledger import Ledger
from telemagg.policy import histogram, quantiles, top_k
from telemagg.testing import seeded

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import telemagg.dask as tm_dask  # noqa: E402  (after the skips: needs the dask extra)

POLICY = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3)
METRICS = [tm.count(), tm.unit_count(), tm.sum("value", bounds=(0, 100))]
BUSY = ("open", "save", "share")
QUERY: dict[str, Any] = {
    "by": "event", "metrics": METRICS, "policy": POLICY, "epsilon": 1.0, "delta": 1e-6
}  # fmt: skip


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two single-threaded worker processes: states really travel between processes."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def workload(n_users: int = 3000, per_user: int = 6, seed: int = 0) -> pd.DataFrame:
    """Busy partitions (thousands of users each), one rare partition (2 users), dirty rows."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    user = np.repeat(np.arange(n_users), per_user).astype(np.float64)
    event = np.asarray(BUSY, dtype=object)[rng.integers(0, len(BUSY), n)]
    event[:2] = "rare"  # user 0, twice
    event[per_user] = "rare"  # user 1
    value = rng.uniform(-20, 120, n)  # clamped to the bounds (0, 100)
    user[rng.choice(n, 9, replace=False)] = np.nan  # missing_privacy_unit
    value[rng.choice(n, 5, replace=False)] = np.nan  # missing for sum_value only
    frame = pd.DataFrame({"user": user, "event": event, "value": value})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # units spread


def exact(agg: tm.Aggregator) -> dict[Any, tuple[int, int]]:
    """Noise-free (count, unit_count) per partition from the bounded state (white-box)."""
    state = agg._state
    n = len(agg._partitions)
    counts = np.bincount(state.partition, minlength=n)
    pairs = np.unique(np.stack([state.partition.astype(np.uint64), state.unit_id]), axis=1)
    units = np.bincount(pairs[0].astype(np.int64), minlength=n)
    return {agg._partitions.keys[i]: (int(counts[i]), int(units[i])) for i in range(n)}


def template(seed: int) -> tm.Aggregator:
    return tm.Aggregator(policy=POLICY, by="event", metrics=METRICS, randomness=seeded(seed))


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("partitions", "released"),
    [(None, sorted(BUSY)), (["rare", "open", "absent"], ["rare", "open", "absent"])],
)
def test_same_partitions_counts_and_accounting_as_the_local_engine(
    client: Any, partitions: list[str] | None, released: list[str]
) -> None:
    frame = workload()
    query = {**QUERY, "partitions": partitions, "randomness": seeded(11)}
    local = tm.aggregate(frame, **query)
    on_dask = tm_dask.aggregate(dd.from_pandas(frame, npartitions=6), **query)

    local_table = local.to_pandas().set_index("event")
    dask_table = on_dask.to_pandas().set_index("event")
    assert sorted(local_table.index) == sorted(released)
    assert list(dask_table.index) == list(local_table.index)
    # which events bounding keeps is random per engine, so missing values among them too
    common = ("received", "aggregated", "pending", "dropped")
    assert [on_dask.accounting[k] for k in common] == [local.accounting[k] for k in common]
    for engine in (on_dask, local):
        assert 0 <= engine.accounting.missing_values["sum_value"] <= 5
    assert on_dask.accounting.dropped["missing_privacy_unit"] == 9
    for column in ("count", "unit_count", "sum_value"):
        # two independent draws differ by at most 6 stddevs of one (seeded: deterministic)
        stddev = on_dask.metrics[column].stddev
        diff = (dask_table[column] - local_table[column]).abs()
        assert (diff <= 6 * np.sqrt(2) * stddev).all(), (column, diff.tolist(), stddev)
    assert on_dask.epsilon == local.epsilon

    def publishable(release: tm.Release) -> dict[str, Any]:
        return {k: v for k, v in release.metadata.items() if k != "created_at"}

    assert publishable(on_dask) == publishable(local)


def test_every_metric_kind_reads_its_columns_on_the_workers(client: Any) -> None:
    """Value, grid and categorical metrics: their columns reach the workers and categorical
    codes merge globally; a dominant error code is the top value in both engines."""
    frame = workload(n_users=2000, seed=6)
    frame["latency"] = np.random.default_rng(6).uniform(10, 90, len(frame))
    frame["error"] = np.where(np.arange(len(frame)) % 10 == 0, "E_TIMEOUT", "E_NETWORK")
    metrics = [
        tm.mean("value", bounds=(0, 100)),
        quantiles("latency", [0.5], bounds=(0, 100)),
        histogram("latency", bins=[0, 50, 100]),
        top_k("error", k=1),
    ]
    query = {**QUERY, "metrics": metrics, "partitions": list(BUSY), "randomness": seeded(12)}
    local = tm.aggregate(frame, **query).to_pandas()
    on_dask = tm_dask.aggregate(dd.from_pandas(frame, npartitions=5), **query).to_pandas()
    assert list(on_dask.columns) == list(local.columns)
    assert on_dask["top_error"].tolist() == local["top_error"].tolist() == [["E_NETWORK"]] * 3
    assert np.allclose(on_dask["p50_latency"], 50, atol=20)  # tree noise: ~2% of seeds > 10


def test_one_sampling_key_keeps_the_same_pairs_as_one_local_aggregator(client: Any) -> None:
    """Same seeded sampling key: the merged state's exact counts and unit counts equal a
    single local Aggregator's, whatever the number of Dask partitions (white-box)."""
    frame = workload(n_users=800, seed=3)
    local = template(5)
    local.add(frame)
    for npartitions in (1, 7):
        ddf = dd.from_pandas(frame, npartitions=npartitions)
        merged = tm_dask._merge_tree(ddf, template(5)).compute()
        assert exact(merged) == exact(local)
        assert merged._state.received == len(frame)


def test_public_partitions_with_empty_dask_partitions(client: Any) -> None:
    frame = pd.DataFrame({"user": [1, 1, 2, 3], "event": ["open", "open", "save", "open"]})
    frame["value"] = 50.0
    query = {**QUERY, "partitions": ["save", "open", "absent"], "randomness": seeded(2)}
    # 3 units over 4 partitions: after the shuffle some partitions are empty
    release = tm_dask.aggregate(dd.from_pandas(frame, npartitions=4), shuffle_by_unit=True, **query)
    assert release.to_pandas()["event"].tolist() == ["save", "open", "absent"]
    accounting = release.accounting
    assert accounting.received == accounting.aggregated == 4
    assert accounting == tm.aggregate(frame, **query).accounting


def test_real_randomness_charges_the_ledger_once_on_the_client(
    client: Any, sqlite_url: str
) -> None:
    ledger = Ledger(sqlite_url, epsilon=3.0, delta=1e-5)
    ddf = dd.from_pandas(workload(n_users=500), npartitions=3)
    release = tm_dask.aggregate(ddf, **QUERY, ledger=ledger, label="dask")
    assert release.metadata["seeded"] is False
    charges = ledger.charges()
    assert len(charges) == 1
    assert charges[0].epsilon == pytest.approx(release.epsilon)
    assert set(release.to_pandas()["event"]) == set(BUSY)
    ledger.close()


def test_consent_is_checked_on_the_workers(client: Any, sqlite_url: str) -> None:
    """The registry travels to the workers (it pickles as its URL) and drops the events of
    opted-out units there, exactly as the local engine does."""
    registry = tm.ConsentRegistry(sqlite_url)
    registry.opt_out(list(range(100)), purpose="model_training")
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "user": np.repeat(np.arange(600), 4),
            "event": np.asarray(BUSY, dtype=object)[rng.integers(0, 3, 2400)],
            "value": rng.uniform(0, 100, 2400),
        }
    )
    query = {**QUERY, "consent": registry, "purpose": "model_training", "randomness": seeded(3)}
    on_dask = tm_dask.aggregate(dd.from_pandas(frame, npartitions=4), **query)
    assert on_dask.accounting.dropped["consent"] == 400
    assert on_dask.accounting == tm.aggregate(frame, **query).accounting
    registry.close()


def test_neighbouring_inputs_publish_the_same_metadata_on_dask(client: Any, tmp_path) -> None:
    """D and D' = D + one unit with 7 events in a partition of its own: the Dask engine
    publishes the same metadata and exports for both; only the accounting differs."""
    frame = workload(n_users=600, seed=4)
    lone = pd.DataFrame({"user": [10.0**6] * 7, "event": ["lonely"] * 7, "value": [50.0] * 7})
    neighbour = pd.concat([frame, lone], ignore_index=True)
    query = {**QUERY, "randomness": seeded(8)}
    d = tm_dask.aggregate(dd.from_pandas(frame, npartitions=3), **query)
    d_prime = tm_dask.aggregate(dd.from_pandas(neighbour, npartitions=3), **query)
    assert published(d, tmp_path) == published(d_prime, tmp_path)
    assert d_prime.accounting.received == d.accounting.received + 7


# --------------------------------------------------------------------------- bounding


def striped(frame: pd.DataFrame, npartitions: int) -> Any:
    """Dask partition i holds rows i, i + n, i + 2n, ...: every unit in every partition."""
    parts = [dask.delayed(frame.iloc[i::npartitions]) for i in range(npartitions)]
    return dd.from_delayed(parts, meta=frame.iloc[:0])


def test_a_heavy_unit_spread_over_many_partitions_is_bounded_globally(client: Any) -> None:
    """No shuffle here: the heavy unit's events sit in all 10 Dask partitions, and only
    merging bounds it. Its events move counts by at most max_partitions x max_contributions."""
    base = workload(n_users=400, seed=4).dropna()
    heavy = pd.DataFrame(
        {"user": 10_000.0, "event": np.asarray(BUSY, dtype=object)[np.arange(5000) % 3]}
    )
    heavy["value"] = 50.0
    with_heavy = pd.concat([base, heavy], ignore_index=True)

    before = exact(tm_dask._merge_tree(striped(base, 10), template(8)).compute())
    merged = tm_dask._merge_tree(striped(with_heavy, 10), template(8)).compute()
    after = exact(merged)
    moved = sum(abs(after[key][0] - before.get(key, (0, 0))[0]) for key in after)
    assert 0 < moved <= POLICY.max_partitions * POLICY.max_contributions
    state = merged._state
    heavy_rows = state.unit_id == np.uint64(unit_hash(10_000))
    assert 0 < np.count_nonzero(heavy_rows) <= POLICY.max_partitions * POLICY.max_contributions
    assert np.unique(state.partition[heavy_rows]).size <= POLICY.max_partitions
    # 10 partitions each kept up to 6 of its events; the merges evicted all but <= 6
    assert state.dropped["contribution_bounds"] >= len(heavy) - 6


def test_partial_aggregators_are_merged_in_a_tree() -> None:
    """20 partials, fan-in 8: 3 merges of <= 8 at the first level, 1 at the root."""
    frame = workload(n_users=50)
    ddf = dd.from_pandas(frame, npartitions=20)
    root = tm_dask._merge_tree(ddf, template(1))
    graph = dict(root.__dask_graph__())
    merges = [key for key in graph if "-merge-" in str(key)]
    fan_in = sorted(len(dask.core.get_dependencies(graph, key)) for key in merges)
    assert fan_in == [3, 4, 8, 8]
    assert max(fan_in) <= tm_dask.SPLIT_EVERY


# --------------------------------------------------------------------------- errors


def _never_computed() -> pd.DataFrame:
    raise RuntimeError("the events were computed before the parameters were checked")


UNCOMPUTABLE_META = pd.DataFrame(
    {"user": [1.0], "event": ["open"], "os": ["linux"], "value": [1.0]}
).iloc[:0]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"epsilon": 0.0}, tm.ConfigError),
        ({"epsilon": float("nan")}, tm.ConfigError),
        ({"delta": 0.0}, tm.ConfigError),  # private partition selection needs delta
        ({"delta": 1.5}, tm.ConfigError),
        ({"noise": "gaussian", "delta": 0.0, "partitions": ["open"]}, tm.ConfigError),
        ({"by": ["event", "user"]}, tm.ConfigError),
        ({"by": []}, tm.ConfigError),
        ({"metrics": []}, tm.ConfigError),
        ({"policy": {"privacy_unit": "user"}}, tm.ConfigError),
        ({"partitions": ["open", "open"]}, tm.ConfigError),
        ({"by": ["event", "os"], "partitions": ["open"]}, tm.ConfigError),
        ({"purpose": "training"}, tm.ConfigError),  # purpose without consent
        ({"by": "platform"}, tm.SchemaError),
        ({"metrics": [tm.sum("duration", bounds=(0, 1))]}, tm.SchemaError),
    ],
)
def test_bad_parameters_fail_before_compute_with_the_local_engines_error(
    change: dict[str, Any], error: type[Exception]
) -> None:
    query = {**QUERY, **change}
    with pytest.raises(error) as local:
        tm.aggregate(UNCOMPUTABLE_META, **query)
    uncomputable = dd.from_delayed([dask.delayed(_never_computed)()], meta=UNCOMPUTABLE_META)
    with pytest.raises(error) as on_dask:
        tm_dask.aggregate(uncomputable, **query)
    assert str(on_dask.value) == str(local.value)


def test_only_dask_dataframes_are_accepted() -> None:
    with pytest.raises(tm.SchemaError, match="ddf must be a dask DataFrame; got DataFrame"):
        tm_dask.aggregate(workload(n_users=5), **QUERY)


@pytest.mark.parametrize("module", ["distributed", "dask.dataframe"])
def test_a_missing_dask_extra_is_named(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(tm.MissingDependencyError, match=r"pip install 'telemagg\[dask\]'"):
        tm_dask.aggregate(object(), **QUERY)
