"""What a release needs from a budget ledger, and ``ledger=`` as given or by URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from telemagg._mechanisms import PrivacyLoss
from telemagg.errors import ConfigError, TelemaggError
from telemagg.ledger._ledger import Charge, Ledger


class LedgerLike(Protocol):
    """What the aggregator needs from a budget ledger (:class:`telemagg.Ledger`)."""

    def charge(
        self, loss: PrivacyLoss, *, query: Mapping[str, Any], label: str | None = None
    ) -> Charge: ...


@contextlib.contextmanager
def open_ledger(ledger: LedgerLike | str | None) -> Iterator[LedgerLike | None]:
    """``ledger=`` as given, or the existing ledger at a URL (opened with its own total and
    closed after use); anything else is a ConfigError naming the parameter."""
    if isinstance(ledger, str):
        try:
            opened = Ledger.open(ledger)
        except TelemaggError as exc:
            raise ConfigError(
                f"ledger (a URL string) must name an existing ledger: {exc}; create one with"
                " tm.Ledger(url, epsilon=..., delta=...)"
            ) from exc
        try:
            yield opened
        finally:
            opened.close()
        return
    if ledger is not None and not callable(getattr(ledger, "charge", None)):
        raise ConfigError(
            f"ledger must be a tm.Ledger, the URL of one, or None; got {type(ledger).__name__}"
        )
    yield ledger
