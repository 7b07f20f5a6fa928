"""Before aggregation: pseudonymise identifiers, scrub PII from text, coarsen quasi-identifiers.

See ``docs/hygiene.md``.
"""

from telemagg.hygiene._generalize import bucket_time, truncate_ip
from telemagg.hygiene._pseudonymize import pseudonymize
from telemagg.hygiene._scrub import scrub_pii

__all__ = ["bucket_time", "pseudonymize", "scrub_pii", "truncate_ip"]
