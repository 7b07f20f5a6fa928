"""Mergeable state: the bounded events of every privacy unit, per partition.

The state keeps, for each event that survives contribution bounding, its unit identity,
partition, the two bottom-k priorities and the values the metrics read. Memory therefore
grows with units x max_partitions x max_contributions, never with the number of events.
``absorb`` (new events) and ``merge`` (another state) both concatenate rows and re-apply
the bounding kernel, which is exact for bottom-k samples (see ``_bounding``), so
``add``/``merge`` in any order and any batching give the same state for the same rows and
priorities.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from telemagg._bounding import bound_contributions
from telemagg._identity import KeyIndex, mix64

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

__all__ = ["CONTRIBUTION_BOUNDS", "KeyIndex", "SamplingKey", "State"]

CONTRIBUTION_BOUNDS = "contribution_bounds"


@dataclass(frozen=True)
class SamplingKey:
    """The secret that makes pair priorities unpredictable. Never logged or released."""

    k1: int
    k2: int

    def __repr__(self) -> str:
        return "SamplingKey(<secret>)"

    def partition_salts(self, partition_hashes: U64) -> U64:
        """Keyed per-partition salts (computed once per distinct partition)."""
        return mix64(partition_hashes ^ np.uint64(self.k2))

    def pair_keys(self, unit_id: U64, partition_salt: U64) -> U64:
        """Keyed priority (and identity) of each (unit, partition) pair.

        ``unit_id`` is already a mixed 64-bit hash; adding the keyed partition salt and
        mixing again gives each pair a priority that is uniform and unpredictable without
        the key, and distinct for distinct pairs except with probability ~2^-64.
        """
        with np.errstate(over="ignore"):
            z = np.bitwise_xor(unit_id, np.uint64(self.k1))
            np.add(z, partition_salt, out=z)
            return mix64(z, inplace=True)


@dataclass
class State:
    """Bounded rows plus the event accounting of everything absorbed so far."""

    unit_id: U64
    partition: I64
    pair_key: U64
    event_priority: U64
    numeric: dict[str, F64]
    categorical: dict[str, I64]
    received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @classmethod
    def empty(cls, numeric: Sequence[str], categorical: Sequence[str] = ()) -> State:
        return cls(
            unit_id=np.zeros(0, np.uint64),
            partition=np.zeros(0, np.int64),
            pair_key=np.zeros(0, np.uint64),
            event_priority=np.zeros(0, np.uint64),
            numeric={c: np.zeros(0, np.float64) for c in numeric},
            categorical={c: np.zeros(0, np.int64) for c in categorical},
        )

    def __len__(self) -> int:
        return int(self.unit_id.size)

    @property
    def aggregated(self) -> int:
        return len(self)

    @classmethod
    def concat(cls, states: Sequence[State]) -> State:
        """All rows of ``states`` (not bounded again), with their accounting summed."""
        first = states[0]
        dropped: Counter[str] = Counter()
        for state in states:
            dropped.update(state.dropped)
        if len(states) == 1:
            return cls(**{**vars(first), "dropped": dropped})
        return cls(
            unit_id=np.concatenate([s.unit_id for s in states]),
            partition=np.concatenate([s.partition for s in states]),
            pair_key=np.concatenate([s.pair_key for s in states]),
            event_priority=np.concatenate([s.event_priority for s in states]),
            numeric={c: np.concatenate([s.numeric[c] for s in states]) for c in first.numeric},
            categorical={
                c: np.concatenate([s.categorical[c] for s in states]) for c in first.categorical
            },
            received=sum(s.received for s in states),
            dropped=dropped,
        )

    def absorb(
        self,
        rows: State,
        *,
        max_partitions: int,
        max_contributions: int,
        rows_bounded: bool = False,
    ) -> State:
        """This state plus ``rows``, bounded again; evicted rows counted as dropped.

        ``rows_bounded``: ``rows`` is one bounded state under the same sampling key, so
        absorbing it into an empty state keeps every row and needs no sort.
        """
        fresh = len(self) == 0 and self.received == 0 and not self.dropped
        merged = rows if fresh else State.concat([self, rows])
        if rows_bounded and len(self) == 0:
            return merged
        keep = bound_contributions(
            merged.unit_id,
            merged.pair_key,
            merged.event_priority,
            max_partitions=max_partitions,
            max_contributions=max_contributions,
        )
        kept = merged.select(keep)
        evicted = int(keep.size - np.count_nonzero(keep))
        if evicted:
            kept.dropped[CONTRIBUTION_BOUNDS] += evicted
        return kept

    def select(self, rows: npt.NDArray[np.bool_]) -> State:
        """The rows in ``rows`` (no accounting change)."""
        return State(
            unit_id=self.unit_id[rows],
            partition=self.partition[rows],
            pair_key=self.pair_key[rows],
            event_priority=self.event_priority[rows],
            numeric={c: v[rows] for c, v in self.numeric.items()},
            categorical={c: v[rows] for c, v in self.categorical.items()},
            received=self.received,
            dropped=Counter(self.dropped),
        )
