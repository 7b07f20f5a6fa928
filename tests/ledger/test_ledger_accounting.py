"""The composition rule, checked against OpenDP's conversions in _mechanisms."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import gaussian, laplace

from telemagg._mechanisms import PrivacyLoss, rho_within, zcdp_to_epsilon
from telemagg.errors import ConfigError
from telemagg.ledger._accounting import TOLERANCE, Sums, check_loss, within
from telemagg.ledger._ledger import parse_window


def compose(losses: list[PrivacyLoss]) -> tuple[float, float]:
    sums = Sums()
    for loss in losses:
        sums = sums.plus(loss)
    return sums.spent()


releases = st.one_of(
    st.builds(laplace, st.floats(0.0, 2.0), st.sampled_from([0.0, 1e-9, 1e-7])),
    st.builds(gaussian, st.floats(1e-6, 1.0), st.sampled_from([1e-12, 1e-9, 1e-7, 1e-5])),
    st.builds(
        lambda eps, rho, d: PrivacyLoss(eps + zcdp_to_epsilon(rho, d), 2 * d, eps, d, rho),
        st.floats(0.0, 1.0),
        st.floats(1e-6, 0.5),
        st.sampled_from([1e-10, 1e-8, 1e-6]),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(releases, min_size=1, max_size=12))
def test_never_more_than_summing_standalone_losses(losses: list[PrivacyLoss]) -> None:
    spent_eps, spent_delta = compose(losses)
    assert spent_eps <= math.fsum(loss.epsilon for loss in losses) * (1 + 1e-12)
    assert spent_delta == pytest.approx(math.fsum(loss.delta for loss in losses), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(releases, min_size=2, max_size=8), st.randoms(use_true_random=False))
def test_order_does_not_matter(losses: list[PrivacyLoss], rng: object) -> None:
    shuffled = list(losses)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert compose(shuffled) == pytest.approx(compose(losses), rel=1e-9)


def test_gaussian_only_is_the_opendp_conversion_of_summed_rho() -> None:
    releases = [gaussian(0.02, 1e-7)] * 10
    assert compose(releases) == pytest.approx((zcdp_to_epsilon(0.2, 1e-6), 1e-6), rel=1e-12)
    # Over many releases it is much tighter than basic composition (sqrt growth).
    assert compose(releases)[0] < 0.5 * 10 * releases[0].epsilon


def test_laplace_only_is_basic_composition() -> None:
    assert compose([laplace(0.1, 1e-8), laplace(0.4, 2e-8)]) == pytest.approx((0.5, 3e-8))


def test_one_release_costs_its_standalone_loss() -> None:
    rho = rho_within(1.0, 1e-6)
    assert compose([gaussian(rho, 1e-6)])[0] == pytest.approx(1.0, rel=1e-6)


def test_within_tolerance_is_relative_and_tight() -> None:
    assert within((1.0 + 0.5 * TOLERANCE, 0.0), (1.0, 0.0))
    assert not within((1.0 + 2 * TOLERANCE, 0.0), (1.0, 0.0))
    assert not within((0.5, 1e-6 * (1 + 2 * TOLERANCE)), (1.0, 1e-6))
    assert within((0.0, 0.0), (1.0, 0.0))
    assert not within((0.0, 1e-300), (1.0, 0.0))


def test_check_loss_normalises_negative_zero() -> None:
    loss = check_loss(PrivacyLoss(-0.0, -0.0, -0.0, -0.0, -0.0))
    assert all(math.copysign(1.0, getattr(loss, f)) == 1.0 for f in ("epsilon", "rho"))


def test_check_loss_refuses_non_numbers() -> None:
    with pytest.raises(ConfigError, match=r"loss.rho must be a number; got '0.1'"):
        check_loss(PrivacyLoss(1.0, 1e-6, 1.0, 0.0, "0.1"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="loss must be a telemagg PrivacyLoss; got tuple"):
        check_loss((1.0, 0.0, 1.0, 0.0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("15m", 900), ("12h", 43_200), ("30d", 2_592_000), ("2w", 1_209_600)],
)
def test_parse_window(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds
