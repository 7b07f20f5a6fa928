"""``telemagg budget show URL`` and ``telemagg budget history URL``.

:func:`register` adds the ``budget`` command to the main parser. Each subcommand sets
``func(args) -> int`` (the exit status) in its defaults; telemagg errors (an unknown scheme,
a missing ledger) propagate to the caller, which prints them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from telemagg.errors import LedgerIntegrityError
from telemagg.ledger._chain import KEY_ENV, KEY_FILE_ENV
from telemagg.ledger._ledger import Charge, Ledger

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``budget show`` and ``budget history`` to a parser's subcommands.

    >>> parser = argparse.ArgumentParser(prog="telemagg")
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["budget", "show", "sqlite:///privacy.db"]).url
    'sqlite:///privacy.db'
    """
    budget = subparsers.add_parser("budget", help="inspect a privacy budget ledger")
    commands = budget.add_subparsers(dest="budget_command", required=True)
    show = commands.add_parser(
        "show", help="total, spent, remaining, window, charges, and whether the chain verifies"
    )
    history = commands.add_parser("history", help="every charge, oldest first")
    for command, func in ((show, show_budget), (history, show_history)):
        command.add_argument(
            "url", help="sqlite:///path.db (add ?mode=ro to only read) or postgresql://user@host/db"
        )
        command.add_argument(
            "--key-file",
            default=None,
            help=f"the key of a keyed ledger (default: ${KEY_ENV} or the file ${KEY_FILE_ENV})",
        )
        command.set_defaults(func=func)


def show_budget(args: argparse.Namespace) -> int:
    """Print the state of the ledger at ``args.url``; exit status 1 if its chain is broken.

    A ledger too damaged to read (malformed values) raises LedgerIntegrityError: the command
    line prints it and exits 2.
    """
    with Ledger.open(args.url, key_file=args.key_file) as ledger:
        (eps, delta), (spent_eps, spent_delta) = ledger.total, ledger.spent
        left_eps, left_delta = ledger.remaining
        window = (
            f"{ledger.window}: only charges of the last {ledger.window} count "
            "(bounds the loss of any such window, not over a lifetime)"
            if ledger.window
            else "none: every charge counts forever"
        )
        try:
            ledger.verify()
            chain, status = f"verified; head {ledger.head}", 0
        except LedgerIntegrityError as exc:
            chain, status = f"BROKEN: {exc}", 1
        lines = [
            ("ledger", ledger.url),
            ("total", _pair(eps, delta)),
            ("window", window),
            ("spent", _pair(spent_eps, spent_delta)),
            ("remaining", _pair(left_eps, left_delta)),
            ("charges", f"{len(ledger.charges())} recorded, {ledger.counted()} counted now"),
            ("chain kind", "keyed (HMAC-SHA256)" if ledger.keyed else "unkeyed (SHA-256)"),
            ("chain", chain),
        ]
    print("\n".join(f"{name:<10} {value}" for name, value in lines))
    return status


def show_history(args: argparse.Namespace) -> int:
    """Print every charge of the ledger at ``args.url`` as a table, oldest first."""
    with Ledger.open(args.url, key_file=args.key_file) as ledger:
        charges = ledger.charges()
    headers = ("#", "time (UTC)", "epsilon", "delta", "rho", "label", "version", "query")
    rows = [_history_row(charge) for charge in charges]
    print(_table(headers, rows) if rows else "no charges recorded")
    return 0


def _pair(epsilon: float, delta: float) -> str:
    return f"epsilon={epsilon:.6g}  delta={delta:.6g}"


def _history_row(charge: Charge) -> tuple[str, ...]:
    query = json.dumps(charge.query, sort_keys=True, separators=(",", ":"))
    return (
        str(charge.seq),
        charge.time.strftime("%Y-%m-%d %H:%M:%S"),
        f"{charge.epsilon:.6g}",
        f"{charge.delta:.3g}",
        f"{charge.rho:.6g}",
        charge.label or "-",
        charge.version,
        query if len(query) <= 60 else query[:59] + "…",
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, columns left-aligned to their widest cell.

    >>> print(_table(("a", "bb"), [("1", "2"), ("333", "4")]))
    a    bb
    ---  --
    1    2
    333  4
    """
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
