"""Errors raised by telemagg.

Every error telemagg raises on purpose derives from :class:`TelemaggError`::

    TelemaggError
    ├── ConfigError (also ValueError)      a parameter breaks a rule: names it, the rule, the value
    ├── SchemaError (also ValueError)      the data does not fit: names the column
    ├── BudgetExceededError                the ledger cannot cover a release; nothing was released
    ├── LedgerError                        a ledger store is unusable (foreign schema, broken chain)
    │   └── LedgerIntegrityError           verify() found edited, inserted or deleted charges
    └── MissingDependencyError (also ImportError)
                                           an optional extra is needed: names the extra to install

Warnings: :class:`UntrackedReleaseWarning` (a ``UserWarning``), once per Aggregator whose
release is charged to no ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "LedgerError",
    "LedgerIntegrityError",
    "MissingDependencyError",
    "SchemaError",
    "TelemaggError",
    "UntrackedReleaseWarning",
]


class TelemaggError(Exception):
    """Root of every error telemagg raises on purpose."""


class ConfigError(TelemaggError, ValueError):
    """A parameter is invalid. The message names the parameter, the rule and the value."""


class SchemaError(TelemaggError, ValueError):
    """The input data does not fit the query. The message names the column."""


class BudgetExceededError(TelemaggError):
    """The privacy budget ledger cannot cover a release; nothing was recorded or released.

    ``released``: from ``Aggregator.release_closed``, the windows released (and charged)
    before the refused one; the refused window and later ones stay pending.
    """

    released: Sequence[Any] = ()


class LedgerError(TelemaggError):
    """A ledger or consent store cannot be used as it is (not a telemagg store, foreign schema)."""


class LedgerIntegrityError(LedgerError):
    """The hash chain of recorded charges is broken: rows were edited, inserted or deleted."""


class MissingDependencyError(TelemaggError, ImportError):
    """An optional dependency is missing. The message names the extra that provides it."""


class UntrackedReleaseWarning(UserWarning):
    """A release was made without a ledger: its privacy loss is recorded nowhere.

    Silence it with the :mod:`warnings` module when that is intended::

        warnings.filterwarnings("ignore", category=UntrackedReleaseWarning)
    """


def require(module: str, extra: str) -> object:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming its extra.

    >>> require("json", "core") is not None
    True
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for this feature; install it with: pip install 'telemagg[{extra}]'"
        ) from exc
