"""Balancing one strongly connected component: Osborne steps, then truncated Newton."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genmeasures.measures.balancing.certificate import (
    _certificate,
    _Trees,
)
from genmeasures.measures.balancing.constants import (
    _EPS,
    ARMIJO,
    CERTIFY_FACTOR,
    IMPLICIT_SPREAD,
    MAX_BACKTRACK,
    NEWTON_SPREAD_CAP,
    OSBORNE_EXIT,
    OSBORNE_MAX,
    OSBORNE_PROGRESS,
    REBASE_SPREAD,
)
from genmeasures.measures.balancing.problem import (
    _clip,
    _hessian_product,
    _Problem,
    _State,
)
from genmeasures.measures.balancing.result import (
    _exp_or_inf,
)


@dataclass
class _Solution:
    z: np.ndarray
    value: float  # φ of the component at z, in the units of M
    excess: float  # certified φ − D, in the units of M (inf when not certified)
    iterations: int


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
