"""The consent gate: events of units without consent are dropped on arrival, and the held
events of units that withdraw it later are forgotten before the next release.

The Aggregator keeps a bookmark, the consent registry's history position before the
earliest check of the events it holds and what silence meant then; before every release it
asks the registry which units changed their choice since (a loop over changed units, never
over events) and removes those no longer allowed (:func:`without_units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from telemagg._identity import unit_hash
from telemagg._ingest import Batch
from telemagg._state import State
from telemagg.consent import ConsentRegistry
from telemagg.errors import ConfigError, TelemaggError
from telemagg.policy import Policy

CONSENT = "consent"  # the drop reason of events without consent

# (registry history position, purpose was opt-in), or (None, None) before any check
Bookmark = tuple[int | None, bool | None]


class ConsentSource(Protocol):
    """What the aggregator needs from a consent registry."""

    def allowed(self, units: Any, purpose: str) -> npt.NDArray[np.bool_]: ...

    def is_opt_in(self, purpose: str) -> bool: ...


def check_consent(
    policy: Policy,
    by: tuple[str, ...],
    numeric: tuple[str, ...],
    consent: ConsentSource | str | None,
    purpose: str | None,
) -> tuple[ConsentSource | None, str | None]:
    """``consent=`` and ``purpose=`` of an Aggregator, checked (a URL opens a registry)."""
    if isinstance(consent, str):
        try:
            consent = ConsentRegistry(consent)
        except TelemaggError as exc:
            raise ConfigError(
                f"consent (a URL string) cannot be opened as a consent registry: {exc}"
            ) from exc
    elif consent is not None and not (
        callable(getattr(consent, "allowed", None))
        and callable(getattr(consent, "is_opt_in", None))
    ):
        raise ConfigError(
            f"consent must be a tm.ConsentRegistry, its URL or None; got {type(consent).__name__}"
        )
    if consent is not None and not purpose:
        raise ConfigError(
            "purpose must name what the release is for when consent is given; got None"
        )
    if purpose is not None and consent is None:
        raise ConfigError(f"purpose={purpose!r} needs consent=<a tm.ConsentRegistry>")
    content = sorted(set(policy.content_columns) & {*by, *numeric})
    if content:
        if consent is None or purpose is None:
            raise ConfigError(
                f"columns {content} are customer content (Policy.content_columns): aggregating"
                " them needs consent=<registry> and an opt-in purpose"
            )
        if not consent.is_opt_in(purpose):
            raise ConfigError(
                f"columns {content} are customer content (Policy.content_columns) and purpose"
                f" {purpose!r} is opt-out: content may only be aggregated under an opt-in purpose"
                " (declare it with registry.declare(purpose, default='opt_in'))"
            )
    return consent, purpose


def bookmark(consent: ConsentSource, purpose: str) -> Bookmark:
    """The registry's history position and what silence means now, taken before the first
    consent check of held events; ``(None, None)`` for a source without a history."""
    if not isinstance(consent, ConsentRegistry):
        return None, None
    return consent.position(), consent.is_opt_in(purpose)


def earliest(bookmarks: Sequence[Bookmark]) -> Bookmark | None:
    """Where re-checking merged events starts: the earliest check of any of them (None when
    no event was checked against a registry's history)."""
    positions = [position for position, _ in bookmarks if position is not None]
    if not positions:
        return None
    return min(positions), next(opt_in for _, opt_in in bookmarks if opt_in is not None)


def admit(batch: Batch, consent: ConsentSource, purpose: str) -> Batch:
    """``batch`` without the events of units whose consent does not allow ``purpose``."""
    allowed = np.asarray(consent.allowed(batch.unit.uniques, purpose), dtype=bool)
    return batch.take(allowed[batch.unit.codes], CONSENT)


def changed_since(
    consent: ConsentRegistry, purpose: str, position: int, opt_in: bool | None
) -> tuple[int, list[Any]]:
    """The registry's position now and the units that changed their choice since
    ``position``. Raises if the purpose turned opt-in since (silence no longer allows)."""
    if consent.is_opt_in(purpose) != opt_in:
        raise ConfigError(
            f"purpose {purpose!r} was declared opt-in after this Aggregator absorbed events"
            " under its opt-out default: the silence of those units no longer allows them,"
            " and their events cannot be told apart; discard this Aggregator"
        )
    return consent.changed_since(position, purpose)


def withdrawn(consent: ConsentSource, purpose: str, changed: list[Any]) -> npt.NDArray[np.uint64]:
    """The unit ids, among ``changed`` units, that ``purpose`` no longer allows."""
    if not changed:
        return np.zeros(0, np.uint64)
    allowed = np.asarray(consent.allowed(changed, purpose), dtype=bool)
    units = [unit for unit, ok in zip(changed, allowed.tolist(), strict=True) if not ok]
    return np.fromiter((unit_hash(u) for u in units), np.uint64, len(units))


def without_units(state: State, unit_ids: npt.NDArray[np.uint64]) -> State:
    """``state`` without the rows of ``unit_ids``, counted as dropped for consent.

    Removing all of a unit's rows leaves every other unit's bounded rows as they were:
    bounding is per unit."""
    if len(state) == 0:
        return state
    gone = np.isin(state.unit_id, unit_ids)
    removed = int(np.count_nonzero(gone))
    if removed == 0:
        return state
    kept = state.select(~gone)
    kept.dropped[CONSENT] += removed
    return kept
