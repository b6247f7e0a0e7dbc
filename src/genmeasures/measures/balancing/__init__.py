"""Matrix balancing: the inner problem of normalized sharpness (Tsuzuku et al. 2020, eq 35).

``NORMALIZED_SHARPNESS.md`` §2, §3 and §5. For a square nonnegative ``M`` (``n × n``),

    φ(γ) = Σ_{i,k} M[i,k] · exp(γ_i − γ_k),        NS_l² = inf over γ ∈ R^n of φ(γ).

φ is convex (a sum of exponentials of linear functions) and invariant to ``γ + c·1``; the diagonal
of ``M`` is a constant term. At a minimizer the scaled matrix ``S = diag(e^γ) M diag(e^{−γ})`` has
equal row and column sums (the classical matrix balancing problem). The infimum is attained exactly
when every positive off-diagonal entry lies inside a strongly connected component of the directed
graph ``i → k`` (``M[i,k] > 0``): each component is then balanced on its own. An entry between two
components can only be driven to 0 in the limit (γ offsets growing along a topological order of the
condensation), so it contributes nothing to the infimum, which is never attained.

Method (per strongly connected component, float64):

* The component is divided by its largest entry and by its sum: this is the *base* ``S₀``. The
  scaled matrix at ``z`` is ``diag(e^{z−z₀}) S₀ diag(e^{z₀−z})``, used only through
  matrix-vector products (BLAS ``gemv``), never formed. Once ``z − z₀`` spreads by more than
  :data:`REBASE_SPREAD` the base is recomputed at ``z`` from ``log M`` (shifted by its maximum,
  so nothing overflows). Logs are taken only then, or from the start for entries spanning more
  than :data:`EXTREME_RATIO`; where a row or column of the base underflows, sums and objective
  values are taken by log-sum-exp instead.
* Osborne-style steps ``z_i ← z_i + ½ α log(col_i / row_i)`` (backtracking line search on α)
  come first, until every row is within a factor ``e^{2·OSBORNE_EXIT}`` of its column or a step
  gains less than :data:`OSBORNE_PROGRESS`; then a truncated Newton method: the Hessian of φ is
  the Laplacian of ``S + Sᵀ``, solved by Jacobi-preconditioned conjugate gradients (two ``gemv``
  per product) to a relative residual ``min(0.1, sqrt(‖g‖₁/φ))``, followed by an Armijo backtracking
  line search.
* Convergence is certified by Fenchel duality. For every circulation ``w ≥ 0`` supported on the
  positive entries (equal in- and out-flow at every node),
  ``D(w) = Σ_e w_e (1 + log(M_e / w_e)) ≤ inf φ``, with equality at the balanced matrix. From the
  Newton direction ``h`` (clipped where it spreads by more than :data:`CERTIFY_SPREAD`),
  ``w = S ⊙ (1 + h_i − h_k)`` is a circulation up to the residual of the Newton system, which is
  routed exactly along a spanning in-tree and out-tree of the component. Then
  ``φ(z) − D(w) = Σ_e S_e ψ(t_e)`` with ``ψ(t) = (1+t) log(1+t) − t ≥ 0``, bounded from above
  without cancellation; the bound tends to the true suboptimality ``½ gᵀ H⁺ g`` at the optimum.

:func:`balance_two_sided` solves the preprint's two-sided form (§5) as the balancing of the
bipartite matrix ``[[0, F], [Uᵀ, 0]]``, without forming its zero blocks.

Modules: ``one_sided`` (:func:`balance`, :func:`balance_objective`), ``two_sided``
(:func:`balance_two_sided`), ``components`` (strongly connected components), ``problem`` (one
component and its scaled matrix), ``solver`` (Osborne and Newton steps), ``certificate`` (the
duality gap), ``result`` (:class:`Balance`, validation), ``constants`` (defaults, tolerances).
"""

from genmeasures.measures.balancing.constants import (
    ARMIJO,
    CERTIFY_FACTOR,
    CERTIFY_SPREAD,
    CHUNK,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    EXTREME_RATIO,
    IMPLICIT_SPREAD,
    MAX_BACKTRACK,
    NEWTON_SPREAD_CAP,
    OSBORNE_EXIT,
    OSBORNE_MAX,
    OSBORNE_PROGRESS,
    PEEL_ROUNDS,
    REBASE_SPREAD,
    SMALL_GRAPH,
    TINY,
)
from genmeasures.measures.balancing.one_sided import balance, balance_objective
from genmeasures.measures.balancing.result import Balance
from genmeasures.measures.balancing.two_sided import balance_two_sided

__all__ = [
    "ARMIJO",
    "CERTIFY_FACTOR",
    "CERTIFY_SPREAD",
    "CHUNK",
    "DEFAULT_MAX_ITER",
    "DEFAULT_TOL",
    "EXTREME_RATIO",
    "IMPLICIT_SPREAD",
    "MAX_BACKTRACK",
    "NEWTON_SPREAD_CAP",
    "OSBORNE_EXIT",
    "OSBORNE_MAX",
    "OSBORNE_PROGRESS",
    "PEEL_ROUNDS",
    "REBASE_SPREAD",
    "SMALL_GRAPH",
    "TINY",
    "Balance",
    "balance",
    "balance_objective",
    "balance_two_sided",
]
