"""Releases as datasets: read a release file (or a directory of windowed releases) back,
and describe one in a Markdown datasheet for the people who will use the data.

Everything here reads only what a release publishes: the table and the metadata stored
under ``b"telemagg"`` in its Arrow schema. The operator's exact accounting is never in a
file, so nothing here can show it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemagg.errors import ConfigError, SchemaError, require
from telemagg.release import METADATA_KEY

__all__ = ["ReleaseData", "dataset_card", "interval_columns", "read_release"]

WINDOW_START = "window_start"
WINDOW_END = "window_end"


@dataclass(frozen=True)
class ReleaseData:
    """A release read back from Parquet: the Arrow ``table`` and its publishable ``metadata``.

    For a directory of windowed releases (``window_start=<iso>/release.parquet``, as the
    collector writes them), ``table`` holds every window (``window_start`` first, oldest
    first), ``windows`` each window's own metadata in the same order, and ``metadata`` the
    first window's (query, policy and per-window privacy loss are the same in all).

    >>> import pyarrow as pa
    >>> data = ReleaseData(pa.table({"e": ["a"], "count": [3.0]}),
    ...                    {"epsilon": 1.0, "delta": 0.0, "query": {"by": ["e"]}})
    >>> data.key_columns, len(data), data.to_polars().columns
    (('e',), 1, ['e', 'count'])
    """

    table: Any
    metadata: dict[str, Any]
    windows: tuple[dict[str, Any], ...] = ()

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def __repr__(self) -> str:
        windows = f", windows={len(self.windows)}" if self.windows else ""
        return (
            f"ReleaseData({len(self)} rows, columns={self.table.column_names},"
            f" epsilon={self.epsilon:.4g}, delta={self.delta:.3g}{windows})"
        )

    @property
    def epsilon(self) -> float:
        """The privacy loss (epsilon) of one release (of one window, for a directory)."""
        return float(self.metadata["epsilon"])

    @property
    def delta(self) -> float:
        """The privacy loss (delta) of one release (of one window, for a directory)."""
        return float(self.metadata["delta"])

    @property
    def key_columns(self) -> tuple[str, ...]:
        """``window_start``/``window_end`` (if any), then the ``by`` columns."""
        names = [c for c in (WINDOW_START, WINDOW_END) if c in self.table.column_names]
        return (*names, *self.metadata["query"]["by"])

    def to_arrow(self) -> Any:
        """The Arrow table (its schema metadata holds :attr:`metadata` under ``telemagg``)."""
        return self.table

    def to_pandas(self) -> Any:
        """A pandas DataFrame; ``attrs["telemagg"]`` holds :attr:`metadata`."""
        require("pandas", "pandas")
        frame = self.table.to_pandas()
        frame.attrs["telemagg"] = self.metadata
        return frame

    def to_polars(self) -> Any:
        """A polars DataFrame (the table only: keep :attr:`metadata` beside it)."""
        pl: Any = require("polars", "polars")
        return pl.from_arrow(self.table)

    def dataset_card(self) -> str:
        """The Markdown datasheet of this release (see :func:`dataset_card`)."""
        return dataset_card(self.metadata, self.table.column_names, windows=self.windows)


def read_release(path: str | Path) -> ReleaseData:
    """Read a release file, or a directory of windowed releases, written by telemagg.

    >>> import telemagg as tm, tempfile, pathlib
    >>> from telemagg.testing import seeded
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()],
    ...                     randomness=seeded(1))
    >>> agg.add({"u": [1, 2, 3], "e": ["a", "a", "b"]})
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "release.parquet"
    >>> agg.release(1.0, partitions=["a", "b"]).to_parquet(path)
    >>> data = tm.read_release(path)
    >>> data.table.column_names, data.metadata["query"]["by"], data.epsilon
    (['e', 'count'], ['e'], 1.0)
    """
    pa: Any = require("pyarrow", "pyarrow")
    target = Path(path)
    if target.is_file():
        table = _read_file(target)
        return ReleaseData(table, _metadata(table.schema, target))
    if not target.is_dir():
        raise ConfigError(f"read_release(path) must name a release file or directory; got {path!r}")
    files = sorted(target.glob(f"{WINDOW_START}=*/*.parquet"))
    if not files:
        raise SchemaError(
            f"directory {str(target)!r} holds no windowed release"
            f" ({WINDOW_START}=<ISO time>/release.parquet)"
        )
    tables, windows = [], []
    for file in files:  # one small table per window: releases are per partition, not per event
        table = _read_file(file)
        windows.append(_metadata(table.schema, file))
        start = _window_start(file.parent.name.removeprefix(f"{WINDOW_START}="), file)
        column = pa.array([start] * table.num_rows, type=pa.timestamp("ms", tz="UTC"))
        tables.append(table.replace_schema_metadata(None).add_column(0, WINDOW_START, column))
    # One table per window, concatenated with type promotion: an empty window's list columns
    # are typed null, which a hive dataset's single schema would refuse.
    order = sorted(range(len(files)), key=lambda i: windows[i]["window"]["start"])
    try:
        table = pa.concat_tables([tables[i] for i in order], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(
            f"windowed releases in {str(target)!r} do not share columns: {exc}"
        ) from None
    first = windows[order[0]]
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(first, sort_keys=True)})
    return ReleaseData(table, first, tuple(windows[i] for i in order))


def _read_file(path: Path) -> Any:
    parquet: Any = require("pyarrow.parquet", "pyarrow")
    pa: Any = require("pyarrow", "pyarrow")
    try:
        return parquet.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"release file {str(path)!r} cannot be read as Parquet: {exc}") from None


def _metadata(schema: Any, path: Path) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise SchemaError(
            f"{str(path)!r} is not a telemagg release: its schema metadata has no"
            f" {METADATA_KEY.decode()!r} key"
        )
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise SchemaError(f"{str(path)!r}: its telemagg metadata is not valid JSON") from None
    if not isinstance(metadata, dict) or "query" not in metadata:
        raise SchemaError(f"{str(path)!r}: its telemagg metadata has no query")
    return metadata


def _window_start(text: str, path: Path) -> dt.datetime:
    try:
        start = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"{str(path)!r}: {WINDOW_START}={text!r} is not an ISO time") from None
    return start if start.tzinfo else start.replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------- dataset card


def interval_columns(columns: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Value columns that have ``<col>_low``/``<col>_high`` interval columns beside them.

    >>> interval_columns(["e", "count", "count_low", "count_high"])
    {'count': ('count_low', 'count_high')}
    """
    present = set(columns)
    return {
        c: (f"{c}_low", f"{c}_high")
        for c in columns
        if f"{c}_low" in present and f"{c}_high" in present
    }


def interval_level(metadata: Mapping[str, Any]) -> float | None:
    """The level of the exported intervals, when the metadata records one."""
    intervals = metadata.get("intervals")
    if isinstance(intervals, Mapping):
        intervals = intervals.get("level")
    return float(intervals) if isinstance(intervals, int | float) else None


def dataset_card(
    metadata: Mapping[str, Any],
    columns: Sequence[str],
    *,
    windows: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A Markdown datasheet of a release, from its publishable metadata and column names only.

    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()],
    ...                     randomness=seeded(1))
    >>> agg.add({"u": [1, 2, 3], "e": ["a", "a", "b"]})
    >>> card = agg.release(1.0, partitions=["a", "b"]).dataset_card()
    >>> print(card.splitlines()[0])
    # Dataset card: differentially private aggregates of `e`
    >>> "epsilon = 1" in card
    True
    """
    query, policy, privacy = metadata["query"], chosen_policy(metadata), metadata["privacy"]
    by = list(query["by"])
    sections = [
        _summary(metadata, by, windows),
        _columns(metadata, columns),
        _guarantee(metadata, policy, privacy, windows),
        _noise(metadata, columns),
        _partitions(metadata),
        _not_in_data(policy, private=metadata["partitions"]["selection"] != "public"),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _summary(metadata: Mapping[str, Any], by: list[str], windows: Sequence[Any]) -> str:
    names = ", ".join(f"`{c}`" for c in by)
    lines = [
        f"# Dataset card: differentially private aggregates of {names}",
        "",
        f"Made by telemagg {metadata.get('telemagg_version', '?')}"
        f" on {metadata.get('created_at', '?')}.",
    ]
    if windows:
        starts = [w["window"]["start"] for w in windows]
        length = windows[0]["window"].get("size", "?")
        lines.append(
            f"{len(windows)} windows of {length}, from {starts[0]} to {starts[-1]}"
            " (one release per window)."
        )
    elif "window" in metadata:
        window = metadata["window"]
        lines.append(f"One window: {window.get('start')} to {window.get('end')}.")
    if metadata.get("seeded"):
        lines.append(
            "\n**Warning: this release was made with seeded (predictable) noise, for tests."
            " It is not private. Do not use it as data.**"
        )
    return "\n".join(lines)


def chosen_policy(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The release's policy with the values chosen privately where it said ``"auto"``
    (``metadata["tuning"]``).

    >>> chosen_policy({"policy": {"max_partitions": "auto", "max_contributions": 5},
    ...                "tuning": {"max_partitions": 2}})["max_partitions"]
    2
    """
    policy = dict(metadata["policy"])
    tuning = metadata.get("tuning") or {}
    for name in ("max_partitions", "max_contributions"):
        if policy.get(name) == "auto" and name in tuning:
            policy[name] = tuning[name]
    return policy


def _metric_meaning(spec: Mapping[str, Any], column: str, bounded: str) -> str:
    kind, source = spec["kind"], spec.get("column", "")
    clamp = ""
    if "bounds" in spec:
        low, high = spec["bounds"]
        clamp = f" (each value clamped to [{low:g}, {high:g}])"
    if kind == "count":
        return f"number of events {bounded}, plus noise"
    if kind == "unit_count":
        return f"number of distinct privacy units {bounded}, plus noise"
    if kind in ("sum", "mean", "variance"):
        return f"{kind} of `{source}`{clamp} over events {bounded}, from noisy sums"
    if kind == "quantiles":
        level = column.split("_", 1)[0].removeprefix("p")
        return (
            f"the {level}th percentile of `{source}`{clamp}, read from a noisy"
            f" {spec.get('scale', 'linear')}-spaced histogram of {spec.get('bins', '?')} bins"
        )
    if kind == "histogram":
        edges = ", ".join(f"{e:g}" for e in spec["bins"])
        return (
            f"list of noisy counts of events {bounded} per bucket of `{source}`"
            f" (edges {edges}; bucket i holds edge i <= value < edge i+1)"
        )
    if kind == "top_k":
        if column.endswith("_count"):
            return f"noisy counts of the values listed in `{spec['name']}`"
        return (
            f"up to {spec['k']} most frequent values of `{source}`, by noisy count;"
            " values below a noise threshold are left out"
        )
    return f"{kind} of `{source}`"


def _columns(metadata: Mapping[str, Any], columns: Sequence[str]) -> str:
    query, policy = metadata["query"], chosen_policy(metadata)
    bounded = (
        f"kept within the contribution bounds (at most {policy['max_contributions']} events"
        f" of each privacy unit per partition, in at most {policy['max_partitions']}"
        " partitions)"
    )
    specs = {}
    for spec in query["metrics"]:
        specs[spec["name"]] = spec
        for out in _output_names(spec, metadata):
            specs[out] = spec
    intervals = interval_columns(columns)
    level = interval_level(metadata)
    level_text = f"{level:.0%}" if level is not None else "confidence"
    described = metadata.get("columns", {})  # the release's own words, when it has them
    rows = ["## Columns", "", "| column | meaning |", "| --- | --- |"]
    for column in columns:
        if isinstance(described, Mapping) and isinstance(described.get(column), str):
            meaning = described[column]
        elif column == WINDOW_START:
            meaning = "start of the window (UTC, inclusive), on the operator's clock"
        elif column == WINDOW_END:
            meaning = "end of the window (UTC, exclusive)"
        elif column in query["by"]:
            meaning = "partition key"
        elif column in specs:
            meaning = _metric_meaning(specs[column], column, bounded)
        else:
            base = next((v for v, pair in intervals.items() if column in pair), None)
            side = "lower" if column.endswith("_low") else "upper"
            meaning = (
                f"{side} end of the {level_text} interval of `{base}` (noise only, computed"
                " from the noise scale: no further privacy cost)"
                if base
                else "(not described by the metadata)"
            )
        rows.append(f"| `{column}` | {meaning} |")
    return "\n".join(rows)


def _output_names(spec: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    """Output columns of one metric spec, from the metadata's per-column reports."""
    name = spec["name"]
    if spec["kind"] == "quantiles":
        return [c for c in metadata["metrics"] if c.startswith("p") and c.endswith(f"_{name}")]
    if spec["kind"] == "top_k":
        return [name, f"{name}_count"]
    return [name]


def _guarantee(
    metadata: Mapping[str, Any],
    policy: Mapping[str, Any],
    privacy: Mapping[str, Any],
    windows: Sequence[Mapping[str, Any]],
) -> str:
    eps, delta = float(privacy["epsilon"]), float(privacy["delta"])
    unit = policy["privacy_unit"]
    lines = [
        "## Privacy guarantee",
        "",
        f"(epsilon = {eps:.4g}, delta = {delta:.3g})-differential privacy for each privacy"
        f" unit (the values of column `{unit}`, which is not in the data).",
        "",
        f"In plain words: adding or removing all the events of any one `{unit}` changes the"
        f" probability of any result computed from this data by at most a factor"
        f" e^{eps:.4g} = {math.exp(eps):.4g}, except with probability at most {delta:.3g}."
        " This holds whatever else an attacker knows, and for anything later computed"
        " from this data alone, models trained on it included.",
        "",
        f"Contribution bounds: each `{unit}` contributes to at most"
        f" {policy['max_partitions']} partitions, and at most {policy['max_contributions']}"
        " events to each; events beyond these were dropped (chosen at random) before"
        " aggregation. Metric values were clamped to the bounds listed in the columns.",
    ]
    if metadata.get("tuning"):
        lines[-1] += (
            " Bounds marked auto in the query were chosen privately from the data, within"
            " this release's budget (metadata `tuning`)."
        )
    if windows:
        lines += [
            "",
            f"Each of the {len(windows)} windows is its own release with this loss. A unit"
            f" active in k windows is protected by their composition: at most k x epsilon"
            f" (up to {len(windows) * eps:.4g} over all windows here) and k x delta.",
        ]
    ledger = metadata.get("ledger")
    if ledger:
        lines += ["", f"Charged to a privacy budget ledger: charge #{ledger.get('charge')}."]
    level = interval_level(metadata)
    if level is not None:
        coverage = (
            metadata["intervals"].get("coverage")
            if isinstance(metadata["intervals"], Mapping)
            else None
        )
        lines += [
            "",
            f"Intervals: {level:.0%}: " + (coverage or "noise only, from the noise scales") + ".",
        ]
    return "\n".join(lines)


def _noise(metadata: Mapping[str, Any], columns: Sequence[str]) -> str:
    rows = [
        "## Noise per column",
        "",
        "| column | mechanism | epsilon | delta | noise std. dev. | on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for column in columns:  # the table's order (the metadata's JSON sorts its keys)
        report = metadata["metrics"].get(column)
        if report is None:
            continue
        rows.append(
            f"| `{column}` | {report['mechanism']} | {float(report['epsilon']):.4g}"
            f" | {float(report['delta']):.3g} | {float(report['stddev']):.4g}"
            f" | {report['measurement']} |"
        )
    rows += [
        "",
        "The standard deviation is that of the noise added to the measurement named in the"
        " last column: a count's noise is the count column's, a mean's is the noise of"
        " its (centred) sum, a quantile's is the noise of each bin of its histogram."
        " Measurements shared by several columns are paid for once.",
    ]
    return "\n".join(rows)


def _partitions(metadata: Mapping[str, Any]) -> str:
    partitions = metadata["partitions"]
    if partitions["selection"] == "public":
        return (
            "## Partitions\n\nPublic: the partitions were listed in advance and every one is"
            " a row, with or without events (an empty partition shows noise around zero)."
        )
    mechanism = partitions.get("mechanism", {})
    half = mechanism.get("units_for_half")
    return (
        "## Partitions\n\nChosen privately: a partition appears only if a noisy count of its"
        " privacy units passed a threshold"
        + (f" (about {half} units give it a 50% chance)" if half else "")
        + ". A missing partition does not mean no events: it may have had few units."
    )


def _not_in_data(policy: Mapping[str, Any], *, private: bool) -> str:
    missing = "- Partitions missing from the table (private selection) are unknown, not zero."
    return "\n".join(
        [
            "## What is not in the data",
            "",
            f"- No individual event, and no value of the privacy unit `{policy['privacy_unit']}`.",
            "- No exact number: every value carries calibrated noise (small values can be"
            " negative or out of range; do not round them away before training).",
            "- Events beyond the contribution bounds, events without a privacy unit or with"
            " non-finite values, events without consent, and late events are not counted;"
            " how many were dropped is known only to the operator and is not published.",
            "- Values outside the metric bounds were clamped, so extremes are under-stated.",
            *([missing] if private else []),
        ]
    )
