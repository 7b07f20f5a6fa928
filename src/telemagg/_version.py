"""The installed telemagg version (recorded in release metadata and ledger charges)."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache  # read once: every release records it, and a lookup costs ~2 ms
def library_version() -> str:
    """The installed distribution's version; ``0+unknown`` when run from a bare source tree.

    >>> library_version() != ""
    True
    """
    try:
        return metadata.version("telemagg")
    except metadata.PackageNotFoundError:
        return "0+unknown"
