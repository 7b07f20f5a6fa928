"""The compiled kernels (numba, the ``fast`` extra) against the numpy paths they replace.

Each kernel must give exactly the numpy path's result, and both the exact reference's, on
random and adversarial inputs: units and pair keys sharing prefixes, priorities tying in
their prefix or exactly, a unit's pairs interleaving with another's, huge groups beside
single rows. Skipped where numba is not installed (CI installs it; its polars 1.x rerun
runs without it, through the numpy paths).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.strategies import colliding_rows
from tests.test_bounding import (
    adversarial_rows,
    clashing_rows,
    nested_prefix_rows,
    reference_bound,
)
from tests.test_bounding_buckets import spread_rows

from telemagg import _bounding, _kernels
from telemagg._identity import _blake
from telemagg._key_index import _text_hashes

pytest.importorskip("numba")
from telemagg import _numba_kernels


def compiled_kept(unit, pair, prio, l0, linf, shared=0, radix=True) -> np.ndarray:
    """Mask of the rows the compiled one-bucket kernel keeps, its words sorted by the
    compiled radix sort or by numpy's (the choice made per machine at load)."""
    n = unit.size
    widths = _bounding._packed_widths(n)
    limits = (min(l0, n), min(linf, n))
    if radix:
        rows = _numba_kernels.kept_rows(unit, pair, prio, shared, *widths, *limits)
    else:
        packed = _numba_kernels.packed_rows(unit, pair, prio, shared, *widths)
        packed.sort()
        rows = _numba_kernels.kept_in_sorted(packed, unit, pair, prio, *widths, *limits)
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    assert len(set(rows.tolist())) == rows.size  # each row at most once
    return keep


def numpy_kept(unit, pair, prio, l0, linf, shared=0) -> np.ndarray:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "MIN_ROWS", 2**62)  # never the kernel
        return _bounding._bound(unit, pair, prio, l0, linf, shared)


@given(rows=nested_prefix_rows(), l0=st.integers(1, 5), linf=st.integers(1, 5))
@settings(max_examples=500, deadline=None)
def test_kernel_keeps_the_rows_of_the_numpy_path_on_nested_prefixes(rows, l0, linf) -> None:
    unit, pair, prio, shared = rows
    expected = _bounding._bound_exactly(unit, pair, prio, l0, linf).tolist()
    assert numpy_kept(unit, pair, prio, l0, linf, shared).tolist() == expected
    assert compiled_kept(unit, pair, prio, l0, linf, shared).tolist() == expected
    assert compiled_kept(unit, pair, prio, l0, linf, shared, radix=False).tolist() == expected


@given(
    rows=st.one_of(adversarial_rows(), colliding_rows(), clashing_rows()),
    l0=st.integers(1, 4),
    linf=st.integers(1, 4),
)
@settings(max_examples=500, deadline=None)
def test_kernel_keeps_the_reference_rows_on_adversarial_rows(rows, l0, linf) -> None:
    """Rows crafted against the packed sort, colliding keys and tying priorities, and
    nearly every group sharing its prefix with another (many large re-sorted runs)."""
    unit, pair, prio = rows
    expected = reference_bound(unit, pair, prio, l0, linf)
    for radix in (True, False):
        kept = compiled_kept(unit, pair, prio, l0, linf, radix=radix)
        assert set(np.flatnonzero(kept).tolist()) == expected


@given(
    rows=spread_rows(),
    l0=st.integers(1, 3),
    linf=st.integers(1, 3),
    bits=st.integers(0, 7),
    outer=st.integers(0, 3),
)
@settings(max_examples=300, deadline=None)
def test_buckets_kernel_keeps_the_rows_of_one_pass(rows, l0, linf, bits, outer) -> None:
    """Bucketed by the top ``bits`` bits of the unit, ``outer`` of them per gathered group,
    in one compiled call (radix sorts) or bucket by bucket (numpy sorts): the rows one pass
    keeps."""
    unit, pair, prio = rows
    outer = min(outer, bits)
    expected = _bounding._bound_exactly(unit, pair, prio, l0, linf).tolist()
    compiled = _numba_kernels.bound_buckets(unit, pair, prio, bits, outer, l0, linf)
    assert compiled.tolist() == expected
    assert _kernels.warm_up()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_kernels._state, "radix", False)
        patch.setattr(_kernels, "MIN_ROWS", 1)
        keep = _kernels.bound_buckets(unit, pair, prio, bits, outer, l0, linf)
    assert keep is not None
    assert keep.tolist() == expected


def test_bound_contributions_takes_the_kernels_and_agrees_with_numpy() -> None:
    """A large input through the public entry point: the compiled buckets and the numpy
    buckets keep the same rows (limits 1 and large, so ties at the cut and whole pairs)."""
    rng = np.random.default_rng(7)
    n = 300_000
    unit = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)[rng.integers(0, 20_000, n)]
    pair = unit ^ rng.integers(0, 6, n, dtype=np.uint64)
    prio = rng.integers(0, 2**12, n, dtype=np.uint64) << np.uint64(52)  # prefixes tie
    assert _kernels.warm_up()
    for l0, linf in ((1, 1), (3, 2), (10**9, 10**12)):
        limits = {"max_partitions": l0, "max_contributions": linf}
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(_kernels._state, "kernels", None)
            expected = _bounding.bound_contributions(unit, pair, prio, **limits).tolist()
        for radix in (True, False):
            with pytest.MonkeyPatch.context() as patch:
                patch.setitem(_kernels._state, "radix", radix)
                got = _bounding.bound_contributions(unit, pair, prio, **limits)
            assert got.tolist() == expected


@given(
    st.lists(st.integers(0, 2**64 - 1), max_size=300),
    st.sampled_from([0, 11, 33, 60]),
)
@settings(max_examples=200, deadline=None)
def test_radix_sort_is_np_sort(values: list[int], shift: int) -> None:
    keys = np.asarray(values, dtype=np.uint64) >> np.uint64(shift)  # digits that never vary
    assert _numba_kernels.radix_sort(keys).tolist() == np.sort(keys).tolist()


def loaded_after_bounding(mode: str | None, rows: int) -> str:
    """In a fresh process under ``TELEMAGG_KERNELS=mode``: whether bounding ``rows`` rows
    loaded the kernels, and whether they can run."""
    code = (
        "import numpy as np; from telemagg import _bounding, _kernels\n"
        f"a = np.arange({rows}, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)\n"
        "_bounding.bound_contributions(a, a, a, max_partitions=1, max_contributions=1)\n"
        "print('kernels' in _kernels._state, _kernels.enabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != _kernels.KERNELS_ENV}
    if mode is not None:
        env[_kernels.KERNELS_ENV] = mode
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_an_unknown_mode_is_refused_when_telemagg_is_imported() -> None:
    env = {**os.environ, _kernels.KERNELS_ENV: "eagre"}
    out = subprocess.run(
        [sys.executable, "-c", "import telemagg"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "ConfigError" in out.stderr
    assert f"environment variable {_kernels.KERNELS_ENV} must be auto, eager or numpy" in out.stderr
    assert "got 'eagre'" in out.stderr


def test_the_environment_chooses_when_the_kernels_load() -> None:
    """``auto``: a small input never loads them (a CLI run does not pay for them), a large
    one does; ``eager``: any input of MIN_ROWS rows; ``numpy``: never."""
    small = _kernels.MIN_ROWS + 1
    assert loaded_after_bounding(None, small) == "False True"
    assert loaded_after_bounding("auto", _kernels.LOAD_ROWS) == "True True"
    assert loaded_after_bounding("eager", small) == "True True"
    assert loaded_after_bounding("numpy", _kernels.LOAD_ROWS) == "True False"
    assert loaded_after_bounding(" Eager ", small) == "True True"  # case and spaces aside


def test_sort_words_sorts_large_inputs_as_np_sort() -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64, 50_000, dtype=np.uint64, endpoint=False)
    words[::7] = words[1]  # repeated words
    assert _kernels.sort_words(words).tolist() == np.sort(words).tolist()
    assert _kernels.sort_words(words[:10]).tolist() == np.sort(words[:10]).tolist()


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.integers(0, 3).map(lambda k: b"\xab" * (128 * k)),  # block boundaries
            st.integers(1, 3).map(lambda k: b"\x01" * (128 * k + 1)),
        ),
        max_size=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_compiled_blake2b_gives_hashlib_digests(pieces: list[bytes]) -> None:
    """Every length around BLAKE2b's 128-byte blocks, empty pieces and NUL bytes inside."""
    data = b"".join(pieces)
    ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    starts = ends - np.asarray([len(p) for p in pieces], dtype=np.int64)
    got = _numba_kernels.blake2b_64(np.frombuffer(data, np.uint8), starts, ends).tolist()
    expected = [
        int.from_bytes(hashlib.blake2b(p, digest_size=8).digest(), "little") for p in pieces
    ]
    assert got == expected


@given(st.lists(st.text(max_size=70).filter(lambda t: not any(
    "\ud800" <= c <= "\udfff" for c in t)), max_size=30))  # fmt: skip
@settings(max_examples=100, deadline=None)
def test_text_hashes_through_the_kernel_are_one_blake2b_per_string(items: list[str]) -> None:
    assert _kernels.warm_up()
    expected = [_blake(b"s:", t.encode("utf-8")) for t in items]  # NUL and "" included
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "MIN_ROWS", 1)
        assert _text_hashes(items).tolist() == expected


@pytest.mark.parametrize("n", [1, 2, 3, 4096, 100_000, 1 << 17, (1 << 17) + 1, 10**7])
def test_compiled_field_widths_are_the_numpy_paths(n: int) -> None:
    assert _numba_kernels.packed_widths(n) == _bounding._packed_widths(n)
