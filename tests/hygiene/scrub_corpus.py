r"""Realistic diagnostic lines with planted PII, and what scrub_pii must make of them.

Written by hand for these tests: crash reports, HTTP access logs, stack frames (Python, Java,
.NET, native), config and environment dumps, client telemetry. Every kind of PII appears in
at least one line, in the places it turns up in real logs; every line also carries the
diagnostics that must survive (error codes, versions, hex addresses, file names, timestamps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# (raw line, expected scrubbed line)
PLANTED: list[tuple[str, str]] = [
    # --- crash reports ------------------------------------------------------------------
    (
        "2024-03-02T11:04:17.552Z FATAL app crashed: SIGSEGV at 0x00007ffee3b4c8a0 in "
        "libGLESv2.so (build 120.0.6099.109) user=alice.w@example.com",
        "2024-03-02T11:04:17.552Z FATAL app crashed: SIGSEGV at 0x00007ffee3b4c8a0 in "
        "libGLESv2.so (build 120.0.6099.109) user=<email>",
    ),
    (
        "Unhandled exception 0x80070005 (E_ACCESSDENIED) opening "
        r"C:\Users\Jane Doe\AppData\Local\Vidcall\cache\index.db on 10.0.19045",
        "Unhandled exception 0x80070005 (E_ACCESSDENIED) opening "
        r"C:\Users\<user>\AppData\Local\Vidcall\cache\index.db on 10.0.19045",
    ),
    (
        "minidump written to /Users/bob/Library/Logs/DiagnosticReports/vidcall-2024-03-02.ips "
        "(macOS 14.3.1, arm64)",
        "minidump written to /Users/<user>/Library/Logs/DiagnosticReports/vidcall-2024-03-02.ips "
        "(macOS 14.3.1, arm64)",
    ),
    (
        "core dumped: /home/carol/.local/share/vidcall/core.4242 signal 11 ERR_CONNECTION_RESET",
        "core dumped: /home/<user>/.local/share/vidcall/core.4242 signal 11 ERR_CONNECTION_RESET",
    ),
    (
        "payment widget crash E4012: card 4111 1111 1111 1111 rejected, retry with "
        "5500-0000-0000-0004 (order 4111111111111112)",
        "payment widget crash E4012: card <card> rejected, retry with "
        "<card> (order 4111111111111112)",
    ),
    (
        "billing: amex 3782 822463 10005 declined, code=DECLINED_51",
        "billing: amex <card> declined, code=DECLINED_51",
    ),
    # --- HTTP access logs ---------------------------------------------------------------
    (
        '203.0.113.42 - - [02/Mar/2024:11:04:17 +0000] "GET /api/v2/meetings?page=2 HTTP/1.1" '
        '200 5120 "-" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.6099.109"',
        '<ip> - - [02/Mar/2024:11:04:17 +0000] "GET /api/v2/meetings?page=2 HTTP/1.1" '
        '200 5120 "-" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.6099.109"',
    ),
    (
        '2001:db8:85a3::8a2e:370:7334 - - [02/Mar/2024:11:04:18 +0000] "POST /login HTTP/2" '
        "401 87 0.012",
        '<ip> - - [02/Mar/2024:11:04:18 +0000] "POST /login HTTP/2" 401 87 0.012',
    ),
    (
        "GET /v1/reset?email=dave%40corp.example&token=9f8e7d6c5b4a&lang=en 302 12ms",
        "GET /v1/reset?email=<email>&token=<secret>&lang=en 302 12ms",
    ),
    (
        "GET /storage/rec.mp4?sv=2022-11-02&sig=AbC123%2Bxyz%3D&se=2024-03-03 206 1048576",
        "GET /storage/rec.mp4?sv=2022-11-02&sig=<secret>&se=2024-03-03 206 1048576",
    ),
    (
        "upstream fetch https://svc:Sup3rS3cret@internal.example.net:8443/v1/health failed: "
        "ETIMEDOUT after 5000ms",
        "upstream fetch https://<user>:<secret>@internal.example.net:8443/v1/health failed: "
        "ETIMEDOUT after 5000ms",
    ),
    (
        "proxy 198.51.100.7:3128 -> [2001:db8::1]:443 CONNECT ok 35ms",
        "proxy <ip>:3128 -> [<ip>]:443 CONNECT ok 35ms",
    ),
    # --- headers and tokens -------------------------------------------------------------
    (
        "request headers: Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiJ1LTQyIiwiaWF0IjoxNzA5Mzc3NDU3fQ.c2lnbmF0dXJlLWJ5dGVz; X-Request-Id: "
        "123e4567-e89b-12d3-a456-426614174000",
        "request headers: Authorization: Bearer <token>; X-Request-Id: "
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        "retrying with Bearer ya29.a0AfB_byC1234567890abcdefghijklmnop after 401",
        "retrying with Bearer <token> after 401",
    ),
    (
        "X-Api-Key: 3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c; Cookie: sessionid=8c1f0e2d9b; theme=dark",
        "X-Api-Key: <secret>; Cookie: <secret>; theme=dark",
    ),
    (
        "Authorization: Basic YWxpY2U6aHVudGVyMg== rejected (Basic auth disabled)",
        "Authorization: Basic <token> rejected (Basic auth disabled)",
    ),
    (
        "session token eyJhbGciOiJIUzI1NiJ9.eyJ1aWQiOjQyfQ.sF8vT0p2Rk9xYk1uV3dYZTJjZ0 expired",
        "session token <token> expired",
    ),
    # --- config and environment dumps ---------------------------------------------------
    (
        'config: {"db_host": "db.internal", "db_port": 5432, "password": "hunter2", '
        '"api_key": "ak_7f3e9a", "max_tokens": 256, "timeout_ms": 3000}',
        'config: {"db_host": "db.internal", "db_port": 5432, "password": "<secret>", '
        '"api_key": "<secret>", "max_tokens": 256, "timeout_ms": 3000}',
    ),
    (
        "env: AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY="
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY AWS_REGION=eu-west-1",
        "env: AWS_ACCESS_KEY_ID=<token> AWS_SECRET_ACCESS_KEY=<secret> AWS_REGION=eu-west-1",
    ),
    (
        "settings.yaml: github_token: ghp_R2d2C3poBb8Luke5kywalker0Leia1Org4na, "
        "slack: xoxb-2048-4096-AbCdEfGhIjKlMnOp, log_level: debug",
        "settings.yaml: github_token: <secret>, slack: <token>, log_level: debug",
    ),
    (
        "DATABASE_URL=postgresql://app:pa55w0rd@10.1.2.3:5432/prod "
        "STRIPE=sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "DATABASE_URL=postgresql://<user>:<secret>@<ip>:5432/prod STRIPE=<token>",
    ),
    (
        "connection string: Server=tcp:sql.example.net,1433;User ID=app;Password=Tr0ub4dor!3;"
        "Encrypt=True",
        "connection string: Server=tcp:sql.example.net,1433;User ID=app;Password=<secret>;"
        "Encrypt=True",
    ),
    (
        "azure: AccountName=vidcallrec;AccountKey=Zm9vYmFyYmF6cXV4Cg==;"
        "EndpointSuffix=core.windows.net",
        "azure: AccountName=vidcallrec;AccountKey=<secret>;EndpointSuffix=core.windows.net",
    ),
    (
        "cli: vidcall-sync --user admin --password 'n0t-s0-s3cret' --retries 3 --api-key=k-991",
        "cli: vidcall-sync --user admin --password <secret> --retries 3 --api-key=<secret>",
    ),
    (
        "GOOGLE_API_KEY=AIzaSyA-1234567890abcdefghijklmnopqrstu "
        "OPENAI=sk-proj-AbCdEf0123456789GhIjKlMn",
        "GOOGLE_API_KEY=<secret> OPENAI=<token>",  # a secret key's value is <secret>
    ),
    (
        "key file: -----BEGIN RSA PRIVATE KEY-----MIIEpAIBAAKCAQEA7x9Zq...-----END RSA PRIVATE "
        "KEY----- loaded by tls.c:88",
        "key file: <token> loaded by tls.c:88",
    ),
    # --- client telemetry and support messages ------------------------------------------
    (
        "support ticket from +1 (415) 555-2671 / 415.555.0198: audio drops every 30s on v5.17.2",
        "support ticket from <phone> / <phone>: audio drops every 30s on v5.17.2",
    ),
    (
        "callback requested: +44 20 7946 0958 (tel:+4915123456789) re: E2011",
        "callback requested: <phone> (tel:<phone>) re: E2011",
    ),
    (
        "net: wlan0 00:1A:2B:3C:4D:5E ip 192.168.1.24/24 gw 192.168.1.1 dns fe80::1%wlan0",
        "net: wlan0 <mac> ip <ip>/24 gw <ip> dns <ip>",
    ),
    (
        "peer ::ffff:198.51.100.23 joined room 8812 from ::1, codec=opus/48000",
        "peer <ip> joined room 8812 from ::1, codec=opus/48000",  # loopback names no one
    ),
    (
        '  File "/home/erin/venvs/vc/lib/python3.11/site-packages/aiortc/rtcdtlstransport.py", '
        "line 512, in _recv",
        '  File "/home/<user>/venvs/vc/lib/python3.11/site-packages/aiortc/rtcdtlstransport.py", '
        "line 512, in _recv",
    ),
    (
        r'{"path": "C:\\Users\\frank\\Videos\\meeting.mp4", "size": 73400320, "err": "ENOSPC"}',
        r'{"path": "C:\\Users\\<user>\\Videos\\meeting.mp4", "size": 73400320, "err": "ENOSPC"}',
    ),
    # --- the gaps of issue 10: IBANs, non-ASCII e-mails, Cisco MACs, 00-prefixed phones -----
    (
        "SEPA mandate failed E_SEPA_07: IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX, "
        "amount 49.99 EUR",
        "SEPA mandate failed E_SEPA_07: IBAN <iban>, BIC COBADEFFXXX, amount 49.99 EUR",
    ),
    (
        '{"event": "payout_failed", "iban": "GB29NWBK60161331926819", "code": 422}',
        '{"event": "payout_failed", "iban": "<iban>", "code": 422}',
    ),
    (
        "virement refusé: FR14 2004 1010 0505 0001 3M02 606 (solde insuffisant, réf. 7781)",
        "virement refusé: <iban> (solde insuffisant, réf. 7781)",
    ),
    (
        "notification envoyée à émilie.dupont@exämple.fr (modèle welcome_v3, 1.2 s)",
        "notification envoyée à <email> (modèle welcome_v3, 1.2 s)",
    ),
    (
        "Zustellung an müller@bücher.de fehlgeschlagen: 550 5.1.1 mailbox unavailable",
        "Zustellung an <email> fehlgeschlagen: 550 5.1.1 mailbox unavailable",
    ),
    (
        "login émilie@example.fr depuis 81.56.102.7 refusé (MFA_REQUIRED)",
        "login <email> depuis <ip> refusé (MFA_REQUIRED)",
    ),
    (
        "%LINK-3-UPDOWN: Interface Gi0/1, neighbor 001a.2b3c.4d60 changed state to up",
        "%LINK-3-UPDOWN: Interface Gi0/1, neighbor <mac> changed state to up",
    ),
    (
        "Rückruf an 0049 30 12345678 angefordert (Ticket #88213, Priorität 2)",
        "Rückruf an <phone> angefordert (Ticket #88213, Priorität 2)",
    ),
    (
        "sms gateway: delivered to 0044 20 7946 0958 after 2 retries (id=7f3a)",
        "sms gateway: delivered to <phone> after 2 retries (id=7f3a)",
    ),
    (
        "请联系zhang.wei@example.cn获取帮助 (错误码 E1042)",
        "请联系<email>获取帮助 (错误码 E1042)",
    ),
]

# Lines without PII: every character must survive.
HARMLESS: list[str] = [
    "2024-03-02T11:04:17.552Z INFO [worker-3] request completed in 123ms status=200 bytes=5120",
    "2024-03-02 11:04:17,552 WARN com.example.cache.LruCache - eviction rate 0.35 above 0.25",
    "Exception 0x80070005 at 0x7ffee3b4c8a0 in kernel32.dll (10.0.19045) ERR_CONNECTION_RESET",
    "  at com.example.service.OrderService.process(OrderService.java:214)",
    "   at Vidcall.Media.Encoder.Flush() in D:\\a\\1\\s\\src\\Encoder.cs:line 88",
    "#3 0x000055d0c1a2b3c4 in av_packet_unref (pkt=0x0) at libavcodec/avpacket.c:417",
    "Traceback (most recent call last): KeyError: 'session_state' in module app.handlers v2.3.1",
    "GET /api/v2/items/48213?page=3&limit=50&max_tokens=1024 HTTP/1.1 200 1532 0.012",
    "npm ERR! code E404 lodash@4.17.21 not found; node v20.11.1, npm 10.2.4",
    "glibc 2.35, openssl 3.0.2, libssl.so.3, libcrypto-3-x64.dll, zlib1.dll 1.3.1",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 sampled=1",
    "ts=1709377457 ts_ms=1709377457123 ts_us=1709377457123456 pid=4242 port=8443",
    "Unexpected token '<' in JSON at position 0 (SyntaxError) tokenizer=bpe",
    "std::vector<int>::at: __n (which is 12) >= this->size() (which is 12) in Foo::Bar",
    "build 20240302.7 of vidcall-desktop 5.17.2 (commit 3f9a8b7) for windows-x64",
    "E1234 E_FAIL HRESULT 0x8007000E ENOENT EACCES errno=13 rc=-1",
    "retry 3/5 after 2.5s backoff; jitter=0.1; latency p99=812ms; cpu=73.4%",
    "Basic authentication failed; Bearer authentication required by realm=api",
    # addresses that name no host, and look-alikes of the new kinds
    "listening on 0.0.0.0:8080 and [::]:8080, health on 127.0.0.1:9090",
    "resolver ::1 port 53; broadcast 255.255.255.255:67 (dhcp discover)",
    "checksum SHA256 AES128 UTF8 DE89 rejected; invoice INV-2024-000123 order 0012345678",
    "heap at 0x7ffe.0044 block 1a2b.3c4d size 4096 build 2024.03.02",
]


# ------------------------------------------------------------------ the labelled corpus
# scrub_labelled.txt: one line per diagnostic line, PII marked ⟦kind|text⟧ (see its header).

KINDS = ("email", "ip", "mac", "phone", "card", "iban", "token", "secret", "user", "name")
UNDETECTED = ("name",)  # documented as not detected: reported, not in the thresholds
_LABEL = re.compile(r"⟦(?P<kind>[a-z]+)\|(?P<text>[^⟧]*)⟧")


@dataclass(frozen=True)
class Labelled:
    """A line of the labelled corpus: its text and its PII spans."""

    text: str
    spans: tuple[tuple[int, int, str], ...]  # (start, end, kind)

    def expected(self) -> str:
        """The line as scrub_pii should write it: each detectable span as ``<kind>``."""
        pieces, done = [], 0
        for start, end, kind in self.spans:
            if kind not in UNDETECTED:
                pieces += (self.text[done:start], f"<{kind}>")
                done = end
        return "".join([*pieces, self.text[done:]])


def parse_labelled(line: str) -> Labelled:
    """``"mail ⟦email|a@b.c⟧"`` as ``Labelled("mail a@b.c", ((5, 10, "email"),))``."""
    text, spans, done = [], [], 0
    length = 0
    for label in _LABEL.finditer(line):
        kind = label.group("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} in {line!r}")
        text.append(line[done : label.start()])
        length += label.start() - done
        spans.append((length, length + len(label.group("text")), kind))
        text.append(label.group("text"))
        length += len(label.group("text"))
        done = label.end()
    text.append(line[done:])
    return Labelled("".join(text), tuple(spans))


def load_labelled() -> list[Labelled]:
    path = Path(__file__).with_name("scrub_labelled.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse_labelled(line) for line in lines if line and not line.startswith("# ")]


@dataclass
class Score:
    """Counts for one kind: labelled spans found or missed, detections right or wrong."""

    labelled: int = 0
    found: int = 0
    detected: int = 0
    correct: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.labelled if self.labelled else float("nan")

    @property
    def precision(self) -> float:
        return self.correct / self.detected if self.detected else float("nan")


Replacements = Callable[[str], list[tuple[int, int, str]]]
_PLACEHOLDER = re.compile(r"<([a-z]+)>")


def score(corpus: list[Labelled], replacements: Replacements) -> dict[str, Score]:
    """Per kind and ``"all"`` (without the undetected kinds): recall and precision.

    A labelled span is found if replaced regions cover all of it (what is left of it would
    still identify). A replaced region is correct if it overlaps a labelled span (of any
    kind: a token taken for a secret is still removed); it counts for the kind of its first
    placeholder. Names are labelled, so scrubbing one is no false positive.
    """
    scores = {kind: Score() for kind in (*KINDS, "all")}
    for line in corpus:
        regions = replacements(line.text)
        for start, end, kind in line.spans:
            covered = sum(max(0, min(end, e) - max(start, s)) for s, e, _ in regions)
            for name in (kind, "all") if kind not in UNDETECTED else (kind,):
                scores[name].labelled += 1
                scores[name].found += covered == end - start
        for s, e, replacement in regions:
            placeholder = _PLACEHOLDER.search(replacement)
            kind = placeholder.group(1) if placeholder else "secret"
            right = any(s < end and start < e for start, end, _ in line.spans)
            for name in (kind, "all"):
                scores[name].detected += 1
                scores[name].correct += right
    return scores
