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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from genmeasures.errors import MeasureError, NumericalError

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


@dataclass(frozen=True, eq=False)
class Balance:
    """Result of :func:`balance` or :func:`balance_two_sided`.

    Attributes:
        value: The infimum (``NS_l²`` of eq 35): the diagonal of ``M`` plus, for every strongly
            connected component, its own objective at the returned ``gamma``. Entries between
            components are excluded (their infimum is 0). An upper bound on the true infimum
            within a relative ``gap``.
        gamma: The optimal log-scales, one per row of ``M`` (per output for the two-sided form),
            finite, normalized to mean 0 within every strongly connected component (a single
            node has 0). Where ``attained`` is False the infimum is approached by adding offsets
            that grow along a topological order of the components.
        attained: Whether the infimum is attained at a finite ``gamma`` (no positive entry
            between two strongly connected components).
        gap: An upper bound, exact up to floating-point rounding of order ``n·ε``, on the relative
            suboptimality ``(value − inf) / inf`` of the returned ``value``: ``Σ_C (φ_C − D_C) /
            (value − Σ_C (φ_C − D_C))`` with ``D_C`` the dual value of a feasible circulation in
            component C. 0 when the problem has nothing to optimize; ``inf`` when no certificate
            could be formed (far from the optimum after ``max_iter`` steps).
        iterations: Accepted steps (Osborne and Newton), summed over the components.
        converged: ``gap <= tol``.
    """

    value: float
    gamma: np.ndarray = field(repr=False)
    attained: bool
    gap: float
    iterations: int
    converged: bool


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def balance(
    M: ArrayLike,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    layer: str = "",
) -> Balance:
    """Solve ``inf over γ of Σ_{i,k} M[i,k] exp(γ_i − γ_k)`` (Tsuzuku et al. 2020, eq 35).

    ``NORMALIZED_SHARPNESS.md`` §2-3. The matrix is split into strongly connected components of
    the graph of its positive off-diagonal entries (``scipy.sparse.csgraph``, connection
    ``"strong"``, after peeling nodes without in- or out-edges); each component is balanced on its
    own by Osborne steps and a truncated Newton method, certified by a duality gap (see the module
    docstring).

    Args:
        M: Square nonnegative finite matrix, ``n ≥ 1`` (e.g. ``F̂_l · U_lᵀ``).
        tol: Target for :attr:`Balance.gap`, the bound on the relative suboptimality.
        max_iter: Most accepted steps per strongly connected component.
        layer: Name of the layer, used in error messages.

    Returns:
        The :class:`Balance` (value, optimal log-scales, attainment, certified gap).

    Raises:
        MeasureError: If ``M`` is not a square 2-D matrix with at least one row, has a negative
            entry, or ``tol``/``max_iter`` are out of range.
        NumericalError: If ``M`` has a non-finite entry, or the value overflows float64.
    """
    where = _where(layer)
    _check_options(tol, max_iter, where)
    matrix = _as_matrix(M, "M", where)
    if matrix.shape[0] != matrix.shape[1]:
        raise MeasureError(f"{where}expected a square matrix M, got shape {matrix.shape}")
    _check_entries(matrix, "M", where)
    n = matrix.shape[0]
    with np.errstate(over="ignore"):
        trace = float(np.trace(matrix))
    pattern = matrix > 0
    np.fill_diagonal(pattern, False)
    labels = _strong_components(pattern)
    gamma = np.zeros(n)
    partial = 0.0
    excess = 0.0
    iterations = 0
    for nodes in _groups(labels):
        if nodes.size < 2:
            continue
        sub = matrix.copy() if nodes.size == n else matrix[np.ix_(nodes, nodes)]
        np.fill_diagonal(sub, 0.0)
        solution = _solve_component(_Problem(nodes.size, [_Block.dense(sub)]), tol, max_iter)
        gamma[nodes] = solution.z
        partial += solution.value
        excess += solution.excess
        iterations += solution.iterations
    attained = _attained(pattern, labels)
    return _result(trace + partial, excess, gamma, attained, iterations, tol, where)


def balance_two_sided(
    F: ArrayLike,
    U: ArrayLike,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    layer: str = "",
) -> Balance:
    """The preprint's two-sided normalized sharpness of one layer (``NORMALIZED_SHARPNESS.md`` §5).

    Solves ``inf over γ ∈ R^out, γ' ∈ R^in of Σ_ij F_ij e^{γ_i+γ'_j} + Σ_ij U_ij e^{−γ_i−γ'_j}``,
    which equals ``2 · inf_γ Σ_j sqrt((Σ_i F_ij e^{γ_i}) (Σ_k U_kj e^{−γ_k}))``. With
    ``z = (γ, −γ')`` it is the balancing of the bipartite matrix ``N = [[0, F], [Uᵀ, 0]]``, solved
    like :func:`balance` (strong components of ``N``, then Osborne and Newton steps) without
    forming the zero blocks. A column ``j`` whose ``F`` or ``U`` part is identically 0 contributes 0
    (approached as ``γ'_j → ±∞``; not attained unless both are 0); an output whose rows of ``F`` and
    ``U`` are both 0 is isolated.

    Args:
        F: Nonnegative finite matrix of shape ``out × in`` (the clipped Hessian diagonal ``F̂_l``).
        U: Nonnegative finite matrix of the same shape (``W_l ⊙ W_l``).
        tol: Target for :attr:`Balance.gap`, the bound on the relative suboptimality.
        max_iter: Most accepted steps per strongly connected component of ``N``.
        layer: Name of the layer, used in error messages.

    Returns:
        The :class:`Balance`; ``gamma`` holds γ over the outputs, normalized so that ``(γ, −γ')``
        has mean 0 within every strongly connected component of ``N``.

    Raises:
        MeasureError: If ``F`` or ``U`` is not a 2-D matrix with at least one entry, their shapes
            differ, an entry is negative, or ``tol``/``max_iter`` are out of range.
        NumericalError: If an entry is non-finite, or the value overflows float64.
    """
    where = _where(layer)
    _check_options(tol, max_iter, where)
    f_matrix = _as_matrix(F, "F", where)
    u_matrix = _as_matrix(U, "U", where)
    if f_matrix.shape != u_matrix.shape:
        raise MeasureError(
            f"{where}expected F and U of the same shape (out × in), got F {f_matrix.shape} and "
            f"U {u_matrix.shape}"
        )
    _check_entries(f_matrix, "F", where)
    _check_entries(u_matrix, "U", where)
    n_out, n_in = f_matrix.shape
    size = n_out + n_in
    pattern = np.zeros((size, size), dtype=bool)
    pattern[:n_out, n_out:] = f_matrix > 0
    pattern[n_out:, :n_out] = (u_matrix > 0).T
    labels = _strong_components(pattern)
    z = np.zeros(size)
    partial = 0.0
    excess = 0.0
    iterations = 0
    for nodes in _groups(labels):
        outs, ins = nodes[nodes < n_out], nodes[nodes >= n_out] - n_out
        if outs.size == 0 or ins.size == 0:
            continue  # a single node: no entry inside the component
        p, q = outs.size, ins.size
        if p == n_out and q == n_in:
            f_block, u_block = f_matrix.copy(), u_matrix.copy().T
        else:
            cross = np.ix_(outs, ins)
            f_block, u_block = f_matrix[cross], u_matrix[cross].T  # a view: BLAS transposes
        blocks = [
            _Block(slice(0, p), slice(p, p + q), f_block),
            _Block(slice(p, p + q), slice(0, p), u_block),
        ]
        solution = _solve_component(_Problem(p + q, blocks), tol, max_iter)
        z[outs] = solution.z[:p]
        z[ins + n_out] = solution.z[p:]
        partial += solution.value
        excess += solution.excess
        iterations += solution.iterations
    attained = _attained(pattern, labels)
    return _result(partial, excess, z[:n_out].copy(), attained, iterations, tol, where)


def balance_objective(M: ArrayLike, gamma: ArrayLike) -> float:
    """``φ(γ) = Σ_{i,k} M[i,k] exp(γ_i − γ_k)``, evaluated in the log domain (eq 35).

    A reference for checking results: no intermediate overflows; the result is ``inf`` only where
    φ itself exceeds the float64 range.

    Args:
        M: Square nonnegative matrix.
        gamma: Log-scales, one per row.

    Returns:
        φ(γ) as a float.
    """
    matrix = np.asarray(M, dtype=np.float64)
    g = np.asarray(gamma, dtype=np.float64)
    positive = matrix > 0
    if not positive.any():
        return 0.0
    exponent = np.full(matrix.shape, -np.inf)
    np.log(matrix, out=exponent, where=positive)
    exponent += g[:, None] - g[None, :]
    top = float(exponent.max())
    total = float(np.exp(exponent - top).sum())
    return _exp_or_inf(top + math.log(total))


# ----------------------------------------------------------------------------------------------
# Validation and assembly
# ----------------------------------------------------------------------------------------------


def _where(layer: str) -> str:
    return f"layer {layer!r}: " if layer else ""


def _check_options(tol: float, max_iter: int, where: str) -> None:
    if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol >= 0):
        raise MeasureError(f"{where}expected tol to be a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise MeasureError(f"{where}expected max_iter to be an integer >= 0, got {max_iter!r}")


def _as_matrix(value: ArrayLike, name: str, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise MeasureError(
            f"{where}expected {name} to be a real matrix, got {type(value).__name__} ({error})"
        ) from error
    if array.dtype.kind not in "biuf":
        raise MeasureError(
            f"{where}expected {name} to be a real matrix, got an array of dtype {array.dtype}"
        )
    matrix = array.astype(np.float64, copy=False)
    if matrix.ndim != 2 or matrix.size == 0:
        raise MeasureError(
            f"{where}expected {name} to be a 2-D matrix with at least one entry, got shape "
            f"{matrix.shape}"
        )
    return matrix


def _check_entries(matrix: np.ndarray, name: str, where: str) -> None:
    low, high = float(matrix.min()), float(matrix.max())  # NaN propagates
    if not (math.isfinite(low) and math.isfinite(high)):
        finite = np.isfinite(matrix)
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise NumericalError(
            f"{where}expected finite entries in {name}, got {int((~finite).sum())} non-finite "
            f"(first {name}{list(index)} = {matrix[index]})"
        )
    if low < 0:
        negative = matrix < 0
        index = tuple(int(i) for i in np.argwhere(negative)[0])
        raise MeasureError(
            f"{where}expected nonnegative entries in {name}, got {int(negative.sum())} negative "
            f"(first {name}{list(index)} = {matrix[index]})"
        )


def _result(
    value: float,
    excess: float,
    gamma: np.ndarray,
    attained: bool,
    iterations: int,
    tol: float,
    where: str,
) -> Balance:
    if not math.isfinite(value):
        raise NumericalError(f"{where}the balanced value overflows float64 (got {value})")
    if excess == 0.0:
        gap = 0.0
    else:
        lower = value - excess
        gap = excess / lower if lower > 0 and math.isfinite(excess) else math.inf
    return Balance(
        value=float(value),
        gamma=gamma,
        attained=attained,
        gap=float(gap),
        iterations=int(iterations),
        converged=bool(gap <= tol),
    )


def _attained(pattern: np.ndarray, labels: np.ndarray) -> bool:
    """No positive entry joins two different strongly connected components."""
    if labels.max() == labels.min():
        return True
    return not bool(np.any(pattern & (labels[:, None] != labels[None, :])))


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    """Node indices of every label, in increasing order of label."""
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, cuts)


def _exp_or_inf(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------------------------
# Strongly connected components of a dense pattern
# ----------------------------------------------------------------------------------------------


def _strong_components(pattern: np.ndarray) -> np.ndarray:
    """Labels of the strongly connected components of the graph ``i → k`` where ``pattern[i, k]``.

    Equivalent to ``connected_components(pattern, directed=True, connection="strong")`` (labels
    may differ by a permutation). Dense graphs are handled without building a sparse matrix:
    nodes without in- or out-edges are peeled off as single components, and if one forward and
    backward search from one node covers the rest, the rest is one component; otherwise scipy
    labels the remaining core. Peeling stops after :data:`PEEL_ROUNDS` rounds.
    """
    n = pattern.shape[0]
    if n <= SMALL_GRAPH:
        return _scipy_components(pattern)
    labels = np.full(n, -1, dtype=np.int64)
    alive = np.arange(n)
    core = pattern
    for _ in range(PEEL_ROUNDS):
        keep = core.any(axis=1) & core.any(axis=0)
        if keep.all():
            break
        labels[alive[~keep]] = -2  # singletons, numbered below
        alive = alive[keep]
        core = core[np.ix_(keep, keep)]
    singles = np.flatnonzero(labels == -2)
    labels[singles] = np.arange(singles.size)
    count = singles.size
    if alive.size:
        if _reach(core, 0).all() and _reach(core.T, 0).all():
            labels[alive] = count
        else:
            labels[alive] = count + _scipy_components(core)
    return labels


def _scipy_components(pattern: np.ndarray) -> np.ndarray:
    _, labels = connected_components(
        csr_matrix(pattern.astype(np.int8)), directed=True, connection="strong"
    )
    return labels.astype(np.int64)


def _reach(pattern: np.ndarray, root: int) -> np.ndarray:
    """Nodes reachable from ``root`` along ``pattern`` (level by level, dense)."""
    seen = np.zeros(pattern.shape[0], dtype=bool)
    seen[root] = True
    frontier = np.array([root])
    while frontier.size:
        candidates = np.flatnonzero(~seen)
        if candidates.size == 0:
            break
        frontier, _ = _next_level(lambda r, c: pattern[np.ix_(r, c)], frontier, candidates)
        seen[frontier] = True
    return seen


def _next_level(
    edges: Callable[[np.ndarray, np.ndarray], np.ndarray],
    frontier: np.ndarray,
    candidates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates with an edge from the frontier, and one such frontier node for each.

    ``edges(a, b)[x, y]`` tells whether ``a[x] → b[y]``. The frontier is scanned in chunks and
    candidates already reached are dropped, so a dense graph costs ``O(CHUNK · n)`` per level.
    """
    parents = np.full(candidates.size, -1, dtype=np.int64)
    remaining = np.arange(candidates.size)
    for start in range(0, frontier.size, CHUNK):
        chunk = frontier[start : start + CHUNK]
        sub = edges(chunk, candidates[remaining])
        hit = sub.any(axis=0)
        if hit.any():
            parents[remaining[hit]] = chunk[sub[:, hit].argmax(axis=0)]
            remaining = remaining[~hit]
            if remaining.size == 0:
                break
    reached = parents >= 0
    return candidates[reached], parents[reached]


# ----------------------------------------------------------------------------------------------
# One strongly connected component
# ----------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """One block ``S[rows, cols]`` of a component; ``initial`` is an owned copy, scaled in place."""

    rows: slice
    cols: slice
    initial: np.ndarray
    base: np.ndarray = field(init=False)
    log: np.ndarray | None = field(default=None, init=False)

    @classmethod
    def dense(cls, matrix: np.ndarray) -> _Block:
        return cls(slice(0, matrix.shape[0]), slice(0, matrix.shape[1]), matrix)

    def __post_init__(self) -> None:
        self.base = self.initial

    def positive(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether the entries ``[rows, cols]`` (local index arrays, outer product) are positive."""
        if self.log is not None:
            return self.log[np.ix_(rows, cols)] > -np.inf
        return self.initial[np.ix_(rows, cols)] > 0


def _log(matrix: np.ndarray) -> np.ndarray:
    out = np.full(matrix.shape, -np.inf)
    np.log(matrix, out=out, where=matrix > 0)
    return out


class _Problem:
    """The balancing problem of one strongly connected component, as a sum of blocks.

    Units: the component is divided by its largest entry (``log_scale`` restores it). The scaled
    matrix at ``z`` is ``S(z) = diag(e^{z−z₀}) S₀ diag(e^{z₀−z}) · φ(z₀)`` with the base ``S₀``
    (summing to 1) materialized at ``z₀``; at first ``z₀ = 0`` and ``S₀`` is the scaled input.
    Logs of the entries are computed only when needed (a rebase or an exact evaluation), except
    for inputs whose entries span more than :data:`EXTREME_RATIO`, where dividing by the largest
    entry would underflow.
    """

    def __init__(self, size: int, blocks: list[_Block]) -> None:
        self.size = size
        self.blocks = blocks
        top = max(float(block.initial.max()) for block in blocks)
        smallest = min(
            float(np.min(block.initial, where=block.initial > 0, initial=np.inf))
            for block in blocks
        )
        if smallest < top * EXTREME_RATIO:
            for block in blocks:
                block.log = _log(block.initial) - math.log(top)
        with np.errstate(over="ignore"):
            total = sum(float(block.initial.sum()) for block in blocks)
        if math.isfinite(total) and total > 1e-290:
            for block in blocks:
                block.initial *= 1.0 / total
            log_total = math.log(total) - math.log(top)
        else:  # the sum overflows or is tiny: divide by the largest entry first
            for block in blocks:
                block.initial /= top
            total = sum(float(block.initial.sum()) for block in blocks)
            for block in blocks:
                block.initial /= total
            log_total = math.log(total)
        self.log_scale = math.log(top)
        self.log_total = log_total  # log φ(0) in the units of the largest entry
        self.z0 = np.zeros(size)
        self._settle()

    def _settle(self) -> None:
        ones = np.ones(self.size)
        self.base_row, self.base_col = self.sums(ones, ones)
        self.underflow = bool(min(self.base_row.min(), self.base_col.min()) < TINY)

    def block_log(self, block: _Block) -> np.ndarray:
        if block.log is None:
            block.log = _log(block.initial) + self.log_total
        return block.log

    # -- log domain ---------------------------------------------------------------------------

    def _exponents(self, z: np.ndarray) -> list[np.ndarray]:
        return [
            np.subtract.outer(z[block.rows], z[block.cols]) + self.block_log(block)
            for block in self.blocks
        ]  # −inf stays −inf

    def rebase(self, z: np.ndarray) -> float:
        """Materialize the base at ``z``; return ``log φ(z)`` (in normalized units)."""
        exponents = self._exponents(z)
        top = max(float(x.max()) for x in exponents)
        total = 0.0
        for block, x in zip(self.blocks, exponents, strict=True):
            x -= top
            np.exp(x, out=x)
            block.base = x
            total += float(x.sum())
        for block in self.blocks:
            block.base /= total
        self.z0 = z.copy()
        self._settle()
        return top + math.log(total)

    def log_phi(self, z: np.ndarray) -> float:
        """``log φ(z)`` by log-sum-exp."""
        exponents = self._exponents(z)
        top = max(float(x.max()) for x in exponents)
        total = sum(float(np.exp(x - top).sum()) for x in exponents)
        return top + math.log(total)

    def log_sums(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logs of the row and column sums of ``S(z)`` by log-sum-exp."""
        row = np.full(self.size, -np.inf)
        col = np.full(self.size, -np.inf)
        for block, x in zip(self.blocks, self._exponents(z), strict=True):
            row[block.rows] = np.logaddexp(row[block.rows], _logsumexp(x, axis=1))
            col[block.cols] = np.logaddexp(col[block.cols], _logsumexp(x, axis=0))
        return row, col

    def log_entry(self, i: np.ndarray, k: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``log S(z)[i, k]`` (normalized units) for index arrays."""
        out = np.full(i.shape, -np.inf)
        for block in self.blocks:
            r0, r1 = block.rows.start, block.rows.stop
            c0, c1 = block.cols.start, block.cols.stop
            inside = (i >= r0) & (i < r1) & (k >= c0) & (k < c1)
            if not inside.any():
                continue
            rows, cols = i[inside] - r0, k[inside] - c0
            if block.log is not None:
                out[inside] = block.log[rows, cols]
            else:
                values = block.initial[rows, cols]
                logs = np.full(values.shape, -np.inf)
                np.log(values, out=logs, where=values > 0)
                out[inside] = logs + self.log_total
        return out + z[i] - z[k]

    # -- implicit products with the base --------------------------------------------------------

    def sums(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column sums of ``diag(a) S₀ diag(b)``."""
        row = np.zeros(self.size)
        col = np.zeros(self.size)
        for block in self.blocks:
            row[block.rows] += a[block.rows] * (block.base @ b[block.cols])
            col[block.cols] += b[block.cols] * (a[block.rows] @ block.base)
        return row, col

    def total(self, a: np.ndarray, b: np.ndarray) -> float:
        """``aᵀ S₀ b``."""
        return float(sum(a[blk.rows] @ (blk.base @ b[blk.cols]) for blk in self.blocks))

    def symmetric_product(self, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``(S + Sᵀ) x`` for ``S = diag(a) S₀ diag(b)``."""
        out = np.zeros(self.size)
        ax, bx = a * x, b * x
        for block in self.blocks:
            out[block.rows] += a[block.rows] * (block.base @ bx[block.cols])
            out[block.cols] += b[block.cols] * (ax[block.rows] @ block.base)
        return out

    def edges(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Boolean ``[len(rows), len(cols)]``: which pairs ``rows[a] → cols[b]`` are entries."""
        out = np.zeros((rows.size, cols.size), dtype=bool)
        for block in self.blocks:
            in_rows = (rows >= block.rows.start) & (rows < block.rows.stop)
            in_cols = (cols >= block.cols.start) & (cols < block.cols.stop)
            if in_rows.any() and in_cols.any():
                out[np.ix_(in_rows, in_cols)] = block.positive(
                    rows[in_rows] - block.rows.start, cols[in_cols] - block.cols.start
                )
        return out


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - top).sum(axis=axis)) + top.squeeze(axis)


@dataclass
class _Trees:
    """A spanning out-tree and in-tree of a strongly connected component, by BFS levels."""

    root: int
    out_parent: np.ndarray
    out_levels: list[np.ndarray]
    in_parent: np.ndarray
    in_levels: list[np.ndarray]

    @classmethod
    def build(cls, problem: _Problem) -> _Trees:
        root = int(np.argmax(problem.base_row + problem.base_col))
        out_parent, out_levels = _bfs_tree(problem.edges, problem.size, root)
        in_parent, in_levels = _bfs_tree(
            lambda rows, cols: problem.edges(cols, rows).T, problem.size, root
        )
        return cls(root, out_parent, out_levels, in_parent, in_levels)

    def route(self, demand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nonnegative edge flows ``(i, k, flow)`` on the trees whose divergence is ``demand``.

        A node with ``demand > 0`` sends it to the root along the in-tree; a node with
        ``demand < 0`` receives it from the root along the out-tree (the root takes the rest).
        """
        send = np.maximum(demand, 0.0)
        receive = np.maximum(-demand, 0.0)
        send[self.root] = receive[self.root] = 0.0
        up = _subtree_sums(send, self.in_parent, self.in_levels)
        down = _subtree_sums(receive, self.out_parent, self.out_levels)
        nodes = np.arange(demand.size)
        nodes = nodes[nodes != self.root]
        size = demand.size
        keys = np.concatenate(
            [nodes * size + self.in_parent[nodes], self.out_parent[nodes] * size + nodes]
        )
        flows = np.concatenate([up[nodes], down[nodes]])
        keep = flows > 0
        unique, inverse = np.unique(keys[keep], return_inverse=True)
        merged = np.bincount(inverse, weights=flows[keep], minlength=unique.size)
        return unique // size, unique % size, merged


def _bfs_tree(
    edges: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, root: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Parents and levels of a BFS tree from ``root``; ``edges(a, b)[x, y]``: is ``a[x] → b[y]``."""
    parent = np.full(n, -1, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    seen[root] = True
    levels = [np.array([root])]
    while True:
        candidates = np.flatnonzero(~seen)
        if candidates.size == 0:
            break
        new, parents = _next_level(edges, levels[-1], candidates)
        if new.size == 0:
            break  # not strongly connected (cannot happen for a component)
        parent[new] = parents
        seen[new] = True
        levels.append(new)
    return parent, levels


def _subtree_sums(values: np.ndarray, parent: np.ndarray, levels: list[np.ndarray]) -> np.ndarray:
    acc = values.copy()
    for level in reversed(levels[1:]):
        np.add.at(acc, parent[level], acc[level])
    return acc


def _psi(t: np.ndarray) -> np.ndarray:
    """``ψ(t) = (1+t) log(1+t) − t`` for ``t > −1``, accurate near 0."""
    t = np.asarray(t, dtype=np.float64)
    small = np.abs(t) < 1e-3
    ts = np.where(small, t, 0.0)
    series = ts * ts * (0.5 - ts * (1.0 / 6.0 - ts / 12.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        direct = (1.0 + t) * np.log1p(t) - t
    return np.where(small, series, direct)


@dataclass
class _Solution:
    z: np.ndarray
    value: float  # φ of the component at z, in the units of M
    excess: float  # certified φ − D, in the units of M (inf when not certified)
    iterations: int


class _State:
    """The scaled matrix at ``z`` in normalized units (``φ(z) = 1``): ``diag(a) S₀ diag(b)``."""

    def __init__(self, problem: _Problem, z: np.ndarray, log_phi: float, log_phi0: float) -> None:
        self.z = z
        self.log_phi = log_phi
        delta = z - problem.z0
        center = 0.5 * (delta.max() + delta.min())
        self.a = np.exp(delta - center - (log_phi - log_phi0))
        self.b = np.exp(center - delta)
        if problem.underflow:
            log_row, log_col = problem.log_sums(z)
            self.row = np.exp(log_row - log_phi)
            self.col = np.exp(log_col - log_phi)
        elif not delta.any() and log_phi == log_phi0:
            self.row, self.col = problem.base_row, problem.base_col
            log_row = log_col = None
        else:
            self.row, self.col = problem.sums(self.a, self.b)
            log_row = log_col = None
        self.log_row, self.log_col = log_row, log_col
        self.gradient = self.row - self.col
        self.diagonal = np.maximum(self.row + self.col, 1e-300)

    def osborne_direction(self) -> np.ndarray:
        if self.log_row is not None and self.log_col is not None:
            return 0.5 * (self.log_col - self.log_row)
        if min(self.row.min(), self.col.min()) > TINY:
            return 0.5 * (np.log(self.col) - np.log(self.row))
        return np.zeros_like(self.z)


def _solve_component(problem: _Problem, tol: float, max_iter: int) -> _Solution:
    """Balance one strongly connected component (see the module docstring)."""
    m = problem.size
    trees = _Trees.build(problem)
    log_phi0 = problem.log_total
    state = _State(problem, np.zeros(m), log_phi0, log_phi0)
    osborne = True
    osborne_steps = 0
    iterations = 0
    slack = 8.0 * m * _EPS
    while True:
        newton: tuple[np.ndarray, np.ndarray] | None = None  # (h, residual) at this state
        excess = math.inf  # certified φ − D at this state, normalized
        if osborne:
            direction = state.osborne_direction()
            if float(np.abs(direction).max()) <= OSBORNE_EXIT or osborne_steps >= OSBORNE_MAX:
                osborne = False
        if not osborne:
            newton = _newton_direction(problem, state)
            direction = _clip(newton[0], state.diagonal, NEWTON_SPREAD_CAP)
            estimate = -0.5 * float(state.gradient @ direction)
            if estimate <= CERTIFY_FACTOR * tol or iterations >= max_iter:
                excess = _certificate(problem, trees, state, *newton)
                if excess <= tol * (1.0 - excess) or iterations >= max_iter:
                    break
        if iterations >= max_iter:
            break
        step = _line_search(problem, state, direction, slack)
        if step is None:
            if osborne:
                osborne = False  # let Newton's method try
                continue
            break
        z, log_phi, exact = step
        iterations += 1
        if osborne:
            osborne_steps += 1
            if log_phi - state.log_phi > math.log1p(-OSBORNE_PROGRESS):
                osborne = False  # stagnating: Newton's method does better
        delta = z - problem.z0
        if exact or float(delta.max() - delta.min()) > REBASE_SPREAD:
            log_phi = problem.rebase(z)
            log_phi0 = log_phi
        state = _State(problem, z, log_phi, log_phi0)
    if math.isinf(excess):
        if newton is None:
            newton = _newton_direction(problem, state)
        excess = _certificate(problem, trees, state, *newton)
    z = state.z - state.z.mean()
    phi = _exp_or_inf(state.log_phi + problem.log_scale)
    return _Solution(z=z, value=phi, excess=excess * phi, iterations=iterations)


def _newton_direction(problem: _Problem, state: _State) -> tuple[np.ndarray, np.ndarray]:
    """Newton direction ``h`` (``H h = −g``) by conjugate gradients, and its residual ``−g − H h``.

    H is the Laplacian of ``S + Sᵀ`` and g the gradient, both for ``φ = 1``. The system is solved
    to the relative residual ``min(0.1, sqrt(‖g‖₁))`` (a truncated Newton method).
    """
    g = state.gradient
    g_norm = float(np.abs(g).sum())
    rtol = min(0.1, max(math.sqrt(g_norm), 1e-12))
    h = _pcg(problem, state, -g, rtol, maxiter=max(50, min(problem.size, 500)))
    h -= h.mean()
    residual = -g - _hessian_product(problem, state, h)
    return h, residual


def _clip(h: np.ndarray, weight: np.ndarray, spread: float) -> np.ndarray:
    """``h`` clipped to ``spread`` around its weighted median.

    Nodes of negligible weight get inaccurate Newton components (the conjugate-gradient error in
    ``h_i`` scales like ``1/sqrt(weight_i)``); clipping them, instead of shrinking the whole step,
    keeps the step of the nodes that matter.
    """
    if float(h.max() - h.min()) <= spread:
        return h
    order = np.argsort(h)
    cumulative = np.cumsum(weight[order])
    center = float(h[order[np.searchsorted(cumulative, 0.5 * cumulative[-1])]])
    return np.clip(h, center - 0.5 * spread, center + 0.5 * spread)


def _hessian_product(problem: _Problem, state: _State, x: np.ndarray) -> np.ndarray:
    return state.diagonal * x - problem.symmetric_product(state.a, state.b, x)


def _pcg(
    problem: _Problem, state: _State, rhs: np.ndarray, rtol: float, maxiter: int
) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients on the (singular, consistent) Laplacian system."""
    x = np.zeros_like(rhs)
    # Σ rhs = 0 up to rounding; remove that rounding in proportion to each node's weight, so that
    # nodes of negligible weight are not handed a demand they cannot carry
    r = rhs - state.diagonal * (rhs.sum() / state.diagonal.sum())
    target = rtol * float(np.linalg.norm(r))
    if target == 0.0:
        return x
    inverse = 1.0 / state.diagonal
    z = inverse * r
    p = z.copy()
    rz = float(r @ z)
    for _ in range(maxiter):
        q = _hessian_product(problem, state, p)
        curvature = float(p @ q)
        if not curvature > 0:
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * q
        if float(np.linalg.norm(r)) <= target:
            break
        z = inverse * r
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _certificate(
    problem: _Problem, trees: _Trees, state: _State, h: np.ndarray, residual: np.ndarray
) -> float:
    """Upper bound on ``(φ(z) − D(w)) / φ(z)`` for a circulation ``w`` built from ``h``.

    Any ``h`` gives a valid bound: ``w = S ⊙ (1 + h_i − h_k)`` plus nonnegative tree flows that
    cancel its divergence ``−residual`` (``residual = −g − H h``). The bound is
    ``hᵀHh / (2(1 − spread))`` (from ``ψ(t) ≤ t²/(2(1 − spread))`` for ``t ≥ −spread``) plus the
    exact change of ``Σ_e S_e ψ(t_e)`` on the tree edges. Where the Newton direction spreads by
    more than :data:`CERTIFY_SPREAD` (nodes of negligible weight, whose gradient is rounding
    noise), it is clipped around its weighted median first. Returns ``inf`` if the bound is not
    below 1.
    """
    if float(h.max() - h.min()) > CERTIFY_SPREAD:
        h = _clip(h, state.diagonal, CERTIFY_SPREAD)
        residual = -state.gradient - _hessian_product(problem, state, h)
    spread = float(h.max() - h.min())
    if not spread < 1.0:
        return math.inf
    quadratic = max(-float(h @ (state.gradient + residual)), 0.0)  # hᵀ H h
    bound = quadratic / (2.0 * (1.0 - spread))
    i, k, flow = trees.route(residual)
    if flow.size:
        log_s = problem.log_entry(i, k, state.z) - state.log_phi
        s = np.exp(log_s)
        t = h[i] - h[k]
        electrical = s * _psi(t)
        # S ψ(w/S − 1) with w = S (1 + t) + flow: by ψ where the flow is at most S, else as
        # w log(w / S) − w + S with log S exact (S may underflow)
        weight = flow + s * (1.0 + t)
        small = (s > 1e-280) & (flow <= s)
        safe_s = np.where(small, s, 1.0)
        with np.errstate(divide="ignore"):
            log_weight = np.log(weight)
        total = np.where(
            small,
            s * _psi(t + np.where(small, flow, 0.0) / safe_s),
            weight * (log_weight - log_s) - weight + s,
        )
        bound += float(np.sum(total - electrical))
    return bound if bound < 1.0 else math.inf


def _line_search(
    problem: _Problem, state: _State, direction: np.ndarray, slack: float
) -> tuple[np.ndarray, float, bool] | None:
    """Armijo backtracking along ``direction``; returns ``(z, log φ(z), evaluated exactly)``."""
    slope = float(state.gradient @ direction)
    if not slope < 0:
        return None
    alpha = 1.0
    for _ in range(MAX_BACKTRACK):
        z = state.z + alpha * direction
        delta = z - problem.z0
        width = float(delta.max() - delta.min())
        exact = problem.underflow or width > IMPLICIT_SPREAD
        if exact:
            log_ratio = problem.log_phi(z) - state.log_phi
        else:
            shift = alpha * direction
            mid = 0.5 * (shift.max() + shift.min())
            with np.errstate(over="ignore"):
                ratio = problem.total(state.a * np.exp(shift - mid), state.b * np.exp(mid - shift))
            log_ratio = math.log(ratio) if ratio > 0 else -math.inf
        target = 1.0 + ARMIJO * alpha * slope
        if target > 0 and log_ratio <= math.log(target) + slack and math.isfinite(log_ratio):
            return z, state.log_phi + log_ratio, exact
        alpha *= 0.5
    return None
