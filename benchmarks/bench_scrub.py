"""PII scrubbing throughput: messages per second through ``tm.scrub_pii``.

Typical diagnostic lines are generated from templates (seeded): log lines with timestamps
and logfmt fields, Java/native stack frames, HTTP access logs, crash reports, trace ids;
about 100 characters each. Three mixes: the typical one (15% of lines carry PII: e-mails,
IPs, home paths, query-string tokens, JWTs, cards, phone numbers, passwords in config),
lines without any PII, and lines that all carry PII. Each cell is the best of ``--repeats``
runs over ``--lines`` messages, passed as one list (the way a batch arrives); one row passes
the messages one call at a time, for reference.

A fourth mix has 15% of lines in other languages (German, French, Japanese, Chinese
messages with their PII). The last rows are a design check, scanning only (no replacement):
telemagg's scanners (one pattern per anchor character, numbers found by their shapes)
against all the same kinds in one combined pattern with numbers anchored at their digits.

``--baseline FILE`` times another version of ``_scrub.py`` (e.g. ``git show
main:src/telemagg/hygiene/_scrub.py > /tmp/old.py``) on the same batches, interleaved run by
run so that both see the same load on a shared machine. ``--corpus`` prints recall and
precision per kind on the labelled corpus of the tests (tests/hygiene/scrub_labelled.txt),
for telemagg and for the baseline.

Run from the repository root with the project's venv active::

    python benchmarks/bench_scrub.py [--baseline /tmp/old.py] [--corpus]

Prints markdown tables for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

import telemagg.hygiene._scrub as scrub_module
from telemagg.hygiene import scrub_pii

CLEAN = [
    "{ts} INFO [worker-{n}] request completed in {ms}ms status={status} bytes={size}",
    "{ts} WARN com.example.{mod}.{cls} - eviction rate 0.{d2} above threshold 0.25",
    "Exception 0x{hex8} at 0x{hex12} in {lib} ({ver}) ERR_CONNECTION_RESET",
    "  at com.example.{mod}.{cls}.{meth}({cls}.java:{line})",
    "#{n} 0x{hex16} in av_{meth} () at libavcodec/{mod}.c:{line}",
    "GET /api/v2/{mod}/{size}?page={n}&limit=50 HTTP/1.1 {status} {size} 0.0{d2}",
    "renderer crashed: SIGSEGV in {lib}+0x{hex6} (build 120.0.{size}.{n}, gpu=Mali-G78)",
    "Traceback (most recent call last): KeyError: '{meth}_state' in module app.{mod} v{ver}",
    "trace_id={hex32} span_id={hex16} sampled=1 latency_ms={ms} retries={n}",
]
WITH_PII = [
    "{ts} ERROR login failed for {user}.{n}@example.com from {ipv4} code=E{code}",
    '  File "/home/{user}/project/app/{mod}.py", line {line}, in {meth}',
    "GET /reset?token={hex12}&email={user}%40example.com&lang=en HTTP/1.1 302 0",
    '{ipv6} - - [02/Mar/2024:11:04:17 +0000] "POST /login HTTP/2" 401 87',
    "{ts} DEBUG Authorization: Bearer {jwt} accepted for tenant {n}",
    "payment failed for card 4111 1111 1111 1111 (E4012), callback +1 415 555 {code}",
    'config: {{"password": "{hex8}", "timeout_ms": 3000, "region": "eu-west-{n}"}}',
]
WORDS = ["cache", "media", "codec", "auth", "meeting", "billing", "sync", "upload"]
CLASSES = ["LruCache", "Encoder", "SessionManager", "OrderService", "RtpReceiver"]
LIBS = ["kernel32.dll", "libGLESv2.so", "libssl.so.3", "CoreMedia", "ntdll.dll"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
OTHER_LANGUAGES = [
    "{ts} FEHLER Anmeldung fehlgeschlagen für {user}.{n}@beispiel.de von {ipv4} (Fehler E{code})",
    "{ts} WARN Speicher fast voll: {d2} % belegt, Version {ver}, Größe {size} KiB",
    "{ts} ERREUR virement refusé: solde insuffisant, réf. {code}, durée {ms} ms",
    "{ts} INFO notification envoyée à émilie.{n}@exämple.fr (modèle welcome_v3)",
    "{ts} エラー ログイン失敗: ユーザー {user}@example.co.jp エラーコード E{code}",
    "{ts} 情報 サーバーは 0.0.0.0:{size} で待機中、応答時間 {ms} ms",
    "{ts} 错误 数据库连接失败，重试 {n} 次，耗时 {ms} 毫秒",  # noqa: RUF001 (Chinese commas)
    "{ts} 信息 版本 {ver} 已安装，构建号 {size}，端口 443",  # noqa: RUF001
]


def fields(rng: random.Random) -> dict[str, object]:
    def hexes(n: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(n))

    return {
        "ts": f"2024-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        f":{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z",
        "n": rng.randint(1, 64),
        "ms": rng.randint(1, 5000),
        "status": rng.choice([200, 201, 204, 304, 404, 500]),
        "size": rng.randint(100, 99999),
        "mod": rng.choice(WORDS),
        "cls": rng.choice(CLASSES),
        "meth": rng.choice(["flush", "process", "decode", "packet_unref", "recv"]),
        "line": rng.randint(1, 2000),
        "lib": rng.choice(LIBS),
        "ver": f"{rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 30000)}",
        "d2": f"{rng.randint(0, 99):02d}",
        "code": rng.randint(1000, 9999),
        "user": rng.choice(USERS),
        "ipv4": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
        "ipv6": f"2001:db8:{hexes(4)}::{hexes(3)}",
        "jwt": f"eyJhbGciOiJIUzI1NiJ9.eyJ1aWQiOj{hexes(8)}fQ.{hexes(22)}",
        "hex6": hexes(6),
        "hex8": hexes(8),
        "hex12": hexes(12),
        "hex16": hexes(16),
        "hex32": hexes(32),
    }


def lines(count: int, share_with_pii: float, seed: int = 7, share_other: float = 0.0) -> list[str]:
    rng = random.Random(seed)

    def templates() -> list[str]:
        if rng.random() < share_other:
            return OTHER_LANGUAGES
        return WITH_PII if rng.random() < share_with_pii else CLEAN

    return [rng.choice(templates()).format(**fields(rng)) for _ in range(count)]


def load_module(path: str) -> ModuleType:
    """Another version of ``_scrub.py``, imported under its own name."""
    spec = importlib.util.spec_from_file_location("baseline_scrub", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def corpus_table(versions: dict[str, ModuleType]) -> None:
    """Recall and precision per kind on the labelled corpus of the tests."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hygiene"))
    from scrub_corpus import KINDS, load_labelled, score

    corpus = load_labelled()
    spans = sum(len(line.spans) for line in corpus)
    print(f"\nLabelled corpus: {len(corpus)} lines, {spans} labelled spans\n")
    scores = {name: score(corpus, replacements(module)) for name, module in versions.items()}
    header = " | ".join(f"{name}: recall | {name}: precision" for name in versions)
    print(f"| kind | labelled | {header} |")
    print("|---|---:|" + "---:|---:|" * len(versions))
    for kind in (*KINDS, "all"):
        cells = " | ".join(
            f"{s[kind].recall:.3f} ({s[kind].found}) | {s[kind].precision:.3f} ({s[kind].detected})"
            for s in scores.values()
        )
        print(f"| {kind} | {next(iter(scores.values()))[kind].labelled} | {cells} |")
    for name, module in versions.items():
        exact = sum(module.scrub_pii(line.text) == line.expected() for line in corpus)
        print(f"\n{name}: {exact} of {len(corpus)} lines exactly as labelled")


_PLACEHOLDER = re.compile(r"<(?:email|ip|mac|phone|card|iban|token|secret|user)>")


def replacements(module: ModuleType) -> Callable[[str], list[tuple[int, int, str]]]:
    """``module``'s replaced regions, read off its output (so that any version compares):
    each placeholder matches the shortest run of the input between the kept pieces."""

    def regions(text: str) -> list[tuple[int, int, str]]:
        scrubbed = module.scrub_pii(text)
        placeholders = list(_PLACEHOLDER.finditer(scrubbed))
        if not placeholders:
            return []
        pattern, done = [], 0
        for placeholder in placeholders:
            pattern += (re.escape(scrubbed[done : placeholder.start()]), "(.+?)")
            done = placeholder.end()
        pattern.append(re.escape(scrubbed[done:]))
        match = re.fullmatch("".join(pattern), text, re.DOTALL)
        assert match is not None, (text, scrubbed)
        return [
            (match.start(i + 1), match.end(i + 1), placeholder.group())
            for i, placeholder in enumerate(placeholders)
        ]

    return regions


def interleaved(runs: list[Callable[[], object]], count: int, repeats: int) -> list[str]:
    """Like :func:`best_rates` for several runs, taking turns so they share the load."""
    wall = [float("inf")] * len(runs)
    cpu = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[i] = min(wall[i], time.perf_counter() - start)
            cpu[i] = min(cpu[i], time.process_time() - start_cpu)
    return [f"{count / w:,.0f} | {count / c:,.0f}" for w, c in zip(wall, cpu, strict=True)]


def best_rates(run: Callable[[], object], count: int, repeats: int) -> str:
    """Messages per second, best of ``repeats``: wall clock, and CPU time of this process
    (steadier on a shared machine)."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return f"{count / wall:,.0f} | {count / cpu:,.0f}"


def combined_scanner() -> re.Pattern[str]:
    """All kinds in one pattern, numbers anchored at each digit (the design not taken)."""
    alternatives = [
        re.escape(anchor) + kind.continuation(f"c{i}_{j}")
        for i, kind in enumerate(scrub_module._KINDS)
        for j, anchor in enumerate(kind.anchors)
    ]
    for i, shaped in enumerate(scrub_module._SHAPED):
        kind = shaped.kind
        for digit in "0123456789":
            alternatives.append(
                f"{digit}(?<![\\w.]{digit})(?<=(?={kind.precheck}(?:{kind.after})(?P<d{i}_{digit}>)).)"
            )
    return re.compile("|".join(alternatives))


def machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?"
    )
    return (
        f"{model}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
        f"numpy {np.__version__}; load average {os.getloadavg()[0]:.1f} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="another _scrub.py to compare with")
    parser.add_argument("--corpus", action="store_true", help="recall/precision per kind")
    args = parser.parse_args()
    count, repeats = args.lines, args.repeats
    versions: dict[str, ModuleType] = {"telemagg": scrub_module}
    if args.baseline:
        versions["baseline"] = load_module(args.baseline)
    if args.corpus:
        corpus_table(versions)
        return

    print(f"Machine: {machine()}\n")
    columns = " | ".join(f"{name}: messages/s (wall) | (CPU)" for name in versions)
    print(f"| input | {columns} | mean length |")
    print("|---|" + "---:|---:|" * len(versions) + "---:|")
    mixes = {
        "typical: 15% of lines with PII": (0.15, 0.0),
        "no PII": (0.0, 0.0),
        "every line with PII": (1.0, 0.0),
        "typical, 15% of lines in other languages": (0.15, 0.15),
    }
    for name, (share, other) in mixes.items():
        batch = lines(count, share, share_other=other)
        rates = interleaved(
            [lambda batch=batch, m=m: m.scrub_pii(batch) for m in versions.values()],
            count,
            repeats,
        )
        mean = sum(map(len, batch)) / count
        print(f"| {name}, one list | {' | '.join(rates)} | {mean:.0f} |")
    typical = lines(count, 0.15)
    one_by_one = best_rates(lambda: [scrub_pii(line) for line in typical], count, repeats)
    print(f"| typical, one call per message | {one_by_one} | |")

    joined = "\x00".join(typical)
    ours = best_rates(lambda: scrub_module._candidates(joined), count, repeats)
    combined = combined_scanner()
    theirs = best_rates(lambda: list(combined.finditer(joined)), count, repeats)
    print(f"| scan only: per-anchor patterns + digit shapes (shipped) | {ours} | |")
    print(f"| scan only: one combined pattern, numbers anchored at digits | {theirs} | |")


if __name__ == "__main__":
    main()
