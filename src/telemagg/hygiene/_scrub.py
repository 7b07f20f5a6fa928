"""PII scrubbing of diagnostic text: typed placeholders in place of personal data and secrets.

How it is fast. Python's ``re`` tries a pattern at every position of a text, which is slow
for a pattern of many alternatives, but a pattern that starts with one literal character is
searched for in a tight C loop. So every kind of PII is found from an *anchor*, a character
it always contains and that is rare elsewhere: ``@`` for e-mail, ``=`` and ``:`` for
``password=...``, ``:`` for IPv6, ``+`` and ``(`` for phone numbers, ``/`` and ``\\`` for
home paths, ``_ - . ~`` for the prefixes of vendor tokens. There is one pattern per anchor
character, holding only that anchor's kinds; their matches are merged by position.

Each alternative consumes only its anchor and looks ahead for the rest; cheap lookarounds
(``precheck``) come first, so most anchors fail in a step or two. It ends in an empty
named group, a *marker*, whose name says the kind and whose position is the end of the
match. What lies left of the anchor (the local part of an e-mail, the first group of an
IPv6 address, ``ghp`` of ``ghp_...``) is found afterwards in Python, for the few matches
there are; so are the checks a regex does badly: Luhn, the mod-97 check of an IBAN, the
digit count of a phone number, base64 of Basic credentials, loopback addresses.

Digits are everywhere in diagnostics (timestamps, durations, ids), so IPv4 addresses, card
numbers, phone numbers without ``+`` and IBANs are not anchored at digits: they are found
by their *shapes* in a copy of the text with every digit written as ``0`` and every capital
as ``A`` (``.0.0.0`` after the first octet, ``0000 0000 0000 0``, ``000-000-0000``,
thirteen zeros, ``AA00``), each shape starting with a fixed ``.``, ``000`` or ``AA00``;
only those hits are matched against the real text. (The ``00`` of ``0049 30 12345678``
needs zeros told from other digits: that shape is searched for in the text itself.)

A batch of texts is scanned as one string joined by NUL characters, which no pattern can
cross, so Python's per-call cost is paid once per batch. ``benchmarks/bench_scrub.py``
measures all of this, and the design not taken: the same kinds in one combined pattern,
numbers anchored at their digits, scan at 40% of the speed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from telemagg._identity import is_missing
from telemagg.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PLACEHOLDERS", "scrub_pii"]

PLACEHOLDERS = (
    *("<email>", "<ip>", "<mac>", "<phone>", "<card>", "<iban>", "<token>", "<secret>"),
    "<user>",
)
"""Every placeholder :func:`scrub_pii` writes."""

_SEP = "\x00"  # joins a batch; excluded from every open-ended character class below

# -- shared pieces ------------------------------------------------------------------------

_HEX4 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6_TAIL = rf"(?:(?:{_HEX4}:){{0,5}}{_IPV4}|{_HEX4}(?::{_HEX4}){{0,6}})"  # after a "::"
_IP_END = r"(?:%[0-9A-Za-z]+)?(?![\w:]|\.[0-9])"  # optional IPv6 zone, then no more address
_NUMBER_END = r"(?![\w]|[.-][0-9])"
# Domains and local parts may be internationalised (RFC 6531/IDNA: müller@bücher.de).
# A domain character is any letter or digit, or a combining mark (decomposed text: e and
# U+0301 for é; Arabic, Hebrew and Indic vowel signs); an ASCII top-level domain ends where
# ASCII letters end, so "example.jpまで" loses only "example.jp".
_MARKS = (  # combining marks of the scripts written with spaces (whole blocks for Indic)
    r"\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670"
    r"\u06d6-\u06ed\u0900-\u0dff\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff"
)
_DOMAIN_CHAR = rf"(?:[^\W_]|[{_MARKS}])"
_DOMAIN = (
    rf"(?:{_DOMAIN_CHAR}(?:(?:{_DOMAIN_CHAR}|-)*{_DOMAIN_CHAR})?\.)+"
    rf"(?:[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?![A-Za-z0-9{_MARKS}-])"
    rf"|(?:[^\W\d_]|[{_MARKS}])+)"
)
# The local part of an e-mail address, as scrubbed: it stops at = / ? & ' ` { | } (which
# RFC 5322 allows but URLs and templates use around addresses), so "?email=a@b.c" keeps its
# key. Any RFC 5322 local-part character before the @ is enough for the domain to go.
# Letters and digits of any script count (émilie.dupont@...).
_EMAIL_LOCAL = rf"[\w.+!#$*^~{_MARKS}-]"
_EMAIL_LOCAL_RFC = rf"[\w.+!#$*^~=/?&'`{{|}}%{_MARKS}-]"
# Scripts written without spaces between words: in "请联系zhang.wei@example.cn" the local
# part is "zhang.wei", not the sentence before it.
_UNSPACED = (  # Thai, Lao, Myanmar, Khmer, kana, CJK ideographs, Hangul, half-width kana
    r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    r"\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]"
)
_AUTH_SCHEME = r"(?i:bearer|token|basic|digest|negotiate)"
_VALUE = r"(?:\"[^\"\x00\n]+\"|'[^'\x00\n]+'|[^\s\x00&;,\"'<>(){}\[\]]+)"
_HOME_USER = (  # a user name, with inner spaces only if a path separator follows
    r"(?:[^\\/\s\x00\"'<>|*?:]+(?:\ [^\\/\s\x00\"'<>|*?:]+)+(?=[\\/])|[^\\/\s\x00\"'<>|*?:]+)"
)
_SHARED_HOMES = r"(?!(?:Public|Shared|Default|All Users|Default User)(?:[\\/\"'\s\x00]|$))"

# A key ending in one of these (``DB_PASSWORD``, ``aws_secret_access_key``, ``X-Api-Key``)
# has its value replaced; ``max_tokens`` and ``tokenizer`` do not end in one and are kept.
_SECRET_KEY_ENDINGS = (
    *("password", "passwd", "passphrase", "pwd", "secret", "secret[_-]key", "secretkey"),
    *("token", "api[_-]key", "apikey", "access[_-]key", "accesskey", "private[_-]key"),
    *("account[_-]key", "accountkey", "sharedaccesskey", "credential", "credentials"),
    *("authorization", "signature", "sig", "session[_-]id", "sessionid", "sid", "cookie"),
    *("connection[_-]string", "connectionstring", "dsn"),
)


def _caseless(pattern: str) -> str:
    """``api[_-]key`` as ``[Aa][Pp][Ii][_-][Kk][Ee][Yy]``.

    Character sets, unlike case-insensitive literals, are what the engine can reject in
    one step when it tries the alternatives of a branch.
    """
    return re.sub(r"[a-z]", lambda letter: f"[{letter.group().upper()}{letter.group()}]", pattern)


def _units(pattern: str) -> list[str]:
    """The one-character pieces of a simple pattern: ``api[_-]key`` has seven."""
    return re.findall(r"\[[^]]*\]|.", pattern)


def _chars(unit: str) -> set[str]:
    """The characters a one-character piece matches, either case: ``[_-]``, ``k``."""
    return set(unit[1:-1]) if unit.startswith("[") else {unit.lower(), unit.upper()}


def _any_of(chars: set[str]) -> str:
    return "[" + "".join(re.escape(char) for char in sorted(chars)) + "]"


def _lookbehinds(words: Iterable[str], gaps: tuple[str, ...], sep: str) -> str:
    """Any of ``words``, one of ``gaps``, then ``sep``, just before here.

    A lookbehind needs one width; words of one width share one.
    """
    by_width: dict[int, list[str]] = {}
    for word in words:
        for gap in gaps:
            width = len(_units(word)) + len(gap)
            by_width.setdefault(width, []).append(_caseless(word) + re.escape(gap) + sep)
    return "(?:" + "|".join(f"(?<={'|'.join(alts)})" for alts in by_width.values()) + ")"


def _secret_key_before(
    endings: tuple[str, ...], gaps: tuple[str, ...], sep: str
) -> tuple[str, str]:
    """A key ending in one of ``endings``, one of ``gaps``, then ``sep``, just before here.

    Two checks. The first is cheap and loose: the character just before ``sep`` fits, and
    each of the last three letters is one that an ending has in that place; it rejects the
    ``10:32`` of timestamps and the ``status=`` and ``bytes=`` of log lines in a few steps.
    The second is exact: one of the endings.
    """
    tails = [_units(ending)[-3:] for ending in endings]
    places = [_any_of({c for tail in tails for c in _chars(tail[i])}) for i in range(3)]
    loose = []
    for gap in gaps:
        last = _any_of(set(gap[-1])) if gap else places[-1]
        loose.append(f"(?<={last}{sep})(?<={''.join(places)}{re.escape(gap)}{sep})")
    return "(?:" + "|".join(loose) + ")", _lookbehinds(endings, gaps, sep)


# "password" in German, Spanish, Portuguese, French, Dutch, Polish, Russian, Japanese and
# Korean (Chinese 密码 has two characters, too few for the loose check: not found). A kind
# of their own, so that their letters do not loosen the check of the common endings.
_PASSWORD_I18N = (
    *("passwort", "kennwort", "contraseña", "contrasena", "senha", "mot[_-]de[_-]passe"),
    *("motdepasse", "wachtwoord", "hasło", "haslo", "пароль", "パスワード", "비밀번호"),
)
_KV_GAPS = ("", '"', "'", " ", '" ', "' ")  # password=, "password":, password = ...
_FLAG_KEY_LOOSE, _FLAG_KEY = _secret_key_before(_SECRET_KEY_ENDINGS, ("",), "")
_KV_KEY_LOOSE, _KV_KEY = _secret_key_before(
    tuple(ending for ending in _SECRET_KEY_ENDINGS if ending != "authorization"), _KV_GAPS, "."
)
_I18N_KEY_LOOSE, _I18N_KEY = _secret_key_before(_PASSWORD_I18N, _KV_GAPS, ".")
_AUTHORIZATION_LOOSE, _AUTHORIZATION = _secret_key_before(("authorization",), _KV_GAPS, ".")


# -- the kinds: anchor characters, pattern after the anchor, and what replaces a match ----

# Where the part of a match left of its anchor starts: (text, done, anchor) -> start or None,
# looking no further left than done (what is left of it is decided already).
_Before = Callable[[str, int, int], int | None]


@dataclass(frozen=True)
class _Kind:
    """One kind of PII: where it is anchored and how a match is replaced.

    ``after`` is matched right after the anchor character, if ``precheck`` (lookarounds,
    tried first because most anchors fail there) holds; ``before``, if set, finds the
    start of the part of the match left of the anchor, and a match without it is no match.
    ``replace`` turns the matched text into its replacement, or returns None to keep it (a
    failed Luhn or mod-97 check, too few digits for a phone number, a loopback address).
    """

    name: str
    anchors: tuple[str, ...]  # characters
    precheck: str  # cheap lookarounds tried right after the anchor, before ``after``
    after: str
    replace: Callable[[str], str | None]
    before: _Before | None = None

    def continuation(self, marker: str) -> str:
        """What follows the anchor: zero-width, ending in the empty group ``marker``."""
        return f"{self.precheck}(?=(?:{self.after})(?P<{marker}>))"


def _constant(placeholder: str) -> Callable[[str], str | None]:
    return lambda text: placeholder


def _keep_then(kept: re.Pattern[str], placeholder: str) -> Callable[[str], str | None]:
    """Keep what ``kept`` matches at the start of the match, then write ``placeholder``."""

    def replace(text: str) -> str | None:
        match = kept.match(text)
        return None if match is None else match.group() + placeholder

    return replace


_NOT_A_DIGIT = re.compile(r"[^0-9]")


def _digits(text: str) -> str:
    return _NOT_A_DIGIT.sub("", text)


def _luhn_valid(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812-1) of a string of digits.

    >>> _luhn_valid("4111111111111111"), _luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


_LAST_GROUP = re.compile(r"[ -][0-9]{1,3}\Z")


def _card(text: str) -> str | None:
    """``<card>`` for 13 to 19 digits passing Luhn; a short last group (4-4-4-4-3 of 19
    digits) that breaks the check is kept (``4111 1111 1111 1111 123``: a card, then 123).
    """
    digits = _digits(text)
    if 13 <= len(digits) <= 19 and _luhn_valid(digits):
        return "<card>"
    last = _LAST_GROUP.search(text)
    if last is not None and len(digits) > 16:
        shorter = _card(text[: last.start()])
        return None if shorter is None else shorter + text[last.start() :]
    return None


_DIGIT_GROUP = re.compile(r"[0-9]+")


def _phone(text: str, prefix: int = 0) -> str | None:
    """``<phone>`` for an international number of 8 to 15 digits (E.164) after ``prefix``
    digits (the 00 of 0049...); digit groups after the 15th digit are kept.

    >>> _phone("+49 30 123"), _phone("+49 30 12345678"), _phone("0049 30 12345678 2024 7", 2)
    (None, '<phone>', '<phone> 2024 7')
    """
    count = len(_digits(text)) - prefix
    if count <= 15:
        return "<phone>" if count >= 8 else None
    count, end = -prefix, 0
    for group in _DIGIT_GROUP.finditer(text):
        if count + len(group.group()) > 15:
            break
        count += len(group.group())
        end = group.end()
    return "<phone>" + text[end:] if count >= 8 else None


def _ip(text: str) -> str | None:
    """``<ip>``, except for the addresses that name no host: unspecified (``0.0.0.0``,
    ``::``), loopback (``127.0.0.0/8``, ``::1``), multicast groups (``224.0.0.251``,
    ``ff02::1``) and the broadcast ``255.255.255.255``.

    >>> _ip("0.0.0.0"), _ip("127.0.1.1"), _ip("::1"), _ip("::ffff:127.0.0.1"), _ip("10.0.0.1")
    (None, None, None, None, '<ip>')
    """
    if ":" not in text:  # IPv4, the common case: no parsing
        first = int(text[: text.index(".")])
        keep = text in ("0.0.0.0", "255.255.255.255") or first == 127 or 224 <= first <= 239
        return None if keep else "<ip>"
    if text[0] not in "0:fF":  # unspecified, loopback, IPv4-mapped and multicast start so
        return "<ip>"
    try:
        address = ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:  # pragma: no cover - the patterns match addresses only
        return "<ip>"
    if address.ipv4_mapped is not None:
        return _ip(str(address.ipv4_mapped))
    keep = address.is_unspecified or address.is_loopback or address.is_multicast
    return None if keep else "<ip>"


# ISO 13616 IBANs: the length for each country of the SWIFT IBAN registry (release 98).
_IBAN_LENGTHS = {
    15: "NO", 16: "BE", 18: "DK FI FO GL NL SD FK", 19: "MK SI",
    20: "AT BA EE KZ LT LU XK MN", 21: "CH HR LI LV CR", 22: "BG BH CR DE GB GE IE ME RS VA",
    23: "AE GI IL IQ OM SO TL", 24: "AD CZ ES MD PK RO SA SE SK TN VG", 25: "LY PT ST",
    26: "IS TR", 27: "BI DJ FR GR IT MC MR SM", 28: "AL AZ BY CY DO GT HU LB NI PL SV",
    29: "BR EG PS QA UA", 30: "JO KW MU YE", 31: "MT SC", 32: "LC", 33: "RU",
}  # fmt: skip


def _iban_body(length: int) -> str:
    """After country and check digits, ``length - 4`` characters, plain or in groups of 4."""
    groups, rest = divmod(length - 4, 4)
    spaced = f"(?: [0-9A-Z]{{4}}){{{groups}}}" + (f" [0-9A-Z]{{{rest}}}" if rest else "")
    return f"(?:[0-9A-Z]{{{length - 4}}}|{spaced})"


_IBAN = (
    "(?:"
    + "|".join(
        f"(?:{'|'.join(countries.split())})[0-9]{{2}}{_iban_body(length)}"
        for length, countries in _IBAN_LENGTHS.items()
    )
    + ")(?![0-9A-Za-z])"
)
_LETTER_VALUES = {chr(code): str(code - 55) for code in range(65, 91)}  # A=10, ..., Z=35


def _iban(text: str) -> str | None:
    """``<iban>`` if ``text`` passes the ISO 7064 mod-97-10 check of ISO 13616.

    >>> _iban("DE89 3704 0044 0532 0130 00"), _iban("DE89 3704 0044 0532 0130 01")
    ('<iban>', None)
    """
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    number = "".join(_LETTER_VALUES.get(char, char) for char in rearranged)
    return "<iban>" if int(number) % 97 == 1 else None


_SCHEME_AND_SPACE = re.compile(rf"{_AUTH_SCHEME}\s+")


def _auth(text: str) -> str | None:
    """``Bearer <token>`` / ``Basic <token>``, if what follows the scheme is a credential."""
    scheme = _SCHEME_AND_SPACE.match(text)
    assert scheme is not None  # the scanner matched this very prefix
    value = text[scheme.end() :]
    if scheme.group().lower().startswith("basic"):
        # Basic credentials are base64("user:password"); "Basic authentication" is not.
        try:
            is_credential = b":" in base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            is_credential = False
    else:
        # A token has a digit or a symbol, or is long; "Bearer authentication" is not one.
        is_credential = len(value) >= 20 or (len(value) >= 8 and not value.isalpha())
    return scheme.group() + "<token>" if is_credential else None


_KV_KEPT = re.compile(rf"[=:]\s*(?P<scheme>{_AUTH_SCHEME}\s+)?")


def _kv(text: str) -> str | None:
    """Keep the separator (and an authorization scheme), replace the value, keep its quotes."""
    kept = _KV_KEPT.match(text)
    assert kept is not None  # the scanner matched this very prefix
    if kept.group("scheme"):
        return kept.group() + "<token>"  # "Authorization: Bearer <token>"
    quote = text[kept.end()] if text[kept.end()] in "\"'" else ""
    if text[kept.end() :].strip("\"'").lower() in _NO_SECRET:
        return None  # "using password: YES", "password=null": diagnostics, not secrets
    return f"{kept.group()}{quote}<secret>{quote}"


_NO_SECRET = frozenset(
    (
        *("yes", "no", "true", "false", "null", "none", "nil", "undefined", "empty", "n/a"),
        *("hidden", "redacted", "filtered", "masked", "removed", "not set", "unset"),
        *("*" * n for n in range(1, 17)),
    )
)


def _userinfo(text: str) -> str | None:
    """``text`` is ``://user@``, ``://user:password@`` or ``://:password@``."""
    if text.startswith("://:"):
        return "://:<secret>@"
    return "://<user>:<secret>@" if ":" in text[3:] else "://<user>@"


_CARD = (  # major issuers start with 2-6; plain, in groups of four, or 4-6-5 (Amex)
    r"[2-6][0-9]{3}(?:[0-9]{9,15}| [0-9]{4} [0-9]{4} [0-9]{1,7}(?: [0-9]{1,3})?"
    r"|-[0-9]{4}-[0-9]{4}-[0-9]{1,7}(?:-[0-9]{1,3})?| [0-9]{6} [0-9]{4,5}|-[0-9]{6}-[0-9]{4,5})"
)
_NANP = r"[2-9][0-9]{2}(?:-[0-9]{3}-|\.[0-9]{3}\.)[0-9]{4}"  # 415-555-2671, 415.555.2671
_NANP_WHOLE = re.compile(_NANP)
# International numbers dialled with 00 instead of +: 0049 30 12345678. A separator after
# the country code is required: 0012345678 is a zero-padded number far more often.
# The groups share one separator, and the number does not continue a sequence of digit
# groups (5100 0010 0000 0007, DE89 3704 0044 ...).
_PHONE_00 = (
    "".join(rf"(?<!(?<![\w.:])[0-9]{{{n}}}[ .-])" for n in (2, 3, 4))
    + r"00[1-9][0-9]{0,2}(?: ?\(0?[0-9]{1,4}\))?"
    r"(?:(?: [0-9]{1,15}){1,7}|(?:-[0-9]{1,15}){1,7}|(?:\.[0-9]{1,15}){1,7})"
)


# One national format that nothing else looks like: Japanese mobile numbers (090-1234-5678).
_NATIONAL = r"0[789]0-[0-9]{4}-[0-9]{4}"


def _number(text: str) -> str | None:
    if text.startswith("00"):
        return _phone(text, prefix=2)
    if text.startswith("0"):
        return "<phone>"  # _NATIONAL
    return "<phone>" if _NANP_WHOLE.fullmatch(text) else _card(text)


def _left(pattern: str, window: int) -> _Before:
    """Where ``pattern``, ending at the anchor, starts (leftmost), at most ``window`` back."""
    compiled = re.compile(rf"(?:{pattern})\Z")

    def start(text: str, done: int, anchor: int) -> int | None:
        match = compiled.search(text, max(done, anchor - window), anchor)
        return None if match is None else match.start()

    return start


_LOCAL_RUN = re.compile(rf"(?<!{_EMAIL_LOCAL}){_EMAIL_LOCAL}*\Z")
_SPACED_AFTER_UNSPACED = re.compile(rf"(?<={_UNSPACED})(?:(?!{_UNSPACED}){_EMAIL_LOCAL})+\Z")


def _local_part_start(text: str, done: int, anchor: int) -> int:
    """Where the local part of an e-mail address whose ``@`` is at ``anchor`` starts.

    The whole run of local-part characters before the ``@`` (RFC 5321 allows 64; a longer
    run goes whole), except that after a word of an unspaced script only the rest goes: in
    "请联系zhang.wei@...", "zhang.wei".
    """
    window = 128
    while True:
        lo = max(done, anchor - window)
        run = _LOCAL_RUN.search(text, lo, anchor)
        if run is not None or lo == done:
            break
        window *= 4  # a run longer than the window: rare, look further
    start = lo if run is None else run.start()  # None: the run reaches back to done
    if text.isascii() or text[start:anchor].isascii():
        return start
    spaced = _SPACED_AFTER_UNSPACED.search(text, start, anchor)
    return start if spaced is None else spaced.start()


def _word_chars_left(window: int) -> _Before:
    """The word before the anchor: "ghp" of ghp_..., "ya29" of ya29...."""
    return _left(r"(?<![A-Za-z0-9])[A-Za-z0-9]+", window)


_KINDS = (
    # PEM private keys, possibly cut off at the end of the text.
    _Kind(
        "pem",
        ("-",),
        "",
        r"----BEGIN[A-Z ]*PRIVATE KEY-----(?:[^\x00]*?-----END[A-Z ]*PRIVATE KEY-----|[^\x00]*)",
        _constant("<token>"),
    ),
    # Command-line flags: --password hunter2 (--password=... is a key=value below).
    _Kind(
        "flag",
        ("-",),
        r"(?<![\w-]-)(?=-)",
        rf"-[A-Za-z0-9_.-]*+{_FLAG_KEY_LOOSE}{_FLAG_KEY}\s+(?!-)[^\s\x00]+",
        _keep_then(re.compile(r"--\S+\s+"), "<secret>"),
    ),
    # scheme://user:password@host: the credentials go, the host stays.
    _Kind(
        "userinfo",
        (":",),
        "(?=//)",
        r"//(?:[^\s\x00/@:?#]+(?::[^\s\x00/@?#]*)?|:[^\s\x00/@?#]+)@",
        _userinfo,
    ),
    # Authorization: <scheme> <credentials>, the scheme kept, or credentials alone.
    _Kind(
        "authorization",
        ("=", ":"),
        _AUTHORIZATION_LOOSE,
        _AUTHORIZATION
        # "Authorization: Bearer <token>" is scrubbed already: the scheme is no value.
        + rf"\s*(?:{_AUTH_SCHEME}\s+|(?!{_AUTH_SCHEME}\s)){_VALUE}",
        _kv,
    ),
    # key=value, key: value, "key": "value", where the key names a secret (see above).
    _Kind("kv", ("=", ":"), _KV_KEY_LOOSE, rf"{_KV_KEY}\s*{_VALUE}", _kv),
    _Kind("kv_i18n", ("=", ":"), _I18N_KEY_LOOSE, rf"{_I18N_KEY}\s*{_VALUE}", _kv),
    # MAC addresses (device identifiers), anchored at the first separator.
    _Kind(
        "mac",
        (":", "-"),
        r"(?=[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-])(?<=(?<![\w:-])[0-9A-Fa-f]{2}.)",
        r"[0-9A-Fa-f]{2}(?:(?<=:..)(?::[0-9A-Fa-f]{2}){4}|(?<=-..)(?:-[0-9A-Fa-f]{2}){4})(?![\w:-])",
        _constant("<mac>"),
        before=_left(r"(?<![\w:-])[0-9A-Fa-f]{2}", 3),
    ),
    # ... and Cisco's dotted form (001a.2b3c.4d60), anchored at the first dot.
    _Kind(
        "mac_dotted",
        (".",),
        r"(?=[0-9A-Fa-f]{4}\.)(?<=(?<![\w.:-])[0-9A-Fa-f]{4}\.)",
        r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![\w:-]|\.\w)",
        _constant("<mac>"),
        before=_left(r"[0-9A-Fa-f]{4}", 4),
    ),
    # IPv6 anchored at its first colon, the first group of four hex digits to its left:
    # full, with an embedded IPv4 address, or compressed with "::".
    _Kind(
        "ipv6",
        (":",),
        # cheap first: "::" here or two groups ahead ("10:32:07" has one)
        r"(?=:|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:)"
        + "(?:"
        + "|".join(f"(?<=(?<![\\w:.])[0-9A-Fa-f]{{{n}}}:)" for n in range(1, 5))
        + ")",
        rf"(?:{_HEX4}(?::{_HEX4}){{6}}|(?:{_HEX4}:){{5}}{_IPV4}"
        + rf"|(?:{_HEX4}:){{0,6}}:{_IPV6_TAIL}?){_IP_END}",
        _ip,
        before=_left(r"(?<![\w:.])[0-9A-Fa-f]{1,4}", 5),
    ),
    # IPv6 starting with "::" (::1, ::ffff:192.0.2.1); a bare "::" is no address.
    _Kind(
        "ipv6_lead",
        (":",),
        r"(?<![\w:.]:)(?=:)",
        rf":{_IPV6_TAIL}{_IP_END}",
        _ip,
    ),
    # E-mail addresses, also URL-encoded (alice%40example.com); the local part is on the left.
    _Kind(
        "email",
        ("@",),
        rf"(?<={_EMAIL_LOCAL_RFC}@)",
        _DOMAIN,
        _constant("<email>"),
        before=_local_part_start,
    ),
    _Kind(
        "email_encoded",
        ("%",),
        rf"(?<={_EMAIL_LOCAL_RFC}%)(?=40)",
        rf"40{_DOMAIN}",
        _constant("<email>"),
        before=_local_part_start,
    ),
    # User names in home-directory paths: /home/alice, /Users/alice, C:\Users\alice and
    # its JSON-escaped form C:\\Users\\alice; the shared profiles (Public, ...) stay.
    _Kind(
        "home",
        ("/",),
        "",
        rf"(?:home|Users)/{_SHARED_HOMES}{_HOME_USER}",
        _keep_then(re.compile(r"/(?:home|Users)/"), "<user>"),
    ),
    # Slack incoming-webhook URLs: the last path segment is the secret.
    _Kind(
        "slack_webhook",
        ("/",),
        "(?=services/T)",
        r"services/T[A-Z0-9]{8,}/B[A-Z0-9]{8,}/[A-Za-z0-9]{24}(?![A-Za-z0-9])",
        _keep_then(re.compile(r"/services/T[A-Z0-9]+/B[A-Z0-9]+/"), "<token>"),
    ),
    _Kind(
        "home_windows",
        ("\\",),
        "",
        rf"\\?[Uu]sers\\{{1,2}}{_SHARED_HOMES}{_HOME_USER}",
        _keep_then(re.compile(r"\\{1,2}[Uu]sers\\{1,2}"), "<user>"),
    ),
    # Phone numbers written internationally (+...); tel:+... keeps its "tel:".
    _Kind(
        "phone_intl",
        ("+",),
        r"(?<![\w+]\+)",
        r"[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\))?(?:[ .-]?[0-9]{1,5}){1,7}" + _NUMBER_END,
        _phone,
    ),
    # North American numbers with the area code in brackets: (415) 555-2671.
    _Kind(
        "phone_paren",
        ("(",),
        r"(?<![\w.+-]\()",
        r"[2-9][0-9]{2}\)\ ?[0-9]{3}[ .-][0-9]{4}" + _NUMBER_END,
        _constant("<phone>"),
    ),
    # Cloud and SaaS credentials with a recognisable prefix.
    _Kind(
        "aws_key",
        ("A",),
        r"(?<![\w]A)",
        r"(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA)[A-Z0-9]{16}(?![A-Za-z0-9_-])"
        r"|Iza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])",  # ... and Google API keys
        _constant("<token>"),
    ),
    _Kind(
        "token_underscore",
        ("_",),
        r"(?<=[a-z]_)",
        r"(?<=(?<![\w])gh[pousr]_)[A-Za-z0-9]{36,}"  # GitHub
        r"|(?<=(?<![\w])github_)pat_[A-Za-z0-9_]{22,}"
        r"|(?<=(?<![\w])npm_)[A-Za-z0-9]{36}"  # npm
        r"|(?<=(?<![\w])[spr]k_)(?:live|test)_[A-Za-z0-9]{10,}",  # Stripe
        _constant("<token>"),
        before=_word_chars_left(7),  # "github" of github_pat_..., the longest prefix
    ),
    _Kind(
        "token_dash",
        ("-",),
        r"(?<=[a-z]-)",
        r"(?:(?<=(?<![\w])xox[abposr]-)[A-Za-z0-9-]{10,}"  # Slack
        r"|(?<=(?<![\w])glpat-)[A-Za-z0-9_-]{20,}"  # GitLab
        r"|(?<=(?<![\w])sk-)(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,})"  # OpenAI, Anthropic
        r"(?![A-Za-z0-9_-])",
        _constant("<token>"),
        before=_word_chars_left(6),  # "glpat"
    ),
    _Kind(
        "token_dot",
        (".",),
        r"(?<=[9G]\.)",
        r"(?<=(?<![\w])ya29\.)[0-9A-Za-z_-]{20,}"  # Google OAuth access tokens
        r"|(?<=(?<![\w])SG\.)[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",  # SendGrid
        _constant("<token>"),
        before=_word_chars_left(5),  # "ya29"
    ),
    # JSON Web Tokens, anchored at the dot after the header. Header and payload are base64url
    # JSON objects: "{" encodes to "e" and the next character to one of w-z 0-9 - _ ("eyJ"
    # for '{"', "e30" for "{}"); a header is at least '{"alg":"none"}'.
    _Kind(
        "jwt",
        (".",),
        r"(?=e[w-z0-9_-])(?<=[A-Za-z0-9_-]{20}\.)",
        r"e[w-z0-9_-][A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])",
        _constant("<token>"),
        before=_left(r"(?<![A-Za-z0-9_-])e[w-z0-9_-][A-Za-z0-9_-]{18,}", 4096),
    ),
    # Azure AD client secrets: three characters, a digit, "Q~", then 31 to 34 more.
    _Kind(
        "azure_secret",
        ("~",),
        r"(?<=[0-9]Q~)",
        r"(?<=(?<![\w~.-])[A-Za-z0-9_~.-]{3}[0-9]Q~)[A-Za-z0-9_~.-]{31,34}(?![\w~.-])",
        _constant("<token>"),
        before=_left(r"[A-Za-z0-9_~.-]{3}[0-9]Q", 5),
    ),
    # Firebase Cloud Messaging registration tokens: an instance id, ":APA91b", 100+ more.
    _Kind(
        "fcm",
        (":",),
        "(?=APA91b)",
        r"APA91b[A-Za-z0-9_-]{20,}",
        _constant("<token>"),
        before=_left(r"(?<![\w-])[A-Za-z0-9_-]{8,64}", 64),
    ),
    # Authorization schemes anywhere: "Bearer <token>", "Basic <token>" (the scheme stays).
    # After a secret key ("Authorization: Token ..."), every scheme is recognised, above.
    _Kind(
        "auth",
        ("B", "b"),
        r"(?<![\w].)",
        r"(?:earer|asic)\s+[A-Za-z0-9._~+/-]+=*",
        _auth,
    ),
)

# IPv4 addresses, payment cards, North American and 00-prefixed phone numbers and IBANs:
# found by their shapes in the digits-as-zeros copy of the text (see the module docstring).


@dataclass(frozen=True)
class _Shaped:
    """A kind found by its ``shape`` in the digits-as-zeros copy of the text (or, if
    ``on_text``, in the text itself: where the shape needs to tell 0 from other digits)."""

    kind: _Kind
    shape: re.Pattern[str]
    octet_before: bool = False  # the match starts at the digits just before the shape
    on_text: bool = False


_NUMBER = _Kind(
    "number",
    (),
    r"(?<![\w.+])",
    rf"(?:{_CARD}|{_NANP}|{_PHONE_00}|{_NATIONAL}){_NUMBER_END}",
    _number,
)
_SHAPE_FROM, _SHAPE_TO = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", "000000000" + "A" * 26
_SHAPE_STR = str.maketrans(_SHAPE_FROM, _SHAPE_TO)
_SHAPE_BYTES = bytes.maketrans(_SHAPE_FROM.encode(), _SHAPE_TO.encode())


def _shape(text: str) -> str:
    """``text`` with every digit written as 0 and every capital as A (same length).

    str.translate is fast on ASCII text only (it falls back to a dictionary look-up per
    character after the first other one), so other text goes through bytes, each
    non-ASCII character (or lone surrogate) becoming one ``?``.

    >>> _shape("DE89 Zürich 10.0.19045")
    'AA00 A?rich 00.0.00000'
    """
    if text.isascii():
        return text.translate(_SHAPE_STR)
    return text.encode("ascii", "replace").translate(_SHAPE_BYTES).decode("ascii")


_SHAPED = (
    _Shaped(
        _Kind(
            "ipv4",
            (),
            r"(?:(?<![\w.])|(?<=\.\.))",  # "...10.0.0.1" but not "1.10.0.0.1"
            rf"{_IPV4}(?![\w]|\.[0-9])",  # not the first four parts of a longer dotted number
            _ip,
        ),
        re.compile(r"\.(?=0{1,3}\.0{1,3}\.0{1,3}(?!0))"),
        octet_before=True,
    ),
    _Shaped(
        _NUMBER,
        re.compile(
            r"000(?:0(?=0{9}|[ -]0000[ -]0000[ -]0|[ -]000000[ -]0000)"
            r"|(?=-000-0000|\.000\.0000|-0000-0000))"  # ... 090-1234-5678
        ),
    ),
    _Shaped(  # 0049 30 12345678: 00 and a country code, then a separator; not SHA-001
        _NUMBER,
        re.compile(r"00(?=[1-9][0-9]{0,2}[ .(-])(?<=(?<![\w.+-])00)"),
        on_text=True,
    ),
    _Shaped(
        _Kind("iban", (), r"(?<![0-9A-Za-z])", _IBAN, _iban),
        re.compile(r"AA00"),  # two capitals, two digits
    ),
)


# -- the scanners: one per anchor character ------------------------------------------------

_MARKERS: dict[str, _Kind] = {}


def _marked(kind: _Kind) -> str:
    """``kind``'s pattern after its anchor, ending in a new marker group."""
    marker = f"m{len(_MARKERS)}"
    _MARKERS[marker] = kind
    return kind.continuation(marker)


def _build_scanners() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """``(anchor, pattern)`` pairs: each pattern is the anchor, then its kinds' alternatives."""
    kinds_by_anchor: dict[str, list[_Kind]] = {}
    for kind in _KINDS:
        for anchor in kind.anchors:
            kinds_by_anchor.setdefault(anchor, []).append(kind)
    return tuple(
        (anchor, re.compile(f"{re.escape(anchor)}(?:{'|'.join(_marked(k) for k in kinds)})"))
        for anchor, kinds in kinds_by_anchor.items()
    )


_SCANNERS = _build_scanners()
_SHAPED_AT = tuple(re.compile(_marked(shaped.kind)) for shaped in _SHAPED)


def _shaped_matches(text: str) -> Iterator[re.Match[str]]:
    zeros = _shape(text)
    for shaped, at in zip(_SHAPED, _SHAPED_AT, strict=True):
        for hit in shaped.shape.finditer(text if shaped.on_text else zeros):
            start = hit.start()
            if shaped.octet_before:
                while start > hit.start() - 3 and start > 0 and zeros[start - 1] == "0":
                    start -= 1
            match = at.match(text, start)
            if match is not None:
                yield match


def _candidates(text: str) -> list[re.Match[str]]:
    """Every match of every scanner, by position (no two scanners share an anchor)."""
    matches = [
        match
        for anchor, scanner in _SCANNERS
        if anchor in text  # a fast test that saves short texts most scans
        for match in scanner.finditer(text)
    ]
    matches += _shaped_matches(text)
    matches.sort(key=lambda match: match.start())
    return matches


def _replacements(text: str) -> list[tuple[int, int, str]]:
    """What goes: ``(start, end, replacement)`` in order, not overlapping.

    >>> _replacements("mail bob@example.com from 10.0.0.1")
    [(5, 20, '<email>'), (26, 34, '<ip>')]
    """
    found: list[tuple[int, int, str]] = []
    done = 0  # text[:done] is decided (kept or replaced)
    for match in _candidates(text):
        anchor = match.start()
        if anchor < done:  # inside what an earlier match replaced
            continue
        marker = match.lastgroup
        assert marker is not None  # every alternative ends in its marker
        kind = _MARKERS[marker]
        start, end = anchor, match.end(marker)
        if kind.before is not None:
            left = kind.before(text, done, anchor)
            if left is None:
                continue
            start = left
        replacement = kind.replace(text[start:end])
        if replacement is None:
            continue
        found.append((start, end, replacement))
        done = end
    return found


def _scrub_text(text: str) -> str:
    pieces: list[str] = []
    done = 0
    for start, end, replacement in _replacements(text):
        pieces += (text[done:start], replacement)
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _scrub_batch(texts: list[str]) -> list[str]:
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a text holds a NUL: no safe separator
        return [_scrub_text(text) for text in texts]
    return _scrub_text(joined).split(_SEP) if texts else []


# -- the public function ------------------------------------------------------------------

_Array = TypeVar("_Array", bound="np.ndarray[Any, Any]")


# A str, a Series and an array are also iterables of str; the first overload that fits wins.
@overload
def scrub_pii(texts: str) -> str: ...  # type: ignore[overload-overlap]
@overload
def scrub_pii(texts: pd.Series[Any]) -> pd.Series[Any]: ...
@overload
def scrub_pii(texts: _Array) -> _Array: ...  # type: ignore[overload-overlap]
@overload
def scrub_pii(texts: Iterable[str | None]) -> list[str | None]: ...


def scrub_pii(texts: Any) -> Any:
    """Replace personal data and secrets in diagnostic texts by typed placeholders.

    What goes, and what replaces it:

    =======================================================  ==============================
    e-mail addresses (also URL-encoded ``%40``)              ``<email>``
    IPv4 and IPv6 addresses (with zone, embedded IPv4)       ``<ip>``
    MAC addresses (also Cisco's ``001a.2b3c.4d60``)          ``<mac>``
    phone numbers: international ``+...`` and ``00...``,
    North American ``(415) 555-2671``, ``415-555-2671``,
    ``415.555.2671``, Japanese mobile ``090-1234-5678``      ``<phone>``
    payment card numbers that pass the Luhn check            ``<card>``
    IBANs (compact or in groups of four) that pass the
    ISO 13616 mod-97 check                                   ``<iban>``
    JWTs, ``Bearer``/``Basic`` credentials, PEM private
    keys, AWS, Google, GitHub, Slack, GitLab, npm, Stripe,
    OpenAI, Anthropic, SendGrid and Azure AD keys, Slack
    webhook URLs, Firebase messaging tokens                  ``<token>``
    the value of a secret-named key (``password=``,
    ``?token=``, ``"api_key": "..."``, ``--password x``,
    ``Passwort=``, ``contraseña:``), unless it says there
    is none (``password: YES``, ``null``, ``***``)           ``<secret>``, the key stays
    credentials in URLs (``https://bob:pw@host``)            ``<user>``, ``<secret>``
    user names in home paths (``/home/alice``,
    ``/Users/alice``, ``C:\\Users\\alice``)                  ``<user>``
    =======================================================  ==============================

    E-mail addresses may be internationalised (``müller@bücher.de``): letters of every
    script count; in text written without spaces (Chinese, Japanese, Thai) the local part
    starts where the script changes. What diagnostics need stays: error codes (``E1234``,
    ``0x80070005``, ``ERR_CONNECTION_RESET``), versions (``1.2.3``, ``10.0.19045``), hex
    addresses, UUIDs and request ids (random, they name a request, not a person), library and
    file names, timestamps (ISO 8601 and epoch numbers), ports, durations, and the addresses
    that name no host: unspecified (``0.0.0.0``, ``::``), loopback (``127.0.0.0/8``,
    ``::1``), multicast (``224.0.0.251``, ``ff02::1``) and broadcast (``255.255.255.255``).
    Scrubbing is idempotent: placeholders are never scrubbed again.

    A secret value ends at whitespace, a quote, a bracket, ``&``, ``;``, ``,``, ``<`` or
    ``>`` (the separators of query strings, cookies and connection strings); a password
    that contains one of them is replaced only up to it, unless it is quoted.

    Known limits. Towards scrubbing: a four-part version whose parts are all at most 255
    (``2.0.0.1``, without a ``v``) reads as an IPv4 address, and ``Add::beef`` as IPv6.
    Towards keeping: phone numbers in national formats other than the North American ones
    and Japanese mobiles (``030 1234567``, ``06 12 34 56 78``) unless written with ``+`` or
    ``00`` and a separator after the country code; IBANs in lower case or grouped other than
    by four; card numbers of issuers that start with 0, 1, 7, 8 or 9; secrets under keys
    that name no secret (``key=``); names, street addresses and other free-text PII.
    Recall and precision per kind on a labelled corpus: ``benchmarks/README.md``.

    The result has the input's length and form: a ``str`` for a ``str``, a list for a list
    or any other iterable, a numpy array of the same dtype kind for a numpy array, a pandas
    Series with the same index and name for a Series. ``None`` and NaN entries stay as they
    are; any other non-string entry is a :class:`~telemagg.errors.SchemaError`.

    >>> scrub_pii("login failed for alice@example.com from 203.0.113.9 (E1234, v2.3.1)")
    'login failed for <email> from <ip> (E1234, v2.3.1)'
    >>> scrub_pii(["GET /reset?token=9f8e7d6c&lang=en", "open /home/alice/.cfg: ENOENT"])
    ['GET /reset?token=<secret>&lang=en', 'open /home/<user>/.cfg: ENOENT']
    """
    if isinstance(texts, str):
        return _scrub_text(texts)
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise SchemaError(f"texts must be one-dimensional; got an array of shape {texts.shape}")
        scrubbed = _scrub_with_missing(texts.tolist())
        if texts.dtype.kind == "U":
            return np.array(scrubbed, dtype=str)
        result = np.empty(len(scrubbed), dtype=object)
        result[:] = scrubbed
        return result
    if hasattr(texts, "index") and hasattr(texts, "to_numpy"):  # a pandas Series
        scrubbed = _scrub_with_missing(texts.to_numpy(dtype=object).tolist())
        return type(texts)(scrubbed, index=texts.index, name=texts.name, dtype=texts.dtype)
    return _scrub_with_missing(list(texts))


def _scrub_with_missing(items: list[Any]) -> list[Any]:
    """Scrub the strings among ``items``; keep missing ones where they are; refuse the rest."""
    present = [position for position, item in enumerate(items) if isinstance(item, str)]
    if len(present) == len(items):
        return _scrub_batch(items)
    for position, item in enumerate(items):
        if not isinstance(item, str) and not is_missing(item):
            raise SchemaError(
                f"texts[{position}] is a {type(item).__name__}; texts must be strings "
                "(or None/NaN for a missing text)"
            )
    scrubbed = list(items)
    for position, text in zip(present, _scrub_batch([items[i] for i in present]), strict=True):
        scrubbed[position] = text
    return scrubbed
