"""Defaults and tolerances of the matrix-balancing solver (``NORMALIZED_SHARPNESS.md`` §3)."""

from __future__ import annotations

import numpy as np

#: Default bound on the relative suboptimality :attr:`Balance.gap` (``NORMALIZED_SHARPNESS.md`` §3).
DEFAULT_TOL = 1e-8

#: Default number of accepted steps per strongly connected component.
DEFAULT_MAX_ITER = 200

#: The base ``S₀`` is recomputed when ``z − z₀`` spreads by more than this (factors ``e^{±40}``).
REBASE_SPREAD = 40.0

#: Trial points whose ``z − z₀`` spreads by more than this are evaluated in the log domain.
IMPLICIT_SPREAD = 400.0

#: A row or column of the base below this (the base sums to 1) counts as underflowed.
TINY = 1e-250

#: Entries below this fraction of the largest are kept as logs from the start.
EXTREME_RATIO = 1e-280

#: Osborne steps stop once every ``½ |log(col_i / row_i)|`` is at most this.
OSBORNE_EXIT = 0.5

#: Osborne steps stop once one decreases φ by less than this fraction.
OSBORNE_PROGRESS = 0.01

#: Most Osborne steps before Newton's method takes over.
OSBORNE_MAX = 30

#: Largest spread of the direction used in the duality certificate (clipped beyond).
CERTIFY_SPREAD = 0.5

#: Newton directions are clipped to this spread around their weighted median (a trust bound).
NEWTON_SPREAD_CAP = 20.0

#: Armijo constant of the backtracking line search.
ARMIJO = 1e-4

#: Most halvings of the line search.
MAX_BACKTRACK = 60

#: The duality certificate is computed once the Newton estimate of the gap is below this × tol.
CERTIFY_FACTOR = 10.0

#: Most rounds of peeling nodes without in- or out-edges before scipy takes the rest.
PEEL_ROUNDS = 3

#: Frontier rows scanned at once by the breadth-first searches.
CHUNK = 64

#: Components up to this size go straight to scipy's strong components.
SMALL_GRAPH = 64

_EPS = float(np.finfo(np.float64).eps)
