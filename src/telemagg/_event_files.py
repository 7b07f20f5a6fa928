"""Event files (Parquet, CSV, JSON lines; paths, globs, directories) read in bounded chunks.

The files are opened as pyarrow datasets and scanned batch by batch, reading only the
columns a query needs, so memory stays bounded by the batch size, not the files' size.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.csv").write_text("user,event\\n1,open\\n2,save\\n")
>>> files = event_files([str(folder)])
>>> [batch.num_rows for batch in files.batches(["user", "event"])]
[2]
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemagg.errors import ConfigError, SchemaError, require

__all__ = ["BATCH_EVENTS", "EventFiles", "event_files"]

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
BATCH_EVENTS = 131_072  # events per chunk: a few MB of columns at a time


@dataclass(frozen=True)
class EventFiles:
    """Event files grouped by format, each group one pyarrow dataset."""

    files: tuple[Path, ...]
    datasets: tuple[Any, ...]

    def check_columns(self, columns: Sequence[str]) -> None:
        """SchemaError naming the first column that a file group lacks."""
        for dataset in self.datasets:
            names = set(dataset.schema.names)
            for column in columns:
                if column not in names:
                    raise SchemaError(
                        f"column {column!r} is not in the event files"
                        f" ({_describe(dataset.files)}); they have {sorted(names)}"
                    )

    def count(self) -> int | None:
        """The number of events when the files say it without a scan (Parquet only)."""
        if any(_format(Path(f)) != "parquet" for f in self.files):
            return None
        return int(sum(dataset.count_rows() for dataset in self.datasets))

    def batches(self, columns: Sequence[str], batch_size: int | None = None) -> Iterator[Any]:
        """Record batches of ``columns`` (``batch_size`` events at most, default
        :data:`BATCH_EVENTS`), file group after file group."""
        pa: Any = require("pyarrow", "pyarrow")
        for dataset in self.datasets:
            try:
                yield from dataset.to_batches(
                    columns=list(columns),
                    batch_size=batch_size or BATCH_EVENTS,
                    batch_readahead=2,
                    fragment_readahead=1,
                )
            except (pa.ArrowInvalid, OSError) as exc:
                raise SchemaError(f"event files cannot be read: {exc}") from None


def event_files(inputs: Sequence[str]) -> EventFiles:
    """Resolve paths, globs and directories (searched recursively) to event files."""
    ds: Any = require("pyarrow.dataset", "pyarrow")
    pa: Any = require("pyarrow", "pyarrow")
    files: dict[Path, None] = {}
    for text in inputs:
        for path in _expand(text):
            files[path] = None
    groups: dict[str, list[str]] = {}
    for path in files:
        groups.setdefault(_format(path), []).append(str(path))
    try:
        datasets = tuple(ds.dataset(paths, format=fmt) for fmt, paths in groups.items())
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"event files cannot be read: {exc}") from None
    return EventFiles(tuple(files), datasets)


def _expand(text: str) -> list[Path]:
    if glob.has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        found = [p for p in matches if p.is_file()]
        for folder in (p for p in matches if p.is_dir()):
            found += _folder(folder)
        if not found:
            raise ConfigError(f"input {text!r} matches no file")
        return found
    path = Path(text)
    if path.is_dir():
        found = _folder(path)
        if not found:
            raise ConfigError(
                f"input directory {text!r} holds no event file ({', '.join(sorted(FORMATS))})"
            )
        return found
    if not path.is_file():
        raise ConfigError(f"input {text!r} does not exist")
    _format(path)
    return [path]


def _folder(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FORMATS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"input {str(path)!r}: unknown format {path.suffix!r}"
            f" (use {', '.join(sorted(FORMATS))})"
        )
    return fmt


def _describe(paths: Sequence[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more"
