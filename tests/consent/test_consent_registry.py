"""ConsentRegistry contract, run on SQLite and on the live PostgreSQL (store_url fixture)."""

from __future__ import annotations

import pickle
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemagg.consent import ConsentRegistry
from telemagg.errors import ConfigError, LedgerError, SchemaError


@pytest.fixture
def registry(store_url: str) -> ConsentRegistry:
    with ConsentRegistry(store_url) as opened:
        yield opened


def test_undeclared_purposes_allow_every_unit_that_did_not_opt_out(
    registry: ConsentRegistry,
) -> None:
    registry.opt_out(["u2", "u4"], purpose="model_training")
    out = registry.allowed(["u1", "u2", "u3", "u4", "u2"], purpose="model_training")
    assert out.dtype == np.bool_
    assert out.tolist() == [True, False, True, False, False]
    assert registry.allowed(["u2"], purpose="product_analytics").tolist() == [True]


def test_opt_in_purposes_allow_only_units_that_opted_in(registry: ConsentRegistry) -> None:
    registry.declare("content_training", default="opt_in")
    registry.opt_in("u1", purpose="content_training")
    registry.opt_out("u2", purpose="content_training")
    assert registry.allowed(["u1", "u2", "u3"], purpose="content_training").tolist() == [
        True,
        False,
        False,
    ]


def test_opt_in_restores_and_opt_out_revokes(registry: ConsentRegistry) -> None:
    registry.opt_out("u1", purpose="model_training")
    registry.opt_in("u1", purpose="model_training")
    assert registry.allowed(["u1"], purpose="model_training").tolist() == [True]
    registry.declare("content_training", default="opt_in")
    registry.opt_in("u1", purpose="content_training")
    registry.opt_out("u1", purpose="content_training")
    assert registry.allowed(["u1"], purpose="content_training").tolist() == [False]


def test_choices_and_declarations_survive_reopening(store_url: str) -> None:
    with ConsentRegistry(store_url) as first:
        first.declare("content_training", default="opt_in")
        first.opt_out(["u1", "u2"], purpose="model_training")
        first.opt_in("u3", purpose="content_training")
    with ConsentRegistry(store_url) as reopened:
        assert reopened.allowed(["u1", "u2", "u3"], "model_training").tolist() == [
            False,
            False,
            True,
        ]
        assert reopened.allowed(["u1", "u3"], "content_training").tolist() == [False, True]
        assert reopened.purposes() == {"content_training": "opt_in"}
        reopened.opt_in("u1", purpose="model_training")
    with ConsentRegistry(store_url) as again:
        assert again.allowed(["u1", "u2"], "model_training").tolist() == [True, False]


def test_a_purpose_keeps_its_default_across_registries(store_url: str) -> None:
    with ConsentRegistry(store_url) as first, ConsentRegistry(store_url) as second:
        assert second.allowed(["u1"], "content_training").tolist() == [True]  # undeclared
        first.declare("content_training", default="opt_in")
        first.declare("content_training", default="opt_in")  # the same again: nothing
        # The second registry saw the purpose undeclared; it must not keep that belief.
        assert second.allowed(["u1"], "content_training").tolist() == [False]
        with pytest.raises(
            ConfigError,
            match=r"declared with default='opt_in'.*redeclaring it with default='opt_out'",
        ):
            second.declare("content_training", default="opt_out")
        assert first.purposes() == {"content_training": "opt_in"}


def test_units_are_compared_by_their_canonical_text(registry: ConsentRegistry) -> None:
    registry.opt_out(42, purpose="model_training")
    registry.opt_out(np.array([7, 8]), purpose="model_training")
    unit = uuid.UUID("12345678-1234-5678-1234-567812345678")
    registry.opt_out(unit, purpose="model_training")
    checked = [42, "42", 42.0, np.int64(42), "7", 8, str(unit), unit, 43]
    assert registry.allowed(checked, "model_training").tolist() == [False] * 8 + [True]
    series = pd.Series([42, 43, None], dtype="Int64")
    assert registry.allowed(series, "model_training").tolist() == [False, True, False]


def test_missing_units_are_never_allowed_and_cannot_choose(registry: ConsentRegistry) -> None:
    assert registry.allowed(["u1", None, float("nan")], "model_training").tolist() == [
        True,
        False,
        False,
    ]
    with pytest.raises(SchemaError, match=r"units\[1\] is missing"):
        registry.opt_out(["u1", None], purpose="model_training")
    assert registry.allowed(["u1"], "model_training").tolist() == [True]  # nothing recorded
    assert registry.allowed([], "model_training").tolist() == []


def test_history_lists_every_change_with_utc_times(registry: ConsentRegistry) -> None:
    before = datetime.now(UTC)
    registry.opt_out(["u1", "u2"], purpose="model_training")
    registry.opt_out("u1", purpose="model_training")  # no change: not history
    registry.opt_in("u1", purpose="model_training")
    registry.opt_in("u1", purpose="content_training")
    after = datetime.now(UTC)
    changes = registry.history()
    assert [(c.unit, c.purpose, c.choice) for c in changes] == [
        ("u1", "model_training", "opt_out"),
        ("u2", "model_training", "opt_out"),
        ("u1", "model_training", "opt_in"),
        ("u1", "content_training", "opt_in"),
    ]
    assert [c.seq for c in changes] == [1, 2, 3, 4]
    assert all(c.time.tzinfo is UTC and before <= c.time <= after for c in changes)
    assert [c.time for c in changes] == sorted(c.time for c in changes)
    assert [c.seq for c in registry.history(unit="u1")] == [1, 3, 4]
    assert [c.seq for c in registry.history(unit="u1", purpose="model_training")] == [1, 3]
    assert [c.seq for c in registry.history(purpose="content_training")] == [4]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.declare("", default="opt_in"), "purpose must be a non-empty string"),
        (lambda r: r.declare("x", default="optin"), "default must be 'opt_out' or 'opt_in'; got"),
        (lambda r: r.opt_out("u1", purpose=3), "purpose must be .*; got 3"),
        (lambda r: r.allowed(["u1"], purpose=None), "purpose must be .*; got None"),
        (lambda r: r.history(purpose="x" * 201), "at most 200 characters"),
        (lambda r: r.declare("a\ud800"), "purpose must be valid Unicode text"),
        (lambda r: r.opt_out("u1", purpose="\ud800x"), "purpose must be valid Unicode text"),
        (lambda r: r.allowed(["u1"], purpose="a\x00b"), "purpose must be valid Unicode text"),
    ],
)
def test_bad_parameters_are_config_errors_naming_them(call: object, message: str) -> None:
    # Validation happens before any store access: a closed registry is enough.
    registry = ConsentRegistry.__new__(ConsentRegistry)
    with pytest.raises(ConfigError, match=message):
        call(registry)  # type: ignore[operator]


def test_a_million_units_are_decided_in_one_transaction(
    registry: ConsentRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vectorised: one store round trip per call, however many units (speed: benchmarks/)."""
    registry.opt_out(np.arange(0, 100_000, 7), purpose="model_training")
    units = np.random.default_rng(3).integers(0, 100_000, 1_000_000)
    store = registry._store
    opened = []
    real = store.transaction
    monkeypatch.setattr(store, "transaction", lambda *a, **k: opened.append(1) or real(*a, **k))
    out = registry.allowed(units, "model_training")
    np.testing.assert_array_equal(out, units % 7 != 0)
    assert len(opened) == 1


def test_concurrent_writers_keep_one_history(store_url: str) -> None:
    ConsentRegistry(store_url).close()  # create the schema once

    def worker(prefix: str) -> None:
        with ConsentRegistry(store_url) as own:
            for i in range(20):
                own.opt_out([f"{prefix}{i}", f"{prefix}{i}b"], purpose="model_training")

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with ConsentRegistry(store_url) as registry:
        changes = registry.history()
        assert [c.seq for c in changes] == list(range(1, 121))
        assert len({c.unit for c in changes}) == 120
        assert not registry.allowed([c.unit for c in changes], "model_training").any()


operations = st.lists(
    st.tuples(
        st.sampled_from(["opt_out", "opt_in", "declare_in", "declare_out"]),
        st.sampled_from(["p", "q"]),
        st.lists(st.integers(0, 9), max_size=4),
    ),
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_decisions_match_a_plain_model(registry: ConsentRegistry, ops: list) -> None:
    # Each example gets purposes of its own, so that examples share the store but not state.
    run = uuid.uuid4().hex[:8]
    defaults: dict[str, str] = {}
    choices: dict[tuple[str, int], str] = {}
    for op, purpose, units in ops:
        name = f"{purpose}_{run}"
        if op.startswith("declare"):
            default = "opt_in" if op == "declare_in" else "opt_out"
            if defaults.setdefault(name, default) != default:
                with pytest.raises(ConfigError):
                    registry.declare(name, default=default)  # type: ignore[arg-type]
            else:
                registry.declare(name, default=default)  # type: ignore[arg-type]
        else:
            getattr(registry, op)(units, purpose=name)
            choices.update({(name, unit): op for unit in units})
    for purpose in ("p", "q"):
        name = f"{purpose}_{run}"
        if defaults.get(name, "opt_out") == "opt_out":  # silence allows
            expected = [choices.get((name, unit)) != "opt_out" for unit in range(10)]
        else:  # silence refuses
            expected = [choices.get((name, unit)) == "opt_in" for unit in range(10)]
        assert registry.allowed(list(range(10)), name).tolist() == expected


@pytest.mark.postgres
def test_the_password_never_shows(postgres_url: str) -> None:
    with_password = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:s3cr3t@")
    with ConsentRegistry(with_password) as registry:
        assert "s3cr3t" not in repr(registry)
        assert "s3cr3t" not in registry.url


def test_an_unreachable_store_is_a_ledger_error_without_the_password() -> None:
    with pytest.raises(LedgerError) as caught:
        ConsentRegistry("postgresql://app:s3cr3t@127.0.0.1:1/consent")
    assert "s3cr3t" not in str(caught.value)
    assert "app:***@" in str(caught.value)


def test_is_opt_in_says_how_a_purpose_was_declared(store_url: str) -> None:
    with ConsentRegistry(store_url) as first, ConsentRegistry(store_url) as second:
        assert not second.is_opt_in("content_training")  # undeclared: opt-out
        first.declare("content_training", default="opt_in")
        first.declare("usage", default="opt_out")
        assert second.is_opt_in("content_training")
        assert not second.is_opt_in("usage")


def test_a_pickled_registry_opens_the_same_store(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///relative.db" if store_url.startswith("sqlite") else store_url
    with ConsentRegistry(url) as registry:
        registry.opt_out("u1", purpose="model_training")
        payload = pickle.dumps(registry)
    monkeypatch.chdir(tmp_path.parent)  # a worker elsewhere: the relative path must not move
    with pickle.loads(payload) as copy:
        assert copy.allowed(["u1", "u2"], "model_training").tolist() == [False, True]
        if url.startswith("sqlite"):
            assert copy.url == f"sqlite:///{tmp_path / 'relative.db'}"
        else:
            assert copy.url == registry.url
