"""tm.read_release and the dataset card: releases read back as datasets, described in words."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.release_files import EVENTS, one_release, windowed_dir

import telemagg as tm
from telemagg._dataset import dataset_card
from telemagg.testing import seeded


def test_a_release_file_reads_back_with_its_metadata(tmp_path: Path) -> None:
    release = one_release()
    release.to_parquet(tmp_path / "r.parquet")
    data = tm.read_release(tmp_path / "r.parquet")
    assert data.metadata == release.metadata
    # NaN-aware (a mean with insufficient data is NaN, and arrow's equals has NaN != NaN)
    assert data.table.to_pandas().equals(release.to_arrow().to_pandas())
    assert data.table.schema.equals(release.to_arrow().schema)
    assert data.key_columns == release.key_columns
    assert (data.epsilon, data.delta, len(data)) == (release.epsilon, release.delta, len(release))
    frame = data.to_pandas()
    assert frame.attrs["telemagg"] == release.metadata
    assert list(frame["event"]) == list(EVENTS)
    assert data.to_polars().columns == data.table.column_names


def test_a_directory_of_windows_reads_as_one_table_oldest_first(tmp_path: Path) -> None:
    releases = windowed_dir(tmp_path)
    data = tm.read_release(tmp_path)
    assert len(data.windows) == 3 == len(releases)
    assert data.table.column_names[:3] == ["window_start", "window_end", "event"]
    assert data.table.schema.field("window_start").type == pa.timestamp("ms", tz="UTC")
    starts = data.table.column("window_start").to_pylist()
    assert starts == sorted(starts)
    assert len(set(starts)) == 3
    assert [w["window"]["start"] for w in data.windows] == [
        r.metadata["window"]["start"] for r in releases
    ]
    # every window's values, in order, exactly as released
    expected = np.concatenate([r.to_dict()["count"] for r in releases])
    np.testing.assert_array_equal(data.table.column("count").to_numpy(), expected)
    assert data.key_columns == ("window_start", "window_end", "event")
    assert "3 windows of 1h" in data.dataset_card()


def test_bad_paths_and_foreign_files_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(tm.ConfigError, match="must name a release file or directory"):
        tm.read_release(tmp_path / "missing.parquet")
    with pytest.raises(tm.SchemaError, match="holds no windowed release"):
        tm.read_release(tmp_path)
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(tm.SchemaError, match="is not a telemagg release"):
        tm.read_release(tmp_path / "plain.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(tm.SchemaError, match="cannot be read as Parquet"):
        tm.read_release(tmp_path / "junk.parquet")


def test_the_card_names_every_column_the_guarantee_and_the_noise(tmp_path: Path) -> None:
    release = one_release()
    card = release.dataset_card()
    for column in release.to_dict():
        assert f"| `{column}` |" in card
    assert "(epsilon = 1, delta = 0)-differential privacy" in card
    assert "column `user`" in card
    assert "at most 2 partitions, and at most 3 events" in card
    for column, report in release.metrics.items():
        assert f"| `{column}` | {report.mechanism} |" in card
        assert f"{report.stddev:.4g}" in card
    assert "## What is not in the data" in card
    assert "number of events kept within the contribution bounds" in card
    assert "seeded (predictable) noise" in card  # a test release says so
    release.to_parquet(tmp_path / "r.parquet")
    assert tm.read_release(tmp_path / "r.parquet").dataset_card() == card


def test_the_card_describes_interval_columns_and_their_level() -> None:
    release = one_release()
    meta = {**release.metadata, "intervals": {"level": 0.9}}
    card = dataset_card(meta, ["event", "count", "count_low", "count_high"])
    assert "| `count_low` | lower end of the 90% interval of `count`" in card
    assert "Intervals: 90%" in card


def test_the_card_publishes_nothing_exact_about_the_data() -> None:
    """D' = D + one heavy unit: the card is the same (public partitions), and no exact
    accounting number appears in it."""

    def untimed(card: str) -> str:
        return re.sub(r" on \S+\.", " on <time>.", card)

    card, neighbour = (one_release(extra_unit=x) for x in (False, True))
    assert untimed(card.dataset_card()) == untimed(neighbour.dataset_card())
    accounting = neighbour.accounting
    numbers = set(re.findall(r"\d+", neighbour.dataset_card()))
    assert str(accounting.received) not in numbers
    assert str(accounting.aggregated) not in numbers


def test_the_card_uses_the_release_s_own_column_descriptions_when_it_has_them() -> None:
    release = one_release()
    meta = {**release.metadata, "columns": {"count": "events, in the release's words"}}
    assert "| `count` | events, in the release's words |" in dataset_card(meta, ["event", "count"])


def test_the_card_of_an_auto_release_states_the_chosen_bounds() -> None:
    rng = np.random.default_rng(5)
    users = rng.integers(0, 2000, 100_000)
    data = {"user": users, "event": users % 3, "value": rng.lognormal(3, 1, users.size)}
    release = tm.aggregate(
        data,
        by="event",
        metrics=[tm.count(), tm.mean("value", bounds="auto")],
        policy=tm.Policy(privacy_unit="user", max_partitions="auto", max_contributions="auto"),
        epsilon=1.0,
        partitions=[0, 1, 2],
        randomness=seeded(4),
    )
    tuning = release.metadata["tuning"]
    card = release.dataset_card()
    assert "at most auto" not in card
    assert (
        f"at most {tuning['max_partitions']} partitions, and at most"
        f" {tuning['max_contributions']} events to each"
    ) in card
    assert "chosen privately from the data" in card
