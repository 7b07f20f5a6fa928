"""The local engine: Aggregator (add, merge, release) and the one-shot ``aggregate``.

Data flow: ``add`` ingests a batch (``_ingest``), drops events without consent, gives each
event its unit identity, partition and bottom-k priorities, and absorbs it into the bounded
state (``_state``, ``_bounding``). ``release`` plans the measurements and budget split
(``_plan``), charges the ledger, selects partitions, adds noise (``_mechanisms``) and
packages a :class:`~telemagg.release.Release`.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from telemagg import _mechanisms as mech
from telemagg._ingest import (
    MISSING_PRIVACY_UNIT,
    NON_FINITE_VALUE,
    Batch,
    ingest,
)
from telemagg._plan import (
    UNIT_COUNT,
    Column,
    Plan,
    finalize,
    make_plan,
    select_partitions,
)
from telemagg._state import CONTRIBUTION_BOUNDS, KeyIndex, SamplingKey, State
from telemagg._version import library_version
from telemagg.errors import BudgetExceededError, ConfigError, TelemaggError
from telemagg.ledger import Charge
from telemagg.policy import (
    Metric,
    Policy,
    ReleaseParams,
    check_by,
    check_metrics,
    format_duration,
    parse_duration,
)
from telemagg.release import MetricReport, Release

I64 = npt.NDArray[np.int64]

CONSENT = "consent"
PARTITION_SELECTION = "partition_selection"
NOT_PUBLIC_PARTITION = "not_public_partition"
LATE = "late"
ALWAYS_REPORTED = (MISSING_PRIVACY_UNIT, NON_FINITE_VALUE, CONTRIBUTION_BOUNDS)


class ConsentSource(Protocol):
    """What the aggregator needs from a consent registry."""

    def allowed(self, units: Any, purpose: str) -> npt.NDArray[np.bool_]: ...

    def is_opt_in(self, purpose: str) -> bool: ...


class LedgerLike(Protocol):
    """What the aggregator needs from a budget ledger (:class:`telemagg.Ledger`)."""

    def charge(
        self, loss: mech.PrivacyLoss, *, query: Mapping[str, Any], label: str | None = None
    ) -> Charge: ...


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
    >>> release.metadata["events"]["received"], release.metadata["events"]["aggregated"]
    (3, 2)
    """

    def __init__(
        self,
        *,
        policy: Policy,
        by: str | Sequence[str],
        metrics: Sequence[Metric],
        consent: ConsentSource | None = None,
        purpose: str | None = None,
        window: str | None = None,
        time: str | None = None,
        allowed_lateness: str = "0s",
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
        self.consent, self.purpose = _check_consent(
            policy, self.by, (*self._numeric, *self._categorical), consent, purpose
        )
        self.window, self.time = _check_window(window, time)
        lateness_s = parse_duration(allowed_lateness, "allowed_lateness", allow_zero=True)
        self.allowed_lateness = format_duration(lateness_s)
        self._window_ms = parse_duration(window, "window") * 1000 if window else 0
        self._lateness_ms = lateness_s * 1000
        # Public partitions known up front: other partitions' events are dropped before
        # bounding, so no unit spends its max_partitions on keys that will not be released.
        self.partitions = None if partitions is None else self._public_keys(partitions)
        self._public_set = None if self.partitions is None else set(self.partitions)
        self._randomness = randomness or Randomness.system()
        self._reset()

    def _reset(self) -> None:
        """Empty state: no partitions, no events, no windows."""
        self._partitions = KeyIndex()
        self._categories = {c: KeyIndex() for c in self._categorical}  # values, global ids
        self._state = self._empty_state()
        self._windows: dict[int, State] = {}
        self._watermark_ms: int | None = None
        self._released_through: int | None = None  # highest window index released
        self._received_total = 0
        self._released_events = 0
        self._outside_windows: Counter[str] = Counter()  # see accounting()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column this query reads: the privacy unit, ``by``, metric columns and
        the event time of a windowed aggregator."""
        time = (self.time,) if self.time else ()
        names = (self.policy.privacy_unit, *self.by, *self._numeric, *self._categorical, *time)
        return tuple(dict.fromkeys(names))

    def __repr__(self) -> str:
        states = self._windows.values() if self.window else [self._state]
        kept = sum(len(s) for s in states)
        received = self._received_total if self.window else self._state.received
        return (
            f"Aggregator(by={list(self.by)}, metrics={[m.name for m in self.metrics]},"
            f" privacy_unit={self.policy.privacy_unit!r}, events_received={received},"
            f" events_kept={kept})"
        )

    # ------------------------------------------------------------------ add / merge

    def add(self, events: Any) -> None:
        """Absorb a batch of events (any input form :func:`aggregate` takes)."""
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
            allowed = np.asarray(self.consent.allowed(batch.unit.uniques, self.purpose), dtype=bool)
            batch = batch.take(allowed[batch.unit.codes], CONSENT)
        if self._public_set is not None and len(batch):
            listed = np.fromiter(
                (key in self._public_set for key in batch.partition_keys),
                bool,
                len(batch.partition_keys),
            )
            batch = batch.take(listed[batch.partition_codes], NOT_PUBLIC_PARTITION)
        rows = self._rows(batch)
        if self.window is None:
            self._state = self._absorb(self._state, rows)
        else:
            assert batch.time_ms is not None
            self._add_to_windows(rows, batch.time_ms)

    def _absorb(self, state: State, rows: State, *, rows_bounded: bool = False) -> State:
        return state.absorb(
            rows,
            max_partitions=self.policy.max_partitions,
            max_contributions=self.policy.max_contributions,
            rows_bounded=rows_bounded,
        )

    # ------------------------------------------------------------------ windows

    def _closed(self, index: I64 | int, watermark: int | None) -> Any:
        """Whether window ``index`` has closed: the watermark (latest event time seen) has
        passed its end by the allowed lateness."""
        if watermark is None:
            return np.zeros(np.shape(index), dtype=bool)
        return (np.asarray(index) + 1) * self._window_ms + self._lateness_ms <= watermark

    def _add_to_windows(self, rows: State, time_ms: I64) -> None:
        """Split rows over tumbling windows; events of closed windows are dropped as late.

        Events that never reach a window (no time, no unit, no consent, or late for a window
        already released) are counted in :meth:`accounting`; each window's release accounts
        for the events placed in it, late ones included.
        """
        self._received_total += rows.received
        self._outside_windows.update(rows.dropped)
        index = time_ms // self._window_ms
        late = self._closed(index, self._watermark_ms)
        for w in np.unique(index).tolist():  # a loop over windows, not events
            in_window = index == w
            n_in = int(np.count_nonzero(in_window))
            if self._released_through is not None and w <= self._released_through:
                self._outside_windows[LATE] += n_in
                continue
            part = rows.select(in_window & ~late)
            n_late = n_in - len(part)
            part.received, part.dropped = n_in, Counter({LATE: n_late} if n_late else {})
            self._windows[w] = self._absorb(self._windows.get(w, self._empty_state()), part)
        if time_ms.size:
            latest = int(time_ms.max())
            self._watermark_ms = (
                latest if self._watermark_ms is None else max(latest, self._watermark_ms)
            )

    def _empty_state(self) -> State:
        return State.empty(self._numeric, self._categorical)

    def accounting(self) -> dict[str, Any]:
        """Where every event received by a windowed aggregator is now.

        ``received == pending + released + sum(dropped.values())``: ``pending`` events sit
        in open windows, ``released`` ones belonged to windows already released (whose
        metadata details them), ``dropped`` ones never reached a window, by reason.

        >>> import telemagg as tm
        >>> agg = tm.Aggregator(policy=tm.Policy(privacy_unit="u"), by="e",
        ...     metrics=[tm.count()], window="1h", time="t")
        >>> agg.add({"u": [1, 2, None], "e": ["a", "a", "a"], "t": [0, 10, 20]})
        >>> agg.accounting()
        {'received': 3, 'pending': 2, 'released': 0, 'dropped': {'missing_privacy_unit': 1}}
        """
        pending = sum(s.received for s in self._windows.values())
        return {
            "received": self._received_total,
            "pending": pending,
            "released": self._released_events,
            "dropped": dict(self._outside_windows),
        }

    def _rows(self, batch: Batch) -> State:
        partition = self._partitions.remap(batch.partition_codes, batch.partition_keys)
        pair_key = self._pair_keys(batch.unit_id, partition)
        priority = self._randomness.generator().integers(
            0, np.iinfo(np.uint64).max, size=len(batch), dtype=np.uint64, endpoint=True
        )
        return State(
            unit_id=batch.unit_id,
            partition=partition,
            pair_key=pair_key,
            event_priority=priority,
            numeric=batch.numeric,
            categorical={
                c: self._categories[c].remap(enc.codes, enc.uniques.tolist())
                for c, enc in batch.categorical.items()
            },
            received=batch.received,
            dropped=Counter(batch.dropped),
        )

    def _pair_keys(self, unit_id: npt.NDArray[np.uint64], partition: I64) -> npt.NDArray[np.uint64]:
        key = self._randomness.sampling_key
        salts = key.partition_salts(self._partitions.hashes)
        return key.pair_keys(
            unit_id, salts[partition] if partition.size else partition.astype(np.uint64)
        )

    def spawn(self) -> Aggregator:
        """An empty Aggregator for another shard: same query, same sampling key.

        Shards spawned from one Aggregator sample partitions exactly as a single
        Aggregator would, so merging them gives the same distribution as one ``add``.
        """
        other = Aggregator.__new__(Aggregator)
        other.__dict__.update(self.__dict__)
        other._randomness = self._randomness.spawn()
        other._reset()
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
        if self.window is None:
            adopted = [self._adopt(other, other._state) for other in others]
            same_key = all(
                o._randomness.sampling_key == self._randomness.sampling_key for o in others
            )
            self._state = self._absorb(
                self._state, State.concat(adopted), rows_bounded=same_key and len(others) == 1
            )
            return
        for other in others:
            self._merge_windows(other)

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
            "partitions",
        )
        for name in config:
            if getattr(self, name) != getattr(other, name):
                raise ConfigError(
                    f"cannot merge aggregators with different {name}:"
                    f" {getattr(self, name)!r} != {getattr(other, name)!r}"
                )

    def _merge_windows(self, other: Aggregator) -> None:
        self._received_total += other._received_total
        self._released_events += other._released_events
        self._outside_windows.update(other._outside_windows)
        for w, theirs in other._windows.items():
            if self._released_through is not None and w <= self._released_through:
                self._outside_windows[LATE] += theirs.received
                continue
            mine = self._windows.get(w, self._empty_state())
            self._windows[w] = self._absorb(mine, self._adopt(other, theirs))
        marks = [m for m in (self._watermark_ms, other._watermark_ms) if m is not None]
        self._watermark_ms = max(marks) if marks else None

    def _adopt(self, other: Aggregator, theirs: State) -> State:
        """Another aggregator's state in this one's partition ids and sampling key."""
        partition = self._partitions.remap(theirs.partition, other._partitions.keys)
        pair_key = theirs.pair_key
        if other._randomness.sampling_key != self._randomness.sampling_key:
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
        ledger: LedgerLike | None = None,
        *,
        noise: Literal["laplace", "gaussian"] = "laplace",
        label: str | None = None,
    ) -> Release:
        """Release the metrics per partition with (epsilon, delta)-DP.

        ``partitions=None`` selects partitions privately (needs ``delta > 0``); a sequence
        of keys (tuples for several ``by`` columns) or a DataFrame of key columns releases
        exactly those, absent ones as noisy zeros. With a ``ledger`` the loss is charged
        atomically before any noise is drawn; if it does not fit, nothing is released.
        """
        if self.window is not None:
            raise ConfigError(
                f"this Aggregator has window={self.window!r}: release its windows with"
                " release_closed(...)"
            )
        public, params, plan = self._plan(epsilon, delta, partitions, noise)
        return self._release(self._state, plan, params, public, ledger, label, None)

    def release_closed(
        self,
        epsilon: float,
        delta: float = 0.0,
        partitions: Any = None,
        ledger: LedgerLike | None = None,
        *,
        noise: Literal["laplace", "gaussian"] = "laplace",
        label: str | None = None,
        flush: bool = False,
    ) -> list[Release]:
        """Release every closed window (all open ones too with ``flush=True``), oldest first.

        Each window is its own release with its own (epsilon, delta), charged to the ledger
        separately; a unit active in k windows is protected by k releases' composed loss,
        which the ledger adds up. If the ledger refuses a window, the windows released
        before it are attached to the error as ``error.released`` and the rest stay open.
        """
        if self.window is None:
            raise ConfigError(
                "release_closed needs an Aggregator made with window=...; use release"
            )
        public, params, plan = self._plan(epsilon, delta, partitions, noise)
        closed = sorted(w for w in self._windows if flush or self._closed(w, self._watermark_ms))
        released: list[Release] = []
        for w in closed:
            try:
                release = self._release(self._windows[w], plan, params, public, ledger, label, w)
            except BudgetExceededError as exc:
                exc.released = released  # type: ignore[attr-defined]
                raise
            self._released_events += self._windows.pop(w).received
            self._released_through = max(w, self._released_through or w)
            released.append(release)
        return released

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
        self, epsilon: float, delta: float, partitions: Any, noise: str
    ) -> tuple[list[tuple[Any, ...]] | None, ReleaseParams, Plan]:
        """Validate a release's parameters and plan its measurements (before any charge)."""
        public = self._release_partitions(partitions)
        params = ReleaseParams(
            epsilon=epsilon, delta=delta, noise=noise, private_partitions=public is None
        )
        return public, params, make_plan(self.metrics, self.policy, params)

    def _release_partitions(self, partitions: Any) -> list[tuple[Any, ...]] | None:
        """The public partitions of a release: given now, or to the constructor."""
        if partitions is None:
            return self.partitions
        keys = self._public_keys(partitions)
        if self._public_set is not None and not set(keys) <= self._public_set:
            missing = sorted(map(repr, set(keys) - self._public_set))[:5]
            raise ConfigError(
                "partitions at release must be among the Aggregator's partitions (the events"
                f" of others were dropped before bounding); not listed there: {missing}"
            )
        return keys

    def _public_keys(self, partitions: Any) -> list[tuple[Any, ...]]:
        keys = _partition_keys(partitions, self.by)
        seen: set[tuple[Any, ...]] = set()
        for key in keys:
            if key in seen:
                raise ConfigError(f"partitions must be unique; {key!r} is listed twice")
            seen.add(key)
        return keys

    def _release(
        self,
        state: State,
        plan: Plan,
        params: ReleaseParams,
        public: list[tuple[Any, ...]] | None,
        ledger: LedgerLike | None,
        label: str | None,
        window: int | None,
    ) -> Release:
        """Charge the ledger, then select partitions, add noise and package the release."""
        query = self.query(params)
        if window is not None:
            query["window"] = self._window_bounds(window)
        charge = None
        if ledger is not None:
            if self._randomness.seeded:
                raise ConfigError(
                    "ledger refuses releases made with seeded randomness (tests only);"
                    " drop randomness= to release for real"
                )
            charge = ledger.charge(plan.loss, query=query, label=label)
        index = self._partitions.copy()  # public keys never seen are added to the copy only
        noise = self._randomness.noise
        noisy: dict[str, npt.NDArray[np.float64]] = {}
        if public is None:
            assert plan.selection is not None
            n = len(index)
            units = UNIT_COUNT.compute(state, n)[:, 0]
            kept, noisy_units = select_partitions(plan.selection, units, noise)
            order = _key_order(kept, index.keys)
            released = kept[order]
            if noisy_units is not None:  # threshold selection: its noisy counts are released
                noisy["unit_count"] = noisy_units[order][:, None]
            reason = PARTITION_SELECTION
        else:
            released = index.ids(public)
            n = len(index)
            reason = NOT_PUBLIC_PARTITION
        categories = {c: index.keys for c, index in self._categories.items()}
        measured, value_counts = plan.measure(state, released, n, noise, categories)
        noisy.update(measured)
        columns: dict[str, Column] = {}
        for metric in self.metrics:
            columns.update(finalize(metric, noisy, value_counts))

        keys = [index.keys[i] for i in released]
        key_columns = {c: _column([k[j] for k in keys]) for j, c in enumerate(self.by)}
        reports = self._reports(plan)
        in_released = np.isin(state.partition, released)
        aggregated = int(np.count_nonzero(in_released))
        dropped = Counter(dict.fromkeys(ALWAYS_REPORTED, 0))
        if self.consent is not None:
            dropped[CONSENT] += 0
        dropped.update(state.dropped)
        dropped[reason] += len(state) - aggregated
        metadata = self._metadata(plan, params, query, reports, len(keys), charge)
        if window is not None:
            metadata["window"] = query["window"]
        metadata["events"] = {
            "received": state.received,
            "aggregated": aggregated,
            "dropped": dict(sorted(dropped.items())),
        }
        if state.received != aggregated + sum(dropped.values()):
            raise TelemaggError("internal: event accounting does not add up")
        return Release(
            keys=key_columns, columns=columns, metrics=reports, loss=plan.loss, metadata=metadata
        )

    def _window_bounds(self, window: int) -> dict[str, str]:
        start = dt.datetime.fromtimestamp(window * self._window_ms / 1000, dt.UTC)
        end = start + dt.timedelta(milliseconds=self._window_ms)
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "size": str(self.window),
            "allowed_lateness": self.allowed_lateness,
        }

    def _reports(self, plan: Plan) -> dict[str, MetricReport]:
        reports = {}
        for metric in self.metrics:
            components = []
            for key in plan.metric_measurements[metric.name]:
                if key in plan.measurements:
                    components.append(plan.measurements[key].report())
                elif key in plan.value_thresholds:  # top_k
                    components.append(plan.value_thresholds[key].report())
                else:  # unit_count released by the partition selection itself
                    selection = plan.selection_report
                    assert selection is not None
                    components.append(
                        {
                            **selection,
                            "measurement": key,
                            "rho": 0.0,
                            "sensitivity": 1.0 * self.policy.max_partitions,
                        }
                    )
            main = components[-1]
            report = MetricReport(
                mechanism=str(main["mechanism"]),
                epsilon=math.fsum(float(c["epsilon"]) for c in components),
                delta=math.fsum(float(c["delta"]) for c in components),
                rho=math.fsum(float(c["rho"]) for c in components),
                sensitivity=main["sensitivity"],
                stddev=float(main["stddev"]),
                measurement=str(main["measurement"]),
                components=tuple(components),
            )
            for column in metric.output_names:  # release.metrics[column], as documented
                reports[column] = report
        return reports

    def _metadata(
        self,
        plan: Plan,
        params: ReleaseParams,
        query: dict[str, Any],
        reports: dict[str, MetricReport],
        n_released: int,
        charge: Charge | None,
    ) -> dict[str, Any]:
        loss = plan.loss
        out: dict[str, Any] = {
            "telemagg_version": library_version(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "epsilon": loss.epsilon,  # the release's total loss, as release.epsilon/.delta
            "delta": loss.delta,
            "policy": self.policy.model_dump(mode="json"),
            "query": query,
            "privacy": {
                "epsilon": loss.epsilon,
                "delta": loss.delta,
                "approx_epsilon": loss.approx_epsilon,
                "approx_delta": loss.approx_delta,
                "rho": loss.rho,
                "requested_epsilon": params.epsilon,
                "requested_delta": params.delta,
                "neighbouring": "add or remove all events of one privacy unit",
            },
            "partitions": {
                "selection": "private" if plan.selection is not None else "public",
                "released": n_released,
                **({"mechanism": plan.selection_report} if plan.selection is not None else {}),
            },
            "metrics": {name: r.to_dict() for name, r in reports.items()},
            "seeded": self._randomness.seeded,
        }
        if charge is not None:
            out["ledger"] = {"charge": charge.seq, "hash": charge.hash}
        return out


# --------------------------------------------------------------------------- helpers


def _check_consent(
    policy: Policy,
    by: tuple[str, ...],
    numeric: tuple[str, ...],
    consent: ConsentSource | None,
    purpose: str | None,
) -> tuple[ConsentSource | None, str | None]:
    if consent is not None and not purpose:
        raise ConfigError(
            "purpose must name what the release is for when consent is given; got None"
        )
    if purpose is not None and consent is None:
        raise ConfigError(f"purpose={purpose!r} needs consent=<a tm.ConsentRegistry>")
    content = sorted(set(policy.content_columns) & {*by, *numeric})
    if content:
        if consent is None or purpose is None:
            raise ConfigError(
                f"columns {content} are customer content (Policy.content_columns): aggregating"
                " them needs consent=<registry> and an opt-in purpose"
            )
        if not consent.is_opt_in(purpose):
            raise ConfigError(
                f"columns {content} are customer content (Policy.content_columns) and purpose"
                f" {purpose!r} is opt-out: content may only be aggregated under an opt-in purpose"
                " (declare it with registry.declare(purpose, default='opt_in'))"
            )
    return consent, purpose


def _check_window(window: str | None, time: str | None) -> tuple[str | None, str | None]:
    if window is None:
        if time is not None:
            raise ConfigError(f"time={time!r} is only used with window=...; got window=None")
        return None, None
    seconds = parse_duration(window, "window")
    if not time:
        raise ConfigError(f"window={window!r} needs time=<the event-time column>; got {time!r}")
    return format_duration(seconds), time


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _partition_keys(partitions: Any, by: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Public partitions in any accepted form -> key tuples."""
    if hasattr(partitions, "columns") or isinstance(partitions, Mapping):
        columns = [c for c in by if c not in partitions]
        if columns:
            raise ConfigError(f"partitions has no key column {columns[0]!r}")
        values = [np.asarray(partitions[c]).tolist() for c in by]
        return [tuple(map(_python, row)) for row in zip(*values, strict=True)]
    if isinstance(partitions, str | bytes) or not isinstance(partitions, Iterable):
        raise ConfigError(f"partitions must be None or a sequence of keys; got {partitions!r}")
    keys = []
    for key in partitions:
        key = tuple(map(_python, key)) if isinstance(key, tuple | list) else (_python(key),)
        if len(key) != len(by):
            raise ConfigError(
                f"partitions must have one value per by column {list(by)}; got {key!r}"
            )
        keys.append(key)
    return keys


def _key_order(ids: I64, keys: list[Any]) -> I64:
    """Positions of ``ids`` ordered by their keys (first-seen order if keys don't compare)."""
    positions = list(range(ids.size))
    try:
        positions.sort(key=lambda p: keys[int(ids[p])])
    except TypeError:
        positions.sort(key=lambda p: int(ids[p]))
    return np.asarray(positions, dtype=np.int64)


def _column(values: list[Any]) -> np.ndarray[Any, Any]:
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def aggregate(
    events: Any,
    *,
    by: str | Sequence[str],
    metrics: Sequence[Metric],
    policy: Policy,
    epsilon: float,
    delta: float = 0.0,
    partitions: Any = None,
    ledger: LedgerLike | None = None,
    noise: Literal["laplace", "gaussian"] = "laplace",
    consent: ConsentSource | None = None,
    purpose: str | None = None,
    label: str | None = None,
    randomness: Randomness | None = None,
) -> Release:
    """Aggregate events into a differentially private release, in one call.

    Exactly ``Aggregator(...)`` + one ``add`` + ``release``.

    >>> import telemagg as tm
    >>> from telemagg.testing import seeded
    >>> events = {"user_id": [1, 1, 2, 3], "event_name": ["open", "open", "open", "save"]}
    >>> release = tm.aggregate(events, by=["event_name"], metrics=[tm.count()],
    ...     policy=tm.Policy(privacy_unit="user_id"), epsilon=1.0, partitions=["open", "save"],
    ...     randomness=seeded(0))
    >>> sorted(release.to_dict())
    ['count', 'event_name']
    """
    # Validate the release parameters before reading any data.
    ReleaseParams(epsilon=epsilon, delta=delta, noise=noise, private_partitions=partitions is None)
    agg = Aggregator(
        policy=policy,
        by=by,
        metrics=metrics,
        consent=consent,
        purpose=purpose,
        partitions=partitions,
        randomness=randomness,
    )
    agg.add(events)
    return agg.release(epsilon, delta, ledger=ledger, noise=noise, label=label)
