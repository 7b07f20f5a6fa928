"""Operating the collector: counters, ``/metrics`` (Prometheus text) and ``/healthz``.

The endpoint runs on a stdlib :class:`http.server.ThreadingHTTPServer` in a daemon thread.
It shows operator-side numbers (exact event counts): serve it on a private interface.

>>> metrics = Metrics()
>>> metrics.count("events_received", 3)
>>> metrics.count("events_dropped", 1, reason="malformed")
>>> text = metrics.render()
>>> 'telemagg_collector_events_dropped_total{reason="malformed"} 1' in text.splitlines()
True
>>> "telemagg_collector_events_received_total 3" in text.splitlines()
True
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Health", "JsonFormatter", "Metrics", "serve_http"]

_HELP = {
    "events_received": ("counter", "Events decoded from the source"),
    "events_absorbed": ("counter", "Events absorbed into the windowed state (before bounding)"),
    "events_dropped": (
        "counter",
        "Events dropped, by reason (exact, operator-only: never published)",
    ),
    "messages_received": ("counter", "Messages fetched from the source (duplicates excluded)"),
    "messages_malformed": ("counter", "Messages whose body could not be decoded"),
    "checkpoints": ("counter", "Checkpoints committed"),
    "checkpoint_seconds": ("gauge", "Seconds the last checkpoint took, prepared to committed"),
    "snapshots": ("counter", "Checkpoints that wrote the whole state (others append the journal)"),
    "requests_duplicate": (
        "counter",
        "OTLP requests recognised as retries of a committed or pending one (not absorbed again)",
    ),
    "windows_released": ("counter", "Windows released and committed"),
    "releases_refused": ("counter", "Release attempts the ledger refused"),
    "source_lag": ("gauge", "Messages in the source not yet delivered to the collector"),
    "held_events": ("gauge", "Events absorbed but not yet checkpointed"),
    "budget_epsilon_remaining": ("gauge", "Ledger epsilon remaining"),
    "budget_delta_remaining": ("gauge", "Ledger delta remaining"),
}


class Metrics:
    """Thread-safe counters and gauges, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def count(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to counter ``name``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        """The current value (0 if never set)."""
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        with self._lock:
            for name in sorted(_HELP):
                kind, text = _HELP[name]
                full = f"telemagg_collector_{name}" + ("_total" if kind == "counter" else "")
                lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
                for labels, value in sorted(self._values.get(name, {}).items()):
                    tags = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{full}{{{tags}}} {value:g}" if tags else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


class Health:
    """What ``/healthz`` reports: ok, or why the collector is degraded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self.ready = False

    def problem(self, key: str, message: str | None) -> None:
        """Record (or, with None, clear) a problem such as a refused ledger charge."""
        with self._lock:
            if message is None:
                self._problems.pop(key, None)
            else:
                self._problems[key] = message

    def report(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body."""
        with self._lock:
            problems = dict(self._problems)
        if not self.ready:
            return 503, {"status": "starting"}
        if problems:
            return 503, {"status": "degraded", "problems": problems}
        return 200, {"status": "ok"}


def serve_http(listen: str, metrics: Metrics, health: Health) -> ThreadingHTTPServer:
    """Start the endpoint on ``host:port`` in a daemon thread (port 0: any free port)."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, body = 200, metrics.render().encode()
                kind = "text/plain; version=0.0.4; charset=utf-8"
            elif self.path == "/healthz":
                status, report = health.report()
                body, kind = json.dumps(report).encode(), "application/json"
            else:
                status, body, kind = 404, b"not found\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="telemagg-http", daemon=True).start()
    return server


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and every ``extra=`` field.

    >>> record = logging.makeLogRecord({"msg": "window released", "levelname": "INFO",
    ...     "name": "telemagg.collector", "window_start": "2026-12-01T10:00:00+00:00"})
    >>> line = json.loads(JsonFormatter().format(record))
    >>> line["message"], line["window_start"]
    ('window released', '2026-12-01T10:00:00+00:00')
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
