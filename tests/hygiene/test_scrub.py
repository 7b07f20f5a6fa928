"""scrub_pii: planted PII in realistic lines, generated PII always goes, diagnostics stay."""

from __future__ import annotations

import base64
import json
import re
import string
import unicodedata
from ipaddress import IPv4Address, IPv6Address

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains
from scrub_corpus import HARMLESS, KINDS, PLANTED, UNDETECTED, load_labelled, score

from telemagg.errors import SchemaError
from telemagg.hygiene import scrub_pii
from telemagg.hygiene._scrub import PLACEHOLDERS, _replacements

# ------------------------------------------------------------------ the hand-written corpus


@pytest.mark.parametrize(("raw", "expected"), PLANTED, ids=[raw[:40] for raw, _ in PLANTED])
def test_planted_pii_is_replaced_exactly(raw: str, expected: str) -> None:
    assert scrub_pii(raw) == expected


@pytest.mark.parametrize("line", HARMLESS, ids=[line[:40] for line in HARMLESS])
def test_harmless_lines_survive_unchanged(line: str) -> None:
    assert scrub_pii(line) == line


def test_the_corpus_plants_every_placeholder() -> None:
    expected = " ".join(scrubbed for _, scrubbed in PLANTED)
    assert {p for p in PLACEHOLDERS if p in expected} == set(PLACEHOLDERS)


def test_a_batch_scrubs_like_one_text_at_a_time() -> None:
    lines = [raw for raw, _ in PLANTED] + HARMLESS
    assert scrub_pii(lines) == [scrub_pii(line) for line in lines]


def test_scrubbing_is_idempotent_on_the_corpus() -> None:
    once = scrub_pii([raw for raw, _ in PLANTED])
    assert scrub_pii(once) == once


# ------------------------------------------------------------------ the labelled corpus

LABELLED = load_labelled()
SCORES = score(LABELLED, _replacements)


def test_the_labelled_corpus_is_large_and_plants_every_kind() -> None:
    assert len(LABELLED) >= 300
    assert {kind for line in LABELLED for *_, kind in line.spans} == set(KINDS)
    assert sum(not line.spans for line in LABELLED) >= 100  # harmless look-alikes


def test_recall_and_precision_on_the_labelled_corpus() -> None:
    # benchmarks/README.md reports the numbers (bench_scrub.py --corpus). Overall, 279
    # labelled spans: 0.95 allows 14 misses (7 today, each a documented limit: national phone
    # formats, o'brien@ cut at the quote, unrecognised secret keys). Per kind the counts are
    # 12 to 81 spans, so one miss moves a kind by up to 8 points: floors of 0.85 and 0.9.
    overall = SCORES["all"]
    assert overall.recall >= 0.95
    assert overall.precision >= 0.95
    for kind in KINDS:
        if kind not in UNDETECTED:
            assert SCORES[kind].recall >= 0.85, kind
            assert SCORES[kind].precision >= 0.9, kind


# Known false positives, kept visible: "token: <word>" reads as a key and its value.
KNOWN_FALSE_POSITIVES = ("failed to fetch oauth token: unexpected status",)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(line.text, marks=pytest.mark.xfail(strict=True, reason="false positive"))
        if any(known in line.text for known in KNOWN_FALSE_POSITIVES)
        else line.text
        for line in LABELLED
        if not line.spans
    ],
    ids=lambda line: line[:40],
)
def test_harmless_lines_of_the_labelled_corpus_survive_unchanged(line: str) -> None:
    assert scrub_pii(line) == line


def test_the_labelled_corpus_scrubs_alike_in_one_batch() -> None:
    texts = [line.text for line in LABELLED]
    assert scrub_pii(texts) == [scrub_pii(text) for text in texts]


# ------------------------------------------------------------------ generated PII


# Harmless diagnostic words around the PII: the placeholder must land exactly between them.
contexts = st.sampled_from(
    ["error", "E1234", "v2.3.1", "at", "0x7ffee3b4c8a0", "kernel32.dll", "(", "[", "->", "ok:"]
)


def assert_replaced(pii: str, placeholder: str, before: str, after: str) -> None:
    assert scrub_pii(f"{before} {pii} {after}") == f"{before} {placeholder} {after}"


practical_emails = st.builds(
    "{}@{}".format,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,30}", fullmatch=True),
    domains(),
)


@given(practical_emails, contexts, contexts)
def test_emails_are_replaced(email: str, before: str, after: str) -> None:
    assert_replaced(email, "<email>", before, after)


@given(st.emails(), contexts, contexts)
def test_any_rfc_email_loses_its_domain_and_the_local_part_next_to_the_at(
    email: str, before: str, after: str
) -> None:
    # Local parts may hold = / ? { | } ' ` (RFC 5322 atext); scrubbing stops there, so that
    # "?email=alice@example.com" keeps its key. What touches the @ always goes.
    local = email.rsplit("@", 1)[0]
    next_to_the_at = re.search(r"[A-Za-z0-9._+!#$*^~-]*$", local)
    assert next_to_the_at is not None
    kept = local[: next_to_the_at.start()]
    assert scrub_pii(f"{before} {email} {after}") == f"{before} {kept}<email> {after}"


def names_a_host(address: IPv4Address | IPv6Address) -> bool:
    """Unspecified, loopback, multicast and broadcast addresses name no host: kept."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address == IPv4Address("255.255.255.255")
    )


@given(st.ip_addresses(v=4).filter(names_a_host).map(str), contexts, contexts)
def test_ipv4_addresses_are_replaced(address: str, before: str, after: str) -> None:
    assert_replaced(address, "<ip>", before, after)


@given(
    st.ip_addresses(v=6).filter(names_a_host),
    st.sampled_from(["compressed", "exploded"]),
    contexts,
    contexts,
)
def test_ipv6_addresses_are_replaced(
    address: IPv6Address, form: str, before: str, after: str
) -> None:
    assert_replaced(getattr(address, form), "<ip>", before, after)


@given(
    st.one_of(
        st.integers(0x7F000000, 0x7FFFFFFF).map(lambda n: str(IPv4Address(n))),
        st.sampled_from(["0.0.0.0", "255.255.255.255", "::1", "::ffff:127.0.0.1", "ff02::1"]),
        st.integers(0xE0000000, 0xEFFFFFFF).map(lambda n: str(IPv4Address(n))),  # multicast
        st.sampled_from([IPv6Address(1).exploded, IPv6Address(0).exploded]),
    ),
    st.sampled_from(["", ":8080", ":53"]),
)
def test_addresses_that_name_no_host_are_kept(address: str, port: str) -> None:
    # Unspecified (listen on all interfaces), loopback and broadcast addresses are the same
    # on every machine: they identify no one, and diagnostics about them need them.
    if port and ":" in address:
        address = f"[{address}]"  # "::1:8080" is another IPv6 address
    line = f"listening on {address}{port}"
    assert scrub_pii(line) == line


def luhn_complete(digits: str) -> str:
    """``digits`` with the check digit that makes the Luhn sum a multiple of 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:  # doubled: the check digit will shift every position by one
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return digits + str((10 - total % 10) % 10)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """Luhn-valid numbers of the major issuers, written as people and systems write them."""
    issuer, length = draw(
        st.sampled_from(
            [("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16),
             ("2720", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 19), ("35", 16),
             ("36", 14), ("62", 17)]
        )
    )  # fmt: skip
    body = issuer + "".join(draw(st.lists(st.sampled_from(string.digits),
                                          min_size=length - len(issuer) - 1,
                                          max_size=length - len(issuer) - 1)))  # fmt: skip
    number = luhn_complete(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    if not separator:
        return number
    if length == 15:  # Amex: 4-6-5
        return separator.join([number[:4], number[4:10], number[10:]])
    if length < 13 + 0 or length < 16:  # short numbers are written in one piece
        return number
    return separator.join([number[:4], number[4:8], number[8:12], number[12:]])


@given(card_numbers(), contexts, contexts)
def test_luhn_valid_cards_are_replaced(card: str, before: str, after: str) -> None:
    assert_replaced(card, "<card>", before, after)


@given(card_numbers())
def test_a_card_number_failing_luhn_is_kept(card: str) -> None:
    last = int(card[-1])
    broken = card[:-1] + str((last + 1) % 10)
    line = f"order {broken} shipped"
    assert scrub_pii(line) == line


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.one_of(st.integers(), st.text(max_size=12), st.booleans())


@st.composite
def jwts(draw: st.DrawFn) -> str:
    header = {"alg": draw(st.sampled_from(["HS256", "RS256", "ES256", "none"])), "typ": "JWT"}
    claims = draw(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5))
    signature = draw(st.binary(min_size=0, max_size=64))
    parts = [json.dumps(header), json.dumps(claims)]
    return ".".join([b64url(part.encode()) for part in parts] + [b64url(signature)])


@given(jwts(), contexts, contexts)
def test_jwts_are_replaced(token: str, before: str, after: str) -> None:
    assert_replaced(token, "<token>", before, after)


bearer_tokens = st.text(string.ascii_letters + string.digits + "-._~+/", min_size=20, max_size=80)


@given(bearer_tokens, st.sampled_from(["", "=", "=="]), contexts, contexts)
def test_bearer_tokens_are_replaced(token: str, padding: str, before: str, after: str) -> None:
    assert_replaced(f"Bearer {token}{padding}", "Bearer <token>", before, after)


def alnum(
    size: int, alphabet: str = string.ascii_letters + string.digits
) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=size, max_size=size)


vendor_keys = st.one_of(
    st.builds("AKIA{}".format, alnum(16, string.ascii_uppercase + string.digits)),  # AWS
    st.builds("ASIA{}".format, alnum(16, string.ascii_uppercase + string.digits)),
    st.builds("AIza{}".format, alnum(35, string.ascii_letters + string.digits + "_-")),  # GCP
    st.builds("ya29.{}".format, alnum(40, string.ascii_letters + string.digits + "_-")),
    st.builds("ghp_{}".format, alnum(36)),  # GitHub
    st.builds("github_pat_{}".format, alnum(40, string.ascii_letters + string.digits + "_")),
    st.builds("xoxb-{}".format, alnum(30, string.ascii_letters + string.digits + "-")),  # Slack
    st.builds("sk_live_{}".format, alnum(24)),  # Stripe
    st.builds("glpat-{}".format, alnum(20)),  # GitLab
    st.builds("{}8Q~{}".format, alnum(3), alnum(34, string.ascii_letters + string.digits)),
)


@given(vendor_keys, contexts, contexts)
def test_cloud_and_vendor_access_keys_are_replaced(key: str, before: str, after: str) -> None:
    assert_replaced(key, "<token>", before, after)


# Values that say a secret is absent or hidden are diagnostics, not secrets, and are kept.
NO_SECRET = {"yes", "no", "true", "false", "null", "none", "nil", "undefined", "empty", "n/a",
             "hidden", "redacted", "filtered", "masked", "removed"}  # fmt: skip
secret_values = st.text(
    string.ascii_letters + string.digits + "!#$%*+-./:=?@^_~", min_size=1
).filter(lambda value: value.lower() not in NO_SECRET and value.strip("*"))


@given(
    st.sampled_from(["password", "DB_PASSWORD", "api_key", "Passwort", "contraseña"]),
    st.sampled_from(["=", ": ", '": "']),
    st.sampled_from(sorted(NO_SECRET)).map(lambda v: v.upper() if len(v) % 2 else v),
)
def test_values_saying_there_is_no_secret_are_kept(key: str, sep: str, value: str) -> None:
    # "Access denied for user 'app' (using password: YES)": MySQL's own words.
    line = f"cfg {key}{sep}{value} done"
    assert scrub_pii(line) == line


@given(
    st.sampled_from(["Passwort", "kennwort", "contraseña", "senha", "mot_de_passe", "wachtwoord"])
    | st.sampled_from(["hasło", "пароль", "パスワード", "비밀번호"]),
    st.sampled_from(["=", ": "]),
    secret_values,
)
def test_password_keys_in_other_languages(key: str, sep: str, value: str) -> None:
    assert scrub_pii(f"cfg {key}{sep}{value} done") == f"cfg {key}{sep}<secret> done"


@given(
    st.sampled_from(["password", "DB_PASSWORD", "api_key", "X-Api-Key", "client_secret", "token"]),
    st.sampled_from(["=", ": ", " = "]),
    secret_values,
)
def test_values_of_secret_keys_are_replaced_and_keys_kept(key: str, sep: str, value: str) -> None:
    assert scrub_pii(f"cfg {key}{sep}{value} done") == f"cfg {key}{sep}<secret> done"


@given(st.sampled_from(["token", "api_key", "access_token", "sig", "password"]), secret_values)
def test_secrets_in_query_strings_are_replaced(key: str, value: str) -> None:
    value = value.replace("&", "")
    url = f"GET /v1/x?page=2&{key}={value}&lang=en"
    assert scrub_pii(url) == f"GET /v1/x?page=2&{key}=<secret>&lang=en"


user_names = st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True)


@given(
    user_names, st.sampled_from(["/home/{}/.cache", "/Users/{}/Library", r"C:\Users\{}\AppData"])
)
def test_user_names_in_home_paths_are_replaced(user: str, template: str) -> None:
    assume_not_shared = user not in {"public", "shared", "default"}
    if assume_not_shared:
        assert scrub_pii(f"open {template.format(user)} failed") == (
            f"open {template.format('<user>')} failed"
        )


# Independent of telemagg's table: lengths from the SWIFT IBAN registry for a sample of
# countries, including ones whose national part holds letters (GB, NL, FR, IT, MT).
IBAN_LENGTHS = {"DE": 22, "GB": 22, "FR": 27, "ES": 24, "NL": 18, "IT": 27, "BE": 16, "NO": 15,
                "CH": 21, "AT": 20, "PL": 28, "SE": 24, "MT": 31, "LC": 32, "SA": 24}  # fmt: skip
LETTERS_AND_DIGITS = string.ascii_uppercase + string.digits


def iban_check_digits(country: str, national: str) -> str:
    """ISO 7064 mod 97-10: the two digits that make the rearranged number 1 modulo 97."""
    rearranged = national + country + "00"
    number = int("".join(str(int(char, 36)) for char in rearranged))
    return f"{98 - number % 97:02d}"


@st.composite
def ibans(draw: st.DrawFn) -> str:
    """Valid IBANs, compact (electronic form) or in groups of four (print form)."""
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    size = IBAN_LENGTHS[country] - 4
    national = draw(st.text(LETTERS_AND_DIGITS, min_size=size, max_size=size))
    compact = country + iban_check_digits(country, national) + national
    if draw(st.booleans()):
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


@given(ibans(), contexts, contexts)
def test_valid_ibans_are_replaced(iban: str, before: str, after: str) -> None:
    assert_replaced(iban, "<iban>", before, after)


@given(ibans(), st.integers(0, 1), st.integers(1, 9))
def test_an_iban_failing_its_check_digits_is_kept(iban: str, position: int, delta: int) -> None:
    # A changed check digit changes the number by delta * 10**k, never a multiple of 97.
    compact = iban.replace(" ", "")
    digit = str((int(compact[2 + position]) + delta) % 10)
    broken = compact[: 2 + position] + digit + compact[3 + position :]
    line = f"ref {broken} rejected"
    assert scrub_pii(line) == line


# Letters and digits of scripts written with spaces between words (Latin, Greek, Cyrillic,
# Armenian, Hebrew, Arabic, ...): internationalised addresses (RFC 6531) in those scripts.
spaced_script_chars = st.characters(
    categories=["Ll", "Lu", "Lo", "Nd"],
    max_codepoint=0x0DFF,
    exclude_characters="ªº",  # letters by category that compose with neighbours under NFKC
)
unicode_labels = st.text(spaced_script_chars, min_size=1, max_size=12)


@given(
    st.text(st.one_of(spaced_script_chars, st.sampled_from("._+-")), min_size=1, max_size=24),
    st.lists(unicode_labels, min_size=1, max_size=3),
    st.one_of(
        st.from_regex(r"[a-z]{2,6}", fullmatch=True),
        st.text(  # an internationalised top-level domain: .рф, .ελ, .إمارات
            st.characters(categories=["Ll", "Lu", "Lo"], min_codepoint=0xC0, max_codepoint=0xDFF),
            min_size=2,
        ),
    ),
    st.sampled_from(["NFC", "NFD"]),
    contexts,
    contexts,
)
def test_internationalised_emails_are_replaced_whole(
    local: str, labels: list[str], tld: str, form: str, before: str, after: str
) -> None:
    email = unicodedata.normalize(form, f"{local}@{'.'.join([*labels, tld])}")
    assert_replaced(email, "<email>", before, after)


@given(
    st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True),
    st.sampled_from(["请联系", "メールは", "연락처", "ติดต่อ", "見"]),
    st.sampled_from(["までご連絡ください", "获取帮助", "로 연락", ""]),
)
def test_an_email_inside_unspaced_text_takes_only_the_address(
    local: str, before: str, after: str
) -> None:
    # Chinese, Japanese, Thai (and Korean particles) write words without spaces; the
    # address starts where the script changes.
    assert scrub_pii(f"{before}{local}@example.co.jp{after}") == f"{before}<email>{after}"


@given(
    st.binary(min_size=6, max_size=6),
    st.sampled_from([":", "-", "."]),
    st.booleans(),
    contexts,
    contexts,
)
def test_mac_addresses_are_replaced(
    raw: bytes, separator: str, upper: bool, before: str, after: str
) -> None:
    digits = raw.hex().upper() if upper else raw.hex()
    if separator == ".":  # Cisco: 001a.2b3c.4d60
        mac = ".".join(digits[i : i + 4] for i in range(0, 12, 4))
    else:
        mac = separator.join(digits[i : i + 2] for i in range(0, 12, 2))
    assert_replaced(mac, "<mac>", before, after)


@st.composite
def international_phones(draw: st.DrawFn) -> str:
    """E.164 numbers (8 to 15 digits) dialled with + or 00, in groups as people write them."""
    country = str(draw(st.integers(1, 999)))
    rest = draw(st.integers(8 - len(country), 15 - len(country)))
    groups: list[str] = []
    while rest > 0:  # an area code of 1 to 4 digits, then groups of 2 to 5
        size = min(rest, draw(st.integers(1, 4) if not groups else st.integers(2, 5)))
        first = draw(st.sampled_from(string.digits[1:]))  # a group of zeros reads as padding
        groups.append(first + draw(st.text(string.digits, min_size=size - 1, max_size=size - 1)))
        rest -= size
    separator = draw(st.sampled_from([" ", "-", "."]))
    prefix = draw(st.sampled_from(["+", "00"]))
    return prefix + country + separator + separator.join(groups)


@given(international_phones(), contexts, contexts)
def test_international_phone_numbers_are_replaced(phone: str, before: str, after: str) -> None:
    assert_replaced(phone, "<phone>", before, after)


def test_lone_surrogates_are_scrubbed_like_any_character() -> None:
    # Text decoded with errors="surrogateescape" holds lone surrogates; they are no reason
    # to fail, and they never hide PII next to them.
    texts = ["\ud800 alice@example.com \udfff", "émilie@example.fr\ud83d", "\ud800"]
    expected = ["\ud800 <email> \udfff", "<email>\ud83d", "\ud800"]
    assert scrub_pii(texts) == expected
    assert [scrub_pii(text) for text in texts] == expected
    assert scrub_pii(np.array(texts)).tolist() == expected
    assert scrub_pii(pd.Series(texts, dtype=object)).tolist() == expected
    mixed = scrub_pii(["DE89 3704 0044 0532 0130 00 \ud800 10.1.2.3", "ok"])
    assert mixed == ["<iban> \ud800 <ip>", "ok"]


# ------------------------------------------------------------------ diagnostics survive


harmless_tokens = st.one_of(
    st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),  # versions
    st.from_regex(r"v[0-9]{1,3}(\.[0-9]{1,3}){1,3}", fullmatch=True),
    st.from_regex(r"(E|ERR_)[0-9]{3,5}|0x[0-9a-f]{8}|E_[A-Z]{4,12}", fullmatch=True),
    st.from_regex(r"0x[0-9a-f]{12,16}", fullmatch=True),  # addresses
    st.from_regex(r"[a-z][a-z0-9_]{0,12}\.(py|dll|so|java|cs|dylib)(:[0-9]{1,4})?", fullmatch=True),
    st.datetimes().map(lambda d: d.isoformat()),
    st.uuids().map(str),
    st.integers(10**9, 2 * 10**12).map(str),  # epoch seconds and milliseconds
    st.from_regex(r"[a-z_]{1,10}=[0-9]{1,6}(ms|s|%)?", fullmatch=True),  # logfmt
    st.from_regex(r"0{2,4}[1-9][0-9]{3,9}", fullmatch=True),  # zero-padded order numbers
    st.from_regex(r"20[0-9]{2}\.[01][0-9]\.[0-3][0-9]", fullmatch=True),  # dotted dates
    st.from_regex(r"(SHA|AES|UTF|ISO|RFC|CVE)-?[0-9]{1,5}", fullmatch=True),  # standards
    st.integers(0x7F000000, 0x7FFFFFFF).map(lambda n: f"{IPv4Address(n)}:8080"),  # loopback
    st.sampled_from(["0.0.0.0:80", "[::]:443", "[::1]:9090", "255.255.255.255"]),
)


@given(st.lists(harmless_tokens, min_size=1, max_size=8))
def test_versions_codes_addresses_files_and_timestamps_survive(tokens: list[str]) -> None:
    line = " ".join(tokens)
    assert scrub_pii(line) == line


# ------------------------------------------------------------------ forms of input


@settings(max_examples=50)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([raw for raw, _ in PLANTED] + HARMLESS),
            st.text(max_size=40),
        ),
        max_size=12,
    )
)
def test_batches_and_texts_with_nul_agree(texts: list[str]) -> None:
    expected = [scrub_pii(text) for text in texts]
    assert scrub_pii(texts) == expected
    assert scrub_pii([*texts, "a\x00b"]) == [*expected, "a\x00b"]
    assert scrub_pii(expected) == expected  # idempotent


def test_forms_of_input_keep_their_form_and_length() -> None:
    texts = ["mail bob@example.com", "ok", "ip 10.0.0.1"]
    scrubbed = ["mail <email>", "ok", "ip <ip>"]
    assert scrub_pii(texts[0]) == scrubbed[0]
    assert scrub_pii(tuple(texts)) == scrubbed
    assert scrub_pii(text for text in texts) == scrubbed
    as_str = scrub_pii(np.array(texts))
    assert as_str.dtype.kind == "U"
    assert as_str.tolist() == scrubbed
    as_object = scrub_pii(np.array(texts, dtype=object))
    assert as_object.dtype == object
    assert as_object.tolist() == scrubbed
    series = pd.Series(texts, index=[7, 8, 9], name="message")
    out = scrub_pii(series)
    assert isinstance(out, pd.Series)
    assert out.tolist() == scrubbed
    assert out.index.tolist() == [7, 8, 9]
    assert out.name == "message"
    assert scrub_pii([]) == []


def test_missing_texts_stay_missing_and_other_values_are_refused() -> None:
    out = scrub_pii(["bob@example.com", None, float("nan")])
    assert out[0] == "<email>"
    assert out[1] is None
    assert out[2] != out[2]  # NaN
    series = scrub_pii(pd.Series(["bob@example.com", None], dtype="string"))
    assert series.iloc[0] == "<email>"
    assert series.isna().iloc[1]
    with pytest.raises(SchemaError, match=r"texts\[1\] is a int"):
        scrub_pii(["ok", 42])
    with pytest.raises(SchemaError, match="one-dimensional"):
        scrub_pii(np.array([["a"]]))
