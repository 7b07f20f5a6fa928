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
there are; so are the checks a regex does badly: Luhn, the digit count of a phone number,
base64 of Basic credentials.

Digits are everywhere in diagnostics (timestamps, durations, ids), so IPv4 addresses, card
numbers and North American phone numbers are not anchored at digits: they are found by
their *shapes* in a copy of the text with every digit written as ``0`` (``.0.0.0`` after
the first octet, ``0000 0000 0000 0``, ``000-000-0000``, thirteen zeros), each shape
starting with a fixed ``.`` or ``000``; only those hits are matched against the real text.

A batch of texts is scanned as one string joined by NUL characters, which no pattern can
cross, so Python's per-call cost is paid once per batch. ``benchmarks/bench_scrub.py``
measures all of this, and the design not taken: the same kinds in one combined pattern,
numbers anchored at their digits, scan at 40% of the speed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from telemagg.errors import SchemaError
from telemagg.hygiene._identifiers import is_missing

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PLACEHOLDERS", "scrub_pii"]

PLACEHOLDERS = ("<email>", "<ip>", "<mac>", "<phone>", "<card>", "<token>", "<secret>", "<user>")
"""Every placeholder :func:`scrub_pii` writes."""

_SEP = "\x00"  # joins a batch; excluded from every open-ended character class below

# -- shared pieces ------------------------------------------------------------------------

_HEX4 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6_TAIL = rf"(?:(?:{_HEX4}:){{0,5}}{_IPV4}|{_HEX4}(?::{_HEX4}){{0,6}})"  # after a "::"
_IP_END = r"(?:%[0-9A-Za-z]+)?(?![\w:]|\.[0-9])"  # optional IPv6 zone, then no more address
_NUMBER_END = r"(?![\w]|[.-][0-9])"
_DOMAIN = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?![A-Za-z0-9-])"
)
# The local part of an e-mail address, as scrubbed: it stops at = / ? & ' ` { | } (which
# RFC 5322 allows but URLs and templates use around addresses), so "?email=a@b.c" keeps its
# key. Any RFC 5322 local-part character before the @ is enough for the domain to go.
_EMAIL_LOCAL = r"[A-Za-z0-9._+!#$*^~-]"
_EMAIL_LOCAL_RFC = r"[A-Za-z0-9._+!#$*^~=/?&'`{|}%-]"
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


_KV_GAPS = ("", '"', "'", " ", '" ', "' ")  # password=, "password":, password = ...
_FLAG_KEY_LOOSE, _FLAG_KEY = _secret_key_before(_SECRET_KEY_ENDINGS, ("",), "")
_KV_KEY_LOOSE, _KV_KEY = _secret_key_before(
    tuple(ending for ending in _SECRET_KEY_ENDINGS if ending != "authorization"), _KV_GAPS, "."
)
_AUTHORIZATION_LOOSE, _AUTHORIZATION = _secret_key_before(("authorization",), _KV_GAPS, ".")


# -- the kinds: anchor characters, pattern after the anchor, and what replaces a match ----


@dataclass(frozen=True)
class _Kind:
    """One kind of PII: where it is anchored and how a match is replaced.

    ``after`` is matched right after the anchor character, if ``precheck`` (lookarounds,
    tried first because most anchors fail there) holds; ``before`` (a regex ending in
    ``\\Z``), if set, finds the part of the match left of the anchor, and a match without it
    is no match. ``replace`` turns the matched text into its replacement, or returns None to
    keep it (a failed Luhn check, too few digits for a phone number).
    """

    name: str
    anchors: tuple[str, ...]  # characters
    precheck: str  # cheap lookarounds tried right after the anchor, before ``after``
    after: str
    replace: Callable[[str], str | None]
    before: re.Pattern[str] | None = None
    before_window: int = 0

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


def _card(text: str) -> str | None:
    digits = _digits(text)
    return "<card>" if 13 <= len(digits) <= 19 and _luhn_valid(digits) else None


def _phone_intl(text: str) -> str | None:
    return "<phone>" if 8 <= len(_digits(text)) <= 15 else None  # E.164: at most 15 digits


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
    return f"{kept.group()}{quote}<secret>{quote}"


def _userinfo(text: str) -> str | None:
    """``text`` is ``://user@`` or ``://user:password@``."""
    return "://<user>:<secret>@" if ":" in text[3:] else "://<user>@"


_CARD = (  # major issuers start with 2-6; plain, in groups of four, or 4-6-5 (Amex)
    r"[2-6][0-9]{3}(?:[0-9]{9,15}| [0-9]{4} [0-9]{4} [0-9]{1,7}|-[0-9]{4}-[0-9]{4}-[0-9]{1,7}"
    r"| [0-9]{6} [0-9]{4,5}|-[0-9]{6}-[0-9]{4,5})"
)
_NANP = r"[2-9][0-9]{2}(?:-[0-9]{3}-|\.[0-9]{3}\.)[0-9]{4}"  # 415-555-2671, 415.555.2671
_NANP_WHOLE = re.compile(_NANP)


def _number(text: str) -> str | None:
    return "<phone>" if _NANP_WHOLE.fullmatch(text) else _card(text)


def _left(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?:{pattern})\Z")


_EMAIL_LOCAL_LEFT = _left(rf"(?<!{_EMAIL_LOCAL}){_EMAIL_LOCAL}{{0,64}}")
_WORD_CHARS_LEFT = _left(r"(?<![A-Za-z0-9])[A-Za-z0-9]+")  # "ghp" of ghp_..., "ya29" of ...

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
        r"//[^\s\x00/@:?#]+(?::[^\s\x00/@?#]*)?@",
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
    # MAC addresses (device identifiers), anchored at the first separator.
    _Kind(
        "mac",
        (":", "-"),
        r"(?=[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-])(?<=(?<![\w:-])[0-9A-Fa-f]{2}.)",
        r"[0-9A-Fa-f]{2}(?:(?<=:..)(?::[0-9A-Fa-f]{2}){4}|(?<=-..)(?:-[0-9A-Fa-f]{2}){4})(?![\w:-])",
        _constant("<mac>"),
        before=_left(r"(?<![\w:-])[0-9A-Fa-f]{2}"),
        before_window=3,
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
        _constant("<ip>"),
        before=_left(r"(?<![\w:.])[0-9A-Fa-f]{1,4}"),
        before_window=5,
    ),
    # IPv6 starting with "::" (::1, ::ffff:192.0.2.1); a bare "::" is no address.
    _Kind(
        "ipv6_lead",
        (":",),
        r"(?<![\w:.]:)(?=:)",
        rf":{_IPV6_TAIL}{_IP_END}",
        _constant("<ip>"),
    ),
    # E-mail addresses, also URL-encoded (alice%40example.com); the local part is on the left.
    _Kind(
        "email",
        ("@",),
        rf"(?<={_EMAIL_LOCAL_RFC}@)",
        _DOMAIN,
        _constant("<email>"),
        before=_EMAIL_LOCAL_LEFT,
        before_window=65,  # RFC 5321: a local part has at most 64 characters
    ),
    _Kind(
        "email_encoded",
        ("%",),
        rf"(?<={_EMAIL_LOCAL_RFC}%)(?=40)",
        rf"40{_DOMAIN}",
        _constant("<email>"),
        before=_EMAIL_LOCAL_LEFT,
        before_window=65,
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
        r"[0-9]{1,3}(?:[ .-]?\([0-9]{1,4}\))?(?:[ .-]?[0-9]{1,5}){1,5}" + _NUMBER_END,
        _phone_intl,
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
        before=_WORD_CHARS_LEFT,
        before_window=7,  # "github" of github_pat_..., the longest prefix
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
        before=_WORD_CHARS_LEFT,
        before_window=6,  # "glpat"
    ),
    _Kind(
        "token_dot",
        (".",),
        r"(?<=[9G]\.)",
        r"(?<=(?<![\w])ya29\.)[0-9A-Za-z_-]{20,}"  # Google OAuth access tokens
        r"|(?<=(?<![\w])SG\.)[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",  # SendGrid
        _constant("<token>"),
        before=_WORD_CHARS_LEFT,
        before_window=5,  # "ya29"
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
        before=_left(r"(?<![A-Za-z0-9_-])e[w-z0-9_-][A-Za-z0-9_-]{18,}"),
        before_window=4096,
    ),
    # Azure AD client secrets: three characters, a digit, "Q~", then 31 to 34 more.
    _Kind(
        "azure_secret",
        ("~",),
        r"(?<=[0-9]Q~)",
        r"(?<=(?<![\w~.-])[A-Za-z0-9_~.-]{3}[0-9]Q~)[A-Za-z0-9_~.-]{31,34}(?![\w~.-])",
        _constant("<token>"),
        before=_left(r"[A-Za-z0-9_~.-]{3}[0-9]Q"),
        before_window=5,
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

# IPv4 addresses, payment cards and North American phone numbers: found by their shapes in
# the digits-as-zeros copy of the text (see the module docstring).


@dataclass(frozen=True)
class _Shaped:
    """A kind found by its ``shape`` in the digits-as-zeros copy of the text."""

    kind: _Kind
    shape: re.Pattern[str]
    octet_before: bool = False  # the match starts at the digits just before the shape


_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")
_SHAPED = (
    _Shaped(
        _Kind(
            "ipv4",
            (),
            r"(?<![\w.])",
            rf"{_IPV4}(?![\w]|\.[0-9])",  # not the first four parts of a longer dotted number
            _constant("<ip>"),
        ),
        re.compile(r"\.(?=0{1,3}\.0{1,3}\.0{1,3}(?!0))"),
        octet_before=True,
    ),
    _Shaped(
        _Kind("number", (), r"(?<![\w.])", rf"(?:{_CARD}|{_NANP}){_NUMBER_END}", _number),
        re.compile(
            r"000(?:0(?=0{9}|[ -]0000[ -]0000[ -]0|[ -]000000[ -]0000)|(?=-000-0000|\.000\.0000))"
        ),
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
    zeros = text.translate(_DIGITS_AS_ZERO)
    for shaped, at in zip(_SHAPED, _SHAPED_AT, strict=True):
        for hit in shaped.shape.finditer(zeros):
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


def _scrub_text(text: str) -> str:
    candidates = _candidates(text)
    pieces: list[str] = []
    done = 0  # text[:done] is decided (kept or replaced)
    for match in candidates:
        anchor = match.start()
        if anchor < done:  # inside what an earlier match replaced
            continue
        marker = match.lastgroup
        assert marker is not None  # every alternative ends in its marker
        kind = _MARKERS[marker]
        start, end = anchor, match.end(marker)
        if kind.before is not None:
            left = kind.before.search(text, max(done, anchor - kind.before_window), anchor)
            if left is None:
                continue
            start = left.start()
        replacement = kind.replace(text[start:end])
        if replacement is None:
            continue
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
    MAC addresses                                            ``<mac>``
    phone numbers: international ``+...``, North American
    ``(415) 555-2671``, ``415-555-2671``, ``415.555.2671``   ``<phone>``
    payment card numbers that pass the Luhn check            ``<card>``
    JWTs, ``Bearer``/``Basic`` credentials, PEM private
    keys, AWS, Google, GitHub, Slack, GitLab, npm, Stripe,
    OpenAI, Anthropic, SendGrid and Azure AD keys            ``<token>``
    the value of a secret-named key (``password=``,
    ``?token=``, ``"api_key": "..."``, ``--password x``)     ``<secret>``, the key stays
    credentials in URLs (``https://bob:pw@host``)            ``<user>``, ``<secret>``
    user names in home paths (``/home/alice``,
    ``/Users/alice``, ``C:\\Users\\alice``)                  ``<user>``
    =======================================================  ==============================

    What diagnostics need stays: error codes (``E1234``, ``0x80070005``,
    ``ERR_CONNECTION_RESET``), versions (``1.2.3``, ``10.0.19045``), hex addresses, UUIDs,
    library and file names, timestamps (ISO 8601 and epoch numbers), ports, durations.
    Scrubbing is idempotent: placeholders are never scrubbed again.

    A secret value ends at whitespace, a quote, a bracket, ``&``, ``;``, ``,``, ``<`` or
    ``>`` (the separators of query strings, cookies and connection strings); a password
    that contains one of them is replaced only up to it, unless it is quoted.

    Known limits. Towards scrubbing: a four-part version whose parts are all at most 255
    (``2.0.0.1``, without a ``v``) reads as an IPv4 address, and ``Add::beef`` as IPv6.
    Towards keeping: phone numbers in national formats other than the North American ones
    (``030 1234567``) unless written with ``+``; card numbers of issuers that start with
    0, 1, 7, 8 or 9; names, street addresses and other free-text PII.

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
