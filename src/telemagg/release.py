"""A differentially private release: the table, how each column was made, and metadata.

The metadata is JSON-serialisable and meant to travel with the data into model training:
the policy, the query, the privacy loss (total and per metric), the partition selection,
the library version, and the accounting of every input event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg._mechanisms import PrivacyLoss
from telemagg.errors import require

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MetricReport:
    """How one metric's column was made.

    ``mechanism``, ``sensitivity`` and ``stddev`` describe the noise added to each value of
    ``measurement``, the main measurement of the metric; ``components`` lists every
    measurement it is computed from (a mean: a count and a centred sum). ``epsilon``,
    ``delta`` and ``rho`` are the budget of those measurements; measurements shared by
    several metrics are paid once, so metric budgets can add up to more than the release's.
    """

    mechanism: str
    epsilon: float
    delta: float
    rho: float
    sensitivity: float | None
    stddev: float
    measurement: str
    components: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["components"] = [dict(c) for c in self.components]
        return out


class Release:
    """The result of one release: key columns, then one column per metric output.

    Construct through :func:`telemagg.aggregate` or :meth:`telemagg.Aggregator.release`.
    """

    def __init__(
        self,
        *,
        keys: dict[str, np.ndarray[Any, Any]],
        columns: dict[str, F64],
        metrics: dict[str, MetricReport],
        loss: PrivacyLoss,
        metadata: dict[str, Any],
    ) -> None:
        self._keys = keys
        self._columns = columns
        self.metrics = metrics
        self.loss = loss
        self.metadata = metadata

    @property
    def epsilon(self) -> float:
        """Total epsilon of this release, partition selection included."""
        return self.loss.epsilon

    @property
    def delta(self) -> float:
        """Total delta of this release, partition selection included."""
        return self.loss.delta

    def __len__(self) -> int:
        first = next(iter(self._columns.values()), None)
        return 0 if first is None else int(first.size)

    def __repr__(self) -> str:
        return (
            f"Release({len(self)} partitions, columns={list(self.to_dict())},"
            f" epsilon={self.epsilon:.4g}, delta={self.delta:.3g})"
        )

    def to_dict(self) -> dict[str, np.ndarray[Any, Any]]:
        """Columns as numpy arrays: keys first, then metrics (in the order given)."""
        return {**self._keys, **self._columns}

    def to_pandas(self) -> Any:
        """A pandas DataFrame (needs ``telemagg[pandas]``)."""
        pd: Any = require("pandas", "pandas")
        return pd.DataFrame(self.to_dict())

    def to_arrow(self) -> Any:
        """A pyarrow Table (needs ``telemagg[pyarrow]``)."""
        pa: Any = require("pyarrow", "pyarrow")
        return pa.table({k: pa.array(v.tolist()) for k, v in self.to_dict().items()})

    def to_polars(self) -> Any:
        """A polars DataFrame (needs ``telemagg[polars]``)."""
        pl: Any = require("polars", "polars")
        return pl.DataFrame({k: v.tolist() for k, v in self.to_dict().items()})

    def metadata_json(self) -> str:
        """The metadata as a JSON string."""
        return json.dumps(self.metadata, sort_keys=True)
