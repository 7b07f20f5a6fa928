"""Privacy losses and store access shared by the ledger tests."""

from __future__ import annotations

from typing import Any

from telemagg._mechanisms import PrivacyLoss, zcdp_to_epsilon
from telemagg._storage import open_store

QUERY: dict[str, Any] = {"by": ["event_name"], "metrics": ["count"], "policy": {"unit": "user"}}


def laplace(epsilon: float, delta: float = 0.0) -> PrivacyLoss:
    """A release accounted in approximate DP only (Laplace noise, thresholds)."""
    return PrivacyLoss(epsilon, delta, epsilon, delta)


def gaussian(rho: float, delta: float) -> PrivacyLoss:
    """A Gaussian-only release: rho, converted at ``delta`` for its standalone epsilon."""
    return PrivacyLoss(zcdp_to_epsilon(rho, delta), delta, 0.0, 0.0, rho)


def run_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the store behind the ledger's back, as an operator with database access could."""
    store = open_store(url)
    with store.transaction(write=True) as tx:
        tx.execute(sql, params)
    store.close()
