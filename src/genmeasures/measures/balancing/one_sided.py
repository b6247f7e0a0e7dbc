"""The paper's one-sided balancing of a square matrix (eq 35) and its objective φ(γ)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from genmeasures.errors import MeasureError
from genmeasures.measures.balancing.components import (
    _attained,
    _groups,
    _strong_components,
)
from genmeasures.measures.balancing.constants import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
)
from genmeasures.measures.balancing.problem import (
    _Block,
    _Problem,
)
from genmeasures.measures.balancing.result import (
    Balance,
    _as_matrix,
    _check_entries,
    _check_options,
    _exp_or_inf,
    _result,
    _where,
)
from genmeasures.measures.balancing.solver import (
    _solve_component,
)


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
