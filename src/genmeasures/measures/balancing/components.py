"""Strongly connected components of a dense pattern (the graph ``i → k`` of ``M[i,k] > 0``).

A component is balanced on its own; the infimum is attained when no positive entry joins two.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from genmeasures.measures.balancing.constants import (
    CHUNK,
    PEEL_ROUNDS,
    SMALL_GRAPH,
)


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
