"""A release as one self-contained HTML page a person can look at (needs ``telemagg[report]``).

Per metric: the values by partition with their error bars (or, for a directory of windowed
releases, a time series per partition with a band); the privacy loss of the release; with
a ledger, the budget spent and remaining over time. Figures are inlined as base64 PNG and
also written as PNG files beside the page.

The page is drawn from what the release publishes (its table and metadata) and, with a
ledger, the ledger's charges (budget parameters, not data): nothing exact about the events.

>>> import telemagg as tm, tempfile, pathlib
>>> from telemagg.testing import seeded
>>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()],
...                     randomness=seeded(1))
>>> agg.add({"u": [1, 2, 3], "e": ["a", "a", "b"]})
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> agg.release(1.0, partitions=["a", "b"]).to_parquet(folder / "release.parquet")
>>> page = write_report(folder / "release.parquet", folder / "report.html")
>>> page.name, sorted(p.name for p in folder.glob("*.png"))
('report.html', ['report_1_count.png'])
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from telemagg._dataset import (
    WINDOW_START,
    ReleaseData,
    chosen_policy,
    interval_columns,
    read_release,
)
from telemagg.errors import ConfigError, require
from telemagg.release import Release

__all__ = ["error_bars", "write_report"]

ADDITIVE = ("count", "unit_count", "sum", "histogram")  # noise added to the value itself
MAX_PARTITIONS_DRAWN = 30
MAX_SERIES_DRAWN = 8
MAX_ROWS_LISTED = 200


def error_bars(data: ReleaseData, column: str, level: float = 0.95) -> Any:
    """``(low, high)`` arrays for a value column at ``level``, or None when unknown.

    The release's own interval columns (``<column>_low``/``_high``) when the file has them;
    otherwise, for metrics whose noise is added to the value itself (count, unit count,
    sum), the noise-only interval from the noise scale in the metadata: Laplace noise of
    scale b lies within +-b ln(1/(1 - level)) with probability ``level`` (the discrete
    Laplace of that scale, about so: bars for reading, not the release's exact intervals,
    which ``<column>_low``/``_high`` carry); Gaussian noise
    within +-z sigma. Other metrics (mean, variance, quantiles) get bars only from interval
    columns (``--intervals`` at aggregation time).

    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()],
    ...                     randomness=seeded(1))
    >>> agg.add({"u": [1, 2, 3], "e": ["a", "a", "b"]})
    >>> release = agg.release(1.0, partitions=["a", "b"])
    >>> low, high = error_bars(ReleaseData(release.to_arrow(), release.metadata), "count")
    >>> [round(float(h - lo), 2) for lo, h in zip(low, high)]  # 2 b ln(20), b = 1
    [5.99, 5.99]
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1); got {level!r}")
    names = data.table.column_names
    pair = interval_columns(names).get(column)
    if pair is not None:
        return tuple(_floats(data.table.column(c)) for c in pair)
    report = data.metadata["metrics"].get(column)
    spec = _spec(data.metadata, column)
    if report is None or spec is None or spec["kind"] not in ADDITIVE:
        return None
    stddev = float(report["stddev"])
    if report["mechanism"] == "laplace":
        main = [
            c for c in report.get("components", []) if c["measurement"] == report["measurement"]
        ]
        scale = float(main[0].get("scale", 0)) if main else 0.0
        half = (scale or stddev / math.sqrt(2)) * math.log(1 / (1 - level))
    elif report["mechanism"] == "gaussian":
        half = stddev * NormalDist().inv_cdf((1 + level) / 2)
    else:
        return None
    values = _floats(data.table.column(column))
    return values - half, values + half


def write_report(
    release: str | Path | ReleaseData | Release,
    out: str | Path,
    *,
    ledger: str | None = None,
    level: float = 0.95,
) -> Path:
    """Write the HTML report of a release (a file, a directory of windows, or in memory)
    to ``out``, and its figures as ``<out stem>_<n>_<column>.png`` beside it.

    >>> import tempfile, pathlib
    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e", metrics=[tm.count()],
    ...                     randomness=seeded(0))
    >>> agg.add({"u": [1, 2, 3], "e": ["a", "a", "b"]})
    >>> release = agg.release(1.0, partitions=["a", "b"])
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.html"
    >>> page = write_report(release, out)
    >>> "count" in page.read_text()
    True
    """
    data = _data(release)
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    require("matplotlib", "report")
    figures = _Figures(out)
    body = [_header(data)]
    for column in _value_columns(data):
        body.append(_metric_section(data, column, level, figures))
    for column in _list_columns(data):
        body.append(_list_section(data, column))
    body.append(_privacy_section(data, figures))
    if ledger is not None:
        body.append(_ledger_section(ledger, figures))
    out.write_text(_page(data, "\n".join(body)), encoding="utf-8")
    return out


def _data(release: str | Path | ReleaseData | Release) -> ReleaseData:
    if isinstance(release, ReleaseData):
        return release
    if isinstance(release, Release):
        table = release.to_arrow()
        return ReleaseData(table, release.metadata)
    return read_release(release)


def _floats(column: Any) -> Any:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _spec(metadata: dict[str, Any], column: str) -> dict[str, Any] | None:
    for spec in metadata["query"]["metrics"]:
        name = spec["name"]
        if column == name or (spec["kind"] == "quantiles" and column.endswith(f"_{name}")):
            return dict(spec)
    return None


def _value_columns(data: ReleaseData) -> list[str]:
    """Scalar metric columns (histograms and top-k lists are listed, not drawn)."""
    pa: Any = require("pyarrow", "pyarrow")
    keys = set(data.key_columns)
    bounds = {c for pair in interval_columns(data.table.column_names).values() for c in pair}
    return [
        f.name
        for f in data.table.schema
        if f.name not in keys and f.name not in bounds and pa.types.is_floating(f.type)
    ]


def _list_columns(data: ReleaseData) -> list[str]:
    """Histogram and top-k columns: one list per row, listed as text."""
    pa: Any = require("pyarrow", "pyarrow")
    return [f.name for f in data.table.schema if pa.types.is_list(f.type)]


def _list_section(data: ReleaseData, column: str) -> str:
    report = data.metadata["metrics"].get(column, {})
    labels = _row_labels(data)
    cells = data.table.column(column).to_pylist()
    listed = "".join(
        f"<tr><td>{html.escape(label)}</td><td>"
        + html.escape(", ".join(_fmt(v) if isinstance(v, float) else str(v) for v in row or []))
        + "</td></tr>"
        for label, row in list(zip(labels, cells, strict=True))[:MAX_ROWS_LISTED]
    )
    return (
        f"<section><h2>{html.escape(column)}</h2><p>Noise:"
        f" {html.escape(str(report.get('mechanism', '?')))}, standard deviation"
        f" {_fmt(float(report.get('stddev', float('nan'))))} on each value.</p>"
        f"<table><tr><th>{_key_heading(data)}</th><th>values</th></tr>{listed}</table></section>"
    )


def _key_heading(data: ReleaseData) -> str:
    return "window, partition" if WINDOW_START in data.table.column_names else "partition"


def _row_labels(data: ReleaseData) -> list[str]:
    """Partition labels, prefixed by the window start for windowed releases."""
    labels = _labels(data)
    if WINDOW_START not in data.table.column_names:
        return labels
    starts = data.table.column(WINDOW_START).to_pylist()
    return [f"{s:%Y-%m-%d %H:%M} {label}" for s, label in zip(starts, labels, strict=True)]


def _labels(data: ReleaseData) -> list[str]:
    by = data.metadata["query"]["by"]
    columns = [data.table.column(c).to_pylist() for c in by]
    return [" / ".join(str(v) for v in row) for row in zip(*columns, strict=True)]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


class _Figures:
    """Numbered PNG figures beside the page, each also inlined."""

    def __init__(self, out: Path) -> None:
        self.out, self.count = out, 0

    def add(self, figure: Any, name: str) -> str:
        import matplotlib.pyplot as plt

        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9_]+", "_", name)
        path = self.out.with_name(f"{self.out.stem}_{self.count}_{slug}.png")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        png = buffer.getvalue()
        path.write_bytes(png)
        encoded = base64.b64encode(png).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'


def _pyplot() -> Any:
    matplotlib: Any = require("matplotlib", "report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_section(data: ReleaseData, column: str, level: float, figures: _Figures) -> str:
    values = _floats(data.table.column(column))
    bars = error_bars(data, column, level)
    report = data.metadata["metrics"].get(column, {})
    note = (
        f"Error bars: {level:.0%} noise-only intervals."
        if bars is not None
        else "No error bars: this metric's interval needs the release's interval columns"
        " (aggregate with --intervals)."
    )
    plt = _pyplot()
    labels = _labels(data)
    if WINDOW_START in data.table.column_names:
        figure = _time_series(plt, data, column, values, bars, labels)
    else:
        figure = _by_partition(plt, column, values, bars, labels)
    image = figures.add(figure, column)
    numbers = [values] if bars is None else [values, bars[0], bars[1]]
    labels = _row_labels(data)
    listed = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_fmt(float(n[i]))}</td>" for n in numbers)
        + "</tr>"
        for i, label in enumerate(labels[:MAX_ROWS_LISTED])
    )
    rows = labels
    more = (
        f"<p>{len(rows) - MAX_ROWS_LISTED} more rows not listed.</p>"
        if len(rows) > MAX_ROWS_LISTED
        else ""
    )
    head = f"<th>{_key_heading(data)}</th><th>value</th>" + (
        "" if bars is None else "<th>low</th><th>high</th>"
    )
    mechanism = report.get("mechanism", "?")
    stddev = float(report.get("stddev", float("nan")))
    return (
        f"<section><h2>{html.escape(column)}</h2>"
        f"<p>Noise: {html.escape(str(mechanism))}, standard deviation {_fmt(stddev)} on"
        f" {html.escape(str(report.get('measurement', column)))}. {note}</p>{image}"
        f"<table><tr>{head}</tr>{listed}</table>{more}</section>"
    )


def _by_partition(plt: Any, column: str, values: Any, bars: Any, labels: Sequence[str]) -> Any:
    order = np.argsort(-values, kind="stable")[:MAX_PARTITIONS_DRAWN]
    figure, axes = plt.subplots(figsize=(8, 0.3 * len(order) + 1.2))
    y = np.arange(len(order))
    xerr = None
    if bars is not None:
        xerr = np.vstack([values[order] - bars[0][order], bars[1][order] - values[order]])
    axes.barh(y, values[order], xerr=xerr, color="#4c72b0", ecolor="#333333", capsize=2)
    axes.set_yticks(y, [labels[i] for i in order])
    axes.invert_yaxis()
    axes.set_xlabel(column)
    shown = "" if len(values) <= len(order) else f" (largest {len(order)} of {len(values)})"
    axes.set_title(f"{column} by partition{shown}")
    return figure


def _time_series(
    plt: Any, data: ReleaseData, column: str, values: Any, bars: Any, labels: Sequence[str]
) -> Any:
    starts = np.asarray(data.table.column(WINDOW_START).to_numpy(zero_copy_only=False))
    names = np.asarray(labels, dtype=object)
    totals = {name: float(np.sum(values[names == name])) for name in dict.fromkeys(labels)}
    drawn = sorted(totals, key=lambda n: -totals[n])[:MAX_SERIES_DRAWN]
    figure, axes = plt.subplots(figsize=(9, 4))
    for name in drawn:
        rows = np.flatnonzero(names == name)
        rows = rows[np.argsort(starts[rows], kind="stable")]
        (line,) = axes.plot(starts[rows], values[rows], marker="o", label=name)
        if bars is not None:
            axes.fill_between(
                starts[rows], bars[0][rows], bars[1][rows], color=line.get_color(), alpha=0.2
            )
    axes.set_ylabel(column)
    axes.set_xlabel("window start (UTC)")
    axes.legend(fontsize="small")
    shown = "" if len(totals) <= len(drawn) else f" ({len(drawn)} largest of {len(totals)})"
    axes.set_title(f"{column} per window{shown}")
    figure.autofmt_xdate()
    return figure


def _header(data: ReleaseData) -> str:
    meta = data.metadata
    policy = chosen_policy(meta)
    by = ", ".join(meta["query"]["by"])
    windows = f" in {len(data.windows)} windows" if data.windows else ""
    seeded = (
        "<p><strong>Seeded (predictable) noise: a test release, not private.</strong></p>"
        if meta.get("seeded")
        else ""
    )
    return (
        f"<h1>telemagg release: {html.escape(by)}</h1>{seeded}"
        f"<p>{len(data)} rows{windows}. Privacy unit <code>{html.escape(policy['privacy_unit'])}"
        f"</code>, at most {policy['max_partitions']} partitions and"
        f" {policy['max_contributions']} events per partition per unit. Partitions:"
        f" {html.escape(meta['partitions']['selection'])}. Made by telemagg"
        f" {html.escape(str(meta.get('telemagg_version')))}.</p>"
    )


def _privacy_section(data: ReleaseData, figures: _Figures) -> str:
    meta = data.metadata
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{html.escape(str(r['mechanism']))}</td>"
        f"<td>{_fmt(float(r['epsilon']))}</td><td>{_fmt(float(r['delta']))}</td>"
        f"<td>{_fmt(float(r['stddev']))}</td></tr>"
        for c, r in meta["metrics"].items()
    )
    text = (
        f"<h2>Privacy loss</h2><p>Each release: epsilon = {_fmt(data.epsilon)}, delta ="
        f" {_fmt(data.delta)}, protecting all the events of any one privacy unit.</p>"
    )
    image = ""
    if data.windows:
        eps = np.cumsum([float(w["epsilon"]) for w in data.windows])
        starts = [w["window"]["start"] for w in data.windows]
        text += (
            f"<p>{len(data.windows)} windows: a unit active in all of them is protected by"
            f" epsilon = {_fmt(float(eps[-1]))} (basic composition).</p>"
        )
        plt = _pyplot()
        figure, axes = plt.subplots(figsize=(8, 3))
        axes.step(range(1, len(eps) + 1), eps, where="post")
        axes.set_xlabel("windows released")
        axes.set_ylabel("cumulative epsilon")
        axes.set_title(f"Privacy loss over windows ({starts[0]} to {starts[-1]})")
        image = figures.add(figure, "privacy_loss")
    table = (
        "<table><tr><th>column</th><th>mechanism</th><th>epsilon</th><th>delta</th>"
        f"<th>noise std. dev.</th></tr>{rows}</table>"
    )
    return f"<section>{text}{image}{table}</section>"


def _ledger_section(url: str, figures: _Figures) -> str:
    from telemagg.ledger import Ledger

    with Ledger.open(url) as ledger:
        charges = ledger.charges()
        (total, _), (spent, _), (left, _) = ledger.total, ledger.spent, ledger.remaining
        window = ledger.window
    text = (
        f"<h2>Privacy budget</h2><p>Ledger total epsilon = {_fmt(total)}; spent"
        f" {_fmt(spent)}; remaining {_fmt(left)}; {len(charges)} charges.</p>"
    )
    if window:
        text += (
            f"<p>The ledger counts only the charges of the last {html.escape(str(window))}:"
            " the figure adds up every charge ever made.</p>"
        )
    if not charges:
        return f"<section>{text}</section>"
    plt = _pyplot()
    times = [c.time for c in charges]
    cumulative = np.cumsum([c.epsilon for c in charges])
    figure, axes = plt.subplots(figsize=(8, 3))
    axes.step(times, cumulative, where="post", label="spent")
    axes.step(times, np.maximum(total - cumulative, 0), where="post", label="remaining")
    axes.axhline(total, color="#c44e52", linestyle="--", label="total")
    axes.set_ylabel("epsilon")
    axes.set_title("Budget spent over time")
    axes.legend(fontsize="small")
    figure.autofmt_xdate()
    return f"<section>{text}{figures.add(figure, 'budget')}</section>"


_STYLE = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
"""


def _page(data: ReleaseData, body: str) -> str:
    title = html.escape("telemagg release: " + ", ".join(data.metadata["query"]["by"]))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
