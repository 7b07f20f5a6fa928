"""top_k with public candidates (noisy counts, no threshold), and without (threshold)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.stats import assert_release_noise

import telemagg as tm
from telemagg.testing import seeded

CODES = ["E1", "E2", "E3", "E4"]
POLICY = tm.Policy(privacy_unit="user", max_partitions=1, max_contributions=2)


def events(n_users: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    """Two events per user in one partition; codes with known shares, plus a frequent
    value that is not a candidate."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 2)
    event = np.asarray(["open", "save"], dtype=object)[users % 2]
    event[:4] = "tiny"  # 2 users
    codes = np.asarray([*CODES, "OTHER"], dtype=object)
    code = codes[rng.choice(5, users.size, p=[0.3, 0.2, 0.1, 0.05, 0.35])]
    return {"user": users, "event": event, "code": code}


@pytest.mark.parametrize(
    ("candidates", "rule"),
    [
        ([], "1 to 4096 distinct values"),
        ("E1", "sequence of 1 to 4096"),
        (["E1", "E1"], "listed twice"),
        ([1, 1.0], "listed twice"),  # equal keys of two types are one candidate
        (["E1", None], "none of them missing"),
        ([{"a": 1}], "cannot be a key"),
    ],
)
def test_bad_candidates_are_config_errors_naming_the_parameter(candidates: Any, rule: str) -> None:
    with pytest.raises(tm.ConfigError, match="candidates") as raised:
        tm.top_k("code", k=2, candidates=candidates)
    assert rule in str(raised.value)


def test_every_released_partition_lists_its_top_k_candidates_without_delta() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=[tm.count(), tm.top_k("code", k=3, candidates=CODES)],
        policy=POLICY,
        epsilon=1.0,  # delta = 0: no threshold is needed
        partitions=["open", "save", "tiny", "absent"],
        randomness=seeded(1),
    )
    table = release.to_pandas()
    assert all(len(values) == 3 for values in table["top_code"])
    assert all(set(values) <= set(CODES) for values in table["top_code"])  # OTHER ignored
    assert table["top_code"].iloc[0] == ["E1", "E2", "E3"]
    counts = table["top_code_count"].tolist()
    assert all(list(c) == sorted(c, reverse=True) and min(c) >= 0 for c in counts)
    selection = release.metadata["metrics"]["top_code"]["selection"]
    assert selection["candidates"] == 4
    assert "ignored" in selection["outside_candidates"]
    assert release.metadata["metrics"]["top_code"]["delta"] == 0.0


def test_candidates_match_values_of_any_type_by_key_identity() -> None:
    data = {
        "user": np.arange(6),
        "event": np.zeros(6, np.int64),
        "code": np.array([1, 1, 1, 2, 2, 3]),
    }
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.top_k("code", k=2, candidates=[np.int64(1), 2.0, 7])],
        policy=tm.Policy(privacy_unit="user"),
        epsilon=100.0,
        partitions=[0],
        randomness=seeded(2),
    )
    assert release.to_dict()["top_code"][0] == [1, 2]


def test_candidate_counts_carry_the_claimed_noise_and_not_30_percent_off() -> None:
    data = events(n_users=600)
    exact = {part: dict.fromkeys(CODES, 0) for part in ("open", "save", "tiny")}
    # every user is within the bounds (one partition, two events): exact counts are direct
    for part, code in zip(data["event"].tolist(), data["code"].tolist(), strict=True):
        if code in CODES:
            exact[part][code] += 1
    samples = []
    report = None
    for seed in range(400):
        release = tm.aggregate(
            data,
            by="event",
            metrics=[tm.top_k("code", k=4, candidates=CODES)],
            policy=POLICY,
            epsilon=1.0,
            partitions=["open", "save"],
            randomness=seeded(seed),
        )
        table = release.to_dict()
        for part, names, counts in zip(
            table["event"], table["top_code"], table["top_code_count"], strict=True
        ):
            samples += [
                count - exact[part][name] for name, count in zip(names, counts, strict=True)
            ]
        report = release.metrics["top_code_count"]
    assert_release_noise(np.asarray(samples), report)


def test_top_5_precision_with_candidates_in_partitions_of_2k_units() -> None:
    """The issue's target: precision >= 0.8 at epsilon 1 with 2,000+ units."""
    rng = np.random.default_rng(7)
    codes = [f"E{i}" for i in range(40)]
    weights = 1.0 / np.arange(1, 41) ** 1.1
    n_users = 2000
    users = np.repeat(np.arange(n_users), 2)
    code = np.asarray(codes, dtype=object)[rng.choice(40, users.size, p=weights / weights.sum())]
    data = {"user": users, "event": np.zeros(users.size, np.int64), "code": code}
    truth = set(codes[:5])
    precisions = []
    for seed in range(20):
        release = tm.aggregate(
            data,
            by="event",
            metrics=[tm.count(), tm.top_k("code", k=5, candidates=codes)],
            policy=POLICY,
            epsilon=1.0,
            partitions=[0],
            randomness=seeded(seed),
        )
        precisions.append(len(set(release.to_dict()["top_code"][0]) & truth) / 5)
    assert np.mean(precisions) >= 0.8


def test_without_candidates_the_metadata_says_when_values_appear() -> None:
    release = tm.aggregate(
        events(),
        by="event",
        metrics=[tm.top_k("code", k=2)],
        policy=POLICY,
        epsilon=1.0,
        delta=1e-6,
        partitions=["open", "save", "tiny"],
        randomness=seeded(3),
    )
    selection = release.metadata["metrics"]["top_code"]["selection"]
    threshold = release.metadata["metrics"]["top_code"]["components"][0]["threshold"]
    assert selection["threshold"] == threshold
    appear = selection["min_events_to_appear"]
    assert appear["half_the_time"] == threshold < appear["95_percent_of_the_time"]
    assert release.to_dict()["top_code"][2] == []  # 4 events: far below the threshold


def test_top_k_metadata_does_not_move_when_one_unit_is_added() -> None:
    data = events()
    extra = {k: np.append(v, [10**6, 10**6] if k == "user" else v[:2]) for k, v in data.items()}

    def metadata(d: dict[str, np.ndarray], candidates: Any) -> dict[str, Any]:
        release = tm.aggregate(
            d,
            by="event",
            metrics=[tm.top_k("code", k=2, candidates=candidates)],
            policy=POLICY,
            epsilon=1.0,
            delta=1e-6,
            partitions=["open", "save"],
            randomness=seeded(4),
        )
        return {k: v for k, v in release.metadata.items() if k != "created_at"}

    for candidates in (None, CODES):
        assert metadata(data, candidates) == metadata(extra, candidates)


@pytest.mark.slow
def test_values_appear_as_often_as_the_metadata_says() -> None:
    """A value with ``half_the_time`` bounded events appears with probability P(Z >= 0),
    one with ``95_percent_of_the_time`` events at least 95% of the time."""
    from scipy import stats

    from telemagg._samplers import laplace_rate

    def appearances(events_of_value: int, runs: int) -> tuple[int, dict[str, Any]]:
        data = {
            "user": np.arange(events_of_value),
            "event": np.zeros(events_of_value, np.int64),
            "code": np.asarray(["V"] * events_of_value, dtype=object),
        }
        seen, metadata = 0, {}
        for seed in range(runs):
            release = tm.aggregate(
                data,
                by="event",
                metrics=[tm.top_k("code", k=1)],
                policy=POLICY,
                epsilon=1.0,
                delta=1e-6,
                partitions=[0],
                randomness=seeded(seed),
            )
            seen += release.to_dict()["top_code"][0] == ["V"]
            metadata = release.metadata["metrics"]["top_code"]
        return seen, metadata

    _, metadata = appearances(1, 1)
    appear = metadata["selection"]["min_events_to_appear"]
    runs = 300
    half, _ = appearances(appear["half_the_time"], runs)
    r = np.exp(-float(laplace_rate(metadata["components"][0]["scale"])))
    assert stats.binomtest(half, runs, 1.0 / (1.0 + r)).pvalue > 1e-3
    most, _ = appearances(appear["95_percent_of_the_time"], runs)
    assert most >= stats.binom.ppf(1e-3, runs, 0.95)
