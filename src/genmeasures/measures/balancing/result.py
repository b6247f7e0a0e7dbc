"""The :class:`Balance` result, validation of the inputs, and its assembly from the components."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from genmeasures.errors import MeasureError, NumericalError
from genmeasures.validation import Integer, Real, check


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


def _where(layer: str) -> str:
    return f"layer {layer!r}: " if layer else ""


def _check_options(tol: float, max_iter: int, where: str) -> None:
    context = where.removesuffix(": ") or "balance"
    check(tol, Real(0.0), where=context, parameter="tol", error=MeasureError)
    check(max_iter, Integer(0), where=context, parameter="max_iter", error=MeasureError)


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


def _exp_or_inf(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
