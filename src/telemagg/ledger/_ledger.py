"""The persistent privacy budget ledger: one total, a hash chain of charges, atomic charging.

Storage (``telemagg_ledger`` holds the total, ``telemagg_ledger_charges`` one row per charge)
goes through :mod:`telemagg._storage`, so SQLite and PostgreSQL behave the same. How charges
compose into ``spent`` is in :mod:`telemagg.ledger._accounting`.

Safety argument, next to the code it rests on:

* No overspending under concurrency: :meth:`Ledger.charge` reads what is spent and inserts the
  new charge inside ONE write transaction, and write transactions on a ledger are serialised
  across threads and processes (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock).
* Crash safety: the charge row and the new chain head are written in that same transaction; a
  process killed at any moment leaves both committed or neither.
* Tamper evidence: each charge stores ``hash = SHA-256(canonical JSON of its fields and the
  previous hash)``; the first charge chains to a genesis hash over the total, and the total's
  row keeps the head hash and the number of charges, so :meth:`Ledger.verify` detects an
  edited total, an edited, inserted or deleted charge, including the last one. The chain has
  no secret key: someone who can write to the database AND recompute the hashes can rewrite
  history undetected. Record ``head`` from ``telemagg budget show`` somewhere else to close
  that gap.
* Windows: with ``window=W`` a charge at time t is admitted only if the charges of
  [t - W, t] plus it fit the total. Any interval of length W ending at some charge t* holds a
  subset of what was counted when t* was admitted, and a subset of releases leaks no more than
  all of them (post-processing), so the releases of ANY interval of length W compose to within
  the total. Over longer periods the loss grows without bound: a window is not a lifetime
  guarantee. Charges are never deleted.
* Times: a charge's time is read from the database's clock inside the charging transaction,
  after the write lock is held (SQLite: the machine's clock; PostgreSQL: the server's
  ``clock_timestamp()``), made non-decreasing along the chain (a charge is never timed before
  the previous one). ``spent``, ``remaining`` and ``counted`` read the same clock. So every
  process sharing a PostgreSQL ledger uses one clock; SQLite processes share the machine's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

from telemagg._mechanisms import PrivacyLoss
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
from telemagg._version import library_version
from telemagg.errors import BudgetExceededError, ConfigError, LedgerError, LedgerIntegrityError
from telemagg.ledger._accounting import Sums, check_loss, within
from telemagg.policy import format_duration, parse_duration

__all__ = ["Charge", "Ledger", "parse_window"]

_COMPONENT = "ledger"
_SCHEMA_VERSION = 1
_LOCK = "telemagg_ledger"
_BUDGET = Table(
    "telemagg_ledger",
    (
        Column("id", "int"),
        Column("epsilon", "float"),
        Column("delta", "float"),
        Column("window_seconds", "int", nullable=True),
        Column("created_at", "text"),
        Column("genesis_hash", "text"),
        Column("head_hash", "text"),
        Column("charge_count", "int"),
    ),
    ("id",),
)
_CHARGES = Table(
    "telemagg_ledger_charges",
    (
        Column("seq", "int"),
        Column("created_at", "text"),
        Column("epsilon", "float"),
        Column("delta", "float"),
        Column("approx_epsilon", "float"),
        Column("approx_delta", "float"),
        Column("rho", "float"),
        Column("query", "text"),
        Column("label", "text", nullable=True),
        Column("version", "text"),
        Column("prev_hash", "text"),
        Column("hash", "text"),
    ),
    ("seq",),
    indexes=(("created_at",),),
)
_CHARGE_COLUMNS = ", ".join(c.name for c in _CHARGES.columns)
_SUMS_SQL = (
    "SELECT COUNT(*), COALESCE(SUM(epsilon), 0), COALESCE(SUM(approx_epsilon), 0), "
    "COALESCE(SUM(approx_delta), 0), COALESCE(SUM(rho), 0), "
    f"COALESCE(SUM(delta - approx_delta), 0) FROM {_CHARGES.name} WHERE created_at >= ?"
)


def parse_window(window: str | None) -> int | None:
    """Seconds in a window such as ``"30d"`` (units s, m, h, d, w); None for no window.

    >>> parse_window("30d"), parse_window("12h"), parse_window(None)
    (2592000, 43200, None)
    >>> parse_window("3 weeks")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: window must look like '1h', '30m', ... got '3 weeks'
    """
    return None if window is None else parse_duration(window, "window")


def _format_window(seconds: int | None) -> str | None:
    return None if seconds is None else format_duration(seconds)


def _check_total(epsilon: object, delta: object) -> tuple[float, float]:
    """The total as floats: epsilon finite and > 0, delta in [0, 1); else ConfigError."""

    def number(value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) + 0.0
        return math.nan

    eps, dlt = number(epsilon), number(delta)
    if not (math.isfinite(eps) and eps > 0.0):
        raise ConfigError(f"ledger epsilon must be finite and > 0; got {epsilon!r}")
    if not 0.0 <= dlt < 1.0:
        raise ConfigError(f"ledger delta must be in [0, 1); got {delta!r}")
    return eps, dlt


def _canonical(document: Mapping[str, Any]) -> str:
    """The one JSON text of a document that its hash covers."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _sha256(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(document).encode()).hexdigest()


def _now(tx: Transaction) -> datetime:
    """The time of a charge: the database's clock, read inside the charging transaction."""
    return tx.now()


@dataclass(frozen=True)
class Charge:
    """One recorded charge: what a release cost, what it was, and its link in the hash chain."""

    seq: int
    time: datetime
    epsilon: float
    delta: float
    approx_epsilon: float
    approx_delta: float
    rho: float
    query: Mapping[str, Any]
    label: str | None
    version: str
    prev_hash: str
    hash: str

    @property
    def loss(self) -> PrivacyLoss:
        """The privacy loss this charge recorded."""
        return PrivacyLoss(
            self.epsilon, self.delta, self.approx_epsilon, self.approx_delta, self.rho
        )

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> Charge:
        seq, time, eps, delta, a_eps, a_delta, rho, query, label, version, prev, own = row
        return cls(
            int(seq),
            parse_time(time),
            float(eps),
            float(delta),
            float(a_eps),
            float(a_delta),
            float(rho),
            json.loads(query),
            label,
            str(version),
            str(prev),
            str(own),
        )

    def _document(self) -> dict[str, Any]:
        """The fields the hash covers (everything but the hash itself)."""
        return {
            "seq": self.seq,
            "time": format_time(self.time),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "approx_epsilon": self.approx_epsilon,
            "approx_delta": self.approx_delta,
            "rho": self.rho,
            "query": _canonical(self.query),
            "label": self.label,
            "version": self.version,
            "prev_hash": self.prev_hash,
        }


@dataclass(frozen=True)
class _Budget:
    """The ledger's row of totals, as stored."""

    epsilon: float
    delta: float
    window_seconds: int | None
    created_at: str
    genesis_hash: str
    head_hash: str
    charge_count: int

    def genesis(self) -> str:
        """The hash the first charge chains to: it covers the total, window and creation."""
        return _sha256(
            {
                "telemagg_ledger": _SCHEMA_VERSION,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "window_seconds": self.window_seconds,
                "created_at": self.created_at,
            }
        )


class Ledger(StoreOwner):
    """A persistent privacy budget, shared by every process that opens the same URL.

    ``url`` is ``sqlite:///path.db`` (relative) / ``sqlite:////abs/path.db`` or
    ``postgresql://user:password@host/db``. The first open stores the total (epsilon, delta)
    and window; reopening with another total or window is a ConfigError. With
    ``window="30d"`` only charges of the last 30 days count (see the module docstring for
    exactly what that guarantees).

    >>> import os, tempfile
    >>> from telemagg._mechanisms import PrivacyLoss
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "privacy.db")
    >>> ledger = Ledger(url, epsilon=1.0, delta=1e-6)
    >>> charge = ledger.charge(PrivacyLoss(0.25, 0.0, 0.25, 0.0), query={"by": ["event_name"]})
    >>> ledger.spent, ledger.remaining
    ((0.25, 0.0), (0.75, 1e-06))
    >>> [c.epsilon for c in ledger.charges()]
    [0.25]
    >>> ledger.verify()
    >>> ledger.close()
    """

    def __init__(
        self, url: str, epsilon: float, delta: float, *, window: str | None = None
    ) -> None:
        total = _check_total(epsilon, delta)
        window_seconds = parse_window(window)
        self._store = open_store(url)
        try:
            self._store.ensure_schema(_COMPONENT, _SCHEMA_VERSION, [_BUDGET, _CHARGES])
            self._budget = self._create_or_match(total, window_seconds)
        except BaseException:
            self._store.close()
            raise

    @classmethod
    def open(cls, url: str) -> Self:
        """Open an existing ledger with the total it was created with (never creates one).

        >>> Ledger.open("sqlite:////nonexistent/privacy.db")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        telemagg.errors.LedgerError: sqlite:////nonexistent/privacy.db does not exist ...
        """
        ledger = cls.__new__(cls)
        ledger._store = open_store(url, create=False)
        try:
            ledger._store.ensure_schema(
                _COMPONENT, _SCHEMA_VERSION, [_BUDGET, _CHARGES], create=False
            )
            with ledger._store.transaction() as tx:
                budget = ledger._read_budget(tx)
            if budget is None:
                raise LedgerError(f"{ledger.url} holds no ledger total yet")
            ledger._budget = budget
        except BaseException:
            ledger._store.close()
            raise
        return ledger

    # ----------------------------------------------------------------------- description

    @property
    def total(self) -> tuple[float, float]:
        """The (epsilon, delta) this ledger may spend (per window, if it has one)."""
        return self._budget.epsilon, self._budget.delta

    @property
    def window(self) -> str | None:
        """The rolling window, e.g. ``"30d"``, or None when every charge counts forever."""
        return _format_window(self._budget.window_seconds)

    def __repr__(self) -> str:
        eps, delta = self.total
        return f"Ledger({self.url!r}, epsilon={eps!r}, delta={delta!r}, window={self.window!r})"

    # ----------------------------------------------------------------------- budget

    @property
    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by the charges that count now (composition in _accounting)."""
        with self._store.transaction() as tx:
            return self._sums(tx, _now(tx)).spent()

    @property
    def remaining(self) -> tuple[float, float]:
        """(epsilon, delta) left: the total minus :attr:`spent`, never below zero."""
        (spent_eps, spent_delta), (eps, delta) = self.spent, self.total
        return max(eps - spent_eps, 0.0), max(delta - spent_delta, 0.0)

    def counted(self) -> int:
        """How many charges count now (all of them without a window)."""
        with self._store.transaction() as tx:
            return self._sums(tx, _now(tx)).count

    def charge(
        self, loss: PrivacyLoss, *, query: Mapping[str, Any], label: str | None = None
    ) -> Charge:
        """Record ``loss`` for a release described by ``query``, or raise BudgetExceededError.

        Call it BEFORE drawing any noise. Atomic: the check that the total covers the charge
        and its insertion happen in one serialised transaction, so concurrent callers can never
        overspend together; when the total cannot cover it, nothing is recorded.
        ``query`` is a JSON-serialisable mapping (by, metrics, policy). A query marked
        ``"seeded": True`` (made with test noise, not private) is refused.
        """
        loss = check_loss(loss)
        query_text = self._query_text(query)
        if not (label is None or isinstance(label, str)):
            raise ConfigError(f"label must be a string or None; got {label!r}")
        if label is not None:
            storable_text(label, "label")
        with self._store.transaction(write=True, lock=_LOCK) as tx:
            budget = self._same_total(self._read_budget(tx))
            last = tx.fetchone(
                f"SELECT seq, hash, created_at FROM {_CHARGES.name} ORDER BY seq DESC LIMIT 1"
            )
            last_seq, prev_hash = (int(last[0]), str(last[1])) if last else (0, budget.genesis_hash)
            if last_seq != budget.charge_count or prev_hash != budget.head_hash:
                raise LedgerIntegrityError(
                    f"{self.url}: the last charge (#{last_seq}) is not the recorded chain head "
                    f"(#{budget.charge_count}): charges deleted or inserted; refusing to charge"
                )
            now = _now(tx)
            if last is not None:
                now = max(now, parse_time(last[2]))
            before = self._sums(tx, now)
            after = before.plus(loss).spent()
            if not within(after, self.total):
                raise BudgetExceededError(self._refusal(loss, before.spent(), after))
            charge = Charge(
                seq=last_seq + 1,
                time=now,
                epsilon=loss.epsilon,
                delta=loss.delta,
                approx_epsilon=loss.approx_epsilon,
                approx_delta=loss.approx_delta,
                rho=loss.rho,
                query=json.loads(query_text),
                label=label,
                version=library_version(),
                prev_hash=prev_hash,
                hash="",
            )
            document = charge._document()
            own = _sha256(document)
            tx.execute(
                f"INSERT INTO {_CHARGES.name} ({_CHARGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    charge.seq,
                    document["time"],
                    charge.epsilon,
                    charge.delta,
                    charge.approx_epsilon,
                    charge.approx_delta,
                    charge.rho,
                    query_text,
                    label,
                    charge.version,
                    prev_hash,
                    own,
                ),
            )
            tx.execute(
                f"UPDATE {_BUDGET.name} SET head_hash = ?, charge_count = ? WHERE id = 1",
                (own, charge.seq),
            )
        self._budget = _Budget(**{**vars(budget), "head_hash": own, "charge_count": charge.seq})
        return Charge(**{**vars(charge), "hash": own})

    def charges(self) -> list[Charge]:
        """Every charge ever recorded (counted now or not), oldest first."""
        with self._store.transaction() as tx:
            rows = tx.fetchall(f"SELECT {_CHARGE_COLUMNS} FROM {_CHARGES.name} ORDER BY seq")
        return [Charge._from_row(row) for row in rows]

    def verify(self) -> None:
        """Recompute the hash chain; raise LedgerIntegrityError at the first break.

        Detects an edited total, and edited, inserted or deleted charges (the last one too).
        """
        with self._store.transaction() as tx:
            budget = self._read_budget(tx)
            rows = tx.fetchall(f"SELECT {_CHARGE_COLUMNS} FROM {_CHARGES.name} ORDER BY seq")
        if budget is None:
            raise LedgerIntegrityError(f"{self.url}: the ledger's total row is missing")
        if budget.genesis() != budget.genesis_hash:
            raise LedgerIntegrityError(f"{self.url}: the stored total or window was edited")
        previous = budget.genesis_hash
        for expected_seq, row in enumerate(rows, start=1):
            charge = Charge._from_row(row)
            where = f"{self.url}: charge #{charge.seq}"
            if charge.seq != expected_seq:
                raise LedgerIntegrityError(f"{where} is where #{expected_seq} should be: deleted")
            if charge.prev_hash != previous:
                raise LedgerIntegrityError(f"{where} does not chain to the charge before it")
            if _sha256(charge._document()) != charge.hash:
                raise LedgerIntegrityError(f"{where} was edited: its hash does not match")
            previous = charge.hash
        if (len(rows), previous) != (budget.charge_count, budget.head_hash):
            raise LedgerIntegrityError(
                f"{self.url}: the chain ends at #{len(rows)} but the ledger recorded "
                f"{budget.charge_count} charges: charges were deleted or added at the end"
            )

    @property
    def head(self) -> str:
        """The hash of the last charge (or of the total when there is none)."""
        with self._store.transaction() as tx:
            budget = self._read_budget(tx)
        return budget.head_hash if budget else ""

    # ----------------------------------------------------------------------- internals

    _store: Store
    _budget: _Budget

    def _read_budget(self, tx: Transaction) -> _Budget | None:
        row = tx.fetchone(
            "SELECT epsilon, delta, window_seconds, created_at, genesis_hash, head_hash, "
            f"charge_count FROM {_BUDGET.name} WHERE id = 1"
        )
        if row is None:
            return None
        eps, delta, window, created, genesis, head, count = row
        window = None if window is None else int(window)
        return _Budget(
            float(eps), float(delta), window, str(created), str(genesis), str(head), int(count)
        )

    def _create_or_match(self, total: tuple[float, float], window: int | None) -> _Budget:
        with self._store.transaction(write=True, lock=_LOCK) as tx:
            budget = self._read_budget(tx)
            if budget is None:
                created = format_time(_now(tx))
                draft = _Budget(*total, window, created, "", "", 0)
                genesis = draft.genesis()
                tx.execute(
                    f"INSERT INTO {_BUDGET.name} (id, epsilon, delta, window_seconds, created_at, "
                    "genesis_hash, head_hash, charge_count) VALUES (1, ?, ?, ?, ?, ?, ?, 0)",
                    (*total, window, created, genesis, genesis),
                )
                return _Budget(*total, window, created, genesis, genesis, 0)
        if (budget.epsilon, budget.delta, budget.window_seconds) != (*total, window):
            raise ConfigError(
                f"the ledger at {self.url} was created with epsilon={budget.epsilon!r}, "
                f"delta={budget.delta!r}, window={_format_window(budget.window_seconds)!r}; "
                f"got epsilon={total[0]!r}, delta={total[1]!r}, window={_format_window(window)!r}"
            )
        return budget

    def _same_total(self, budget: _Budget | None) -> _Budget:
        """The budget row as read inside a charge: the head may move, the total may not."""
        if budget is None or (budget.epsilon, budget.delta, budget.window_seconds) != (
            self._budget.epsilon,
            self._budget.delta,
            self._budget.window_seconds,
        ):
            raise LedgerIntegrityError(
                f"{self.url}: the ledger's total changed or vanished while it was open"
            )
        return budget

    def _sums(self, tx: Transaction, now: datetime) -> Sums:
        seconds = self._budget.window_seconds
        since = "" if seconds is None else format_time(now - timedelta(seconds=seconds))
        row = tx.fetchone(_SUMS_SQL, (since,))
        assert row is not None  # an aggregate query always returns one row
        count, *parts = row
        return Sums(int(count), *(float(p) for p in parts))

    def _query_text(self, query: Mapping[str, Any]) -> str:
        if not isinstance(query, Mapping):
            raise ConfigError(f"query must be a mapping (by, metrics, policy); got {query!r}")
        if query.get("seeded") is True:
            raise ConfigError(
                "query['seeded'] is True: a release made with seeded test noise is not private "
                "and cannot be charged to a ledger"
            )
        try:
            text = _canonical(query)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"query must be JSON-serialisable (no NaN): {exc}") from None
        return storable_text(text, "query")

    def _refusal(
        self, loss: PrivacyLoss, spent: tuple[float, float], after: tuple[float, float]
    ) -> str:
        eps, delta = self.total
        scope = f"in the last {self.window}" if self.window else "in total"
        return (
            f"the ledger {self.url} cannot cover this release: it asks epsilon={loss.epsilon:.6g}, "
            f"delta={loss.delta:.6g}; spent {scope} is epsilon={spent[0]:.6g}, "
            f"delta={spent[1]:.6g}, which would become epsilon={after[0]:.6g}, "
            f"delta={after[1]:.6g}, over the total epsilon={eps:.6g}, delta={delta:.6g} "
            f"(remaining epsilon={max(eps - spent[0], 0):.6g}, "
            f"delta={max(delta - spent[1], 0):.6g}); nothing was recorded"
        )
