"""The spectrum of the Hessian: its trace by Hutchinson's estimator, its top eigenpair by Lanczos.

Both w.r.t. **all** parameters of the folded model (weights and biases) in ``named_parameters()``
order, or of the unfolded model if it cannot be folded
(:func:`~genmeasures.measures.parameters.differentiated_parameters`), by Hessian-vector products
of :class:`~genmeasures.measures.curvature.loss._Loss`: the
trace of paper eq 6 (Tsuzuku et al. 2020), and ``λ_max`` by Lanczos with full
reorthogonalization.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from genmeasures.errors import GenMeasuresWarning, MeasureError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.curvature.diagonal import _exact_diagonal
from genmeasures.measures.curvature.loss import _chunks, _like, _Loss
from genmeasures.validation import Integer, Real, check

__all__ = [
    "LANCZOS_PURPOSE",
    "TRACE_PURPOSE",
    "TopEigenpair",
    "hessian_max_eigenvalue",
    "hessian_top_eigenpair",
    "hessian_trace",
    "hessian_trace_samples",
    "mean_and_standard_error",
]

#: Random-stream purposes (:meth:`MeasureContext.generator`, index 0) of the trace's probes and
#: of the Lanczos start vector.
TRACE_PURPOSE = "curvature/hessian-trace"
LANCZOS_PURPOSE = "curvature/lanczos"


def hessian_trace_samples(
    ctx: MeasureContext,
    *,
    probes: int,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Hutchinson samples of the Hessian trace (paper eq 6), split by parameter tensor.

    For K Rademacher probes ``z_k`` over all parameters of the folded model, sample k of
    parameter p is ``Σ_{i ∈ p} z_{k,i} (H z_k)_i``: summed over the parameters it is
    ``z_kᵀ H z_k``, whose mean over k estimates ``Tr H`` without bias; the mean of one
    parameter's samples estimates the trace of its diagonal block. Cost: K HVPs
    (≈ 2K gradient-equivalents). With ``exact=True`` there is one "sample", the exact diagonal
    summed over each parameter (P HVPs: tiny networks only).

    Args:
        ctx: The measure context (needs the training set).
        probes: K ≥ 1 (validated, and unused when ``exact``).
        exact: Sum the exact diagonal instead.
        generator: Source of the probes; defaults to ``ctx.generator(TRACE_PURPOSE)``.

    Returns:
        Parameter name (``named_parameters()`` of the folded model, in order) → float64 tensor of
        shape ``(K,)`` (``(1,)`` when ``exact``).

    Raises:
        MeasureError: for ``probes`` that is not an int ≥ 1.
    """
    probes = check(
        probes, Integer(1), where="hessian_trace", parameter="probes", error=MeasureError
    )
    loss = _Loss(ctx)
    if exact:
        return {n: d.sum().reshape(1) for n, d in _exact_diagonal(loss).items()}
    generator = ctx.generator(TRACE_PURPOSE) if generator is None else generator
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in loss.names}
    for lo, hi in _chunks(probes, loss.chunk_size()):
        z = loss.rademacher(generator, hi - lo)
        hz = loss.hvps(z)
        for n in loss.names:
            samples[n].append((z[n].double() * hz[n]).flatten(1).sum(1))
    return {n: torch.cat(values) for n, values in samples.items()}


def mean_and_standard_error(samples: torch.Tensor) -> tuple[float, float]:
    """Mean of K samples and its standard error ``std(correction=1) / sqrt(K)`` (NaN for K = 1)."""
    count = len(samples)
    error = float(samples.std(correction=1)) / math.sqrt(count) if count > 1 else math.nan
    return float(samples.mean()), error


def hessian_trace(
    ctx: MeasureContext,
    *,
    probes: int,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Trace of the Hessian of the training loss w.r.t. all parameters (paper eq 6).

    Hutchinson's estimator ``(1/K) Σ_k z_kᵀ H z_k`` with K Rademacher probes over all parameters
    of the folded model (:func:`hessian_trace_samples` summed over the parameters); cost K HVPs
    (≈ 2K gradient-equivalents). With ``exact=True`` the trace is the sum of the exact diagonal,
    one HVP per parameter (P HVPs: tiny networks only).

    Args:
        ctx: The measure context (needs the training set).
        probes: K ≥ 1 (validated, and unused when ``exact``).
        exact: Sum the exact diagonal instead.
        generator: Source of the probes; defaults to ``ctx.generator(TRACE_PURPOSE)``.

    Returns:
        ``(estimate, standard_error)``: the standard error is ``std_k(z_kᵀHz_k) / sqrt(K)``
        (sample standard deviation), NaN for K = 1, and 0.0 when ``exact``.

    Raises:
        MeasureError: for ``probes`` that is not an int ≥ 1.
    """
    samples = hessian_trace_samples(ctx, probes=probes, exact=exact, generator=generator)
    total = torch.stack(list(samples.values())).sum(0)
    if exact:
        return float(total[0]), 0.0
    return mean_and_standard_error(total)


@dataclass(frozen=True)
class TopEigenpair:
    """Result of :func:`hessian_top_eigenpair`.

    Attributes:
        value: The largest Ritz value, an estimate of ``λ_max`` (never above it in exact
            arithmetic).
        vector: The unit Ritz vector, one float64 tensor per parameter of the folded model, in
            ``named_parameters()`` order, keyed by name.
        residual: ``‖H v − λ v‖``, estimated by Lanczos as ``β_j |y_j|``.
        iterations: Lanczos steps taken (HVPs).
        converged: Whether the residual reached ``tol · |λ|`` (or an invariant subspace).
    """

    value: float
    vector: dict[str, torch.Tensor] = field(repr=False)
    residual: float
    iterations: int
    converged: bool


def hessian_top_eigenpair(
    ctx: MeasureContext,
    *,
    iterations: int = 100,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> TopEigenpair:
    """Largest (algebraic) eigenvalue of the Hessian of the training loss, and its eigenvector.

    Lanczos iteration with full reorthogonalization on the HVP w.r.t. all parameters of the
    folded model, from a Rademacher start vector. It stops when the residual ``β_j |y_j|`` of
    the top Ritz pair is at most ``tol · |λ|``, on an invariant subspace, or after
    ``iterations`` steps (then ``converged`` is False). Cost: one HVP (≈ 2 gradient-equivalents)
    per iteration, and ``iterations × P`` float64 numbers of memory for the basis.

    Args:
        ctx: The measure context (needs the training set).
        iterations: Maximum number of Lanczos steps (≥ 1); capped at P.
        tol: Relative residual tolerance (> 0).
        generator: Source of the start vector; defaults to ``ctx.generator(LANCZOS_PURPOSE)``.

    Returns:
        The :class:`TopEigenpair`.

    Raises:
        MeasureError: for an invalid ``iterations`` or ``tol``.
    """
    where = "hessian_max_eigenvalue"
    iterations = check(
        iterations, Integer(1), where=where, parameter="iterations", error=MeasureError
    )
    tol = check(tol, Real(0.0, open_minimum=True), where=where, parameter="tol", error=MeasureError)
    loss = _Loss(ctx)
    generator = ctx.generator(LANCZOS_PURPOSE) if generator is None else generator
    steps = min(iterations, loss.size)
    start = loss.network.flatten(loss.rademacher(generator, 1), leading=1)[0].double()
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        vector = {
            n: v[None].to(**_like(loss.params[n]))
            for n, v in loss.network.unflatten(basis[j]).items()
        }
        w = loss.network.flatten(loss.hvps(vector), leading=1)[0]
        alphas.append(float(w @ basis[j]))
        stacked = torch.stack(basis)
        for _ in range(2):  # full reorthogonalization, twice for stability
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        top = float(values[-1])
        residual = beta * abs(float(vectors[-1, -1]))
        scale = max(abs(top), float(values.abs().max()), 1e-300)
        converged = (
            residual <= tol * max(abs(top), 1e-300) or beta <= 1e-14 * scale or j + 1 == loss.size
        )
        if converged or j + 1 == steps:
            ritz = stacked.T @ vectors[:, -1]
            return TopEigenpair(
                value=top,
                vector=loss.network.unflatten(ritz / ritz.norm()),
                residual=residual,
                iterations=j + 1,
                converged=converged,
            )
        betas.append(beta)
        basis.append(w / beta)
    raise AssertionError("unreachable: the loop returns at its last step")


def hessian_max_eigenvalue(
    ctx: MeasureContext,
    *,
    iterations: int = 100,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> float:
    """Largest (algebraic) eigenvalue of the Hessian of the training loss w.r.t. all parameters.

    The value of :func:`hessian_top_eigenpair`, with a :class:`GenMeasuresWarning` when
    Lanczos stopped before reaching the relative residual ``tol``.

    Args:
        ctx: The measure context (needs the training set).
        iterations: Maximum number of Lanczos steps (≥ 1); capped at P.
        tol: Relative residual tolerance (> 0).
        generator: Source of the start vector; defaults to ``ctx.generator(LANCZOS_PURPOSE)``.

    Returns:
        The largest Ritz value, an estimate of ``λ_max`` (never above it in exact arithmetic).

    Raises:
        MeasureError: for an invalid ``iterations`` or ``tol``.
    """
    pair = hessian_top_eigenpair(ctx, iterations=iterations, tol=tol, generator=generator)
    if not pair.converged:
        warnings.warn(
            f"hessian_max_eigenvalue: Lanczos did not reach the relative residual {tol:g} in "
            f"{pair.iterations} iterations; returning the top Ritz value {pair.value:.6g}",
            GenMeasuresWarning,
            stacklevel=2,
        )
    return pair.value
