"""The ledger's records: schema, charges, exact running sums, and the (keyed) hash chain.

Every charge row carries the exact running sums of the loss parts that composition needs
(:class:`RunningSums`: this charge and all before it), so what a set of charges spent is read
from at most two rows: the chain's head, and with a window the last charge before the window
(``spent = head - boundary``). Sums are exact dyadic rationals (every float is one), stored as
text, so a difference of two running sums is the exact sum of the charges between them, and
:meth:`~telemagg.ledger.Ledger.verify` recomputes them with ``==``, not with a tolerance.

Digests: each charge's hash covers its fields, its running sums and the previous hash; the
first charge chains to a genesis digest over the total, window, creation time and chain kind;
the total's row keeps the head, the number of charges and a seal over them. Unkeyed ledgers
use SHA-256 (anyone who can write the database and compute SHA-256 can rewrite them
consistently); keyed ledgers use HMAC-SHA256 with a key kept outside the database, so neither
a rewrite nor a truncation is possible without the key (a restored old copy of the whole
database, a rollback, is still undetectable from inside it: record the head elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar

from telemagg._mechanisms import PrivacyLoss
from telemagg._storage import Column, Store, Table, Transaction, format_time, parse_time
from telemagg.errors import ConfigError, LedgerError, LedgerIntegrityError
from telemagg.ledger._accounting import Sums

__all__ = [
    "BUDGET",
    "CHARGES",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "Budget",
    "Charge",
    "RunningSums",
    "canonical",
    "load_key",
]

COMPONENT = "ledger"
SCHEMA_VERSION = 2
LOCK = "telemagg_ledger"

#: Environment variables that give a ledger its key when ``key=``/``key_file=`` are not given.
KEY_ENV = "TELEMAGG_LEDGER_KEY"
KEY_FILE_ENV = "TELEMAGG_LEDGER_KEY_FILE"
MIN_KEY_BYTES = 16

ChainKind = Literal["sha256", "hmac-sha256"]
PARTS = ("epsilon", "approx_epsilon", "approx_delta", "rho", "gaussian_delta")
_SUM_COLUMNS = tuple(f"sum_{part}" for part in PARTS)
# Beyond any sum of real charges, and still a finite float once rounded.
_LARGEST_SUM = Fraction(10) ** 300

BUDGET = Table(
    "telemagg_ledger",
    (
        Column("id", "int"),
        Column("epsilon", "float"),
        Column("delta", "float"),
        Column("window_seconds", "int", nullable=True),
        Column("created_at", "text"),
        Column("chain", "text"),
        Column("genesis_hash", "text"),
        Column("head_hash", "text"),
        Column("head_seal", "text"),
        Column("charge_count", "int"),
    ),
    ("id",),
)
CHARGES = Table(
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
        *(Column(name, "text") for name in _SUM_COLUMNS),
        Column("prev_hash", "text"),
        Column("hash", "text"),
    ),
    ("seq",),
    # The window's boundary is one index seek: the last charge before a time.
    indexes=(("created_at", "seq"),),
)
CHARGE_COLUMNS = ", ".join(c.name for c in CHARGES.columns)
BUDGET_COLUMNS = ", ".join(c.name for c in BUDGET.columns if c.name != "id")

_T = TypeVar("_T")


# --------------------------------------------------------------------------- keys and digests


def load_key(key: bytes | str | None, key_file: str | os.PathLike[str] | None) -> LedgerKey | None:
    """The chain key: ``key``, else the contents of ``key_file``, else the environment
    (:data:`KEY_ENV`, then :data:`KEY_FILE_ENV`); None for an unkeyed ledger.

    A key file's trailing whitespace (a final newline) is not part of the key. The key is
    never shown in an error.

    >>> load_key(b"0123456789abcdef", None)
    LedgerKey(***)
    >>> load_key("short", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    telemagg.errors.ConfigError: the ledger key must be at least 16 bytes (got 5); use e.g. ...
    """
    if key is not None and key_file is not None:
        raise ConfigError("give the ledger key as key= or key_file=, not both")
    source = "key"
    if key is None and key_file is None:
        if os.environ.get(KEY_ENV):
            key, source = os.environ[KEY_ENV], KEY_ENV
        elif os.environ.get(KEY_FILE_ENV):
            key_file = os.environ[KEY_FILE_ENV]
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().rstrip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the ledger key file {str(key_file)!r}: {exc.strerror}"
            ) from None
        source = f"the key file {str(key_file)!r}"
    if key is None:
        return None
    if isinstance(key, str):
        try:
            key = key.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"the ledger key ({source}) must be valid Unicode text") from None
    if not isinstance(key, bytes):
        raise ConfigError(f"the ledger key must be bytes or str; got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the ledger key must be at least {MIN_KEY_BYTES} bytes (got {len(key)}); "
            "use e.g. secrets.token_hex(32)"
        )
    return LedgerKey(key)


class LedgerKey:
    """A ledger's chain key. It shows as ``LedgerKey(***)`` and is never pickled, so it cannot
    reach a repr, a log or a task shipped to another process by accident."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "LedgerKey(***)"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a ledger key is not pickled; give it to each process (key_file=)")

    def mac(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` under this key, hex."""
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


#: A chain key: None for an unkeyed ledger (raw bytes are accepted where a key is used).
Key = LedgerKey | bytes | None


def chain_kind(key: Key) -> ChainKind:
    """How a ledger with this key (or none) chains its records."""
    return "sha256" if key is None else "hmac-sha256"


def canonical(document: Mapping[str, Any]) -> str:
    """The one JSON text of a document that its digest covers."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(document: Mapping[str, Any], key: Key) -> str:
    """SHA-256 of the canonical document, or its HMAC-SHA256 under ``key``."""
    text = canonical(document).encode()
    if key is None:
        return hashlib.sha256(text).hexdigest()
    return (key if isinstance(key, LedgerKey) else LedgerKey(key)).mac(text)


# --------------------------------------------------------------------------- running sums


@dataclass(frozen=True)
class RunningSums:
    """Exact sums of the loss parts of a run of charges (fractions: floats are dyadic).

    >>> a = RunningSums().plus(PrivacyLoss(0.1, 0.0, 0.1, 0.0))
    >>> b = a.plus(PrivacyLoss(0.2, 0.0, 0.2, 0.0))
    >>> b.minus(a).sums(1).epsilon  # exactly the second charge, no rounding left over
    0.2
    >>> b.texts()[0]
    '10808639105689191/36028797018963968'
    """

    epsilon: Fraction = Fraction(0)
    approx_epsilon: Fraction = Fraction(0)
    approx_delta: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)
    gaussian_delta: Fraction = Fraction(0)

    def plus(self, loss: PrivacyLoss) -> RunningSums:
        """These sums with one more charge."""
        return RunningSums(
            self.epsilon + Fraction(loss.epsilon),
            self.approx_epsilon + Fraction(loss.approx_epsilon),
            self.approx_delta + Fraction(loss.approx_delta),
            self.rho + Fraction(loss.rho),
            self.gaussian_delta + Fraction(loss.delta) - Fraction(loss.approx_delta),
        )

    def minus(self, earlier: RunningSums) -> RunningSums:
        """The sums of the charges after ``earlier`` (a running sum of a prefix of these)."""
        return RunningSums(*(a - b for a, b in zip(self.parts(), earlier.parts(), strict=True)))

    def parts(self) -> tuple[Fraction, ...]:
        """The five sums, in the order of :data:`PARTS`."""
        return (self.epsilon, self.approx_epsilon, self.approx_delta, self.rho, self.gaussian_delta)

    def sums(self, count: int) -> Sums:
        """As the accounting's float sums (each correctly rounded once)."""
        return Sums(count, *(float(part) for part in self.parts()))

    def texts(self) -> tuple[str, ...]:
        """As stored: one exact fraction per part, e.g. ``'3602879701896397/36028797018963968'``."""
        return tuple(str(part) for part in self.parts())

    @classmethod
    def parse(cls, texts: Sequence[object]) -> RunningSums:
        """Back from :meth:`texts`; ValueError if any is not a fraction in [0, 1e300]."""
        parts = [_fraction(text) if isinstance(text, str) else math.nan for text in texts]
        if not all(isinstance(p, Fraction) and 0 <= p <= _LARGEST_SUM for p in parts):
            raise ValueError(f"not running sums: {list(texts)!r}")
        return cls(*parts)  # type: ignore[arg-type]


def _fraction(text: str) -> Fraction:
    """``'n/d'`` or ``'n'`` as a Fraction (the general parser's regular expression is slower)."""
    numerator, slash, denominator = text.partition("/")
    return Fraction(int(numerator), int(denominator) if slash else 1)


# --------------------------------------------------------------------------- records


def _field(url: str, where: str, name: str, convert: Callable[[Any], _T], value: Any) -> _T:
    """``convert(value)``, or LedgerIntegrityError naming the record and field it came from."""
    try:
        return convert(value)
    except (ValueError, TypeError, OverflowError, ZeroDivisionError):
        raise LedgerIntegrityError(
            f"{url}: {where} holds a malformed {name}: {str(value)[:80]!r}; the ledger was "
            "edited outside telemagg"
        ) from None


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(value)
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(value)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


@dataclass(frozen=True)
class Charge:
    """One recorded charge: what a release cost, what it was, and its link in the hash chain.

    ``running`` holds the exact sums of this and every earlier charge's loss parts.

    >>> import pathlib, tempfile
    >>> import telemagg as tm
    >>> ledger = tm.Ledger(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'privacy.db'}",
    ...                    epsilon=10.0, delta=1e-5)
    >>> release = tm.aggregate({"user_id": [1, 2], "page": ["home", "docs"]}, by="page",
    ...                        metrics=[tm.count()], policy=tm.Policy(privacy_unit="user_id"),
    ...                        epsilon=1.0, partitions=["home", "docs"], ledger=ledger,
    ...                        label="daily pages")
    >>> charge = ledger.charges()[0]
    >>> charge.seq, charge.epsilon, charge.label
    (1, 1.0, 'daily pages')
    """

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
    running: RunningSums = field(default=RunningSums(), repr=False)

    @property
    def loss(self) -> PrivacyLoss:
        """The privacy loss this charge recorded."""
        return PrivacyLoss(
            self.epsilon, self.delta, self.approx_epsilon, self.approx_delta, self.rho
        )

    @classmethod
    def from_row(cls, row: Sequence[Any], url: str) -> Charge:
        """A stored row (columns :data:`CHARGE_COLUMNS`) as a Charge; LedgerIntegrityError
        if any of its values is malformed (e.g. text in a number column)."""
        seq = _field(url, "a charge", "seq", _integer, row[0])
        where = f"charge #{seq}"
        time = _field(url, where, "created_at", parse_time, row[1])
        eps, delta, a_eps, a_delta, rho = (
            _field(url, where, name, _finite, value)
            for name, value in zip(
                ("epsilon", "delta", "approx_epsilon", "approx_delta", "rho"), row[2:7], strict=True
            )
        )
        query = _field(url, where, "query", lambda v: dict(json.loads(_text(v))), row[7])
        label = None if row[8] is None else _field(url, where, "label", _text, row[8])
        version = _field(url, where, "version", _text, row[9])
        running = _field(url, where, "running sums", RunningSums.parse, row[10:15])
        prev = _field(url, where, "prev_hash", _text, row[15])
        own = _field(url, where, "hash", _text, row[16])
        return cls(
            seq, time, eps, delta, a_eps, a_delta, rho, query, label, version, prev, own, running
        )

    def row(self) -> tuple[Any, ...]:
        """As stored (columns :data:`CHARGE_COLUMNS`)."""
        return (
            self.seq,
            format_time(self.time),
            self.epsilon,
            self.delta,
            self.approx_epsilon,
            self.approx_delta,
            self.rho,
            canonical(self.query),
            self.label,
            self.version,
            *self.running.texts(),
            self.prev_hash,
            self.hash,
        )

    def document(self) -> dict[str, Any]:
        """The fields the hash covers (everything but the hash itself)."""
        return {
            "seq": self.seq,
            "time": format_time(self.time),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "approx_epsilon": self.approx_epsilon,
            "approx_delta": self.approx_delta,
            "rho": self.rho,
            "query": canonical(self.query),
            "label": self.label,
            "version": self.version,
            "running": list(self.running.texts()),
            "prev_hash": self.prev_hash,
        }

    def sealed(self, key: Key) -> Charge:
        """This charge with its hash computed."""
        return Charge(**{**vars(self), "hash": digest(self.document(), key)})

    def intact(self, key: Key) -> bool:
        """Whether the stored hash is this charge's digest."""
        return hmac.compare_digest(digest(self.document(), key), self.hash)


@dataclass(frozen=True)
class Budget:
    """The ledger's row of totals, as stored."""

    epsilon: float
    delta: float
    window_seconds: int | None
    created_at: str
    chain: str
    genesis_hash: str
    head_hash: str
    head_seal: str
    charge_count: int

    @classmethod
    def from_row(cls, row: Sequence[Any], url: str) -> Budget:
        """A stored row (columns :data:`BUDGET_COLUMNS`); LedgerIntegrityError if malformed."""
        where = "the total's row"
        eps = _field(url, where, "epsilon", _finite, row[0])
        delta = _field(url, where, "delta", _finite, row[1])
        window = None if row[2] is None else _field(url, where, "window_seconds", _integer, row[2])
        created, chain, genesis, head, seal = (
            _field(url, where, name, _text, value)
            for name, value in zip(
                ("created_at", "chain", "genesis_hash", "head_hash", "head_seal"),
                row[3:8],
                strict=True,
            )
        )
        count = _field(url, where, "charge_count", _integer, row[8])
        return cls(eps, delta, window, created, chain, genesis, head, seal, count)

    def genesis(self, key: Key) -> str:
        """The digest the first charge chains to: it covers the total, window, creation time
        and chain kind."""
        return digest(
            {
                "telemagg_ledger": SCHEMA_VERSION,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "window_seconds": self.window_seconds,
                "created_at": self.created_at,
                "chain": self.chain,
            },
            key,
        )

    def seal(self, key: Key, head_hash: str, count: int) -> str:
        """The digest binding the chain's head and length to this ledger: without it, cutting
        the last charges and copying the new last hash into the head would go unnoticed."""
        return digest(
            {"telemagg_ledger_head": head_hash, "count": count, "genesis": self.genesis_hash}, key
        )

    def check(self, key: Key, url: str) -> None:
        """LedgerIntegrityError unless the total and the head's seal are this key's digests."""
        if not hmac.compare_digest(self.genesis(key), self.genesis_hash):
            raise LedgerIntegrityError(
                f"{url}: the stored total or window was edited (or its chain kind)"
                + (" (or this is not the ledger's key)" if key is not None else "")
            )
        if not hmac.compare_digest(
            self.seal(key, self.head_hash, self.charge_count), self.head_seal
        ):
            raise LedgerIntegrityError(
                f"{url}: the recorded chain head (#{self.charge_count}) was edited: charges were "
                "deleted or added at the end"
            )


def check_key_fits(budget: Budget, key: Key, url: str) -> None:
    """LedgerError unless ``key`` is given exactly when the ledger is keyed."""
    if budget.chain == "hmac-sha256" and key is None:
        raise LedgerError(
            f"{url} is a keyed ledger: give its key (key= or key_file=, or the {KEY_ENV} or "
            f"{KEY_FILE_ENV} environment variable) to open it"
        )
    if budget.chain == "sha256" and key is not None:
        raise LedgerError(
            f"{url} was created without a key, but a key was given (key=, key_file=, {KEY_ENV} "
            f"or {KEY_FILE_ENV}): refusing, since a keyed ledger rewritten by someone without "
            "the key would look exactly like this; open it without a key if it never had one"
        )
    if budget.chain not in ("sha256", "hmac-sha256"):
        raise LedgerIntegrityError(f"{url}: unknown chain kind {budget.chain[:40]!r}")


# --------------------------------------------------------------------------- schema 1 -> 2


def migration(store: Store, key: Key) -> Callable[[Transaction, int], None]:
    """The migration of a schema-1 ledger to schema 2, for :meth:`Store.ensure_schema`.

    Schema 1 kept no running sums, no head seal and no key. The migration verifies the whole
    schema-1 chain (a broken one is refused: migrating would launder the tampering), adds the
    columns, then recomputes every charge's running sums and the chain under schema 2 (keyed
    if a key is given), in the one transaction that also records the new version.
    """

    def migrate(tx: Transaction, stored: int) -> None:
        if stored != 1:
            raise LedgerError(f"{store.url}: cannot migrate a ledger of schema version {stored}")
        store.hold(tx, LOCK)
        v1_budget = tx.fetchone(
            "SELECT epsilon, delta, window_seconds, created_at, genesis_hash, head_hash, "
            f"charge_count FROM {BUDGET.name} WHERE id = 1"
        )
        v1_rows = tx.fetchall(
            "SELECT seq, created_at, epsilon, delta, approx_epsilon, approx_delta, rho, query, "
            f"label, version, prev_hash, hash FROM {CHARGES.name} ORDER BY seq"
        )
        chain = chain_kind(key)
        for name, default in (("chain", chain), ("head_seal", "")):
            store.add_column(tx, BUDGET.name, Column(name, "text"), default)
        for name in _SUM_COLUMNS:
            store.add_column(tx, CHARGES.name, Column(name, "text"), "0")
        tx.execute(f"DROP INDEX IF EXISTS {CHARGES.name}_created_at_idx")
        store.create_index(tx, CHARGES.name, ("created_at", "seq"))
        if v1_budget is None:
            return
        budget = _verified_v1(v1_budget, v1_rows, store.url, chain)
        budget = Budget(**{**vars(budget), "genesis_hash": budget.genesis(key)})
        previous, running, updates = budget.genesis_hash, RunningSums(), []
        for seq, time, eps, delta, a_eps, a_delta, rho, query, label, version, _, _ in v1_rows:
            loss = PrivacyLoss(float(eps), float(delta), float(a_eps), float(a_delta), float(rho))
            running = running.plus(loss)
            charge = Charge(
                int(seq),
                parse_time(time),
                *loss_fields(loss),
                json.loads(query),
                label,
                str(version),
                previous,
                "",
                running,
            ).sealed(key)
            updates.append((*running.texts(), previous, charge.hash, charge.seq))
            previous = charge.hash
        tx.executemany(
            f"UPDATE {CHARGES.name} SET {', '.join(f'{c} = ?' for c in _SUM_COLUMNS)}, "
            "prev_hash = ?, hash = ? WHERE seq = ?",
            updates,
        )
        tx.execute(
            f"UPDATE {BUDGET.name} SET chain = ?, genesis_hash = ?, head_hash = ?, head_seal = ? "
            "WHERE id = 1",
            (chain, budget.genesis_hash, previous, budget.seal(key, previous, len(v1_rows))),
        )

    return migrate


def loss_fields(loss: PrivacyLoss) -> tuple[float, float, float, float, float]:
    """A loss's stored fields: epsilon, delta, approx_epsilon, approx_delta, rho."""
    return loss.epsilon, loss.delta, loss.approx_epsilon, loss.approx_delta, loss.rho


def _verified_v1(
    budget_row: Sequence[Any], rows: Sequence[Sequence[Any]], url: str, chain: str
) -> Budget:
    """The schema-1 total as a schema-2 Budget, after checking the whole schema-1 chain."""

    def sha(document: Mapping[str, Any]) -> str:
        return digest(document, None)

    try:
        eps, delta, window, created, genesis, head, count = budget_row
        window = None if window is None else int(window)
        intact = (
            sha(
                {
                    "telemagg_ledger": 1,
                    "epsilon": float(eps),
                    "delta": float(delta),
                    "window_seconds": window,
                    "created_at": str(created),
                }
            )
            == genesis
        )
        previous = str(genesis)
        for expected, row in enumerate(rows, start=1):
            seq, time, r_eps, r_delta, a_eps, a_delta, rho, query, label, version, prev, own = row
            document = {
                "seq": int(seq),
                "time": format_time(parse_time(time)),
                "epsilon": float(r_eps),
                "delta": float(r_delta),
                "approx_epsilon": float(a_eps),
                "approx_delta": float(a_delta),
                "rho": float(rho),
                "query": canonical(json.loads(query)),
                "label": label,
                "version": str(version),
                "prev_hash": str(prev),
            }
            intact = intact and int(seq) == expected and prev == previous and sha(document) == own
            previous = str(own)
        intact = intact and (len(rows), previous) == (int(count), head)
    except (ValueError, TypeError):
        intact = False
    if not intact:
        raise LedgerIntegrityError(
            f"{url}: this schema-1 ledger does not verify (edited, inserted or deleted records); "
            "refusing to migrate it to schema 2, which would hide that"
        )
    return Budget(float(eps), float(delta), window, str(created), chain, "", "", "", len(rows))
