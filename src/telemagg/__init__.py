"""telemagg: differentially private aggregates of telemetry, safe to hand to model training.

>>> import telemagg as tm
>>> policy = tm.Policy(privacy_unit="user_id", max_partitions=4, max_contributions=2)
>>> policy.max_contributions
2
"""

from telemagg._aggregator import Aggregator, aggregate
from telemagg._dataset import ReleaseData, read_release
from telemagg._version import library_version
from telemagg.collector import Collector
from telemagg.consent import ConsentChange, ConsentRegistry
from telemagg.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerError,
    LedgerIntegrityError,
    MissingDependencyError,
    SchemaError,
    TelemaggError,
)
from telemagg.hygiene import bucket_time, pseudonymize, scrub_pii, truncate_ip
from telemagg.ledger import Charge, Ledger
from telemagg.policy import (
    Count,
    Histogram,
    Mean,
    Metric,
    Policy,
    Quantiles,
    Sum,
    TopK,
    UnitCount,
    Variance,
    count,
    exponential_buckets,
    histogram,
    mean,
    quantiles,
    sum,
    top_k,
    unit_count,
    variance,
)
from telemagg.release import MetricReport, Release

__version__ = library_version()
del library_version

__all__ = [
    "Aggregator",
    "BudgetExceededError",
    "Charge",
    "Collector",
    "ConfigError",
    "ConsentChange",
    "ConsentRegistry",
    "Count",
    "Histogram",
    "Ledger",
    "LedgerError",
    "LedgerIntegrityError",
    "Mean",
    "Metric",
    "MetricReport",
    "MissingDependencyError",
    "Policy",
    "Quantiles",
    "Release",
    "ReleaseData",
    "SchemaError",
    "Sum",
    "TelemaggError",
    "TopK",
    "UnitCount",
    "Variance",
    "aggregate",
    "bucket_time",
    "count",
    "exponential_buckets",
    "histogram",
    "mean",
    "pseudonymize",
    "quantiles",
    "read_release",
    "scrub_pii",
    "sum",
    "top_k",
    "truncate_ip",
    "unit_count",
    "variance",
]
