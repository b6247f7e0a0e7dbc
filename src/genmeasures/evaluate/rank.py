"""Rank correlation of a measure with the generalization gap (Jiang et al. 2020, eqs 2-5).

Kendall's τ here is τ-a, as the paper's eq 2 defines it: over all pairs of distinct models, a pair
tied in the measure or in the gap contributes 0 and still counts in the denominator (scipy's
default is τ-b, which divides by the untied pairs instead). The granulated coefficient ψ_i
(eq 4) is the mean τ within the groups of models that agree on every hyperparameter but the i-th,
and Ψ (eq 5) the mean of ψ_i over the types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.table import level_codes, resolve_hparams, scored_rows


@dataclass(frozen=True)
class GranulatedTau:
    """ψ_i per hyperparameter type and their mean Ψ (Jiang et al. 2020, eqs 4-5).

    Attributes:
        measure: The measure column.
        psi: ψ_i for each hyperparameter type; NaN for a type with no usable group (e.g. a single
            value in the table).
        Psi: The mean of the finite ψ_i; NaN if none is finite.
        groups_used: For each type, the groups whose τ entered ψ_i.
        groups_skipped: For each type, the groups left out: fewer than 2 models, or not every
            value of the type present (an incomplete grid is scored on its complete part).
        models: Models scored.
        excluded: Models left out because they did not reach their stopping criterion.
        dropped: Models left out because the measure or the gap is NaN.
    """

    measure: str
    psi: dict[str, float]
    Psi: float
    groups_used: dict[str, int]
    groups_skipped: dict[str, int]
    models: int
    excluded: int
    dropped: int


def kendall_tau(mu: Sequence[float] | np.ndarray, g: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-a between a measure and the gap (Jiang et al. 2020, eq 2).

    ``τ = Σ_{a≠b} sign(μ_a − μ_b) sign(g_a − g_b) / (n (n − 1))``: ties contribute 0. Computed in
    O(n log n) by counting discordant pairs with a merge sort (Knight 1966).

    Args:
        mu: The measure's value for each model.
        g: The generalization gap of the same models.

    Returns:
        τ in [-1, 1].

    Raises:
        EvaluationError: If the lengths differ, fewer than 2 values are given, or a value is not
            finite.
    """
    mu_array, g_array = _vector(mu, "mu"), _vector(g, "g")
    if len(mu_array) != len(g_array):
        raise EvaluationError(
            f"mu and g must have one value per model each; got {len(mu_array)} and {len(g_array)}"
        )
    if len(mu_array) < 2:
        raise EvaluationError(f"Kendall's tau needs at least 2 models; got {len(mu_array)}")
    n = len(mu_array)
    return _pair_sign_sum(mu_array, g_array) / (n * (n - 1) / 2)


def granulated_tau(
    table: pd.DataFrame,
    measure: str,
    gap: str = "gap",
    hparams: Sequence[str] | str | None = None,
) -> GranulatedTau:
    """ψ_i for every hyperparameter type and Ψ (Jiang et al. 2020, eqs 3-5).

    For type i, the models that agree on every other type form a group in which only θ_i varies;
    ψ_i is the mean of the groups' τ. A group is used when it has at least 2 models and holds every
    value of θ_i present in the table (at least 2), so that an incomplete grid is scored on its
    complete part.
    Rows whose ``status`` column (if any) is not ``"done"`` are excluded; rows whose measure or
    gap is NaN are dropped.

    Args:
        table: One row per model.
        measure: The measure column.
        gap: The generalization gap column.
        hparams: The hyperparameter columns; None reads ``table.attrs["hparams"]``.

    Returns:
        A :class:`GranulatedTau`.

    Raises:
        EvaluationError: For a missing or non-numeric column, a measure without finite values,
            or fewer than 2 models.
    """
    names = resolve_hparams(table, hparams)
    rows = scored_rows(table, measure, gap, names)
    codes = level_codes(rows.hparams)
    psi, used, skipped = {}, {}, {}
    for i, name in enumerate(names):
        groups = psi_groups(codes, i)
        psi[name] = float(psi_matrix(rows.mu[:, None], rows.gap, groups)[0])
        used[name], skipped[name] = groups.used, groups.skipped
    finite = [v for v in psi.values() if np.isfinite(v)]
    return GranulatedTau(
        measure=measure,
        psi=psi,
        Psi=float(np.mean(finite)) if finite else float("nan"),
        groups_used=used,
        groups_skipped=skipped,
        models=len(rows.mu),
        excluded=rows.excluded,
        dropped=rows.dropped,
    )


@dataclass(frozen=True)
class Groups:
    """The groups of ψ_i: models that agree on every hyperparameter type but the i-th.

    Attributes:
        first: First model of each pair of models within a used group, ordered by group.
        second: Second model of each pair.
        starts: Index of each used group's first pair.
        pairs: Pairs per used group.
        used: Groups used: at least 2 models and every value of θ_i present (at least 2).
        skipped: The other groups.
    """

    first: np.ndarray
    second: np.ndarray
    starts: np.ndarray
    pairs: np.ndarray
    used: int
    skipped: int


def psi_groups(codes: np.ndarray, i: int) -> Groups:
    """The groups of ψ_i for models with hyperparameter level ``codes`` (models x types)."""
    others = np.delete(codes, i, axis=1)
    if others.shape[1]:
        group = np.unique(others, axis=0, return_inverse=True)[1].reshape(-1)
    else:
        group = np.zeros(len(codes), dtype=np.int64)
    groups = int(group.max()) + 1
    size = np.bincount(group, minlength=groups)
    values_per_group = np.bincount(
        np.unique(np.stack([group, codes[:, i]], axis=1), axis=0)[:, 0], minlength=groups
    )
    values = len(np.unique(codes[:, i]))
    # θ_i must vary: replicate models of a single-valued type would otherwise give a ψ_i.
    usable = (size >= 2) & (values_per_group == values) & (values >= 2)
    first, second, pair_group = within_group_pairs(group)
    keep = usable[pair_group]
    order = np.argsort(pair_group[keep], kind="stable")
    first, second, pair_group = first[keep][order], second[keep][order], pair_group[keep][order]
    pairs = (size * (size - 1) // 2)[usable]
    return Groups(
        first=first,
        second=second,
        starts=np.concatenate([[0], np.cumsum(pairs)[:-1]]).astype(np.int64),
        pairs=pairs,
        used=int(usable.sum()),
        skipped=int(groups - usable.sum()),
    )


def psi_matrix(mu: np.ndarray, g: np.ndarray, groups: Groups) -> np.ndarray:
    """ψ_i of several measures at once (columns of ``mu``) on the same models.

    Args:
        mu: Measure values, models x measures, all finite.
        g: The gap of each model.
        groups: The groups of ψ_i (:func:`psi_groups`).

    Returns:
        ψ_i of each column; NaN where no group is usable.
    """
    if not groups.used:
        return np.full(mu.shape[1], np.nan)
    products = (
        np.sign(mu[groups.first] - mu[groups.second])
        * np.sign(g[groups.first] - g[groups.second])[:, None]
    )
    taus = np.add.reduceat(products, groups.starts, axis=0) / groups.pairs[:, None]
    return taus.mean(axis=0)


def within_group_pairs(group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of rows with the same group id: (first rows, second rows, group)."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    first, second = [], []
    largest = int(np.bincount(group).max())
    for offset in range(1, largest):
        same = sorted_group[:-offset] == sorted_group[offset:]
        first.append(order[:-offset][same])
        second.append(order[offset:][same])
    if not first:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    a, b = np.concatenate(first), np.concatenate(second)
    return a, b, group[a]


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise EvaluationError(f"{name} must be numbers; got {error}") from error
    if array.ndim != 1:
        raise EvaluationError(f"{name} must be one-dimensional; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise EvaluationError(
            f"{name} has {int((~np.isfinite(array)).sum())} NaN or infinite values: drop those "
            "models first (granulated_tau and the report do it and count them)"
        )
    return array


def _pair_sign_sum(x: np.ndarray, y: np.ndarray) -> int:
    """``Σ_{a<b} sign(x_a − x_b) sign(y_a − y_b)`` in O(n log n) (Knight 1966)."""
    n = len(x)
    x_rank = np.unique(x, return_inverse=True)[1].reshape(-1)
    y_rank = np.unique(y, return_inverse=True)[1].reshape(-1)
    order = np.lexsort((y_rank, x_rank))
    discordant = _inversions(y_rank[order])
    tied_x = _tied_pairs(x_rank)
    tied_y = _tied_pairs(y_rank)
    tied_both = _tied_pairs(x_rank * (int(y_rank.max()) + 1) + y_rank)
    untied = n * (n - 1) // 2 - tied_x - tied_y + tied_both
    return untied - 2 * discordant


def _tied_pairs(codes: np.ndarray) -> int:
    counts = np.unique(codes, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _inversions(values: np.ndarray) -> int:
    """Pairs i < j with ``values[i] > values[j]``, by a bottom-up merge sort.

    At each level the array is cut into blocks of ``2 * width`` whose halves are sorted; each
    element of a right half is preceded, within its block, by the left-half elements larger than
    it, counted for all blocks at once with one binary search over the offset keys
    ``block * span + value``. Sorting those keys then merges every block for the next level.
    """
    n = len(values)
    if n < 2:
        return 0
    current = values.astype(np.int64)
    span = int(current.max()) + 1
    position = np.arange(n)
    count = 0
    width = 1
    while width < n:
        block = position // (2 * width)
        right = position % (2 * width) >= width
        keys = block * span + current
        left_keys = keys[~right]
        larger = np.searchsorted(left_keys, (block[right] + 1) * span, side="left")
        not_larger = np.searchsorted(left_keys, keys[right], side="right")
        count += int((larger - not_larger).sum())
        current = current[np.argsort(keys, kind="stable")]
        width *= 2
    return count
