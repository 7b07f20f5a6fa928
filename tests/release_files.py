"""Release files for the dataset, CLI and report tests: one release, and a directory of
windowed releases written by the collector's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import telemagg as tm
from telemagg.collector._output import finish, window_path, write_pending
from telemagg.testing import seeded

EVENTS = ("open", "save", "quit")
HOUR = 3600


def events(n: int, seed: int, *, extra_unit: bool = False) -> dict[str, np.ndarray]:
    """``n`` events of 50 users over three hours; ``extra_unit`` adds one heavy unit (D')."""
    rng = np.random.default_rng(seed)
    out = {
        "user": rng.integers(0, 50, n),
        "event": rng.choice(EVENTS, n),
        "duration": rng.uniform(0, 100, n),
        "t": rng.uniform(0, 3 * HOUR, n),
    }
    if extra_unit:
        out = {
            "user": np.append(out["user"], [999] * 20),
            "event": np.append(out["event"], ["open"] * 20),
            "duration": np.append(out["duration"], [100.0] * 20),
            "t": np.append(out["t"], [10.0] * 20),
        }
    return out


METRICS = (tm.count(), tm.sum("duration", bounds=(0, 100)), tm.mean("duration", bounds=(0, 100)))


def one_release(seed: int = 1, *, extra_unit: bool = False) -> tm.Release:
    """A release over public partitions, seeded (for tests only)."""
    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3),
        by="event",
        metrics=list(METRICS),
        randomness=seeded(seed),
    )
    agg.add(events(2_000, seed, extra_unit=extra_unit))
    return agg.release(1.0, partitions=list(EVENTS))


def windowed_dir(folder: Path, seed: int = 1, *, extra_unit: bool = False) -> list[tm.Release]:
    """Three hourly windows written as the collector writes them."""
    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3),
        by="event",
        metrics=list(METRICS),
        window="1h",
        time="t",
        start=0,
        randomness=seeded(seed),
    )
    agg.add(events(3_000, seed, extra_unit=extra_unit), now=3 * HOUR)
    releases = agg.release_closed(0.5, partitions=list(EVENTS), now=3 * HOUR)
    for release in releases:
        final = window_path(folder, release.metadata["window"]["start"])
        write_pending(release, final)
        finish(final)
    return releases
