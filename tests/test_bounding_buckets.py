"""Bounding large inputs bucket by bucket (split by unit) keeps exactly the rows of one pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_bounding import reference_bound

from telemagg import _bounding
from telemagg._bounding import bound_contributions


@st.composite
def spread_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units spread over the whole 64-bit range (so over buckets), some sharing top bits;
    pair keys sometimes shared by units of different buckets; priorities that tie."""
    n = draw(st.integers(1, 120))
    units = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8))
    unit = np.asarray([draw(st.sampled_from(units)) for _ in range(n)], dtype=np.uint64)
    pairs = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6))
    pair = np.asarray([draw(st.sampled_from(pairs)) for _ in range(n)], dtype=np.uint64)
    prio = np.asarray(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), np.uint64)
    prio <<= np.uint64(draw(st.sampled_from([0, 40, 61])))
    return unit, pair, prio


@given(rows=spread_rows(), l0=st.integers(1, 3), linf=st.integers(1, 3), bucket=st.integers(1, 9))
@settings(max_examples=300, deadline=None)
def test_buckets_keep_the_rows_of_one_pass(rows, l0, linf, bucket) -> None:
    unit, pair, prio = rows
    one_pass = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_bounding, "_BUCKET_ROWS", bucket)
        bucketed = bound_contributions(unit, pair, prio, max_partitions=l0, max_contributions=linf)
    assert bucketed.tolist() == one_pass.tolist()
    assert set(np.flatnonzero(bucketed).tolist()) == reference_bound(unit, pair, prio, l0, linf)
