"""Message bodies to Arrow tables: JSON lines (one event per line) or Arrow IPC streams.

The bodies of one fetch are parsed together by Arrow's JSON reader (no Python loop over
events). Once a parse succeeded, its schema is reused: later parses read only the columns
the query needs, with the types seen (other fields are skipped unparsed, which is faster);
if that fails (a column's type changed), the types are inferred again. If that fails too
(a malformed message), each body is parsed on its own and the malformed ones are counted and
skipped: one bad message never blocks a stream.

>>> decoder = Decoder("jsonl", ["u", "e"])
>>> tables, malformed = decoder.decode([b'{"u": 1, "e": "a"}\\n{"u": 2, "e": "b"}', b"oops"])
>>> [t.num_rows for t in tables], malformed
([2], 1)
>>> decoder.decode([b'{"u": 3, "e": "c", "x": 5}'])[0][0].column_names  # x is not read
['u', 'e']
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

from telemagg.errors import require

__all__ = ["Decoder", "project"]


def _pa() -> Any:
    return require("pyarrow", "pyarrow")


def _parse_jsonl(body: bytes, schema: Any = None) -> Any:
    pj: Any = require("pyarrow.json", "pyarrow")
    options = pj.ReadOptions(block_size=max(1 << 20, len(body) + 1))
    parse = (
        pj.ParseOptions()
        if schema is None
        else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    )
    return pj.read_json(io.BytesIO(body), read_options=options, parse_options=parse)


def _parse_arrow(body: bytes) -> Any:
    return _pa().ipc.open_stream(body).read_all()


class Decoder:
    """Parses message bodies of one ``format``; remembers the types of ``columns`` (the
    columns the query reads) from the last successful JSON parse."""

    def __init__(self, fmt: Literal["jsonl", "arrow"], columns: Sequence[str] = ()) -> None:
        self.format = fmt
        self.columns = tuple(columns)
        self._schema: Any = None

    def decode(self, bodies: Sequence[bytes]) -> tuple[list[Any], int]:
        """Parse message bodies into tables; also return how many bodies were malformed."""
        pa = _pa()
        bodies = [body for body in bodies if body.strip()]
        if not bodies:
            return [], 0
        if self.format == "jsonl":
            joined = b"\n".join(body.rstrip(b"\n") for body in bodies)
            for schema in (self._schema, None) if self._schema is not None else (None,):
                try:
                    table = _parse_jsonl(joined, schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    continue
                self._learn(table)
                return [table], 0
        tables, malformed = [], 0
        for body in bodies:
            try:
                tables.append(_parse_jsonl(body) if self.format == "jsonl" else _parse_arrow(body))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
                malformed += 1
        if self.format == "jsonl" and tables:
            self._learn(tables[-1])
        if self.format == "arrow" and len(tables) > 1:
            try:
                return [pa.concat_tables(tables, promote_options="permissive")], malformed
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return tables, malformed
        return tables, malformed

    def _learn(self, table: Any) -> None:
        """Keep the types of the query's columns (when all are typed: a column of nulls,
        or one absent, says nothing of its type)."""
        if not self.columns:
            return
        pa = _pa()
        fields = {f.name: f for f in table.schema}
        if all(c in fields and not pa.types.is_null(fields[c].type) for c in self.columns):
            self._schema = pa.schema([fields[c] for c in self.columns])


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
