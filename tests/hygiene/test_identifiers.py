"""factorize_ids: one canonical string per distinct id, shared by pseudonyms and consent."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from telemagg._identity import factorize_ids, is_missing


@given(
    st.lists(
        st.one_of(
            st.integers(-1000, 1000),
            st.text(
                st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=4
            ),
            st.none(),
        ),
        max_size=60,
    )
)
def test_codes_point_at_the_canonical_form_of_each_id(values: list[int | str | None]) -> None:
    factorized = factorize_ids(values)
    assert len(factorized.distinct) == len(set(factorized.distinct))
    for value, code in zip(values, factorized.codes.tolist(), strict=True):
        if value is None:
            assert code == -1
        else:
            assert factorized.distinct[code] == str(value)
    assert factorized.missing.tolist() == [value is None for value in values]


def test_integers_and_their_decimal_strings_are_one_id_in_every_layout() -> None:
    layouts = [
        [3, "3", 3.0, np.int64(3), np.uint8(3)],
        np.array([3, 3, 3, 3, 3]),
        np.array(["3"] * 5),
        pd.Series([3.0] * 5),
    ]
    for values in layouts:
        factorized = factorize_ids(values)
        assert factorized.distinct == ["3"]
        assert factorized.codes.tolist() == [0] * 5


def test_missing_values_are_recognised() -> None:
    assert [is_missing(v) for v in (None, float("nan"), np.float32("nan"), pd.NA, pd.NaT)] == [
        True
    ] * 5
    assert [is_missing(v) for v in (0, "", "NaN", False)] == [False] * 4
