"""The ``telemagg`` command line: a thin layer over the library.

``telemagg demo`` aggregates a synthetic telemetry stream with differential privacy and
prints the release; ``telemagg budget show|history URL`` inspects a privacy budget ledger.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import telemagg as tm
from telemagg._metric_spec import METRIC_SYNTAX, parse_metrics
from telemagg.datasets import telemetry_events
from telemagg.errors import require
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
        for metric in metrics:
            report = release.metrics[metric.output_names[0]]
            print(
                f"  {metric.name:<18} {report.mechanism:<18} epsilon={report.epsilon:.3f}"
                f"  noise stddev {report.stddev:,.1f} on {report.measurement}"
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
    """An events file (Parquet, CSV, JSON lines) as numpy columns."""
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise tm.ConfigError(f"events file {path!r} does not exist")
    try:
        if suffix in (".parquet", ".pq"):
            parquet: Any = require("pyarrow.parquet", "pyarrow")
            table = parquet.read_table(path)
            return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        pd: Any = require("pandas", "pandas")
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            frame = pd.read_json(path, lines=True)
        else:
            raise tm.ConfigError(
                f"events file {path!r}: unknown format {suffix!r} (use .parquet, .csv or .jsonl)"
            )
    except (OSError, ValueError) as exc:
        if isinstance(exc, tm.TelemaggError):
            raise
        raise tm.SchemaError(f"events file {path!r} cannot be read: {exc}") from None
    return {str(c): frame[c].to_numpy() for c in frame.columns}


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``telemagg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.events, args.epsilon, args.ledger)
        return int(args.func(args))
    except tm.TelemaggError as exc:
        print(f"telemagg: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["audit_command", "build_parser", "format_table", "main", "read_events"]
