"""Compiled kernels: numba (the optional ``fast`` extra), each the twin of a numpy path.

A kernel gives exactly the results of the numpy code it stands in for (Hypothesis parity
tests in ``tests/test_kernels.py`` run both on random and adversarial inputs); it fuses
passes that numpy makes separately and sorts by radix.

Loading the kernels costs a process about 1 CPU second (importing numba, loading the
machine code cached beside the module), and 10-20 s the very first time (compiling). That is
more than a release of a million rows saves (about 0.06 s), so by default (``auto``) a
process loads them when it first bounds :data:`LOAD_ROWS` rows or more, or when told to
(:func:`warm_up`); until then, and in processes that never see such an input (a CLI run,
the demo), the numpy path runs. The environment variable ``TELEMAGG_KERNELS`` chooses:
``auto``; ``eager``: load them on the first input of :data:`MIN_ROWS` rows (a service
releasing often); ``numpy``: never. Without numba the numpy path always runs.

>>> isinstance(enabled(), bool)
True
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

KERNELS_ENV = "TELEMAGG_KERNELS"
"""``auto`` (or unset), ``eager`` or ``numpy``: see the module docstring."""
MIN_ROWS = 4096
"""Smaller inputs always take the numpy path (a kernel call costs more than it saves)."""
LOAD_ROWS = 4_000_000
"""Under ``auto``, the first input this large loads the kernels (it saves about a third of
the load time; the next such release pays the rest)."""

__all__ = [
    "KERNELS_ENV",
    "LOAD_ROWS",
    "MIN_ROWS",
    "bound_buckets",
    "enabled",
    "kept_rows",
    "sort_words",
    "warm_up",
]

_state: dict[str, ModuleType | None] = {}  # "kernels": the loaded module, or None: none


def _mode() -> str:
    mode = os.environ.get(KERNELS_ENV, "").strip().lower()
    return mode if mode in ("eager", "numpy") else "auto"


def _load() -> ModuleType | None:
    if "kernels" not in _state:
        _state["kernels"] = None
        if _mode() != "numpy":
            try:
                from telemagg import _numba_kernels
            except ImportError:
                pass
            else:
                _state["kernels"] = _numba_kernels
    return _state["kernels"]


def _for(rows: int) -> ModuleType | None:
    """The kernels for an input of ``rows`` rows: loaded ones from :data:`MIN_ROWS` rows;
    loading them first from :data:`LOAD_ROWS` (``auto``) or :data:`MIN_ROWS` (``eager``)."""
    if rows < MIN_ROWS:
        return None
    if "kernels" in _state:
        return _state["kernels"]
    if rows >= LOAD_ROWS or _mode() == "eager":
        return _load()
    return None


def warm_up() -> bool:
    """Load (compiling if needed) the kernels now; whether they run. A service that
    releases often, or a benchmark, calls this once at start."""
    kernels = _load()
    if kernels is None:
        return False
    words = np.arange(MIN_ROWS, dtype=np.uint64)
    kernels.radix_sort(words)
    kernels.bound_buckets(words, words, words, 1, 1, 1, 1)
    return True


def enabled() -> bool:
    """Whether the kernels can run in this process (numba importable, not switched off);
    this loads them."""
    return _load() is not None


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
    n = unit_id.size
    kernels = _for(n)
    if kernels is None:
        return None
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
    n = unit_id.size
    kernels = _for(n)
    if kernels is None:
        return None
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
    kernels = _for(words.size)
    if kernels is None:
        return np.sort(words)
    out: U64 = kernels.radix_sort(words)
    return out
