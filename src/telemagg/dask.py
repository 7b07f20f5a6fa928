"""The distributed engine: :func:`telemagg.aggregate` on a Dask DataFrame, over dask.distributed.

Data flow of :func:`aggregate`::

    client    validate every parameter; build one template Aggregator (query + sampling key)
    workers   (optionally) shuffle the events by privacy unit
    workers   per Dask partition: template.spawn() + add(pandas partition)   (numpy kernels)
    workers   tree of Aggregator.merge over the partial aggregators (fan-in SPLIT_EVERY)
    client    merge the root into the template; release() once: noise, ledger charge

Workers hold and exchange bounded states: hashed unit identities, partition keys and the
bounded values of kept events, plus the sampling key that makes bounding reproducible
across shards. They must be trusted like the process that calls :func:`aggregate`; only the
released table is differentially private. Needs the ``dask`` extra
(``pip install 'telemagg[dask]'``); see docs/distributed.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from telemagg._aggregator import Aggregator, Randomness
from telemagg._consent_gate import ConsentSource
from telemagg._ingest import _missing_column
from telemagg._releasing import check_release
from telemagg.errors import SchemaError, require
from telemagg.ledger._protocol import LedgerLike, open_ledger
from telemagg.policy import Metric, Policy
from telemagg.release import Release

__all__ = ["aggregate"]

EXTRA = "dask"
# Fan-in of the merge tree. A node merges its k partials in one bounding pass (one sort of
# their rows), so a wider, shallower tree sorts each row fewer times.
SPLIT_EVERY = 8


def aggregate(
    ddf: Any,
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
    shuffle_by_unit: bool = False,
    allow_large_delta: bool = False,
    tuning_share: float = 0.1,
) -> Release:
    """:func:`telemagg.aggregate` on a Dask DataFrame: same parameters, same release.

    Runs on the current Dask scheduler (the ``distributed.Client`` you created, e.g.
    ``Client("tcp://scheduler:8786")``). Every parameter is checked on the client before
    anything is computed. Events are bounded where they are: contribution bounding is exact
    under merge (bottom-k sampling with one sampling key, see ``telemagg._bounding``), so a
    unit spread over many partitions or workers is bounded exactly as if all its events had
    arrived together. ``shuffle_by_unit=True`` first moves each unit's events into one
    partition; that makes partial states smaller but moves every raw event across the
    network, and was slower in every configuration measured (benchmarks/README.md).
    ``"auto"`` policies and bounds work as in :func:`telemagg.aggregate`: shards hold
    their events bounded at the ceilings and the client tunes once, on the merged state.
    Partial aggregators are merged in a tree on the workers; noise is drawn and the
    ``ledger`` charged only on the client, once.

    >>> import dask.dataframe as dd
    >>> import pandas as pd
    >>> import telemagg as tm
    >>> import telemagg.dask
    >>> from telemagg.testing import seeded
    >>> events = pd.DataFrame({"user_id": [1, 1, 2, 3, 4, 4],
    ...                        "event_name": ["open", "save", "open", "open", "save", "save"]})
    >>> release = telemagg.dask.aggregate(dd.from_pandas(events, npartitions=2),
    ...     by="event_name", metrics=[tm.count()], policy=tm.Policy(privacy_unit="user_id"),
    ...     epsilon=1.0, partitions=["open", "save"], randomness=seeded(0))
    >>> release.to_pandas()["event_name"].tolist()
    ['open', 'save']
    >>> release.accounting.received  # operator side, exact; never in the metadata
    6
    """
    # The checks of tm.aggregate, in its order (so both engines fail alike), plus the plan's,
    # which release() would make only after the compute.
    check_release(epsilon, delta, noise, partitions, allow_large_delta, tuning_share)
    template = Aggregator(
        policy=policy,
        by=by,
        metrics=metrics,
        consent=consent,
        purpose=purpose,
        partitions=partitions,
        randomness=randomness,
    )
    # the release's own checks, before compute
    template._plan(epsilon, delta, None, noise, allow_large_delta, tuning_share)
    events = _projected(ddf, template)
    with open_ledger(ledger) as charged:
        if shuffle_by_unit and events.npartitions > 1:
            events = events.shuffle(on=template.policy.privacy_unit)
        template.merge(_merge_tree(events, template).compute())
        return template.release(
            epsilon,
            delta,
            ledger=charged,
            noise=noise,
            label=label,
            allow_large_delta=allow_large_delta,
            tuning_share=tuning_share,
        )


def _dask_dataframe() -> Any:
    """``dask.dataframe``, after checking that the whole ``dask`` extra is installed."""
    require("distributed", EXTRA)
    dask_dataframe: Any = require("dask.dataframe", EXTRA)
    return dask_dataframe


def _projected(ddf: Any, template: Aggregator) -> Any:
    """The columns the query reads (checked against the Dask metadata, nothing computed)."""
    dd = _dask_dataframe()
    if not isinstance(ddf, dd.DataFrame):
        raise SchemaError(f"ddf must be a dask DataFrame; got {type(ddf).__name__}")
    names = list(template.columns)
    missing = [name for name in names if name not in ddf.columns]
    if missing:
        raise _missing_column(missing[0], ddf.columns)
    return ddf[names]


def _merge_tree(ddf: Any, template: Aggregator) -> Any:
    """A Dask ``Delayed`` of one Aggregator holding every partition's bounded events.

    Each partition is absorbed by its own ``template.spawn()`` (spawned here, on the client,
    so seeded test randomness stays reproducible), then partials are merged in groups of
    ``SPLIT_EVERY``, level by level: a tree, never one gather of every state.
    """
    dask: Any = require("dask", EXTRA)
    name = f"telemagg-{uuid.uuid4().hex}"
    partials = [
        dask.delayed(_absorb)(template.spawn(), part, dask_key_name=f"{name}-add-{i}")
        for i, part in enumerate(ddf.to_delayed())
    ]
    level = 0
    while len(partials) > 1:
        groups = [partials[i : i + SPLIT_EVERY] for i in range(0, len(partials), SPLIT_EVERY)]
        partials = [
            group[0]
            if len(group) == 1
            else dask.delayed(_merge)(*group, dask_key_name=f"{name}-merge-{level}-{j}")
            for j, group in enumerate(groups)
        ]
        level += 1
    return partials[0]


def _absorb(shard: Aggregator, events: Any) -> Aggregator:
    shard.add(events)
    return shard


def _merge(first: Aggregator, *others: Aggregator) -> Aggregator:
    # Merging into ``first`` in place is safe: every partial has exactly one consumer.
    first.merge(*others)
    return first
