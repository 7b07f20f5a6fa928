"""Compiled kernels: numba (the optional ``fast`` extra), each the twin of a numpy path.

A kernel gives exactly the results of the code it stands in for (Hypothesis parity tests in
``tests/test_kernels.py`` run both on random and adversarial inputs): contribution bounding
(packing, sorting and both levels in one pass per bucket), sorting 64-bit words (by radix,
where that is the faster sort here) and BLAKE2b of many strings (the digests of
``hashlib``, without a Python call per string).

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

import itertools
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg.errors import ConfigError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

KERNELS_ENV = "TELEMAGG_KERNELS"
"""``auto`` (or unset), ``eager`` or ``numpy``: see the module docstring. Read when
telemagg is imported; any other value is refused there (:class:`ConfigError`)."""
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
    "text_hashes",
    "warm_up",
]

_state: dict[str, Any] = {}
"""``kernels``: the loaded module (None: the numpy path), once loaded; ``radix``: whether
the compiled radix sort beats numpy's sort on this machine (measured once, at load: see
:func:`_radix_sorts_faster`)."""


def _mode_from_environment() -> str:
    """:data:`KERNELS_ENV`'s mode; an unknown value is refused (a typo would otherwise
    choose ``auto`` silently).

    >>> _MODE in ("auto", "eager", "numpy")
    True
    """
    raw = os.environ.get(KERNELS_ENV, "")
    mode = raw.strip().lower() or "auto"
    if mode not in ("auto", "eager", "numpy"):
        raise ConfigError(
            f"environment variable {KERNELS_ENV} must be auto, eager or numpy (or unset);"
            f" got {raw!r}"
        )
    return mode


_MODE = _mode_from_environment()
"""Read once, when telemagg is imported: a bad value fails there, before any release."""


def _load() -> ModuleType | None:
    if "kernels" not in _state:
        kernels = None
        if _MODE != "numpy":
            try:
                from telemagg import _numba_kernels
            except ImportError:
                pass
            else:
                kernels = _numba_kernels
                _state["radix"] = _radix_sorts_faster(kernels)
        _state["kernels"] = kernels
    loaded: ModuleType | None = _state["kernels"]
    return loaded


def _radix_sorts_faster(kernels: ModuleType) -> bool:
    """Whether :func:`~telemagg._numba_kernels.radix_sort` sorts a bucket's words faster
    than ``np.sort`` here (best of 5, 128k words). The two give the same order, so this
    choice only changes speed: numpy's vectorised sort is several times faster on some
    CPUs than on others (10M words: 0.10 s on the AMD Zen 5 of earlier runs, 0.7 s on the
    Zen 4 of later ones), the radix sort's speed follows memory."""
    # (fixed words to time two sorts on: nothing drawn here is ever released)
    words = np.random.default_rng(0).integers(0, 2**64, 1 << 17, np.uint64, endpoint=False)
    kernels.radix_sort(words[:MIN_ROWS])  # loaded (compiled) before it is timed

    def best(sort: Callable[[U64], U64]) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            sort(words)
            times.append(time.perf_counter() - started)
        return min(times)

    return best(kernels.radix_sort) < best(np.sort)


def _for(rows: int) -> ModuleType | None:
    """The kernels for an input of ``rows`` rows: loaded ones from :data:`MIN_ROWS` rows;
    loading them first from :data:`LOAD_ROWS` (``auto``) or :data:`MIN_ROWS` (``eager``)."""
    if rows < MIN_ROWS:
        return None
    if "kernels" in _state or rows >= LOAD_ROWS or _MODE == "eager":
        return _load()
    return None


def warm_up() -> bool:
    """Load (compiling if needed) the kernels now; whether they run. A service that
    releases often, or a benchmark, calls this once at start."""
    kernels = _load()
    if kernels is None:
        return False
    words = np.arange(MIN_ROWS, dtype=np.uint64)
    kernels.bound_buckets(words, words, words, 1, 1, 1, 1)
    _kept(kernels, words, words, words, 0, 1, 1)
    kernels.blake2b_64(words.view(np.uint8), np.zeros(1, np.int64), np.ones(1, np.int64))
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
    max_partitions: int,
    max_contributions: int,
) -> I64 | None:
    """``_bounding._kept_rows`` compiled; None when the kernels are off."""
    kernels = _for(unit_id.size)
    if kernels is None:
        return None
    return _kept(
        kernels, unit_id, pair_key, priority, shared_bits, max_partitions, max_contributions
    )


def _kept(
    kernels: ModuleType,
    unit_id: U64,
    pair_key: U64,
    priority: U64,
    shared_bits: int,
    max_partitions: int,
    max_contributions: int,
) -> I64:
    """One bucket bounded: packed, sorted by the faster sort here, one compiled pass."""
    n = unit_id.size
    widths = kernels.packed_widths(n)
    limits = _limits(n, max_partitions, max_contributions)
    if _state.get("radix", True):
        rows: I64 = kernels.kept_rows(unit_id, pair_key, priority, shared_bits, *widths, *limits)
        return rows
    packed = kernels.packed_rows(unit_id, pair_key, priority, shared_bits, *widths)
    packed.sort()
    rows = kernels.kept_in_sorted(packed, unit_id, pair_key, priority, *widths, *limits)
    return rows


def _limits(rows: int, max_partitions: int, max_contributions: int) -> tuple[int, int]:
    """The limits as the kernels take them: within [0, rows] (the same rows kept; a
    Python integer of any size fits the kernels' int64)."""
    return max(0, min(max_partitions, rows)), max(0, min(max_contributions, rows))


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
    limits = _limits(n, max_partitions, max_contributions)
    if _state.get("radix", True):  # all in one compiled call
        keep: npt.NDArray[np.bool_] = kernels.bound_buckets(
            unit_id, pair_key, priority, bits, outer, *limits
        )
        return keep
    keep = np.zeros(n, dtype=bool)  # the same, numpy sorting each bucket
    bucket = kernels.bucket_bytes(unit_id, bits)
    for group in range(1 << outer):
        rows, units, pairs, prios, starts = kernels.group_rows(
            bucket, group, bits - outer, unit_id, pair_key, priority
        )
        for lo, hi in itertools.pairwise(starts.tolist()):
            if hi > lo:
                kept = _kept(kernels, units[lo:hi], pairs[lo:hi], prios[lo:hi], bits, *limits)
                keep[rows[lo + kept]] = True
    return keep


def sort_words(words: U64) -> U64:
    """``np.sort`` of 64-bit words: by the compiled radix sort where it is the faster (6M
    words: 0.24 against 0.46 CPU s on the Zen 4 machine).

    >>> sort_words(np.array([3, 1, 2], dtype=np.uint64)).tolist()
    [1, 2, 3]
    """
    kernels = _for(words.size)
    if kernels is None or not _state.get("radix", True):
        return np.sort(words)
    out: U64 = kernels.radix_sort(words)
    return out


def text_hashes(data: bytes, pieces: int) -> U64 | None:
    """``_key_index._text_hashes`` of ``data``: ``pieces`` NUL-separated byte strings, each
    hashed by the compiled BLAKE2b (the same digests as ``hashlib``'s); None when the
    kernels are off."""
    kernels = _for(pieces)
    if kernels is None:
        return None
    buffer = np.frombuffer(data, dtype=np.uint8)
    cuts = np.flatnonzero(buffer == 0)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), cuts + 1])
    ends = np.append(cuts, buffer.size)
    hashes: U64 = kernels.blake2b_64(buffer, starts, ends)
    return hashes
