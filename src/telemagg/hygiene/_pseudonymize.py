"""Keyed pseudonyms for identifiers: HMAC-SHA256 under a secret key.

Why HMAC and not a plain hash: a plain SHA-256 of a user id is linkable by anyone who can
enumerate candidate ids (phone numbers, sequential integers, e-mail lists) and hash them.
HMAC-SHA256 is a pseudorandom function under a secret key (Bellare 2006, "New Proofs for
NMAC and HMAC: Security without Collision-Resistance"; RFC 2104): without the key its
outputs are indistinguishable from random, so a pseudonym can neither be reversed nor
linked to an id, and rotating the key unlinks new pseudonyms from old ones.

Pseudonymised data is still personal data (GDPR Recital 26) for whoever holds the key;
pseudonymisation protects stored and shared event data, it does not replace the
differential privacy applied at release.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg._identity import factorize_ids
from telemagg.errors import ConfigError

__all__ = ["MIN_KEY_BYTES", "pseudonymize"]

MIN_KEY_BYTES = 16
"""The shortest key accepted: 128 bits, the security level of HMAC-SHA256 with such a key."""


def pseudonymize(ids: Iterable[Any] | npt.ArrayLike, key: bytes) -> npt.NDArray[np.object_]:
    """Replace each id by the hex HMAC-SHA256 of its canonical form under ``key``.

    ``ids`` may be a numpy array, a pandas Series or any sequence of ``str``/``int`` ids
    (``42`` and ``"42"`` are the same id; see :mod:`telemagg._identity`). The
    result is a numpy object array of 64-character lowercase hex strings, one per id, with
    ``None`` where an id was missing (None, NaN, NA), so that the aggregator can still count
    those events as ``missing_privacy_unit``. Each distinct id is hashed once.

    The same id under the same key always gives the same pseudonym; another key gives an
    unrelated one. The key never appears in a result, a repr or an error message.

    Full 256-bit digests are returned on purpose: a 64-bit truncation would reach a 50%
    chance of some collision at about 5 billion distinct ids, and two units sharing a
    pseudonym would silently share one contribution bound.

    >>> key = bytes(range(16))
    >>> out = pseudonymize(["alice", "bob", "alice", None], key=key)
    >>> out[0] == out[2], out[0] != out[1], out[3] is None, len(out[0])
    (True, True, True, 64)
    >>> bool(pseudonymize([42], key=key)[0] == pseudonymize(["42"], key=key)[0])
    True
    >>> pseudonymize(["alice"], key=b"short")
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: key must be at least 16 bytes long; got 5 bytes
    """
    _check_key(key)
    factorized = factorize_ids(ids)
    keyed = hmac.new(key, digestmod=hashlib.sha256)  # the key schedule, computed once

    def digest(canonical: str) -> str:
        mac = keyed.copy()
        mac.update(canonical.encode("utf-8"))
        return mac.hexdigest()

    # One slot more than there are distinct ids: code -1 (missing) indexes the trailing None.
    pseudonyms = np.empty(len(factorized.distinct) + 1, dtype=object)
    pseudonyms[:-1] = [digest(canonical) for canonical in factorized.distinct]
    pseudonyms[-1] = None
    result: npt.NDArray[np.object_] = pseudonyms[factorized.codes]
    return result


def _check_key(key: object) -> None:
    """Validate a key without ever putting it (or any part of it) into a message."""
    if not isinstance(key, bytes | bytearray):
        hint = " (encode it, e.g. key.encode())" if isinstance(key, str) else ""
        raise ConfigError(
            f"key must be bytes of at least {MIN_KEY_BYTES} bytes; got a {type(key).__name__}{hint}"
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"key must be at least {MIN_KEY_BYTES} bytes long; got {len(key)} bytes")
