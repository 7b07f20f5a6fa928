"""The ``telemagg`` command line: a thin layer over the library.

``telemagg aggregate`` turns event files into a release file; ``telemagg report`` draws one;
``telemagg demo`` aggregates a synthetic telemetry stream with differential privacy and
prints the release; ``telemagg budget show|history URL`` inspects a privacy budget ledger.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import telemagg as tm
from telemagg._intervals import check_level
from telemagg._metric_spec import METRIC_SYNTAX, parse_metrics
from telemagg.datasets import telemetry_events
from telemagg.errors import UntrackedReleaseWarning, require
from telemagg.ledger import Ledger
from telemagg.ledger._cli import register as register_budget


def format_table(
    columns: Mapping[str, Sequence[Any] | np.ndarray[Any, Any]], limit: int = 25
) -> str:
    """A plain-text table; floats rounded for reading.

    >>> print(format_table({"event": ["open", "save"], "count": [10.4, 2.0]}))
    event  count
    -----  -----
    open    10.4
    save     2.0
    """
    names = list(columns)
    rows = [[_cell(v) for v in columns[n][:limit]] for n in names]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, rows, strict=True)]
    numeric = [all(_is_number(v) for v in columns[n][:limit]) for n in names]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line([col[i] for col in rows]) for i in range(len(rows[0]) if rows else 0)]
    total = len(columns[names[0]]) if names else 0
    if total > limit:
        out.append(f"... {total - limit} more rows")
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        number = float(value)
        return f"{number:,.1f}" if abs(number) < 1e15 else f"{number:.3g}"
    return str(value)


def demo(n_events: int, epsilon: float, ledger_url: str | None) -> int:
    """Generate telemetry, aggregate it privately, print what was released and spent."""
    print(f"Generating {n_events:,} synthetic telemetry events (Zipf-skewed users)...")
    events = telemetry_events(n_events, seed=7, dirty=0.001)
    n_users = len(np.unique(events["user_id"][events["user_id"] != None]))  # noqa: E711
    print(f"  {n_users:,} users; the busiest emitted {_busiest(events):,} events\n")

    with tempfile.TemporaryDirectory() as tmp:
        url = ledger_url or f"sqlite:///{Path(tmp) / 'privacy.db'}"
        ledger = Ledger(url, epsilon=10.0, delta=1e-5)
        policy = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)
        metrics = [
            tm.unit_count(name="users"),
            tm.count(name="events"),
            tm.mean("duration_ms", bounds=(0, 10_000)),
            tm.quantiles("latency_ms", [0.5, 0.9], bounds=(1, 10_000), scale="log"),
        ]
        release = tm.aggregate(
            events,
            by=["event_name"],
            metrics=metrics,
            policy=policy,
            epsilon=epsilon,
            delta=1e-6,
            ledger=ledger,
            label="demo: usage per feature",
        )
        table = release.to_dict()
        order = np.argsort(-table["users"])
        print(f"Released {len(release)} feature partitions (busiest first):")
        print(format_table({k: v[order] for k, v in table.items()}, limit=15))
        print()
        print(f"Privacy loss: epsilon={release.epsilon:.3f}, delta={release.delta:.2g}")
        bars = release.to_dict(intervals=0.95)  # exact error bars: post-processing, free
        for metric in metrics:
            for column in metric.output_names:
                report = release.metrics[column]
                half = (bars[f"{column}_high"] - bars[f"{column}_low"]) / 2
                print(
                    f"  {column:<18} {report.mechanism:<18} epsilon={report.epsilon:.3f}"
                    f"  95% interval: +-{float(np.nanmedian(half)):,.1f} (median over partitions)"
                )
        spent, remaining = ledger.spent, ledger.remaining
        print(
            f"Ledger {ledger.url}: spent epsilon={spent[0]:.3f} of 10,"
            f" remaining epsilon={remaining[0]:.3f}"
        )
        accounting = release.accounting  # exact, operator side: never published
        received, aggregated = accounting.received, accounting.aggregated
        print(f"\nEvents: {received:,} received, {aggregated:,} aggregated (exact: operator only)")
        for reason, n in accounting.dropped.items():
            print(f"  dropped {n:>10,}  {reason}")
    return 0


def _busiest(events: Mapping[str, np.ndarray[Any, Any]]) -> int:
    users = events["user_id"]
    present = users[users != None].astype(np.int64)  # noqa: E711
    return int(np.unique(present, return_counts=True)[1].max()) if present.size else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemagg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"telemagg {tm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="aggregate synthetic telemetry with DP")
    demo_parser.add_argument("--events", type=int, default=1_000_000, help="events to generate")
    demo_parser.add_argument("--epsilon", type=float, default=1.0, help="privacy budget")
    demo_parser.add_argument(
        "--ledger", default=None, help="ledger URL (default: a temporary file)"
    )
    register_budget(sub)
    serve_parser = sub.add_parser("serve", help="run the collector (see telemagg.collector)")
    serve_parser.add_argument("--config", required=True, help="the pipeline's TOML file")
    serve_parser.add_argument(
        "--log-format", choices=["json", "text"], default="json", help="log lines (stderr)"
    )
    serve_parser.set_defaults(func=_serve)
    register_audit(sub)
    register_aggregate(sub)
    register_report(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Run the collector until SIGTERM/SIGINT; it checkpoints before exiting."""
    import logging

    from telemagg.collector import Collector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    Collector(args.config).run()
    return 0


# --------------------------------------------------------------------------- audit


def register_audit(sub: Any) -> None:
    """``telemagg audit EVENTS --by ... --metric ... --epsilon ...``: the privacy audit."""
    parser = sub.add_parser(
        "audit",
        help="audit a query's privacy claim on an events file",
        description=(
            "Run the query many times on the events (D) and on D plus one heavy privacy unit"
            " (D'), and report a lower confidence bound on its privacy loss. Exit status 0:"
            " the claim survived (evidence, not proof); 1: the claim is refuted; 2: bad input."
        ),
    )
    parser.add_argument("events", help="events file: .parquet, .csv or .jsonl (keep it small)")
    parser.add_argument("--by", action="append", required=True, help="partition column")
    parser.add_argument("--metric", action="append", required=True, help=f"metric: {METRIC_SYNTAX}")
    parser.add_argument("--privacy-unit", required=True, help="column identifying the unit")
    parser.add_argument("--max-partitions", type=int, default=1, help="L0 bound (default 1)")
    parser.add_argument("--max-contributions", type=int, default=1, help="Linf bound (default 1)")
    parser.add_argument("--epsilon", type=float, required=True, help="the release's epsilon")
    parser.add_argument("--delta", type=float, default=0.0, help="the release's delta")
    parser.add_argument(
        "--partitions",
        default=None,
        help="public partitions, comma-separated (one --by column); default: chosen privately",
    )
    parser.add_argument("--window", default=None, help="window length, e.g. 1h (needs --time)")
    parser.add_argument("--time", default=None, help="event-time column of a windowed query")
    parser.add_argument("--runs", type=int, default=2000, help="releases on each side")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible audits")
    parser.add_argument(
        "--no-metadata",
        action="store_true",
        help="observe only the released tables, not release.metadata",
    )
    parser.set_defaults(func=audit_command)


def audit_command(args: argparse.Namespace) -> int:
    """Run :func:`telemagg.audit.audit` from the command line; print its summary."""
    from telemagg.audit import audit

    events = read_events(args.events)
    partitions = None
    if args.partitions is not None:
        if len(args.by) != 1:
            raise tm.ConfigError("--partitions takes keys of one --by column; got several --by")
        partitions = _typed_keys(args.partitions.split(","), events[args.by[0]], args.by[0])
    policy = tm.Policy(
        privacy_unit=args.privacy_unit,
        max_partitions=args.max_partitions,
        max_contributions=args.max_contributions,
    )
    result = audit(
        events,
        by=args.by,
        metrics=parse_metrics(args.metric),
        policy=policy,
        epsilon=args.epsilon,
        delta=args.delta,
        partitions=partitions,
        window=args.window,
        time=args.time,
        runs=args.runs,
        seed=args.seed,
        metadata=not args.no_metadata,
    )
    print(result.summary())
    return 0 if result.passed else 1


def read_events(path: str) -> dict[str, np.ndarray[Any, Any]]:
    """An events file (Parquet, CSV, JSON lines) as numpy columns, read whole (the audit
    replays the events many times; keep such files small)."""
    from telemagg._event_files import event_files

    files = event_files([path])
    pa: Any = require("pyarrow", "pyarrow")
    schema = files.datasets[0].schema
    table = pa.Table.from_batches(list(files.batches(schema.names)), schema=schema)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _typed_keys(keys: list[str], column: np.ndarray[Any, Any], name: str) -> list[Any]:
    """Command-line keys in the type of the --by column they name."""
    if column.dtype.kind not in "iuf":
        return [k.strip() for k in keys]
    try:
        kind = int if column.dtype.kind in "iu" else float
        return [kind(k) for k in keys]
    except ValueError:
        raise tm.ConfigError(
            f"--partitions must hold numbers: column {name!r} is numeric; got {keys!r}"
        ) from None


# --------------------------------------------------------------------------- aggregate


def register_aggregate(sub: Any) -> None:
    """``telemagg aggregate INPUT... --by ... --metric ... --epsilon ... --out FILE``."""
    parser = sub.add_parser(
        "aggregate",
        help="aggregate event files into a differentially private release file",
        description=(
            "Read event files (Parquet, CSV, JSON lines; paths, globs or directories) in"
            " chunks, aggregate them with differential privacy, and write one release as"
            " Parquet, its publishable metadata in the schema. Exit status 2: bad input."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="event files, globs, folders")
    parser.add_argument("--by", action="append", required=True, help="partition column")
    parser.add_argument("--metric", action="append", required=True, help=f"metric: {METRIC_SYNTAX}")
    parser.add_argument(
        "--policy",
        default=None,
        help="TOML file of tm.Policy fields (privacy_unit, max_partitions, ...); the options"
        " below override it",
    )
    parser.add_argument("--privacy-unit", default=None, help="column identifying the unit")
    parser.add_argument("--max-partitions", type=int, default=None, help="L0 bound (default 1)")
    parser.add_argument(
        "--max-contributions", type=int, default=None, help="Linf bound (default 1)"
    )
    parser.add_argument("--epsilon", type=float, required=True, help="the release's epsilon")
    parser.add_argument("--delta", type=float, default=0.0, help="the release's delta")
    parser.add_argument(
        "--partitions",
        default=None,
        help="CSV of public partition keys, one column per --by (default: chosen privately)",
    )
    parser.add_argument("--ledger", default=None, help="URL of an existing budget ledger")
    parser.add_argument("--consent", default=None, help="URL of a consent registry")
    parser.add_argument("--purpose", default=None, help="the purpose consent is checked for")
    parser.add_argument(
        "--intervals", type=float, default=None, help="add <col>_low/_high at this level"
    )
    parser.add_argument(
        "--noise", choices=["laplace", "gaussian"], default="laplace", help="noise of the values"
    )
    parser.add_argument("--label", default="telemagg aggregate", help="the ledger charge's label")
    parser.add_argument("--out", required=True, help="the release file to write (.parquet)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no summary (errors only)"
    )
    parser.set_defaults(func=aggregate_command)


def aggregate_command(args: argparse.Namespace) -> int:
    """Run :class:`telemagg.Aggregator` over event files in chunks; write one release.

    Every parameter is validated, and the ledger opened, before the first event is read.
    """
    from telemagg._event_files import event_files
    from telemagg.ledger._protocol import open_ledger
    from telemagg.policy import ReleaseParams

    policy = load_policy(
        args.policy,
        privacy_unit=args.privacy_unit,
        max_partitions=args.max_partitions,
        max_contributions=args.max_contributions,
    )
    ReleaseParams(
        epsilon=args.epsilon,
        delta=args.delta,
        noise=args.noise,
        private_partitions=not args.partitions,
    )
    out = Path(args.out)
    if not out.parent.is_dir():
        raise tm.ConfigError(f"--out {args.out!r}: directory {str(out.parent)!r} does not exist")
    files = event_files(args.inputs)
    partitions = _partition_file(args.partitions, args.by, files) if args.partitions else None
    agg = tm.Aggregator(
        policy=policy,
        by=args.by,
        metrics=parse_metrics(args.metric),
        consent=args.consent,
        purpose=args.purpose,
        partitions=partitions,
    )
    files.check_columns(agg.columns)
    with open_ledger(args.ledger):  # a URL names an existing ledger: checked before reading
        pass
    if args.intervals is not None:  # checked before any event is read
        check_level(args.intervals)
    _ingest(agg, files, quiet=args.quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrackedReleaseWarning)
        release = agg.release(
            args.epsilon,
            args.delta,
            partitions=partitions,
            ledger=args.ledger,
            label=args.label,
            noise=args.noise,
        )
    for warning in caught:  # one line, not a source excerpt
        print(f"telemagg: warning: {warning.message}", file=sys.stderr)
    release.to_parquet(out, intervals=args.intervals)
    if not args.quiet:
        _print_summary(release, out, args.ledger)
    return 0


def load_policy(path: str | None, **options: Any) -> tm.Policy:
    """A :class:`telemagg.Policy` from a TOML file of its fields, overridden by the options
    that are not None (both validated by the same model).

    >>> load_policy(None, privacy_unit="user_id", max_partitions=4, max_contributions=None)
    Policy(privacy_unit='user_id', max_partitions=4, max_contributions=1, content_columns=())
    """
    import tomllib

    fields: dict[str, Any] = {}
    if path is not None:
        try:
            fields = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise tm.ConfigError(f"--policy {path!r} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise tm.ConfigError(f"--policy {path!r} is not valid TOML: {exc}") from None
    fields.update({k: v for k, v in options.items() if v is not None})
    if "privacy_unit" not in fields:
        raise tm.ConfigError("--privacy-unit is required (or privacy_unit in the --policy file)")
    return tm.Policy(**fields)


def _partition_file(path: str, by: Sequence[str], files: Any) -> Any:
    """Public partition keys from a CSV file whose header names the --by columns, each read
    in the type the event files give that column."""
    pa: Any = require("pyarrow", "pyarrow")
    csv: Any = require("pyarrow.csv", "pyarrow")
    schema = files.datasets[0].schema
    types = {c: schema.field(c).type for c in by if c in schema.names}
    try:
        table = csv.read_csv(path, convert_options=csv.ConvertOptions(column_types=types))
    except (OSError, pa.ArrowInvalid) as exc:
        raise tm.ConfigError(f"--partitions {path!r} cannot be read as CSV: {exc}") from None
    missing = [c for c in by if c not in table.column_names]
    if missing:
        raise tm.ConfigError(
            f"--partitions {path!r} must have a header naming every --by column;"
            f" {missing[0]!r} is missing (header: {table.column_names})"
        )
    return {c: table.column(c).to_pylist() for c in by}


def _ingest(agg: tm.Aggregator, files: Any, *, quiet: bool) -> None:
    """Feed every batch of the files to ``agg``, with a progress bar on a terminal."""
    pa: Any = require("pyarrow", "pyarrow")
    progress = _progress(quiet)
    with progress:
        task = progress.add_task("aggregating", total=files.count())
        for batch in files.batches(agg.columns):
            agg.add(pa.Table.from_batches([batch]))
            progress.advance(task, batch.num_rows)


def _progress(quiet: bool) -> Any:
    """A rich progress bar on stderr (events, events/s, ETA); disabled when quiet or when
    stderr is not a terminal."""
    rich: Any = require("rich.progress", "cli")
    console: Any = require("rich.console", "cli")

    class EventRate(rich.ProgressColumn):  # type: ignore[misc]
        def render(self, task: Any) -> Any:
            speed = task.finished_speed or task.speed
            return rich.Text(f"{speed or 0:,.0f} events/s")

    stderr = console.Console(stderr=True)
    return rich.Progress(
        rich.TextColumn("[progress.description]{task.description}"),
        rich.BarColumn(),
        rich.TextColumn("{task.completed:,.0f} events"),
        EventRate(),
        rich.TimeRemainingColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal,
    )


def _print_summary(release: tm.Release, out: Path, ledger_url: str | None) -> None:
    """The release at a glance (stdout): its columns and noise, its privacy loss, the
    ledger's state; then the operator-only event accounting, which the file never holds."""
    table_mod: Any = require("rich.table", "cli")
    console_mod: Any = require("rich.console", "cli")
    console = console_mod.Console()
    table = table_mod.Table(title=f"{len(release)} partitions released to {out}")
    for header in ("column", "mechanism", "epsilon", "delta", "noise std. dev."):
        table.add_column(header, justify="left" if header in ("column", "mechanism") else "right")
    for column, report in release.metrics.items():
        table.add_row(
            column,
            report.mechanism,
            f"{report.epsilon:.4g}",
            f"{report.delta:.3g}",
            f"{report.stddev:,.4g}",
        )
    console.print(table)
    console.print(f"Privacy loss: epsilon={release.epsilon:.4g}, delta={release.delta:.3g}")
    if ledger_url is not None:
        with Ledger.open(ledger_url) as ledger:
            (spent, _), (left, _) = ledger.spent, ledger.remaining
        console.print(f"Ledger: spent epsilon={spent:.4g}, remaining epsilon={left:.4g}")
    acc = release.accounting
    dropped = ", ".join(f"{n:,} {reason}" for reason, n in acc.dropped.items()) or "none"
    console.print(
        f"Events (exact, operator only, not in the file): {acc.received:,} received,"
        f" {acc.aggregated:,} aggregated; dropped: {dropped}"
    )


# --------------------------------------------------------------------------- report


def register_report(sub: Any) -> None:
    """``telemagg report RELEASE --out report.html [--ledger URL]``."""
    parser = sub.add_parser(
        "report",
        help="draw a release (file or directory of windows) as one HTML page",
        description=(
            "Write one self-contained HTML page (and its figures as PNG files beside it):"
            " per metric the values by partition with error bars, time series for windows,"
            " the privacy loss and, with --ledger, the budget spent over time."
        ),
    )
    parser.add_argument("release", help="a release file or a directory of windowed releases")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--ledger", default=None, help="URL of the budget ledger to chart")
    parser.add_argument("--level", type=float, default=0.95, help="error bars' level")
    parser.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    """Write the report of a release (see :mod:`telemagg.report`)."""
    from telemagg.report import write_report

    path = write_report(args.release, args.out, ledger=args.ledger, level=args.level)
    print(f"report written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``telemagg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.events, args.epsilon, args.ledger)
        return int(args.func(args))
    except (tm.TelemaggError, OSError) as exc:  # OSError: a file that cannot be written
        print(f"telemagg: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "aggregate_command",
    "audit_command",
    "build_parser",
    "format_table",
    "load_policy",
    "main",
    "read_events",
    "report_command",
]
