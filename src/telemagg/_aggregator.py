"""The local engine: Aggregator (add, merge, release) and the one-shot ``aggregate``.

Data flow: ``add`` ingests a batch (``_ingest``), drops events without consent
(``_consent_gate``), gives each event its unit identity, partition and bottom-k priorities,
and absorbs it into the bounded state (``_state``, ``_bounding``; with ``window=``, the
state of each window, ``_window_states``). ``release`` plans the
measurements and budget split (``_releasing``, ``_plan``), charges the ledger, then selects
partitions, adds noise (``_mechanisms``) and packages a :class:`~telemagg.release.Release`
(``_releasing``).
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg._consent_gate import (
    ConsentSource,
    admit,
    bookmark,
    changed_since,
    check_consent,
    earliest,
    withdrawn,
    without_units,
)
from telemagg._ingest import Batch, Encoded, ingest
from telemagg._key_index import KeyColumns, KeyIndex
from telemagg._plan import Plan
from telemagg._releasing import (
    NOT_PUBLIC_PARTITION,
    assemble,
    check_release,
    plan_release,
    public_index,
    release_partitions,
    reported_reasons,
)
from telemagg._state import SamplingKey, State
from telemagg._tuning import needs_tuning, tune
from telemagg._window_states import WindowStates
from telemagg._windows import Grid, instant_ms
from telemagg.consent import ConsentRegistry
from telemagg.errors import (
    BudgetExceededError,
    ConfigError,
    TelemaggError,
    UntrackedReleaseWarning,
)
from telemagg.ledger._protocol import LedgerLike, open_ledger
from telemagg.policy import (
    Metric,
    Policy,
    ReleaseParams,
    check_by,
    check_metrics,
    format_duration,
    parse_duration,
)
from telemagg.release import Accounting, Release

I64 = npt.NDArray[np.int64]

STATE_FORMAT = 2
"""Layout of a pickled Aggregator; raised with every change to its attributes (2: windows
in a WindowStates, a cache of partition salts, states keep a cache of per-metric samples)."""


@dataclass
class Randomness:
    """Where sampling and noise randomness come from.

    Production (:meth:`system`): a sampling key from ``secrets``, event priorities from
    fresh OS entropy on every call, and :class:`~telemagg._mechanisms.SystemNoise` (exact
    discrete noise from the OS CSPRNG). Tests build a seeded one with
    :func:`telemagg.testing.seeded`. A release is unseeded only when its noise is exactly a
    ``SystemNoise`` (the type itself, not a subclass or look-alike) and there is no seed
    sequence; any other source marks it ``"seeded": true`` and every ledger refuses it.
    """

    sampling_key: SamplingKey
    noise: mech.Noise
    seed_sequence: np.random.SeedSequence | None = None

    @classmethod
    def system(cls) -> Randomness:
        return cls(SamplingKey(secrets.randbits(64), secrets.randbits(64)), mech.SystemNoise())

    @property
    def seeded(self) -> bool:
        production = type(self.noise) is mech.SystemNoise and self.seed_sequence is None
        return not production

    def generator(self) -> np.random.Generator:
        """A fresh generator for event priorities (never shared between calls or copies)."""
        if self.seed_sequence is None:
            return np.random.default_rng()
        return np.random.default_rng(self.seed_sequence.spawn(1)[0])

    def spawn(self) -> Randomness:
        """Same sampling key (so shards sample pairs identically), independent streams."""
        if self.seed_sequence is None:
            noise = mech.SystemNoise() if type(self.noise) is mech.SystemNoise else self.noise
            return Randomness(self.sampling_key, noise)
        child = self.seed_sequence.spawn(1)[0]
        noise = mech.SeededNoise(int(child.generate_state(1)[0]))
        return Randomness(self.sampling_key, noise, child)

    def __repr__(self) -> str:
        return f"Randomness(seeded={self.seeded})"


class Aggregator:
    """Streaming, mergeable differentially private aggregation.

    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="user"), by=["event"],
    ...                     metrics=[tm.count()], randomness=seeded(1))
    >>> agg.add({"user": [1, 2, 2], "event": ["open", "open", "save"]})
    >>> release = agg.release(epsilon=1.0, partitions=["open", "save", "quit"])
    >>> list(release.to_dict()["event"])
    ['open', 'save', 'quit']
    >>> release.accounting.received, release.accounting.aggregated  # operator side, exact
    (3, 2)
    """

    def __init__(
        self,
        *,
        policy: Policy,
        by: str | Sequence[str],
        metrics: Sequence[Metric],
        consent: ConsentSource | str | None = None,
        purpose: str | None = None,
        window: str | None = None,
        time: str | None = None,
        allowed_lateness: str = "0s",
        start: Any = None,
        max_clock_skew: str = "5m",
        partitions: Any = None,
        randomness: Randomness | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a tm.Policy; got {policy!r}")
        self.policy = policy
        self.by = check_by(by)
        self.metrics = check_metrics(metrics)
        if policy.privacy_unit in self.by:
            raise ConfigError(
                f"by must not contain the privacy unit column {policy.privacy_unit!r}:"
                " releasing per-unit partitions would reveal who is in the data"
            )
        self._numeric = tuple(dict.fromkeys(c for m in self.metrics for c in m.columns))
        self._categorical = tuple(
            dict.fromkeys(c for m in self.metrics for c in m.categorical_columns)
        )
        self.consent, self.purpose = check_consent(
            policy, self.by, (*self._numeric, *self._categorical), consent, purpose
        )
        self.window, self.time = _check_window(window, time)
        self._grid = _grid(window, allowed_lateness, start, max_clock_skew)
        self.allowed_lateness = format_duration(self._grid.lateness_ms // 1000 if self._grid else 0)
        self.max_clock_skew = format_duration(self._grid.skew_ms // 1000 if self._grid else 0)
        self.start = None if self._grid is None else _datetime(self._grid.start_ms)
        # Public partitions known up front: other partitions' events are dropped before
        # bounding, so no unit spends its max_partitions on keys that will not be released.
        self._public: KeyIndex | None = None
        self.partitions: KeyColumns | None = None
        if partitions is not None:
            self._public, self.partitions = public_index(partitions, self.by)
        self._randomness = randomness or Randomness.system()
        self._warned_untracked = False
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_format": STATE_FORMAT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A pickled Aggregator (Dask workers, the collector's checkpoints) of this version
        only: another layout would fail later, far from its cause."""
        found = state.pop("_format", None)
        if found != STATE_FORMAT:
            raise ConfigError(
                f"this Aggregator was saved by another telemagg version (state format"
                f" {found!r}; this version reads {STATE_FORMAT}): release or drain it with"
                " that version, or start again from the events (a collector: a new"
                " state.name)"
            )
        self.__dict__.update(state)

    def _reset(self) -> None:
        """Empty state: no events, no windows; no partitions but the public ones (whose ids
        are then their positions, so that a batch's keys are looked up once: ``add``)."""
        self._partitions = KeyIndex() if self._public is None else self._public.copy()
        self._salts: tuple[SamplingKey, npt.NDArray[np.uint64]] | None = None  # _pair_keys
        self._categories = {c: KeyIndex() for c in self._categorical}  # values, global ids
        self._state = self._empty_state()
        self._windows = (
            None
            if self._grid is None
            else WindowStates(
                self._grid, self.policy.bounding_limits, self._numeric, self._categorical
            )
        )
        # Consent: the registry's history position before the earliest check of held events
        # and what silence meant then (see _honour_consent_changes).
        self._consent_position: int | None = None
        self._consent_opt_in: bool | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column this query reads: the privacy unit, ``by``, metric columns and
        the event time of a windowed aggregator."""
        time = (self.time,) if self.time else ()
        names = (self.policy.privacy_unit, *self.by, *self._numeric, *self._categorical, *time)
        return tuple(dict.fromkeys(names))

    def __repr__(self) -> str:
        accounting = self.accounting()  # an Aggregator stays with the operator
        return (
            f"Aggregator(by={list(self.by)}, metrics={[m.name for m in self.metrics]},"
            f" privacy_unit={self.policy.privacy_unit!r}, events_received={accounting.received},"
            f" events_pending={accounting.pending})"
        )

    # ------------------------------------------------------------------ add / merge

    def add(self, events: Any, now: Any = None) -> None:
        """Absorb a batch of events (any input form :func:`aggregate` takes).

        ``now`` (windowed Aggregators): the operator's processing time, a timezone-aware
        datetime or epoch seconds; default the wall clock. Events after ``now +
        max_clock_skew`` are dropped as ``future``; events before ``start``, in a window
        already released, or in one closed at ``now`` are dropped as ``late``. Without a
        window ``now`` is checked and unused.
        """
        now_ms = instant_ms(now, "now")  # checked before any data is read
        batch = ingest(
            events,
            unit=self.policy.privacy_unit,
            by=self.by,
            numeric=self._numeric,
            categorical=self._categorical,
            time=self.time,
        )
        if self.consent is not None and len(batch):
            assert self.purpose is not None
            if self._consent_position is None:  # before the first check of held events
                self._consent_position, self._consent_opt_in = bookmark(self.consent, self.purpose)
            batch = admit(batch, self.consent, self.purpose)
        public_ids = None
        if self._public is not None and len(batch):
            public_ids = self._public.lookup(batch.partition_keys)
            batch = batch.take((public_ids >= 0)[batch.partition_codes], NOT_PUBLIC_PARTITION)
        # Memory: consent was the unit encoding's only reader, and bounding needs none of
        # the batch's codes.
        batch.unit = Encoded(np.zeros(0, np.int64), batch.unit.uniques[:0])
        time_ms, rows = batch.time_ms, self._rows(batch, public_ids)
        del batch
        if self._windows is None:
            self._state = self._absorb(self._state, rows)
        else:
            assert time_ms is not None
            self._windows.add(rows, time_ms, now_ms)

    def _absorb(self, state: State, rows: State, *, rows_bounded: bool = False) -> State:
        max_partitions, max_contributions = self.policy.bounding_limits
        return state.absorb(
            rows,
            max_partitions=max_partitions,
            max_contributions=max_contributions,
            rows_bounded=rows_bounded,
        )

    def _empty_state(self) -> State:
        return State.empty(self._numeric, self._categorical)

    def accounting(self) -> Accounting:
        """Where every event this Aggregator received is now: operator side, exact, and NOT
        differentially private (see :class:`~telemagg.release.Accounting`).

        ``pending`` events are held for a coming release (all bounded events of an
        Aggregator without windows: each ``release`` reads them all); ``aggregated`` ones
        reached the table of a released window; ``dropped`` ones, by reason, never will.

        >>> import telemagg as tm
        >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e",
        ...     metrics=[tm.count()], window="1h", time="t", start=0)
        >>> agg.add({"u": [1, 2, None, 3], "e": ["a", "a", "a", "a"], "t": [0, 10, 20, 9e9]},
        ...         now=60)
        >>> agg.accounting()  # doctest: +NORMALIZE_WHITESPACE
        Accounting(received=4, aggregated=0, pending=2, dropped={'contribution_bounds': 0,
                   'future': 1, 'late': 0, 'missing_privacy_unit': 1}, missing_values={})
        """
        dropped = reported_reasons(self.consent is not None)
        if self._windows is not None:
            return self._windows.accounting(dropped)
        dropped.update(self._state.dropped)
        state = self._state
        return Accounting(
            received=state.received, aggregated=0, pending=len(state), dropped=dropped
        )

    def _rows(self, batch: Batch, public_ids: I64 | None = None) -> State:
        """The batch's rows; ``public_ids``: the ids of its keys in the public index, -1 for
        keys not listed (whose events ``batch`` no longer holds)."""
        if public_ids is not None and self._partitions.columns is self._public_columns():
            partition = public_ids[batch.partition_codes]  # the index holds the public keys only
        else:
            partition = self._partitions.remap(batch.partition_codes, batch.partition_keys)
        pair_key = self._pair_keys(batch.unit_id, partition)
        # uniform over all 2**64 values: the generator's raw output (2.7x faster than
        # integers(), 10M rows: 0.03 against 0.08 CPU s)
        priority = self._randomness.generator().bit_generator.random_raw(len(batch))
        return State(
            unit_id=batch.unit_id,
            partition=partition,
            pair_key=pair_key,
            event_priority=priority,
            numeric=batch.numeric,
            categorical={
                c: self._categories[c].remap(enc.codes, KeyColumns((enc.uniques,), single=True))
                for c, enc in batch.categorical.items()
            },
            received=batch.received,
            dropped=Counter(batch.dropped),
        )

    def _public_columns(self) -> KeyColumns | None:
        return None if self._public is None else self._public.columns

    def _pair_keys(self, unit_id: npt.NDArray[np.uint64], partition: I64) -> npt.NDArray[np.uint64]:
        key = self._randomness.sampling_key
        hashes = self._partitions.hashes  # only ever appended to: salts are kept, and extended
        known = self._salts
        if known is None or known[0] != key or known[1].size > hashes.size:
            known = (key, hashes[:0])
        if known[1].size < hashes.size:
            known = (key, np.concatenate([known[1], key.partition_salts(hashes[known[1].size :])]))
        self._salts = known
        return key.pair_keys(unit_id, known[1], partition)

    def spawn(self) -> Aggregator:
        """An empty Aggregator for another shard: same query, same sampling key.

        Shards spawned from one Aggregator sample partitions exactly as a single
        Aggregator would, so merging them gives the same distribution as one ``add``.
        """
        other = Aggregator.__new__(Aggregator)
        other.__dict__.update(self.__dict__)
        other._randomness = self._randomness.spawn()
        other._reset()
        if self._windows is not None:  # windows released here are late there
            other._windows = self._windows.spawn()
        return other

    def merge(self, *others: Aggregator) -> None:
        """Absorb other Aggregators' states (other shards, processes or workers).

        Bounding stays global: a unit split over shards is bounded as if all of its events
        had arrived here. Several states merge in one bounding pass; a single state merged
        into an empty Aggregator with the same sampling key is taken as it is (it is
        bounded already). Aggregators with different sampling keys (not made by
        :meth:`spawn`) still merge within the bounds; only which pairs are kept may then
        deviate from a single aggregator's uniform choice.
        """
        for other in others:
            self._check_mergeable(other)
        if not others:
            return
        marks = [(a._consent_position, a._consent_opt_in) for a in (self, *others)]
        mark = earliest(marks)
        if mark is not None:  # the earliest check of any held event is where re-checking starts
            self._consent_position, self._consent_opt_in = mark
        if self._windows is not None:
            for other in others:
                assert other._windows is not None  # same window: _check_mergeable
                self._windows.merge(other._windows, functools.partial(self._adopt, other))
            return
        adopted = [self._adopt(other, other._state) for other in others]
        same_key = all(o._randomness.sampling_key == self._randomness.sampling_key for o in others)
        self._state = self._absorb(
            self._state, State.concat(adopted), rows_bounded=same_key and len(others) == 1
        )

    def _check_mergeable(self, other: Aggregator) -> None:
        if not isinstance(other, Aggregator):
            raise ConfigError(f"merge needs a tm.Aggregator; got {type(other).__name__}")
        config = (
            "policy",
            "by",
            "metrics",
            "purpose",
            "window",
            "time",
            "allowed_lateness",
            "start",
            "max_clock_skew",
            "partitions",
        )
        for name in config:
            if getattr(self, name) != getattr(other, name):
                raise ConfigError(
                    f"cannot merge aggregators with different {name}:"
                    f" {getattr(self, name)!r} != {getattr(other, name)!r}"
                )

    def _adopt(self, other: Aggregator, theirs: State) -> State:
        """Another aggregator's state in this one's partition ids and sampling key."""
        partition = self._partitions.remap(theirs.partition, other._partitions.keys)
        # Pair keys always come from THIS index: the shard's index may hash a key otherwise
        # (another type of the same value seen first, a collision resolved the other way),
        # and one (unit, partition) pair must have one pair key here (issue 9, hole 5).
        pair_key = self._pair_keys(theirs.unit_id, partition)
        return State(
            unit_id=theirs.unit_id,
            partition=partition,
            pair_key=pair_key,
            event_priority=theirs.event_priority,
            numeric=theirs.numeric,
            categorical={
                c: self._categories[c].remap(codes, other._categories[c].keys)
                for c, codes in theirs.categorical.items()
            },
            received=theirs.received,
            dropped=Counter(theirs.dropped),
        )

    # ------------------------------------------------------------------ release

    def release(
        self,
        epsilon: float,
        delta: float = 0.0,
        partitions: Any = None,
        ledger: LedgerLike | str | None = None,
        *,
        noise: Literal["laplace", "gaussian"] = "laplace",
        label: str | None = None,
        allow_large_delta: bool = False,
        tuning_share: float = 0.1,
    ) -> Release:
        """Release the metrics per partition with (epsilon, delta)-DP.

        ``partitions=None`` selects partitions privately (needs ``delta > 0``); a sequence
        of keys (tuples for several ``by`` columns) or a DataFrame of key columns releases
        exactly those, absent ones as noisy zeros. With a ``ledger`` (a :class:`tm.Ledger
        <telemagg.Ledger>` or the URL of an existing one) the loss is charged atomically
        before any noise is drawn; if it does not fit, nothing is released. Without one,
        the first release of this Aggregator warns (``UntrackedReleaseWarning``).
        ``tuning_share`` of ``epsilon`` chooses the query's ``"auto"`` values, if any
        (:mod:`telemagg._tuning`; ``release.metadata["tuning"]``).
        """
        if self.window is not None:
            raise ConfigError(
                f"this Aggregator has window={self.window!r}: release its windows with"
                " release_closed(...)"
            )
        public, params, plan = self._plan(
            epsilon, delta, partitions, noise, allow_large_delta, tuning_share
        )
        self._honour_consent_changes()
        with open_ledger(ledger) as charged:
            return self._release(self._state, plan, params, public, charged, label, None)

    def release_closed(
        self,
        epsilon: float,
        delta: float = 0.0,
        partitions: Any = None,
        ledger: LedgerLike | str | None = None,
        *,
        noise: Literal["laplace", "gaussian"] = "laplace",
        label: str | None = None,
        flush: bool = False,
        now: Any = None,
        allow_large_delta: bool = False,
        tuning_share: float = 0.1,
    ) -> list[Release]:
        """Release every window closed at ``now``, oldest first, each exactly once.

        A window closes when ``now`` (the operator's clock: a timezone-aware datetime or
        epoch seconds, default the wall clock) reaches its end plus ``allowed_lateness``;
        ``flush=True`` also releases the window containing ``now``. Windows that received no
        event are released too (public partitions as noisy zeros, private selection as an
        empty table), so which releases exist never depends on the data. Each costs its
        (epsilon, delta) and one ledger charge, empty or not: a clock far ahead of the last
        release (or an early ``start``) releases, and charges, every window in between.

        Each window is its own release, charged to the ledger separately; a unit active in
        k windows is protected by k releases' composed loss, which the ledger adds up. If
        the ledger refuses window k, the windows released before it stay released (they are
        on the error, ``error.released``, and were charged) while window k and the later
        ones stay pending: a later call releases them when the budget allows.

        >>> import telemagg as tm
        >>> from telemagg.testing import seeded
        >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e",
        ...     metrics=[tm.count()], window="1h", time="t", start=0, randomness=seeded(0))
        >>> agg.add({"u": [1, 2], "e": ["a", "a"], "t": [60, 4000]}, now=4000)
        >>> releases = agg.release_closed(1.0, partitions=["a"], now=3 * 3600)  # epoch seconds
        >>> [r.metadata["window"]["start"][11:16] for r in releases]  # hour 2 had no event
        ['00:00', '01:00', '02:00']
        >>> agg.release_closed(1.0, partitions=["a"], now=3 * 3600)  # each window once
        []
        """
        windows = self._windows
        if windows is None:
            raise ConfigError(
                "release_closed needs an Aggregator made with window=...; use release"
            )
        now_ms = instant_ms(now, "now")
        public, params, plan = self._plan(
            epsilon, delta, partitions, noise, allow_large_delta, tuning_share
        )
        self._honour_consent_changes()
        due = windows.due(now_ms, flush=flush)
        released: list[Release] = []
        with open_ledger(ledger) as charged:
            for w in due:  # a window without events is released all the same
                try:
                    release = self._release(
                        windows.state(w), plan, params, public, charged, label, w
                    )
                except TelemaggError as exc:
                    raise self._partial_failure(exc, released, due, w) from exc
                windows.released(w, release)
                released.append(release)
        return released

    # ------------------------------------------------------------------ consent

    def _honour_consent_changes(self) -> None:
        """Forget the held events of units that withdrew consent after they were absorbed.

        Consent is checked when events arrive; a unit that opts out later (or whose purpose
        became opt-in without its opt-in) must not be released either. Before every release
        the registry is asked which units changed their choice since the earliest check of
        the held events (see :mod:`telemagg._consent_gate`); those no longer allowed are
        removed from every held state and counted as dropped for ``consent`` (operator
        accounting). Raises before any charge if the registry cannot answer.
        """
        consent, purpose = self.consent, self.purpose
        if not isinstance(consent, ConsentRegistry) or self._consent_position is None:
            return
        assert purpose is not None
        position, changed = changed_since(
            consent, purpose, self._consent_position, self._consent_opt_in
        )
        ids = withdrawn(consent, purpose, changed)
        if ids.size:
            self._state = without_units(self._state, ids)
            if self._windows is not None:
                self._windows.without(lambda state: without_units(state, ids))
        # only now: if the registry failed above, the next release asks again from the old
        # position (advancing first would let a withdrawn unit's events through after a
        # failed release)
        self._consent_position = position

    def _partial_failure(
        self, exc: TelemaggError, released: list[Release], due: range, refused: int
    ) -> TelemaggError:
        """The error of a release_closed stopped at window ``refused``, telling the truth
        about what was released before it (those releases ride on ``error.released``)."""
        assert self._grid is not None
        bounds = self._grid.describe(refused)
        later = due.stop - refused - 1
        story = (
            f"release_closed released {len(released)} window(s) before this error (on"
            f" error.released, charged to the ledger); window {bounds['start']} to"
            f" {bounds['end']} was not released and stays pending with {later} later due"
            " window(s): call release_closed again"
        )
        error: TelemaggError
        if isinstance(exc, BudgetExceededError):
            error = BudgetExceededError(f"{exc}; {story}")
        else:  # another failure (a ledger outage, ...): same error, the story as a note
            error = exc
            error.add_note(story)
        error.released = released  # type: ignore[attr-defined]  # any error: for the caller
        return error

    def query(self, params: ReleaseParams | None = None) -> dict[str, Any]:
        """JSON-serialisable description of the query (for metadata and ledgers)."""
        out: dict[str, Any] = {
            "by": list(self.by),
            "metrics": [m.describe() for m in self.metrics],
            "policy": self.policy.model_dump(mode="json"),
        }
        if self.purpose is not None:
            out["purpose"] = self.purpose
        if params is not None:
            out["noise"] = params.noise
            out["partitions"] = "private" if params.private_partitions else "public"
        return out

    def _plan(
        self,
        epsilon: float,
        delta: float,
        partitions: Any,
        noise: str,
        allow_large_delta: bool = False,
        tuning_share: float = 0.1,
    ) -> tuple[KeyColumns | None, ReleaseParams, Plan]:
        """A release's public partitions, parameters and plan, all checked before any charge
        (:func:`~telemagg._releasing.plan_release`)."""
        public = release_partitions(partitions, self.by, self._public, self.partitions)
        params, plan = plan_release(
            self.policy,
            self.metrics,
            public,
            epsilon,
            delta,
            noise,
            allow_large_delta,
            tuning_share,
        )
        return public, params, plan

    def _release(
        self,
        state: State,
        plan: Plan,
        params: ReleaseParams,
        public: KeyColumns | None,
        ledger: LedgerLike | None,
        label: str | None,
        window: int | None,
    ) -> Release:
        """Choose "auto" values, charge the ledger, then assemble the release
        (:func:`~telemagg._releasing.assemble`: select partitions, add noise, package)."""
        query = self.query(params)
        policy, metrics, tuning = self.policy, self.metrics, None
        if needs_tuning(self.policy, self.metrics):
            noise_source = self._randomness.noise
            count = None if public is None else len(public)
            tuned = tune(state, policy, metrics, params, noise_source, self._empty_state(), count)
            policy, metrics, state, plan = tuned.policy, tuned.metrics, tuned.state, tuned.plan
            tuning = tuned.report
        if window is not None:
            assert self._grid is not None
            query["window"] = self._grid.describe(window)
        charge = None
        if ledger is not None:
            if self._randomness.seeded:
                raise ConfigError(
                    "ledger refuses releases made with seeded randomness (tests only);"
                    " drop randomness= to release for real"
                )
            charge = ledger.charge(plan.loss, query=query, label=label)
        elif not self._randomness.seeded and not self._warned_untracked:
            self._warned_untracked = True  # once per Aggregator
            warnings.warn(
                "this release is charged to no ledger: its privacy loss is recorded nowhere"
                " (pass ledger=tm.Ledger(...) or a ledger URL)",
                UntrackedReleaseWarning,
                stacklevel=3,
            )
        return assemble(
            state,
            plan,
            params,
            public,
            query=query,
            policy=policy,
            metrics=metrics,
            query_metrics=self.metrics,
            by=self.by,
            partitions=self._partitions,
            categories=self._categories,
            noise=self._randomness.noise,
            seeded=self._randomness.seeded,
            charge=charge,
            tuning=tuning,
            reported=reported_reasons(self.consent is not None),
            grid=self._grid,
            window=window,
        )


# --------------------------------------------------------------------------- helpers


def _check_window(window: str | None, time: str | None) -> tuple[str | None, str | None]:
    if window is None:
        if time is not None:
            raise ConfigError(f"time={time!r} is only used with window=...; got window=None")
        return None, None
    seconds = parse_duration(window, "window")
    if not time:
        raise ConfigError(f"window={window!r} needs time=<the event-time column>; got {time!r}")
    return format_duration(seconds), time


def _grid(
    window: str | None, allowed_lateness: str, start: Any, max_clock_skew: str
) -> Grid | None:
    """The window grid from the constructor's parameters (None without a window)."""
    lateness_s = parse_duration(allowed_lateness, "allowed_lateness", allow_zero=True)
    skew_s = parse_duration(max_clock_skew, "max_clock_skew", allow_zero=True)
    if window is None:
        if start is not None:
            raise ConfigError(f"start={start!r} is only used with window=...; got window=None")
        return None
    length_ms = parse_duration(window, "window") * 1000
    if start is None:  # creation time floored to the window length
        start_ms = instant_ms(None, "start") // length_ms * length_ms
    else:
        start_ms = instant_ms(start, "start")
    return Grid(
        start_ms=start_ms, length_ms=length_ms, lateness_ms=lateness_s * 1000, skew_ms=skew_s * 1000
    )


def _datetime(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)


def aggregate(
    events: Any,
    *,
    by: str | Sequence[str],
    metrics: Sequence[Metric],
    policy: Policy,
    epsilon: float,
    delta: float = 0.0,
    partitions: Any = None,
    ledger: LedgerLike | str | None = None,
    noise: Literal["laplace", "gaussian"] = "laplace",
    consent: ConsentSource | str | None = None,
    purpose: str | None = None,
    label: str | None = None,
    randomness: Randomness | None = None,
    allow_large_delta: bool = False,
    tuning_share: float = 0.1,
) -> Release:
    """Aggregate events into a differentially private release, in one call.

    Exactly ``Aggregator(...)`` + one ``add`` + ``release``. ``ledger`` and ``consent`` may be
    given as URLs (an existing ledger; a consent registry); they are opened, and checked,
    before any event is read. ``release.metadata`` is what may be published with the table;
    ``release.accounting`` is the exact fate of every event, for the operator only.

    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> events = {"user_id": [1, 1, 2, 3], "event_name": ["open", "open", "open", "save"]}
    >>> release = tm.aggregate(events, by=["event_name"], metrics=[tm.count()],
    ...     policy=tm.Policy(privacy_unit="user_id"), epsilon=1.0, partitions=["open", "save"],
    ...     randomness=seeded(0))
    >>> sorted(release.to_dict())
    ['count', 'event_name']
    """
    check_release(epsilon, delta, noise, partitions, allow_large_delta, tuning_share)
    agg = Aggregator(
        policy=policy,
        by=by,
        metrics=metrics,
        consent=consent,
        purpose=purpose,
        partitions=partitions,
        randomness=randomness,
    )
    with open_ledger(ledger) as charged:  # a bad ledger= fails before any data is read
        agg.add(events)
        return agg.release(
            epsilon,
            delta,
            ledger=charged,
            noise=noise,
            label=label,
            allow_large_delta=allow_large_delta,
            tuning_share=tuning_share,
        )
