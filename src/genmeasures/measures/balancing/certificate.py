"""The duality certificate: a circulation routed along spanning trees bounds ``φ − inf φ``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genmeasures.measures.balancing.components import (
    _next_level,
)
from genmeasures.measures.balancing.constants import (
    CERTIFY_SPREAD,
)
from genmeasures.measures.balancing.problem import (
    _clip,
    _hessian_product,
    _Problem,
    _State,
)


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
