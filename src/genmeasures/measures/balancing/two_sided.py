"""The preprint's two-sided form (``NORMALIZED_SHARPNESS.md`` §5): a bipartite balancing."""

from __future__ import annotations

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
    _result,
    _where,
)
from genmeasures.measures.balancing.solver import (
    _solve_component,
)


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
