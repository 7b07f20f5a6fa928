"""Message bodies to Arrow tables: JSON lines (one event per line) or Arrow IPC streams.

The bodies of one fetch are parsed together by Arrow's multi-threaded JSON reader (no
Python loop over events). If that fails (a malformed message, or a column whose type
changes between messages), each body is parsed on its own and the malformed ones are
counted and skipped: one bad message never blocks a stream.

>>> tables, malformed = decode([b'{"u": 1, "e": "a"}\\n{"u": 2, "e": "b"}', b"oops"], "jsonl")
>>> [t.num_rows for t in tables], malformed
([2], 1)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

from telemagg.errors import require

__all__ = ["decode", "project"]


def _pa() -> Any:
    return require("pyarrow", "pyarrow")


def _parse_jsonl(body: bytes) -> Any:
    pj: Any = require("pyarrow.json", "pyarrow")
    options = pj.ReadOptions(block_size=max(1 << 20, len(body) + 1))
    return pj.read_json(io.BytesIO(body), read_options=options)


def _parse_arrow(body: bytes) -> Any:
    return _pa().ipc.open_stream(body).read_all()


def decode(bodies: Sequence[bytes], fmt: Literal["jsonl", "arrow"]) -> tuple[list[Any], int]:
    """Parse message bodies into tables; also return how many bodies were malformed."""
    pa = _pa()
    if not bodies:
        return [], 0
    if fmt == "jsonl":
        joined = b"\n".join(body.rstrip(b"\n") for body in bodies if body.strip())
        if not joined:
            return [], 0
        try:
            return [_parse_jsonl(joined)], 0
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # find the culprits one body at a time
    tables, malformed = [], 0
    parse = _parse_jsonl if fmt == "jsonl" else _parse_arrow
    for body in bodies:
        if not body.strip():
            continue
        try:
            tables.append(parse(body))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
            malformed += 1
    if fmt == "arrow" and len(tables) > 1:
        try:
            return [pa.concat_tables(tables, promote_options="permissive")], malformed
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return tables, malformed
    return tables, malformed


def project(table: Any, columns: Sequence[str]) -> Any:
    """Only the columns the query reads; absent ones as nulls (events that lack a column
    are then dropped or counted by the aggregator as missing that value).

    >>> import pyarrow as pa
    >>> project(pa.table({"u": [1], "x": [2]}), ["u", "t"]).column_names
    ['u', 't']
    """
    pa = _pa()
    present = set(table.column_names)
    arrays = [
        table.column(c) if c in present else pa.nulls(table.num_rows, pa.float64()) for c in columns
    ]
    return pa.table(arrays, names=list(columns))
