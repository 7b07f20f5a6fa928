"""How recorded charges compose into the budget spent. The rule, and why it holds.

Each charge keeps its release's :class:`~telemagg._mechanisms.PrivacyLoss`: the part accounted
in approximate DP (``approx_epsilon``, ``approx_delta``: Laplace noise, partition-selection
thresholds), the part accounted in zero-concentrated DP (``rho``: Gaussian noise) and the
delta the release set aside to convert its rho (``gaussian_delta = delta - approx_delta``).
Over the counted charges, with sums written Σ::

    zcdp  = Σ approx_epsilon + zcdp_to_epsilon(Σ rho, Σ gaussian_delta)
    basic = Σ epsilon                                   (each release standing alone)
    spent = (min(zcdp, basic), Σ approx_delta + Σ gaussian_delta)

Why both are valid, so their minimum is:

* ``basic``: basic composition of (epsilon_i, delta_i)-DP releases is (Σ epsilon_i, Σ delta_i)-DP
  (Dwork & Roth 2014, Thm 3.16), and Σ delta_i is the delta above.
* ``zcdp``: the Gaussian parts compose to (Σ rho)-zCDP (Bun & Steinke 2016, Lemma 2.3), which is
  (zcdp_to_epsilon(Σ rho, D), D)-DP for any D (Bun & Steinke 2016, Prop. 1.3; the tight
  conversion of Canonne, Kamath & Steinke 2020, computed by OpenDP's
  ``make_zCDP_to_approxDP``); take D = Σ gaussian_delta. The approximate parts compose to
  (Σ approx_epsilon, Σ approx_delta)-DP. Both groups run interleaved and adaptively; basic
  composition still adds them (concurrent composition: Vadhan & Wang 2021, Lyu 2022).

Over many Gaussian releases ``zcdp`` is much smaller than ``basic`` (rho adds linearly, its
epsilon grows like its square root); ``min`` guarantees the ledger never charges more than
summing the releases' own (epsilon, delta).

A charge is admitted only if spent *after* it is within the total in both coordinates, with
a relative tolerance of 1e-9 (:data:`TOLERANCE`) so that float rounding (the ledger keeps
exact sums, but each release's loss and the zCDP conversion are floats) never refuses a
release that fits exactly, e.g. ten charges of 0.1 in 1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg.errors import ConfigError

__all__ = ["TOLERANCE", "Sums", "check_loss", "within"]

#: Relative float tolerance when comparing spent budget with the total.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Sums:
    """Sums of the counted charges' parts. ``Sums()`` is nothing spent.

    >>> Sums(epsilon=2.0, approx_epsilon=2.0, approx_delta=1e-7).spent()
    (2.0, 1e-07)
    """

    count: int = 0
    epsilon: float = 0.0
    approx_epsilon: float = 0.0
    approx_delta: float = 0.0
    rho: float = 0.0
    gaussian_delta: float = 0.0

    def plus(self, loss: PrivacyLoss) -> Sums:
        """These sums with one more charge."""
        return Sums(
            self.count + 1,
            self.epsilon + loss.epsilon,
            self.approx_epsilon + loss.approx_epsilon,
            self.approx_delta + loss.approx_delta,
            self.rho + loss.rho,
            self.gaussian_delta + loss.gaussian_delta,
        )

    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by these charges: the composition rule of this module."""
        zcdp = self.approx_epsilon + zcdp_to_epsilon(self.rho, self.gaussian_delta)
        return min(zcdp, self.epsilon), self.approx_delta + self.gaussian_delta


def within(spent: tuple[float, float], total: tuple[float, float]) -> bool:
    """Whether ``spent`` fits in ``total`` in both coordinates (up to :data:`TOLERANCE`).

    >>> within((1.0000000001, 0.0), (1.0, 0.0)), within((1.01, 0.0), (1.0, 0.0))
    (True, False)
    """
    return all(s <= t * (1.0 + TOLERANCE) for s, t in zip(spent, total, strict=True))


def check_loss(loss: PrivacyLoss) -> PrivacyLoss:
    """``loss`` if it is a consistent privacy loss, else ConfigError naming the field.

    Consistent: every part finite and >= 0, delta < 1, approx_delta <= delta, rho > 0 only
    with some delta to convert it, and the standalone epsilon covers its own parts (so summing
    standalone epsilons is a valid bound). Negative zeros are normalised for hashing.

    >>> check_loss(PrivacyLoss(1.0, 0.0, 1.0, 1e-6))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: loss.approx_delta must be <= loss.delta; got approx_delta=...
    """
    if not isinstance(loss, PrivacyLoss):
        raise ConfigError(f"loss must be a telemagg PrivacyLoss; got {type(loss).__name__}")
    parts = {
        name: getattr(loss, name)
        for name in ("epsilon", "delta", "approx_epsilon", "approx_delta", "rho")
    }
    for name, value in parts.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"loss.{name} must be a number; got {value!r}")
        if not (math.isfinite(value) and value >= 0.0):
            raise ConfigError(f"loss.{name} must be finite and >= 0; got {value!r}")
    if loss.delta >= 1.0:
        raise ConfigError(f"loss.delta must be < 1; got {loss.delta!r}")
    if loss.approx_delta > loss.delta:
        raise ConfigError(
            "loss.approx_delta must be <= loss.delta; "
            f"got approx_delta={loss.approx_delta!r}, delta={loss.delta!r}"
        )
    if loss.rho > 0.0 and loss.gaussian_delta <= 0.0:
        raise ConfigError(
            f"loss.rho={loss.rho!r} needs delta > approx_delta to convert it; "
            f"got delta={loss.delta!r}, approx_delta={loss.approx_delta!r}"
        )
    own = loss.approx_epsilon + zcdp_to_epsilon(loss.rho, loss.gaussian_delta)
    if loss.epsilon < own * (1.0 - TOLERANCE):
        raise ConfigError(
            f"loss.epsilon={loss.epsilon!r} is below its own parts: approx_epsilon + "
            f"zcdp_to_epsilon(rho, delta - approx_delta) = {own!r}"
        )
    return PrivacyLoss(**{name: float(value) + 0.0 for name, value in parts.items()})
