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
* Constant-time charges: every charge row carries the exact running sums of the loss parts
  (:mod:`telemagg.ledger._chain`), written in the charging transaction; what counts is read
  from the head row and, with a window, the last row before the window (one index seek), never
  by summing rows in SQL (which would read a value edited to ``'abc'`` as 0).
* Tamper evidence (:mod:`telemagg.ledger._chain`): a hash chain over the charges and their
  running sums, a genesis digest over the total, and a seal over the head and the number of
  charges. Every charge checks, in O(1), the total against its genesis, the seal, and the
  digests of the rows it reads; :meth:`Ledger.verify` checks everything. Unkeyed (SHA-256),
  anyone who can write the database and compute SHA-256 can rewrite it consistently; keyed
  (HMAC-SHA256, ``key=``/``key_file=``/``TELEMAGG_LEDGER_KEY``), nobody without the key can.
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

import functools
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Self

from telemagg._mechanisms import PrivacyLoss
from telemagg._storage import Store, StoreOwner, Transaction, format_time, open_store, storable_text
from telemagg._version import library_version
from telemagg.errors import BudgetExceededError, ConfigError, LedgerError, LedgerIntegrityError
from telemagg.ledger._accounting import check_loss, within
from telemagg.ledger._chain import (
    BUDGET,
    BUDGET_COLUMNS,
    CHARGE_COLUMNS,
    CHARGES,
    COMPONENT,
    LOCK,
    SCHEMA_VERSION,
    Budget,
    Charge,
    RunningSums,
    canonical,
    chain_kind,
    check_key_fits,
    load_key,
    loss_fields,
    migration,
)
from telemagg.policy import format_duration, parse_duration

__all__ = ["Charge", "Ledger", "parse_window"]

# The running library's version, read once (importlib.metadata parses files on every call).
_VERSION = functools.cache(library_version)
_PLACEHOLDERS = ", ".join("?" for _ in CHARGES.columns)
_LAST = f"SELECT {CHARGE_COLUMNS} FROM {CHARGES.name} ORDER BY seq DESC LIMIT 1"
# The last charge before a time: with times non-decreasing along seq, the charges before it are
# exactly seq <= its seq. One seek on the (created_at, seq) index.
_BEFORE = (
    f"SELECT {CHARGE_COLUMNS} FROM {CHARGES.name} WHERE created_at < ? "
    "ORDER BY created_at DESC, seq DESC LIMIT 1"
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


def _now(tx: Transaction) -> datetime:
    """The time of a charge: the database's clock, read inside the charging transaction."""
    return tx.now()


class Ledger(StoreOwner):
    """A persistent privacy budget, shared by every process that opens the same URL.

    ``url`` is ``sqlite:///path.db`` (relative) / ``sqlite:////abs/path.db`` or
    ``postgresql://user:password@host/db``. The first open stores the total (epsilon, delta)
    and window; reopening with another total or window is a ConfigError. With
    ``window="30d"`` only charges of the last 30 days count (see the module docstring for
    exactly what that guarantees).

    ``key`` (bytes or str, >= 16 bytes) or ``key_file`` (a path; its trailing newline is not
    part of the key) makes a keyed ledger: its chain is HMAC-SHA256 under that key, which is
    never stored, shown or logged. Without either, the environment variable
    ``TELEMAGG_LEDGER_KEY`` (the key) or ``TELEMAGG_LEDGER_KEY_FILE`` (a path) is used if set.
    A keyed ledger cannot be opened without its key, nor an unkeyed one with a key.

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
        self,
        url: str,
        epsilon: float,
        delta: float,
        *,
        window: str | None = None,
        key: bytes | str | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        total = _check_total(epsilon, delta)
        window_seconds = parse_window(window)
        self._key = load_key(key, key_file)
        self._store = open_store(url)
        try:
            self._store.ensure_schema(
                COMPONENT,
                SCHEMA_VERSION,
                [BUDGET, CHARGES],
                migrate=migration(self._store, self._key),
            )
            self._budget = self._create_or_match(total, window_seconds)
        except BaseException:
            self._store.close()
            raise

    @classmethod
    def open(
        cls,
        url: str,
        *,
        key: bytes | str | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Open an existing ledger with the total it was created with (never creates one).

        A SQLite file this process cannot write (or a ``sqlite:///path.db?mode=ro`` URL) is
        opened read-only: it can be read and verified, and charging it is a LedgerError.

        >>> Ledger.open("sqlite:////nonexistent/privacy.db")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        telemagg.errors.LedgerError: sqlite:////nonexistent/privacy.db does not exist ...
        """
        ledger = cls.__new__(cls)
        ledger._key = load_key(key, key_file)
        ledger._store = open_store(url, create=False)
        try:
            ledger._store.ensure_schema(
                COMPONENT,
                SCHEMA_VERSION,
                [BUDGET, CHARGES],
                create=False,
                migrate=migration(ledger._store, ledger._key),
            )
            with ledger._store.transaction() as tx:
                budget = ledger._read_budget(tx)
            if budget is None:
                raise LedgerError(f"{ledger.url} holds no ledger total yet")
            check_key_fits(budget, ledger._key, ledger.url)
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

    @property
    def keyed(self) -> bool:
        """Whether the chain is keyed (HMAC-SHA256 under a key kept outside the database)."""
        return self._budget.chain == "hmac-sha256"

    @property
    def read_only(self) -> bool:
        """Whether this ledger was opened read-only (it can be read, not charged)."""
        return self._store.read_only

    def __repr__(self) -> str:
        eps, delta = self.total
        return f"Ledger({self.url!r}, epsilon={eps!r}, delta={delta!r}, window={self.window!r}" + (
            ", keyed=True)" if self.keyed else ")"
        )

    # ----------------------------------------------------------------------- budget

    @property
    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by the charges that count now (composition in _accounting)."""
        with self._store.transaction() as tx:
            counted, count = self._window(tx, _now(tx), None)
        return counted.sums(count).spent()

    @property
    def remaining(self) -> tuple[float, float]:
        """(epsilon, delta) left: the total minus :attr:`spent`, never below zero."""
        (spent_eps, spent_delta), (eps, delta) = self.spent, self.total
        return max(eps - spent_eps, 0.0), max(delta - spent_delta, 0.0)

    def counted(self) -> int:
        """How many charges count now (all of them without a window)."""
        with self._store.transaction() as tx:
            return self._window(tx, _now(tx), None)[1]

    def charge(
        self, loss: PrivacyLoss, *, query: Mapping[str, Any], label: str | None = None
    ) -> Charge:
        """Record ``loss`` for a release described by ``query``, or raise BudgetExceededError.

        Call it BEFORE drawing any noise. Atomic: the check that the total covers the charge
        and its insertion happen in one serialised transaction, so concurrent callers can never
        overspend together; when the total cannot cover it, nothing is recorded. Constant
        time: it reads the head row (and with a window one more row), whatever the number of
        charges. ``query`` is a JSON-serialisable mapping (by, metrics, policy). A query marked
        ``"seeded": True`` (made with test noise, not private) is refused.
        """
        loss = check_loss(loss)
        query_text = self._query_text(query)
        if not (label is None or isinstance(label, str)):
            raise ConfigError(f"label must be a string or None; got {label!r}")
        if label is not None:
            storable_text(label, "label")
        if self.read_only:
            raise LedgerError(
                f"the ledger {self.url} was opened read-only (this process cannot write its "
                "file): it can be read and verified, not charged"
            )
        with self._store.transaction(write=True, lock=LOCK) as tx:
            budget = self._same_total(self._read_budget(tx))
            budget.check(self._key, self.url)
            last = self._last(tx, budget)
            now = _now(tx) if last is None else max(_now(tx), last.time)
            counted, count = self._window(tx, now, last)
            after = counted.plus(loss).sums(count + 1).spent()
            if not within(after, self.total):
                spent = counted.sums(count).spent()
                raise BudgetExceededError(self._refusal(loss, spent, after))
            head = RunningSums() if last is None else last.running
            charge = Charge(
                (last.seq if last else 0) + 1,
                now,
                *loss_fields(loss),
                query=json.loads(query_text),
                label=label,
                version=_VERSION(),
                prev_hash=last.hash if last else budget.genesis_hash,
                hash="",
                running=head.plus(loss),
            ).sealed(self._key)
            tx.execute(
                f"INSERT INTO {CHARGES.name} ({CHARGE_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                charge.row(),
            )
            seal = budget.seal(self._key, charge.hash, charge.seq)
            tx.execute(
                f"UPDATE {BUDGET.name} SET head_hash = ?, charge_count = ?, head_seal = ? "
                "WHERE id = 1",
                (charge.hash, charge.seq, seal),
            )
        self._budget = Budget(
            **{
                **vars(budget),
                "head_hash": charge.hash,
                "charge_count": charge.seq,
                "head_seal": seal,
            }
        )
        return charge

    def charges(self) -> list[Charge]:
        """Every charge ever recorded (counted now or not), oldest first."""
        with self._store.transaction() as tx:
            rows = tx.fetchall(f"SELECT {CHARGE_COLUMNS} FROM {CHARGES.name} ORDER BY seq")
        return [Charge.from_row(row, self.url) for row in rows]

    def verify(self) -> None:
        """Check the whole ledger; raise LedgerIntegrityError at the first break.

        Detects an edited total or window, edited, inserted or deleted charges (the last ones
        too, by the seal over the head), malformed values, times that go backwards, and
        running sums that are not the exact sums of the charges. On an unkeyed ledger, a
        consistent rewrite by someone who recomputes SHA-256 digests is not detected; on a
        keyed ledger it needs the key.
        """
        with self._store.transaction() as tx:
            budget = self._read_budget(tx)
            rows = tx.fetchall(f"SELECT {CHARGE_COLUMNS} FROM {CHARGES.name} ORDER BY seq")
        if budget is None:
            raise LedgerIntegrityError(f"{self.url}: the ledger's total row is missing")
        check_key_fits(budget, self._key, self.url)
        budget.check(self._key, self.url)
        previous, running, time = budget.genesis_hash, RunningSums(), None
        for expected_seq, row in enumerate(rows, start=1):
            charge = Charge.from_row(row, self.url)
            where = f"{self.url}: charge #{charge.seq}"
            if charge.seq != expected_seq:
                raise LedgerIntegrityError(f"{where} is where #{expected_seq} should be: deleted")
            if charge.prev_hash != previous:
                raise LedgerIntegrityError(f"{where} does not chain to the charge before it")
            if not charge.intact(self._key):
                raise LedgerIntegrityError(f"{where} was edited: its hash does not match")
            running = running.plus(charge.loss)
            if charge.running != running:
                raise LedgerIntegrityError(
                    f"{where}: its running sums are not the sums of the charges up to it"
                )
            if time is not None and charge.time < time:
                raise LedgerIntegrityError(f"{where} is timed before the charge before it")
            previous, time = charge.hash, charge.time
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
    _budget: Budget
    _key: bytes | None

    def _read_budget(self, tx: Transaction) -> Budget | None:
        row = tx.fetchone(f"SELECT {BUDGET_COLUMNS} FROM {BUDGET.name} WHERE id = 1")
        return None if row is None else Budget.from_row(row, self.url)

    def _last(self, tx: Transaction, budget: Budget) -> Charge | None:
        """The chain's head row, checked against the recorded head (charging refuses a
        ledger whose head is not its last row, or whose last row was edited)."""
        row = tx.fetchone(_LAST)
        last = None if row is None else Charge.from_row(row, self.url)
        seq, head = (last.seq, last.hash) if last else (0, budget.genesis_hash)
        if (seq, head) != (budget.charge_count, budget.head_hash):
            raise LedgerIntegrityError(
                f"{self.url}: the last charge (#{seq}) is not the recorded chain head "
                f"(#{budget.charge_count}): charges deleted or inserted; refusing to charge"
            )
        if last is not None and not last.intact(self._key):
            raise LedgerIntegrityError(
                f"{self.url}: the last charge (#{seq}) was edited: its hash does not match; "
                "refusing to charge"
            )
        return last

    def _window(
        self, tx: Transaction, now: datetime, last: Charge | None
    ) -> tuple[RunningSums, int]:
        """The exact sums and the number of the charges that count at ``now``.

        With a window, they are the head's running sums minus those of the last charge before
        the window: two rows, one index seek. ``last`` is the checked head when charging;
        when reading it is fetched here.
        """
        if last is None:
            row = tx.fetchone(_LAST)
            last = None if row is None else Charge.from_row(row, self.url)
        if last is None:
            return RunningSums(), 0
        seconds = self._budget.window_seconds
        row = None
        if seconds is not None:
            row = tx.fetchone(_BEFORE, (format_time(now - timedelta(seconds=seconds)),))
        if row is None:
            return last.running, last.seq
        boundary = Charge.from_row(row, self.url)
        if boundary.seq > last.seq or not boundary.intact(self._key):
            raise LedgerIntegrityError(
                f"{self.url}: charge #{boundary.seq}, where the window starts, was edited: its "
                "hash does not match"
            )
        return last.running.minus(boundary.running), last.seq - boundary.seq

    def _create_or_match(self, total: tuple[float, float], window: int | None) -> Budget:
        with self._store.transaction() as tx:
            budget = self._read_budget(tx)
        if budget is None:
            with self._store.transaction(write=True, lock=LOCK) as tx:
                budget = self._read_budget(tx)
                if budget is None:
                    created = format_time(_now(tx))
                    draft = Budget(*total, window, created, chain_kind(self._key), "", "", "", 0)
                    genesis = draft.genesis(self._key)
                    draft = Budget(**{**vars(draft), "genesis_hash": genesis, "head_hash": genesis})
                    budget = Budget(
                        **{**vars(draft), "head_seal": draft.seal(self._key, genesis, 0)}
                    )
                    tx.execute(
                        f"INSERT INTO {BUDGET.name} (id, {BUDGET_COLUMNS}) "
                        "VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            budget.epsilon,
                            budget.delta,
                            budget.window_seconds,
                            budget.created_at,
                            budget.chain,
                            budget.genesis_hash,
                            budget.head_hash,
                            budget.head_seal,
                            budget.charge_count,
                        ),
                    )
                    return budget
        check_key_fits(budget, self._key, self.url)
        if (budget.epsilon, budget.delta, budget.window_seconds) != (*total, window):
            raise ConfigError(
                f"the ledger at {self.url} was created with epsilon={budget.epsilon!r}, "
                f"delta={budget.delta!r}, window={_format_window(budget.window_seconds)!r}; "
                f"got epsilon={total[0]!r}, delta={total[1]!r}, window={_format_window(window)!r}"
            )
        return budget

    def _same_total(self, budget: Budget | None) -> Budget:
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

    def _query_text(self, query: Mapping[str, Any]) -> str:
        if not isinstance(query, Mapping):
            raise ConfigError(f"query must be a mapping (by, metrics, policy); got {query!r}")
        if query.get("seeded") is True:
            raise ConfigError(
                "query['seeded'] is True: a release made with seeded test noise is not private "
                "and cannot be charged to a ledger"
            )
        try:
            text = canonical(query)
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
