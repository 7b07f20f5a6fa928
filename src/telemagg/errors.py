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
    """Root of every error telemagg raises on purpose.

    >>> import telemagg as tm
    >>> try:
    ...     tm.Policy(privacy_unit="user_id", max_partitions=0, max_contributions=1)
    ... except tm.TelemaggError as error:
    ...     print(type(error).__name__)
    ConfigError
    """


class ConfigError(TelemaggError, ValueError):
    """A parameter is invalid. The message names the parameter, the rule and the value.

    >>> import telemagg as tm
    >>> try:
    ...     tm.mean("duration_ms", bounds=(10, 1))
    ... except tm.ConfigError as error:
    ...     print(error)
    Mean.bounds must satisfy lower < upper; got (10, 1)
    """


class SchemaError(TelemaggError, ValueError):
    """The input data does not fit the query. The message names the column.

    >>> import telemagg as tm
    >>> events = {"user_id": [1, 2], "event_name": ["open", "save"]}
    >>> policy = tm.Policy(privacy_unit="user_id", max_partitions=1, max_contributions=1)
    >>> try:
    ...     tm.aggregate(events, by=["screen"], metrics=[tm.count()], policy=policy,
    ...                  epsilon=1.0, partitions=["home"])
    ... except tm.SchemaError as error:
    ...     print(error)
    column 'screen' is not in the events (columns: event_name, user_id)
    """


class BudgetExceededError(TelemaggError):
    """The privacy budget ledger cannot cover a release; nothing was recorded or released.

    ``released``: from ``Aggregator.release_closed``, the windows released (and charged)
    before the refused one; the refused window and later ones stay pending.

    >>> import pathlib, tempfile
    >>> import telemagg as tm
    >>> url = f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'privacy.db'}"
    >>> ledger = tm.Ledger(url, epsilon=1.0, delta=1e-6)
    >>> events = {"user_id": [1, 2], "event_name": ["open", "save"]}
    >>> policy = tm.Policy(privacy_unit="user_id", max_partitions=1, max_contributions=1)
    >>> try:
    ...     tm.aggregate(events, by=["event_name"], metrics=[tm.count()], policy=policy,
    ...                  epsilon=2.0, partitions=["open", "save"], ledger=ledger)
    ... except tm.BudgetExceededError:
    ...     print(ledger.spent)   # nothing was charged, nothing released
    (0.0, 0.0)
    """

    released: Sequence[Any] = ()


class LedgerError(TelemaggError):
    """A ledger or consent store cannot be used as it is (not a telemagg store, foreign schema).

    >>> import pathlib, sqlite3, tempfile
    >>> import telemagg as tm
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "other.db"
    >>> with sqlite3.connect(path) as db:
    ...     _ = db.execute("CREATE TABLE telemagg_ledger (x TEXT)")  # not ours
    >>> try:
    ...     tm.Ledger(f"sqlite:///{path}", epsilon=1.0, delta=1e-6)
    ... except tm.LedgerError as error:
    ...     print(type(error).__name__)
    LedgerError
    """


class LedgerIntegrityError(LedgerError):
    """The hash chain of recorded charges is broken: rows were edited, inserted or deleted.

    Raised when a ledger is opened or read; it is a :class:`LedgerError`:

    >>> import telemagg as tm
    >>> issubclass(tm.LedgerIntegrityError, tm.LedgerError)
    True
    """


class MissingDependencyError(TelemaggError, ImportError):
    """An optional dependency is missing. The message names the extra that provides it.

    It is also an :class:`ImportError`, so ``except ImportError`` catches it too:

    >>> import telemagg as tm
    >>> issubclass(tm.MissingDependencyError, ImportError)
    True
    """


class UntrackedReleaseWarning(UserWarning):
    """A release was made without a ledger: its privacy loss is recorded nowhere.

    Silence it with the :mod:`warnings` module when that is intended::

        warnings.filterwarnings("ignore", category=UntrackedReleaseWarning)

    >>> import warnings
    >>> import telemagg as tm
    >>> policy = tm.Policy(privacy_unit="user_id", max_partitions=1, max_contributions=1)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     release = tm.aggregate({"user_id": [1], "event_name": ["open"]}, by=["event_name"],
    ...                            metrics=[tm.count()], policy=policy, epsilon=1.0,
    ...                            partitions=["open"])
    >>> any(w.category is UntrackedReleaseWarning for w in caught)
    True
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
