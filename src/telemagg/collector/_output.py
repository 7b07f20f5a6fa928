"""Released windows as Parquet files: ``<dir>/window_start=<iso>/release.parquet``.

A file is first written in full to a hidden ``.release.parquet.pending`` beside its final
name and synced; the collector then commits the window as released in its state store, and
only then renames the pending file into place (an atomic rename, then the directory is
synced). A pending file of a committed window is renamed on restart; one of an uncommitted
window is overwritten when that window is released again. Readers never see a partial file:
pyarrow's datasets skip names starting with a dot.

The ``window_start`` column is not stored in the file: hive-style, it is the directory's
partition key, so the files read as one dataset. The schema metadata key ``"telemagg"``
holds the release's publishable metadata as JSON, never the operator's exact accounting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from telemagg.errors import require
from telemagg.release import Release

__all__ = ["finish", "pending_path", "window_path", "write_pending"]

FILE_NAME = "release.parquet"
_PENDING = ".release.parquet.pending"


def window_path(directory: Path, window_start: str) -> Path:
    """The final file of the window starting at ``window_start`` (ISO 8601).

    >>> window_path(Path("releases"), "2026-12-01T10:00:00+00:00").as_posix()
    'releases/window_start=2026-12-01T10:00:00+00:00/release.parquet'
    """
    return directory / f"window_start={window_start}" / FILE_NAME


def pending_path(final: Path) -> Path:
    """The hidden file a release is written to before it is committed."""
    return final.with_name(_PENDING)


def write_pending(release: Release, final: Path) -> None:
    """Write ``release`` to the pending file, synced. ``Release.to_arrow`` puts its metadata
    (publishable by construction: the exact accounting is a separate type it never exports)
    in the schema under ``b"telemagg"``."""
    pa: Any = require("pyarrow", "pyarrow")
    pq: Any = require("pyarrow.parquet", "pyarrow")
    table = release.to_arrow()
    if "window_start" in table.column_names:  # hive style: the partition key lives in the path
        table = table.drop_columns(["window_start"])
    pending = pending_path(final)
    pending.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(pending), "wb") as sink:
        pq.write_table(table, sink)
    _fsync(pending)


def finish(final: Path) -> bool:
    """Rename a committed window's pending file into place; True if the file is in place."""
    pending = pending_path(final)
    if pending.exists():
        os.replace(pending, final)
        _fsync(final.parent)
        _fsync(final.parent.parent)
    return final.exists()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
