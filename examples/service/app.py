"""A small FastAPI service whose usage events reach telemagg through OpenTelemetry.

The service adds the standard OpenTelemetry SDK and its OTLP/HTTP log exporter, nothing
else: every request emits one log record whose attributes (``user_id``, ``event_name``,
``duration_ms``) are the event's columns. The telemagg collector (``pipeline.toml``)
receives them on ``/v1/logs``, bounds each user's contribution, and releases one
differentially private Parquet file per window.

Run it (see README.md)::

    uvicorn app:app --port 8000
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

ENDPOINT = os.environ.get("TELEMAGG_OTLP_ENDPOINT", "http://127.0.0.1:4318/v1/logs")

provider = LoggerProvider()
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=ENDPOINT)))
usage = provider.get_logger("example.usage")

app = FastAPI(title="documents")


@app.middleware("http")
async def usage_event(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """One usage event per request: who, which feature, how long it took."""
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    user = request.headers.get("x-user-id")
    if route is not None and user:
        usage.emit(
            body="usage",
            attributes={
                "user_id": user,
                "event_name": route.name,
                "duration_ms": (time.perf_counter() - start) * 1000.0,
            },
        )
    return response


@app.get("/documents/{doc_id}")
async def open_document(doc_id: int) -> dict[str, int]:
    return {"id": doc_id}


@app.put("/documents/{doc_id}")
async def save_document(doc_id: int) -> dict[str, int]:
    return {"id": doc_id}


@app.post("/documents/{doc_id}/share")
async def share_document(doc_id: int) -> dict[str, int]:
    return {"id": doc_id}
