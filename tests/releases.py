"""What a release hands on, for tests comparing releases of neighbouring inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet

import telemagg as tm


def published(release: tm.Release, tmp_path: Path) -> dict[str, object]:
    """Everything a release hands on besides its values, with the release time removed."""

    def untimed(meta: dict) -> dict:
        return {k: v for k, v in meta.items() if k != "created_at"}

    path = tmp_path / f"release-{id(release)}.parquet"
    release.to_parquet(path)
    parquet_meta = pyarrow.parquet.read_schema(path).metadata[b"telemagg"]
    arrow = release.to_arrow()
    frame = release.to_pandas()
    return {
        "metadata": untimed(release.metadata),
        "json": untimed(json.loads(release.metadata_json())),
        "arrow": untimed(json.loads(arrow.schema.metadata[b"telemagg"])),
        "arrow_schema": arrow.schema.remove_metadata(),
        "parquet": untimed(json.loads(parquet_meta)),
        "pandas": untimed(frame.attrs["telemagg"]),
        "polars": release.to_polars().columns,
        "repr": repr(release),
        "str": str(release),
        "rows": len(release),
    }
