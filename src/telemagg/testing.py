"""Test support: reproducible randomness, injected explicitly.

Production releases draw sampling keys from :mod:`secrets` and noise from
:class:`~telemagg._mechanisms.SystemNoise` (exact discrete samplers fed by the operating
system's CSPRNG, unseedable). Tests that need reproducible results pass
``randomness=seeded(n)``: the same discrete distributions from a seeded bit source. Such
releases carry ``"seeded": true`` in their metadata and every ledger refuses them, as does
any release whose noise is not exactly a ``SystemNoise``.
"""

from __future__ import annotations

import numpy as np

from telemagg._aggregator import Randomness
from telemagg._mechanisms import SeededNoise
from telemagg._state import SamplingKey

__all__ = ["seeded"]


def seeded(seed: int) -> Randomness:
    """Reproducible sampling and noise for tests.

    >>> seeded(3).seeded
    True
    """
    sequence = np.random.SeedSequence(seed)
    key_state, noise_state = sequence.spawn(2)
    k1, k2 = (int(x) for x in key_state.generate_state(2, dtype=np.uint64))
    return Randomness(
        SamplingKey(k1, k2), SeededNoise(int(noise_state.generate_state(1)[0])), sequence
    )
