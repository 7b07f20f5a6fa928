"""Compiled kernels: numba (the optional ``fast`` extra), each the twin of a numpy path.

A kernel gives exactly the results of the numpy code it stands in for (Hypothesis parity
tests in ``tests/test_kernels.py`` run both on random and adversarial inputs); it fuses
passes that numpy makes separately and sorts by radix. Without numba, or with
``TELEMAGG_KERNELS=numpy`` in the environment, the numpy path runs. Kernels are compiled on
first use (and cached on disk beside the module where that is writable, so later processes
only load them); inputs too small to gain take the numpy path.

>>> isinstance(enabled(), bool)
True
"""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

KERNELS_ENV = "TELEMAGG_KERNELS"
"""``numpy``: never use the compiled kernels (to compare, or where JIT compiling is not
wanted); anything else, or unset: use them when numba is installed."""
MIN_ROWS = 4096
"""Smaller inputs take the numpy path (a kernel's first call in a process loads it)."""

__all__ = ["KERNELS_ENV", "MIN_ROWS", "bound_buckets", "enabled", "kept_rows", "sort_words"]


def enabled() -> bool:
    """Whether the compiled kernels run (numba importable, not switched off)."""
    return _compiled() is not None


@cache
def _compiled() -> ModuleType | None:
    if os.environ.get(KERNELS_ENV, "").strip().lower() == "numpy":
        return None
    try:
        from telemagg import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


def kept_rows(
    unit_id: U64,
    pair_key: U64,
    priority: U64,
    shared_bits: int,
    widths: tuple[int, int, int],
    max_partitions: int,
    max_contributions: int,
) -> I64 | None:
    """``_bounding._kept_rows`` compiled (the packed fields' ``widths``: position, pair,
    priority); None when the kernels are off."""
    kernels = _compiled()
    if kernels is None:
        return None
    n = unit_id.size
    rows: I64 = kernels.kept_rows(
        unit_id,
        pair_key,
        priority,
        shared_bits,
        *widths,
        max(0, min(max_partitions, n)),
        max(0, min(max_contributions, n)),
    )
    return rows


def bound_buckets(
    unit_id: U64,
    pair_key: U64,
    priority: U64,
    bits: int,
    outer: int,
    max_partitions: int,
    max_contributions: int,
) -> npt.NDArray[np.bool_] | None:
    """``_bounding.bound_contributions`` over ``2**bits`` buckets gathered ``2**outer``
    groups at a time, compiled; None when the kernels are off."""
    kernels = _compiled()
    if kernels is None:
        return None
    n = unit_id.size
    keep: npt.NDArray[np.bool_] = kernels.bound_buckets(
        unit_id, pair_key, priority, bits, outer,
        max(0, min(max_partitions, n)), max(0, min(max_contributions, n)),
    )  # fmt: skip
    return keep


def sort_words(words: U64) -> U64:
    """``np.sort`` of 64-bit words: a compiled radix sort of large inputs when the kernels
    run (6M words: 0.24 against 0.46 CPU s).

    >>> sort_words(np.array([3, 1, 2], dtype=np.uint64)).tolist()
    [1, 2, 3]
    """
    kernels = _compiled() if words.size >= MIN_ROWS else None
    if kernels is None:
        return np.sort(words)
    out: U64 = kernels.radix_sort(words)
    return out
