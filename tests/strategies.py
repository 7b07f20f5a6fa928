"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import telemagg as tm


@st.composite
def event_rows(draw: st.DrawFn, max_rows: int = 120) -> dict[str, np.ndarray]:
    """Small event tables with few units and partitions, so that bounds bite."""
    n = draw(st.integers(0, max_rows))
    units = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    parts = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=n, max_size=n))
    values = draw(st.lists(st.floats(-50, 150, allow_nan=False), min_size=n, max_size=n))
    return {
        "user": np.asarray(units, dtype=np.int64),
        "event": np.asarray(parts, dtype=object),
        "value": np.asarray(values, dtype=np.float64),
    }


policies = st.builds(
    tm.Policy,
    privacy_unit=st.just("user"),
    max_partitions=st.integers(1, 4),
    max_contributions=st.integers(1, 4),
)


@st.composite
def colliding_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel inputs crafted to hit the rare paths of the fast sort: groups sharing their
    top 40 bits and priorities tying in their top 24 bits."""
    n = draw(st.integers(1, 80))
    base = np.uint64(draw(st.integers(0, 2**20)) << 24)
    pair_low = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    unit_of_pair = {p: draw(st.integers(0, 3)) for p in set(pair_low)}
    prio_top = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    prio_low = draw(st.lists(st.integers(0, 2**40 - 1), min_size=n, max_size=n, unique=True))
    pair = base + np.asarray(pair_low, dtype=np.uint64)
    unit = np.asarray([unit_of_pair[p] for p in pair_low], dtype=np.uint64)
    prio = (np.asarray(prio_top, dtype=np.uint64) << np.uint64(40)) | np.asarray(
        prio_low, dtype=np.uint64
    )
    return unit, pair, prio


ID_CHARACTERS = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
"""Characters an identifier may hold: NUL and lone surrogates are refused (telemagg._identity)."""
