"""The consent registry: per unit and purpose, may this unit's data be used?

Storage goes through :mod:`telemagg._storage` (SQLite or PostgreSQL, one URL):

* ``telemagg_consent_purposes``: each declared purpose and its default, fixed once declared;
* ``telemagg_consent_state``: per (purpose, unit), the unit's last choice, ``opt_out`` or
  ``opt_in``; a unit that never chose has no row;
* ``telemagg_consent_history``: every change of a unit's choice, numbered, with its UTC time.

How a decision is made. A purpose's default says what silence means: ``opt_out`` purposes
(and every purpose never declared) allow a unit unless it opted out; ``opt_in`` purposes
allow a unit only if it opted in. So :meth:`ConsentRegistry.allowed` needs only the units,
among the DISTINCT units of the call, whose last choice goes against the default: one
query, all distinct units passed as one parameter, then a vectorised lookup.

Units are compared by the canonical string form of :mod:`telemagg._identity`:
``42``, ``"42"`` and ``42.0`` are the same unit. That is the safe reading: an opt-out
recorded from a JSON request (``"42"``) also covers events whose unit column is an integer.

Writes (declarations and choices) run in one serialised write transaction each; a choice
is committed before :meth:`~ConsentRegistry.opt_out` returns, so it survives a crash and
holds for every process that opens the same URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from telemagg._identity import factorize_ids
from telemagg._storage import (
    Column,
    Store,
    StoreOwner,
    Table,
    Transaction,
    format_time,
    open_store,
    parse_time,
    storable_text,
)
from telemagg.errors import ConfigError, SchemaError

__all__ = ["ConsentChange", "ConsentRegistry"]

Choice = Literal["opt_out", "opt_in"]
Default = Literal["opt_out", "opt_in"]

_COMPONENT = "consent"
_SCHEMA_VERSION = 1
_LOCK = "telemagg_consent"
_PURPOSES = Table(
    "telemagg_consent_purposes",
    (Column("purpose", "text"), Column("default_choice", "text"), Column("declared_at", "text")),
    ("purpose",),
)
_STATE = Table(
    "telemagg_consent_state",
    (
        Column("purpose", "text"),
        Column("unit", "text"),
        Column("choice", "text"),
        Column("changed_at", "text"),
    ),
    ("purpose", "unit"),
)
_HISTORY = Table(
    "telemagg_consent_history",
    (
        Column("seq", "int"),
        Column("changed_at", "text"),
        Column("purpose", "text"),
        Column("unit", "text"),
        Column("choice", "text"),
    ),
    ("seq",),
    indexes=(("unit",), ("purpose",)),
)
_TABLES = (_PURPOSES, _STATE, _HISTORY)
_CHOICES: tuple[Choice, ...] = ("opt_out", "opt_in")
_MAX_PURPOSE_LENGTH = 200


@dataclass(frozen=True)
class ConsentChange:
    """One change of one unit's choice for one purpose, at a UTC time.

    >>> import os, tempfile
    >>> registry = ConsentRegistry("sqlite:///" + os.path.join(tempfile.mkdtemp(), "c.db"))
    >>> registry.opt_out(["u2"], purpose="model_training")
    >>> change = registry.history("u2")[0]
    >>> change.seq, change.unit, change.purpose, change.choice
    (1, 'u2', 'model_training', 'opt_out')
    """

    seq: int
    time: datetime
    unit: str
    purpose: str
    choice: Choice


def _check_purpose(purpose: object) -> str:
    if not isinstance(purpose, str) or not purpose.strip() or len(purpose) > _MAX_PURPOSE_LENGTH:
        raise ConfigError(
            f"purpose must be a non-empty string of at most {_MAX_PURPOSE_LENGTH} characters, "
            f"e.g. 'model_training'; got {purpose!r}"
        )
    return storable_text(purpose, "purpose")


def _check_default(default: object) -> Default:
    if default not in _CHOICES:
        raise ConfigError(f"default must be 'opt_out' or 'opt_in'; got {default!r}")
    return default


def _now() -> str:
    return format_time(datetime.now(UTC))


class ConsentRegistry(StoreOwner):
    """Who allowed what: per-unit choices for free-form purposes, in SQLite or PostgreSQL.

    ``url`` is ``sqlite:///consent.db`` (relative path) / ``sqlite:////abs/consent.db`` or
    ``postgresql://user:password@host/db``, as for :class:`~telemagg.Ledger`; the store is
    created on first use. The password never appears in a repr or an error.

    >>> import os, tempfile
    >>> registry = ConsentRegistry("sqlite:///" + os.path.join(tempfile.mkdtemp(), "c.db"))
    >>> registry.declare("content_training", default="opt_in")
    >>> registry.opt_out(["u2", "u3"], purpose="model_training")
    >>> registry.opt_in("u3", purpose="content_training")
    >>> registry.allowed(["u1", "u2", "u3", "u2"], purpose="model_training").tolist()
    [True, False, False, False]
    >>> registry.allowed(["u1", "u2", "u3"], purpose="content_training").tolist()
    [False, False, True]
    >>> [(c.unit, c.purpose, c.choice) for c in registry.history(unit="u3")]
    [('u3', 'model_training', 'opt_out'), ('u3', 'content_training', 'opt_in')]
    >>> registry.close()
    """

    def __init__(self, url: str) -> None:
        self._store: Store = open_store(url)
        self._declared: dict[str, Default] = {}  # never changes once declared: safe to cache
        try:
            self._store.ensure_schema(_COMPONENT, _SCHEMA_VERSION, _TABLES)
        except BaseException:
            self._store.close()
            raise
        # What a copy in another process opens (see __reduce__): a SQLite path made absolute,
        # so that a worker with another working directory opens the same file.
        path = getattr(self._store, "path", None)
        self._reopen_url = url if path is None else f"sqlite:///{os.path.abspath(path)}"

    def __reduce__(self) -> tuple[type[ConsentRegistry], tuple[str]]:
        """Pickle as the URL: the copy opens its own connection to the same store.

        A pickle (a Dask task, say) therefore carries the URL, password included if the URL
        has one; give passwords to PostgreSQL out of the URL (``PGPASSWORD``, ``.pgpass``).
        """
        return (type(self), (self._reopen_url,))

    def __repr__(self) -> str:
        return f"ConsentRegistry({self.url!r})"

    # ----------------------------------------------------------------------- purposes

    def declare(self, purpose: str, default: Default = "opt_out") -> None:
        """Fix what silence means for ``purpose``: ``"opt_out"`` allows units that never
        chose, ``"opt_in"`` allows only units that opted in.

        Declaring again with the same default does nothing; with another default it is a
        ConfigError (a unit's silence must keep its meaning). A purpose never declared
        behaves as ``"opt_out"``; choices recorded before a declaration keep counting.
        """
        purpose, default = _check_purpose(purpose), _check_default(default)
        with self._store.transaction(write=True, lock=_LOCK) as tx:
            existing = self._default(tx, purpose)
            if existing is None:
                tx.execute(
                    f"INSERT INTO {_PURPOSES.name} (purpose, default_choice, declared_at) "
                    "VALUES (?, ?, ?)",
                    (purpose, default, _now()),
                )
            elif existing != default:
                raise ConfigError(
                    f"purpose {purpose!r} was declared with default={existing!r} in "
                    f"{self.url}; redeclaring it with default={default!r} would change what "
                    "the silence of every unit means"
                )
        self._declared[purpose] = default

    def is_opt_in(self, purpose: str) -> bool:
        """Whether ``purpose`` was declared ``default="opt_in"`` (only opted-in units allowed)."""
        purpose = _check_purpose(purpose)
        with self._store.transaction() as tx:
            return self._declared_default(tx, purpose) == "opt_in"

    def purposes(self) -> dict[str, Default]:
        """Every declared purpose and its default."""
        with self._store.transaction() as tx:
            rows = tx.fetchall(
                f"SELECT purpose, default_choice FROM {_PURPOSES.name} ORDER BY purpose"
            )
        return {str(purpose): _check_default(default) for purpose, default in rows}

    # ----------------------------------------------------------------------- choices

    def opt_out(self, units: Any, purpose: str) -> None:
        """Record that ``units`` (one unit, or a sequence/array/Series of them) opted out."""
        self._record(units, _check_purpose(purpose), "opt_out")

    def opt_in(self, units: Any, purpose: str) -> None:
        """Record that ``units`` (one unit, or a sequence/array/Series of them) opted in."""
        self._record(units, _check_purpose(purpose), "opt_in")

    def allowed(self, units: Iterable[Any] | npt.ArrayLike, purpose: str) -> npt.NDArray[np.bool_]:
        """Whether each unit's data may be used for ``purpose``: a bool array, one per unit.

        Vectorised: each distinct unit is looked up once, in one query. A missing unit (None,
        NaN) is never allowed: no one's consent can be attributed to it.
        """
        purpose = _check_purpose(purpose)
        factorized = factorize_ids(units, param="units")
        with self._store.transaction() as tx:
            default = self._declared_default(tx, purpose) or "opt_out"
            # The choice that overrides a default is the one named like it: opting out of an
            # opt-out purpose, opting in to an opt-in one. Only those units are fetched.
            overriding = self._choosing(tx, purpose, factorized.distinct, default)
        chose = np.fromiter(
            (unit in overriding for unit in factorized.distinct), bool, len(factorized.distinct)
        )
        allowed_distinct = chose if default == "opt_in" else ~chose
        # One slot more than there are distinct units: code -1 (missing) reads the last one.
        decision = np.append(allowed_distinct, False)
        result: npt.NDArray[np.bool_] = decision[factorized.codes]
        return result

    def history(self, unit: Any = None, purpose: str | None = None) -> list[ConsentChange]:
        """Every change of choice, oldest first; only ``unit``'s and/or ``purpose``'s if given."""
        where, params = [], []
        if unit is not None:
            where.append("unit = ?")
            params.append(_one_unit(unit))
        if purpose is not None:
            where.append("purpose = ?")
            params.append(_check_purpose(purpose))
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self._store.transaction() as tx:
            rows = tx.fetchall(
                f"SELECT seq, changed_at, unit, purpose, choice FROM {_HISTORY.name}"
                f"{condition} ORDER BY seq",
                params,
            )
        return [
            ConsentChange(
                int(seq),
                parse_time(at),
                str(unit_),
                str(purpose_),
                "opt_in" if choice == "opt_in" else "opt_out",
            )
            for seq, at, unit_, purpose_, choice in rows
        ]

    def position(self) -> int:
        """A bookmark in the history: the sequence number of the latest change (0 if none).

        An Aggregator takes it before checking a batch's consent, so that at release time
        it can ask :meth:`changed_since` which units changed their choice meanwhile.
        """
        with self._store.transaction() as tx:
            row = tx.fetchone(f"SELECT COALESCE(MAX(seq), 0) FROM {_HISTORY.name}")
        return int(row[0]) if row else 0

    def changed_since(self, position: int, purpose: str) -> tuple[int, list[str]]:
        """The units (canonical ids, each once) whose choice for ``purpose`` changed after
        ``position``, and the new position.

        >>> import os, tempfile
        >>> registry = ConsentRegistry("sqlite:///" + os.path.join(tempfile.mkdtemp(), "c.db"))
        >>> mark = registry.position()
        >>> registry.opt_out([7, "u-1"], purpose="model_training")
        >>> registry.changed_since(mark, "model_training")
        (2, ['7', 'u-1'])
        >>> registry.close()
        """
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ConfigError(f"position must be an integer >= 0; got {position!r}")
        purpose = _check_purpose(purpose)
        with self._store.transaction() as tx:
            rows = tx.fetchall(
                f"SELECT seq, unit FROM {_HISTORY.name} WHERE seq > ? AND purpose = ? ORDER BY seq",
                (position, purpose),
            )
            last = tx.fetchone(f"SELECT COALESCE(MAX(seq), 0) FROM {_HISTORY.name}")
        units = list(dict.fromkeys(str(unit) for _, unit in rows))
        return max(int(last[0]) if last else 0, position), units

    # ----------------------------------------------------------------------- internals

    def _declared_default(self, tx: Transaction, purpose: str) -> Default | None:
        """The purpose's declared default, remembered once seen (it can never change)."""
        if purpose not in self._declared:
            default = self._default(tx, purpose)
            if default is None:
                return None  # undeclared now; another process may declare it later
            self._declared[purpose] = default
        return self._declared[purpose]

    def _default(self, tx: Transaction, purpose: str) -> Default | None:
        row = tx.fetchone(
            f"SELECT default_choice FROM {_PURPOSES.name} WHERE purpose = ?", (purpose,)
        )
        return None if row is None else _check_default(row[0])

    def _choosing(
        self, tx: Transaction, purpose: str, units: list[str], choice: Choice | None = None
    ) -> dict[str, str]:
        """Among ``units``, those with a recorded choice for ``purpose`` (that ``choice``)."""
        if not units:
            return {}
        table, values = self._store.text_rows(units)
        # CROSS JOIN: SQLite then loops over the units and probes the primary key for each;
        # with a plain JOIN it chose the opposite order, one scan of the units per stored row.
        sql = (
            f"SELECT s.unit, s.choice FROM {table} AS u CROSS JOIN {_STATE.name} AS s "
            "WHERE s.purpose = ? AND s.unit = u.value"
        )
        params: list[Any] = [values, purpose]
        if choice is not None:
            sql += " AND s.choice = ?"
            params.append(choice)
        return {str(unit): str(chosen) for unit, chosen in tx.fetchall(sql, params)}

    def _record(self, units: Any, purpose: str, choice: Choice) -> None:
        factorized = factorize_ids(_as_units(units), param="units")
        if factorized.missing.any():
            position = int(np.argmax(factorized.missing))
            raise SchemaError(f"units[{position}] is missing (None or NaN): no one to record")
        with self._store.transaction(write=True, lock=_LOCK) as tx:
            current = self._choosing(tx, purpose, factorized.distinct)
            changed = [unit for unit in factorized.distinct if current.get(unit) != choice]
            if not changed:
                return
            now = _now()
            tx.executemany(
                f"INSERT INTO {_STATE.name} (purpose, unit, choice, changed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (purpose, unit) "
                "DO UPDATE SET choice = excluded.choice, changed_at = excluded.changed_at",
                [(purpose, unit, choice, now) for unit in changed],
            )
            last = tx.fetchone(f"SELECT COALESCE(MAX(seq), 0) FROM {_HISTORY.name}")
            first = int(last[0]) + 1 if last else 1
            tx.executemany(
                f"INSERT INTO {_HISTORY.name} (seq, changed_at, purpose, unit, choice) "
                "VALUES (?, ?, ?, ?, ?)",
                [(first + i, now, purpose, unit, choice) for i, unit in enumerate(changed)],
            )


def _as_units(units: Any) -> Any:
    """One unit (str, int, UUID, ...) as a list of one; many units as they are."""
    if isinstance(units, str | bytes | int | float | np.generic) or not isinstance(
        units, Iterable | np.ndarray
    ):
        return [units]
    return units


def _one_unit(unit: Any) -> str:
    factorized = factorize_ids([unit], param="unit")
    if factorized.missing.any():
        raise SchemaError("unit is missing (None or NaN)")
    return factorized.distinct[0]
