"""Consent withdrawn after events were absorbed is honoured at release time (issue 10).

A unit that opts out while an Aggregator holds its earlier events must not appear in any
later release: the release re-checks the registry's changes since the events were checked.
Run on SQLite and the live PostgreSQL (``store_url``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import telemagg as tm
from telemagg.consent import ConsentRegistry
from telemagg.testing import seeded

PURPOSE = "model_training"
POLICY = tm.Policy(privacy_unit="user", max_partitions=2, max_contributions=3)
PAGES = ["a", "b", "c"]


@pytest.fixture
def registry(store_url: str) -> Iterator[ConsentRegistry]:
    with ConsentRegistry(store_url) as opened:
        yield opened


def _events(heavy: bool) -> dict[str, Any]:
    rng = np.random.default_rng(4)
    users = rng.integers(0, 40, 400).astype(object)
    pages = np.array(PAGES, dtype=object)[rng.integers(0, 3, 400)]
    times = rng.uniform(0, 3000, 400)
    if heavy:  # one unit with many events, in every partition
        users = np.concatenate([users, np.array(["heavy"] * 60, dtype=object)])
        pages = np.concatenate([pages, np.array(PAGES * 20, dtype=object)])
        times = np.concatenate([times, np.full(60, 100.0)])
    return {"user": users, "page": pages, "t": times}


def _aggregator(registry: ConsentRegistry, **window: Any) -> tm.Aggregator:
    return tm.Aggregator(
        policy=POLICY,
        by="page",
        metrics=[tm.count(), tm.unit_count()],
        consent=registry,
        purpose=PURPOSE,
        partitions=PAGES,
        randomness=seeded(11),
        **window,
    )


def _table(release: tm.Release) -> dict[str, list[Any]]:
    return {k: v.tolist() for k, v in release.to_dict().items()}


def test_an_opt_out_after_add_removes_the_unit_from_the_release(
    registry: ConsentRegistry,
) -> None:
    with_heavy = _aggregator(registry)
    with_heavy.add(_events(heavy=True))
    registry.opt_out("heavy", purpose=PURPOSE)  # after its events were absorbed
    released = with_heavy.release(1.0, partitions=PAGES)

    never = _aggregator(registry)
    never.add(_events(heavy=False))
    expected = never.release(1.0, partitions=PAGES)

    assert _table(released) == _table(expected)  # same seed: bit-identical without the unit
    assert released.metadata_json() == expected.metadata_json().replace(
        expected.metadata["created_at"], released.metadata["created_at"]
    )
    bounded = 2 * 3  # the heavy unit's kept events: max_partitions x max_contributions
    assert released.accounting.dropped["consent"] == bounded
    assert released.accounting.received == expected.accounting.received + 60


def test_an_opt_out_after_add_is_honoured_in_windows_and_merged_shards(
    registry: ConsentRegistry,
) -> None:
    def run(heavy: bool, opt_out: bool) -> list[dict[str, list[Any]]]:
        agg = _aggregator(registry, window="1h", time="t", start=0)
        shard = agg.spawn()
        data = _events(heavy)
        half = {k: v[::2] for k, v in data.items()}
        rest = {k: v[1::2] for k, v in data.items()}
        agg.add(half, now=3000)
        shard.add(rest, now=3000)
        if opt_out:
            registry.opt_out("heavy", purpose=PURPOSE)
        agg.merge(shard)
        return [_table(r) for r in agg.release_closed(1.0, partitions=PAGES, now=7200)]

    expected = run(heavy=False, opt_out=False)
    assert len(expected) == 2
    assert sum(expected[0]["count"]) > 100  # the test is not vacuous
    assert run(heavy=True, opt_out=True) == expected
    registry.opt_in("heavy", purpose=PURPOSE)
    assert run(heavy=True, opt_out=False) != expected  # the test can fail: the unit counts


def test_a_purpose_turned_opt_in_after_add_refuses_before_any_charge(
    registry: ConsentRegistry, tmp_path: Any
) -> None:
    agg = _aggregator(registry)
    agg.add(_events(heavy=False))
    registry.declare(PURPOSE, default="opt_in")  # silence no longer allows anyone
    ledger = tm.Ledger(f"sqlite:///{tmp_path / 'l.db'}", epsilon=5.0, delta=0.0)
    with pytest.raises(tm.ConfigError, match="declared opt-in after"):
        agg.release(1.0, partitions=PAGES, ledger=ledger)
    assert ledger.charges() == []
    ledger.close()


def test_changed_since_lists_each_changed_unit_once(registry: ConsentRegistry) -> None:
    start = registry.position()
    registry.opt_out([1, "2"], purpose=PURPOSE)
    registry.opt_in(1, purpose=PURPOSE)
    registry.opt_out("x", purpose="other")
    position, units = registry.changed_since(start, PURPOSE)
    assert units == ["1", "2"]
    assert position == registry.position() == start + 4
    assert registry.changed_since(position, PURPOSE) == (position, [])
    with pytest.raises(tm.ConfigError, match="position"):
        registry.changed_since(-1, PURPOSE)


def test_a_registry_failure_at_release_does_not_forget_the_withdrawals_it_did_not_apply(
    registry: ConsentRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = _aggregator(registry)
    agg.add(_events(heavy=True))
    registry.opt_out("heavy", purpose=PURPOSE)
    allowed = ConsentRegistry.allowed

    def outage(self: ConsentRegistry, units: Any, purpose: str) -> Any:
        raise tm.TelemaggError("consent store unavailable")

    monkeypatch.setattr(ConsentRegistry, "allowed", outage)
    with pytest.raises(tm.TelemaggError, match="unavailable"):
        agg.release(1.0, partitions=PAGES)  # fails before any charge
    monkeypatch.setattr(ConsentRegistry, "allowed", allowed)
    released = agg.release(1.0, partitions=PAGES)  # the next release asks again

    never = _aggregator(registry)
    never.add(_events(heavy=False))
    assert _table(released) == _table(never.release(1.0, partitions=PAGES))
    assert released.accounting.dropped["consent"] == 2 * 3
