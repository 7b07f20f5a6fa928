"""pseudonymize: keyed HMAC-SHA256 of the canonical id, the key never shown."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.strategies import ID_CHARACTERS

from telemagg.errors import ConfigError, SchemaError
from telemagg.hygiene import pseudonymize

KEY = bytes.fromhex("8f2c1e0d9b7a65430123456789abcdef")
ROTATED = bytes.fromhex("00112233445566778899aabbccddeeff0011")


def reference(canonical: str, key: bytes = KEY) -> str:
    """HMAC-SHA256 (RFC 2104) straight from the standard library, one id at a time."""
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


ids = st.lists(
    st.one_of(
        st.text(ID_CHARACTERS, max_size=20),
        st.integers(-(2**63), 2**63 - 1),
    ),
    max_size=50,
)


@given(ids)
def test_each_id_is_the_hmac_sha256_of_its_canonical_form(values: list[str | int]) -> None:
    out = pseudonymize(values, key=KEY)
    assert out.dtype == object
    assert out.tolist() == [reference(str(value)) for value in values]


@given(ids)
def test_pseudonyms_are_deterministic_per_key_and_change_with_rotation(
    values: list[str | int],
) -> None:
    first = pseudonymize(values, key=KEY)
    assert pseudonymize(values, key=KEY).tolist() == first.tolist()
    rotated = pseudonymize(values, key=ROTATED)
    assert not set(first.tolist()) & set(rotated.tolist())  # 2**-256 per pair to fail


@pytest.mark.slow
def test_no_collisions_on_a_million_ids() -> None:
    out = pseudonymize(np.arange(1_000_000, dtype=np.int64), key=KEY)
    assert len(set(out.tolist())) == 1_000_000
    assert out[123_456] == reference("123456")


def test_every_input_form_gives_the_same_pseudonyms() -> None:
    expected = [reference("42"), reference("7"), reference("42")]
    forms = [
        [42, 7, 42],
        ["42", "7", "42"],
        [42, "7", 42.0],
        np.array([42, 7, 42], dtype=np.int32),
        np.array([42, 7, 42], dtype=np.uint64),
        np.array([42.0, 7.0, 42.0]),
        np.array(["42", "7", "42"]),
        pd.Series([42, 7, 42]),
        pd.Series(["42", "7", "42"], dtype="string"),
        (value for value in [42, 7, 42]),
    ]
    for form in forms:
        assert pseudonymize(form, key=KEY).tolist() == expected, form


def test_uuids_use_their_canonical_text() -> None:
    unit = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert pseudonymize([unit], key=KEY)[0] == reference(str(unit))


def test_missing_ids_stay_missing() -> None:
    out = pseudonymize(pd.Series([1, None, 3], dtype="Int64"), key=KEY)
    assert out.tolist() == [reference("1"), None, reference("3")]
    out = pseudonymize(["a", None, float("nan"), pd.NA], key=KEY)
    assert out.tolist() == [reference("a"), None, None, None]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, True], r"ids\[1\] is a bool"),
        ([2, 1.5], r"ids\[1\] is a float: floats must be exact integers"),
        (np.array([2, 1.5]), r"ids\[1\] is a float: floats must be exact integers"),
        (["ok", b"raw-bytes"], r"ids\[1\] is a bytes"),
        (np.array([[1, 2]]), "one-dimensional"),
        ("alice", "not a single str"),
    ],
)
def test_ids_that_are_no_identifiers_are_refused(values: object, message: str) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        pseudonymize(values, key=KEY)  # type: ignore[arg-type]
    for shown in ("True", "1.5", "raw-bytes"):  # ids are personal data: never in a message
        assert shown not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"short-key", "key must be at least 16 bytes long; got 9 bytes"),
        (b"", "key must be at least 16 bytes long; got 0 bytes"),
        ("a-text-key-of-plenty-of-chars", r"key must be bytes .* got a str \(encode it"),
        (None, "key must be bytes of at least 16 bytes; got a NoneType"),
    ],
)
def test_a_bad_key_is_a_config_error_that_never_shows_the_key(key: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        pseudonymize(["alice"], key=key)  # type: ignore[arg-type]
    if key:
        secret = key if isinstance(key, str) else key.decode()
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


def test_the_key_appears_in_no_output() -> None:
    out = pseudonymize(["alice", "bob"], key=KEY)
    text = repr(out) + str(out) + "".join(out.tolist())
    assert KEY.hex() not in text
    assert KEY.decode("latin-1") not in text


def test_pseudonymising_twice_is_no_way_back() -> None:
    # A pseudonym is itself an id: pseudonymising it again hashes the hex text.
    once = pseudonymize(["alice"], key=KEY)
    assert pseudonymize(once, key=KEY)[0] == reference(once[0])
