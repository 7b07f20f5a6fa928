"""Identifiers in canonical string form, factorised: each distinct identifier handled once.

Pseudonymisation and consent both work on *identifiers* (privacy units, user ids, device ids)
that arrive as numpy arrays, pandas Series or plain lists, as strings or integers. Both
compare them by the one canonical form that also decides bounding, defined in
:mod:`telemagg._identity` (``42``, ``"42"`` and ``42.0`` are one id; a UUID is its canonical
string; floats must be exact integers below 2**53; NUL characters and lone surrogates are
refused). This module re-exports those functions for the hygiene and consent code.

>>> factorize_ids([42, "42", None]).distinct
['42']
"""

from __future__ import annotations

from telemagg._identity import FactorizedIds, as_1d_array, factorize_ids, is_missing

__all__ = ["FactorizedIds", "as_1d_array", "factorize_ids", "is_missing"]
