"""One strongly connected component as a balancing problem, and the scaled matrix at ``z``.

Its blocks, base and log domain (:class:`_Problem`), the scaled matrix (:class:`_State`), and
products with the Hessian of φ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from genmeasures.measures.balancing.constants import (
    EXTREME_RATIO,
    TINY,
)


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
