"""Seeds of independent random streams, derived from one user seed (``MEASURES.md`` §1.6).

Every random draw in genmeasures (power-iteration starts, perturbation draws, data order, loss
checks) comes from a ``torch.Generator`` seeded by :func:`derive_seed`; the global RNGs are never
used.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """Derive the torch seed of one random stream (``MEASURES.md`` §1.6).

    The derivation is ``SeedSequence(seed, spawn_key=(crc32(purpose), index))``, whose first 63
    bits seed a ``torch.Generator``. It is stable across machines and library versions.

    Args:
        seed: The measure's ``seed`` argument.
        purpose: Which stream, e.g. ``"power-iteration/features.0/weight"``.
        index: Draw or restart index within that purpose.
    """
    purpose_id = zlib.crc32(purpose.encode("utf-8"))
    state = np.random.SeedSequence(seed, spawn_key=(purpose_id, index)).generate_state(2)
    return (int(state[0]) << 31 | int(state[1])) & ((1 << 63) - 1)
