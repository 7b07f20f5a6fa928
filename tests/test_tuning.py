"""'auto' contribution bounds and value bounds, chosen privately at release (_tuning)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from tests.releases import published
from tests.stats import assert_discrete_noise_scale
from tests.test_metrics_telemetry import recording

import telemagg as tm
from telemagg import _mechanisms as mech
from telemagg import _tuning
from telemagg.testing import seeded

AUTO = tm.Policy(privacy_unit="user", max_partitions="auto", max_contributions="auto")


def shaped(
    n_users: int = 3000, partitions: int = 3, per_pair: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every user in ``partitions`` of 6 events kinds, ``per_pair`` events in each; values
    uniform in [100, 200]."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), partitions * per_pair)
    offset = np.tile(np.repeat(np.arange(partitions), per_pair), n_users)
    event = (user + offset) % 6
    return {"user": user, "event": event, "value": rng.uniform(100, 200, user.size)}


def release(data: dict[str, np.ndarray], metrics: list[Any], **options: Any) -> tm.Release:
    settings: dict[str, Any] = {
        "policy": AUTO,
        "epsilon": 1.0,
        "delta": 1e-6,
        "randomness": seeded(1),
        **options,
    }
    return tm.aggregate(data, by="event", metrics=metrics, **settings)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: tm.Policy(privacy_unit="u", max_partitions="AUTO"),
            "Policy.max_partitions must be an integer >= 1 or 'auto'; got 'AUTO'",
        ),
        (
            lambda: tm.Policy(privacy_unit="u", max_contributions="3"),
            "Policy.max_contributions must be an integer >= 1 or 'auto'; got '3'",
        ),
        (lambda: tm.mean("x", bounds="automatic"), "Mean.bounds must be (lower, upper) or 'auto'"),
        (lambda: tm.sum("x", bounds=(1, 2, 3)), "Sum.bounds must be (lower, upper) or 'auto'"),
        (
            lambda: tm.sum("x", bounds="auto", resolution=0.5),
            "resolution needs explicit bounds",
        ),
    ],
)
def test_bad_auto_declarations_name_the_parameter(make, message) -> None:
    with pytest.raises(tm.ConfigError) as error:
        make()
    assert message in str(error.value)


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, "0.1", None])
def test_tuning_share_is_checked_before_any_charge(share, sqlite_url) -> None:
    ledger = tm.Ledger(sqlite_url, epsilon=5.0, delta=1e-5)
    with pytest.raises(tm.ConfigError, match="tuning_share"):
        tm.aggregate(
            shaped(10),
            by="event",
            metrics=[tm.count()],
            policy=AUTO,
            epsilon=1.0,
            delta=1e-6,
            ledger=ledger,
            tuning_share=share,
        )
    assert ledger.charges() == []


def test_auto_values_are_accepted_where_the_contract_says() -> None:
    assert AUTO.auto
    assert AUTO.bounding_limits == (tm.policy.MAX_PARTITIONS, tm.policy.MAX_CONTRIBUTIONS)
    for make in (tm.sum, tm.mean, tm.variance):
        assert make("v", bounds="auto").bounds == "auto"
    q = tm.quantiles("v", [0.5], bounds="auto", scale="log")
    assert q.bounds == "auto"
    assert not tm.Policy(privacy_unit="u", max_partitions=2).auto


# --------------------------------------------------------------------------- releases


def test_auto_release_chooses_the_data_s_shape_and_says_what_it_cost() -> None:
    metrics = [tm.count(), tm.mean("value", bounds="auto"), tm.quantiles("value", [0.5], "auto")]
    out = release(shaped(), metrics)
    tuning = out.metadata["tuning"]
    assert tuning["max_partitions"] == 3  # every unit is in exactly 3 partitions
    assert 6 <= tuning["max_contributions"] <= 16  # with 10 events in each
    lo, hi = tuning["bounds"]["value"]
    assert 0 < lo <= 100
    assert 200 <= hi <= 1024  # octave buckets, one more for a mean: within two octaves
    assert tuning["events_kept_share"] > 0.8
    assert tuning["values_within_bounds_share"]["value"] > 0.7  # all are; noisy estimate
    assert tuning["tuning_share"] == 0.1
    assert tuning["epsilon"] == pytest.approx(0.1, rel=1e-6)
    assert out.epsilon <= 1.0 + 1e-9
    assert out.metadata["query"]["policy"]["max_partitions"] == "auto"  # the query as asked
    frame = out.to_pandas()
    assert (frame["mean_value"].between(125, 175)).all()  # true 150
    kept = 3000 * 3 * min(tuning["max_contributions"], 10) / 6  # events within the bounds
    np.testing.assert_allclose(frame["count"], kept, rtol=0.1)


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_the_ledger_is_charged_once_for_tuning_and_release(noise, sqlite_url) -> None:
    ledger = tm.Ledger(sqlite_url, epsilon=1.0, delta=1e-5)
    agg = tm.Aggregator(policy=AUTO, by="event", metrics=[tm.count(), tm.sum("value", "auto")])
    agg.add(shaped(500))
    out = agg.release(1.0, 1e-6, ledger=ledger, noise=noise, tuning_share=0.2)
    (charge,) = ledger.charges()
    assert ledger.spent[0] == pytest.approx(out.epsilon)
    assert out.epsilon <= 1.0 + 1e-9
    assert out.metadata["tuning"]["epsilon"] == pytest.approx(0.2, rel=1e-6)
    assert charge.seq == out.metadata["ledger"]["charge"]


def test_fixed_contribution_bounds_with_auto_value_bounds() -> None:
    policy = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=5)
    out = release(shaped(), [tm.variance("value", bounds="auto")], policy=policy)
    tuning = out.metadata["tuning"]
    assert "max_partitions" not in tuning  # nothing chosen, nothing spent on it
    assert set(tuning["bounds"]) == {"value"}
    assert out.metrics["variance_value"].components[0]["sensitivity"] > 0
    assert out.accounting.dropped["contribution_bounds"] == 3000 * (30 - 10)


def test_log_quantiles_get_a_positive_lower_bound() -> None:
    data = shaped()
    data["value"] = data["value"] - 150.0  # half negative
    out = release(data, [tm.quantiles("value", [0.9], bounds="auto", scale="log")])
    lo, hi = out.metadata["tuning"]["bounds"]["value"]
    assert 0 < lo < hi


def test_streaming_batches_merges_windows_and_pickles_with_auto() -> None:
    data = shaped(400)
    metrics = [tm.count(), tm.mean("value", "auto")]
    agg = tm.Aggregator(policy=AUTO, by="event", metrics=metrics, randomness=seeded(2))
    other = agg.spawn()
    half = data["user"].size // 2
    agg.add({k: v[:half] for k, v in data.items()})
    other.add({k: v[half:] for k, v in data.items()})
    agg.merge(pickle.loads(pickle.dumps(other)))
    assert agg.accounting().pending == data["user"].size  # held unbounded until release
    out = agg.release(1.0, 1e-6)
    assert out.accounting.received == data["user"].size
    assert "tuning" in out.metadata

    windowed = tm.Aggregator(
        policy=AUTO, by="event", metrics=metrics, window="1h", time="t", start=0,
        randomness=seeded(3),
    )  # fmt: skip
    windowed.add({**data, "t": np.zeros(data["user"].size)}, now=10)
    (first,) = windowed.release_closed(1.0, 1e-6, now=3600, tuning_share=0.3)
    assert first.metadata["tuning"]["tuning_share"] == 0.3


def test_the_tuning_noise_has_the_scale_its_budget_claims() -> None:
    """Every tuning histogram gets discrete Laplace noise of the scale OpenDP's map gives its
    epsilon piece (sensitivity 1); accept that scale, reject 30% off."""
    pieces = 3 + 1 + 2 + 2  # values (3), pairs (1), events (2), partition count (2)
    scales = {k: mech.laplace_scale(1, 0.1 * k / pieces) for k in (1, 2, 3)}
    samples: dict[float, list[np.ndarray]] = {s: [] for s in scales.values()}
    for seed in range(12):
        randomness, recorder = recording(seed)
        release(shaped(300), [tm.count(), tm.mean("value", bounds="auto")], randomness=randomness)
        tuning = recorder.draws[:4]  # the tuning step draws first, then the release
        expected = [scales[1], scales[2], scales[2], scales[3]]  # pairs; events, count; values
        assert sorted(s for *_, s in tuning) == sorted(expected)
        for exact, noisy, scale in tuning:
            samples[scale].append(noisy - exact)
    for scale in scales.values():
        assert_discrete_noise_scale(np.concatenate(samples[scale]), "laplace", scale)


def test_neighbouring_inputs_change_the_tuning_only_through_noise(tmp_path) -> None:
    """D and D' = D + one unit, same seed: every published byte but the tuning step's own
    noisy shares is identical, and those move by about one unit's weight."""
    base = shaped(2000)
    extra = {
        "user": np.full(7, 10**6),
        "event": np.full(7, 5),
        "value": np.full(7, 1e6),
    }
    neighbour = {k: np.concatenate([base[k], extra[k]]) for k in base}
    metrics = [tm.count(), tm.mean("value", bounds="auto")]
    d, d_prime = release(base, metrics), release(neighbour, metrics)
    tuning, tuning_prime = d.metadata["tuning"], d_prime.metadata["tuning"]
    for key in ("max_partitions", "max_contributions", "bounds", "epsilon", "metric_bounds"):
        assert tuning[key] == tuning_prime[key]
    assert tuning.get("metric_max_contributions") == tuning_prime.get("metric_max_contributions")
    assert abs(tuning["events_kept_share"] - tuning_prime["events_kept_share"]) < 0.01
    for name, share in tuning.get("metric_events_kept_share", {}).items():
        assert abs(share - tuning_prime["metric_events_kept_share"][name]) < 0.01

    def without_tuning(r: tm.Release) -> dict[str, Any]:
        out = published(r, tmp_path)
        for key in ("metadata", "json", "arrow", "parquet", "pandas"):
            out[key] = {k: v for k, v in out[key].items() if k != "tuning"}
        return {k: v for k, v in out.items() if k not in ("repr", "str")}

    assert without_tuning(d) == without_tuning(d_prime)


def test_units_pick_their_smallest_pair_and_event() -> None:
    state = tm.Aggregator(policy=AUTO, by="event", metrics=[tm.count()], randomness=seeded(0))
    state.add(shaped(50, partitions=2, per_pair=4))
    units = _tuning._units(state._state)
    assert units.pairs.tolist() == [2] * 50
    assert units.events.tolist() == [4] * 50


def test_auto_releases_carry_intervals_from_the_chosen_bounds() -> None:
    metrics = [tm.count(), tm.mean("value", "auto"), tm.quantiles("value", [0.5], "auto")]
    out = release(shaped(), metrics)
    frame = out.to_pandas(intervals=0.95)
    lo, hi = out.metadata["tuning"]["bounds"]["value"]
    for column in ("count", "mean_value", "p50_value"):
        assert (frame[f"{column}_low"] <= frame[column]).all()
        assert (frame[column] <= frame[f"{column}_high"]).all()
    assert (frame["mean_value_low"] >= lo).all()
    assert (frame["mean_value_high"] <= hi).all()
    assert (frame["p50_value_high"] <= hi).all()
