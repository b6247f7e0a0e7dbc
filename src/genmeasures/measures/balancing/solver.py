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


@dataclass
class _OsbornePhase:
    """The first phase: Osborne's diagonal steps, until they stop paying (module docstring)."""

    active: bool = True
    steps: int = 0

    def direction(self, state: _State) -> np.ndarray | None:
        """Osborne's direction at ``state``, or None once the phase is over."""
        if not self.active:
            return None
        direction = state.osborne_direction()
        if float(np.abs(direction).max()) <= OSBORNE_EXIT or self.steps >= OSBORNE_MAX:
            self.active = False
            return None
        return direction

    def accepted(self, log_phi_before: float, log_phi_after: float) -> None:
        """Count an accepted step; end the phase when it decreases φ too little."""
        if not self.active:
            return
        self.steps += 1
        if log_phi_after - log_phi_before > math.log1p(-OSBORNE_PROGRESS):
            self.active = False  # stagnating: Newton's method does better


def _solve_component(problem: _Problem, tol: float, max_iter: int) -> _Solution:
    """Balance one strongly connected component (see the module docstring)."""
    m = problem.size
    trees = _Trees.build(problem)
    log_phi0 = problem.log_total
    state = _State(problem, np.zeros(m), log_phi0, log_phi0)
    osborne = _OsbornePhase()
    iterations = 0
    slack = 8.0 * m * _EPS
    while True:
        newton: tuple[np.ndarray, np.ndarray] | None = None  # (h, residual) at this state
        excess = math.inf  # certified φ − D at this state, normalized
        direction = osborne.direction(state)
        if direction is None:
            out_of_steps = iterations >= max_iter
            direction, newton, excess = _newton_step(problem, trees, state, tol, out_of_steps)
            if out_of_steps or excess <= tol * (1.0 - excess):
                break
        if iterations >= max_iter:
            break
        step = _line_search(problem, state, direction, slack)
        if step is None:
            if osborne.active:
                osborne.active = False  # let Newton's method try
                continue
            break
        z, log_phi, exact = step
        iterations += 1
        osborne.accepted(state.log_phi, log_phi)
        state, log_phi0 = _accepted(problem, z, log_phi, log_phi0, exact)
    if math.isinf(excess):
        if newton is None:
            newton = _newton_direction(problem, state)
        excess = _certificate(problem, trees, state, *newton)
    z = state.z - state.z.mean()
    phi = _exp_or_inf(state.log_phi + problem.log_scale)
    return _Solution(z=z, value=phi, excess=excess * phi, iterations=iterations)


def _newton_step(
    problem: _Problem, trees: _Trees, state: _State, tol: float, last: bool
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], float]:
    """Newton's clipped direction at ``state``, the Newton pair, and the certified excess.

    The excess (normalized φ − D) is certified only when the predicted decrease is within
    reach of ``tol`` or this is the ``last`` step; otherwise it is inf.
    """
    newton = _newton_direction(problem, state)
    direction = _clip(newton[0], state.diagonal, NEWTON_SPREAD_CAP)
    estimate = -0.5 * float(state.gradient @ direction)
    if estimate <= CERTIFY_FACTOR * tol or last:
        return direction, newton, _certificate(problem, trees, state, *newton)
    return direction, newton, math.inf


def _accepted(
    problem: _Problem, z: np.ndarray, log_phi: float, log_phi0: float, exact: bool
) -> tuple[_State, float]:
    """The state at an accepted point, rebased when its spread grows (or the step was exact)."""
    delta = z - problem.z0
    if exact or float(delta.max() - delta.min()) > REBASE_SPREAD:
        log_phi = problem.rebase(z)
        log_phi0 = log_phi
    return _State(problem, z, log_phi, log_phi0), log_phi0


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
