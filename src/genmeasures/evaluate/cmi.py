"""Conditional mutual information between a measure and the gap (Jiang et al. 2020, appendix B).

For a pair of models (a, b), ``V_μ = sign(μ_a − μ_b)`` and ``V_g = sign(g_a − g_b)`` are ±1 events;
the conditioning value ``U_S`` of the pair is the tuple of both models' values of every
hyperparameter type in S. ``Î(μ, S) = I(V_μ; V_g | U_S) / H(V_g | U_S)`` (eqs 11-13) and
``K(μ) = min_{|S| ≤ 2} Î(μ, S)`` (eq 14).

Pairs are all ordered pairs of distinct models; a pair tied in the measure or in the gap has no
sign and is dropped (it enters neither the counts of its cell nor p(u)).

The counts are computed with matrix products: with ``A_S`` the one-hot matrix (models x values of
S) and ``P`` the 0/1 matrix of pairs with ``μ_a > μ_b`` and ``g_a > g_b``, the (u, v) entry of
``A_Sᵀ P A_S`` counts such pairs with ``a`` in u and ``b`` in v. One product of ``P`` with the
one-hot matrices of every S at once gives all conditioning sets; the other outcomes follow from
one more product and the symmetry ``N₋₋(u, v) = N₊₊(v, u)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.table import level_codes, resolve_hparams, scored_rows

#: PGDL scores are reported multiplied by this, as the competition published them.
PGDL_SCALE = 100.0

_ROW_BLOCK = 1024


@dataclass(frozen=True)
class ConditionalMI:
    """Normalized conditional mutual information of a measure and the gap (Jiang et al. 2020).

    Attributes:
        measure: The measure column.
        single: Î(μ, {i}) for each hyperparameter type i (empty in PGDL mode).
        minima: For each conditioning-set size |S|, the smallest Î over the sets of that size.
        minimizers: For each size, the set S reaching that minimum.
        K: The smallest Î over every set considered (eq 14).
        K_set: The set S reaching K.
        pgdl: Whether these are PGDL-competition scores (|S| = 2 only, multiplied by 100).
        models: Models scored.
        excluded: Models left out because they did not reach their stopping criterion.
        dropped: Models left out because the measure or the gap is NaN.
    """

    measure: str
    single: dict[str, float]
    minima: dict[int, float]
    minimizers: dict[int, tuple[str, ...]]
    K: float
    K_set: tuple[str, ...]
    pgdl: bool
    models: int
    excluded: int
    dropped: int


def conditional_mi(
    table: pd.DataFrame,
    measure: str,
    gap: str = "gap",
    hparams: Sequence[str] | str | None = None,
    max_set_size: int = 2,
    pgdl: bool = False,
) -> ConditionalMI:
    """Î(μ, S) for every conditioning set with |S| ≤ ``max_set_size``, and K (appendix B).

    Args:
        table: One row per model.
        measure: The measure column.
        gap: The generalization gap column.
        hparams: The hyperparameter columns; None reads ``table.attrs["hparams"]``.
        max_set_size: The largest conditioning set (the paper uses 2); sizes beyond the number
            of types have no set and no entry in ``minima``. Ignored with ``pgdl``.
        pgdl: Reproduce the scoring program of the PGDL competition (Jiang et al. 2020b):
            |S| = 2 only, every ordered pair of models including a model with itself, a tie
            counted as "−", base-2 logarithms, the score of S the unweighted mean over its cells
            of the mutual information divided by the mean of the gap's entropy, K the minimum
            over S, everything multiplied by 100. Its cells are the non-empty ones (the
            competition's program divides by every possible cell, the same on a complete grid).

    Returns:
        A :class:`ConditionalMI`.

    Raises:
        EvaluationError: For a missing or non-numeric column, fewer than 2 models, a bad
            ``max_set_size``, or PGDL mode with fewer than 2 hyperparameter types.
    """
    names = resolve_hparams(table, hparams)
    if pgdl:
        if len(names) < 2:
            raise EvaluationError(
                f"PGDL mode conditions on pairs of hyperparameter types; got {len(names)} type"
            )
    elif not isinstance(max_set_size, int) or isinstance(max_set_size, bool) or max_set_size < 0:
        raise EvaluationError(f"max_set_size must be an int >= 0; got {max_set_size!r}")
    rows = scored_rows(table, measure, gap, names)
    sets = condition_sets(len(names), max_set_size, pgdl=pgdl)
    cells = conditioning(level_codes(rows.hparams), sets)
    scores = cmi_matrix(rows.mu[:, None], rows.gap, cells, pgdl=pgdl)
    summary = summarize_sets(scores[:, 0], sets, names)
    return ConditionalMI(
        measure=measure,
        single=summary.single,
        minima=summary.minima,
        minimizers=summary.minimizers,
        K=summary.K,
        K_set=summary.K_set,
        pgdl=pgdl,
        models=len(rows.mu),
        excluded=rows.excluded,
        dropped=rows.dropped,
    )


def condition_sets(types: int, max_set_size: int, *, pgdl: bool) -> list[tuple[int, ...]]:
    """The conditioning sets scored: every set of at most ``max_set_size`` types (PGDL: of 2)."""
    sizes = [2] if pgdl else range(min(max_set_size, types) + 1)
    return [s for size in sizes for s in itertools.combinations(range(types), size)]


@dataclass(frozen=True)
class SetScores:
    """Î of one measure summarized over the conditioning sets (Jiang et al. 2020, table 6).

    Attributes:
        single: Î(μ, {i}) for each type i scored alone.
        minima: For each set size that has sets, the smallest finite Î (NaN if none).
        minimizers: For each such size, the set reaching the minimum (``()`` if none).
        K: The smallest finite Î over every set (eq 14); NaN if none.
        K_set: The set reaching K.
    """

    single: dict[str, float]
    minima: dict[int, float]
    minimizers: dict[int, tuple[str, ...]]
    K: float
    K_set: tuple[str, ...]


def summarize_sets(
    scores: Sequence[float], sets: Sequence[tuple[int, ...]], names: Sequence[str]
) -> SetScores:
    """Collect one measure's per-set Î (in the order of ``sets``) into a :class:`SetScores`.

    A minimum reached by several sets up to rounding (1e-12) is attributed to the first of
    them in the order of ``sets``: the smallest set, as for a measure equal to the gap.
    """
    scored = [(s, float(v)) for s, v in zip(sets, scores, strict=True)]
    single = {names[s[0]]: v for s, v in scored if len(s) == 1}
    minima, minimizers = {}, {}
    for size in sorted({len(s) for s in sets}):
        minima[size], best = _first_minimum([(s, v) for s, v in scored if len(s) == size])
        minimizers[size] = tuple(names[j] for j in best)
    k_value, k_set = _first_minimum(scored)
    return SetScores(
        single=single,
        minima=minima,
        minimizers=minimizers,
        K=k_value,
        K_set=tuple(names[j] for j in k_set),
    )


def _first_minimum(scored: Sequence[tuple[tuple[int, ...], float]]) -> tuple[float, tuple]:
    """The smallest finite value and the first set reaching it up to 1e-12; (NaN, ()) if none."""
    finite = [(s, v) for s, v in scored if np.isfinite(v)]
    if not finite:
        return float("nan"), ()
    smallest = min(v for _, v in finite)
    return smallest, next(s for s, v in finite if v <= smallest + 1e-12)


@dataclass(frozen=True)
class Conditioning:
    """The cells of every conditioning set, for models with given hyperparameter levels.

    Attributes:
        sets: The conditioning sets, as tuples of type indices.
        onehot: Models x (values of every set, side by side): 1 where the model has the value.
        bounds: Where each set's columns start and stop in ``onehot``.
        members: Each set's block of ``onehot`` in float64, for the cell counts.
    """

    sets: tuple[tuple[int, ...], ...]
    onehot: np.ndarray
    bounds: np.ndarray
    members: tuple[np.ndarray, ...]


def conditioning(codes: np.ndarray, sets: Sequence[tuple[int, ...]]) -> Conditioning:
    """The :class:`Conditioning` of ``sets`` for models with level ``codes`` (models x types)."""
    keys = [_set_key(codes, s) for s in sets]
    sizes = [int(k.max()) + 1 for k in keys]
    # float32 products are exact: each entry of O @ onehot counts at most len(mu) < 2**24 pairs.
    onehot = np.concatenate(
        [np.eye(size, dtype=np.float32)[key] for key, size in zip(keys, sizes, strict=True)],
        axis=1,
    )
    bounds = np.cumsum([0, *sizes])
    members = tuple(
        onehot[:, start:stop].astype(np.float64) for start, stop in itertools.pairwise(bounds)
    )
    return Conditioning(sets=tuple(sets), onehot=onehot, bounds=bounds, members=members)


def cmi_matrix(
    mu: np.ndarray, g: np.ndarray, cells: Conditioning, *, pgdl: bool = False
) -> np.ndarray:
    """Î(μ, S) for several measures (columns of ``mu``) and conditioning sets at once.

    Args:
        mu: Measure values, models x measures, all finite.
        g: The gap of each model.
        cells: The conditioning sets' cells for these models (:func:`conditioning`).
        pgdl: PGDL-competition scores instead (see :func:`conditional_mi`).

    Returns:
        sets x measures; NaN where the gap's conditional entropy is 0.
    """
    scores = np.empty((len(cells.sets), mu.shape[1]))
    for j in range(mu.shape[1]):
        products = _outcome_products(mu[:, j], g, cells.onehot, pgdl=pgdl)
        for k, ((start, stop), member) in enumerate(
            zip(itertools.pairwise(cells.bounds), cells.members, strict=True)
        ):
            counts = [member.T @ product[:, start:stop] for product in products]
            if pgdl:
                scores[k, j] = _pgdl_score(counts, member.sum(axis=0))
            else:
                scores[k, j] = _normalized_cmi(counts)
    return scores


def _set_key(codes: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    """Each model's value of the types in ``columns`` as one code (all zero for S = ∅)."""
    if not columns:
        return np.zeros(len(codes), dtype=np.int64)
    return np.unique(codes[:, list(columns)], axis=0, return_inverse=True)[1].reshape(-1)


def _outcome_products(
    mu: np.ndarray, g: np.ndarray, onehot: np.ndarray, *, pgdl: bool
) -> list[np.ndarray]:
    """``O @ onehot`` for each outcome matrix O over ordered model pairs (a rows, b columns).

    Default: [μ_a > μ_b and g_a > g_b], [μ_a > μ_b and g_a < g_b]. PGDL (ties are "−"):
    [μ_a > μ_b and g_a > g_b], [μ_a > μ_b and g_a ≤ g_b], [μ_a ≤ μ_b and g_a > g_b].
    Built a block of rows at a time, so that memory stays O(block x models).
    """
    outcomes = 3 if pgdl else 2
    products = [np.empty(onehot.shape) for _ in range(outcomes)]
    for start in range(0, len(mu), _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, len(mu))
        mu_up = mu[start:stop, None] > mu[None, :]
        g_up = g[start:stop, None] > g[None, :]
        if pgdl:
            blocks = [mu_up & g_up, mu_up & ~g_up, ~mu_up & g_up]
        else:
            blocks = [mu_up & g_up, mu_up & (g[start:stop, None] < g[None, :])]
        for product, block in zip(products, blocks, strict=True):
            product[start:stop] = block.astype(np.float32) @ onehot
    return products


def _normalized_cmi(counts: list[np.ndarray]) -> float:
    """``Σ_u p(u) I_u / Σ_u p(u) H_u`` from the cell counts [N₊₊, N₊₋] (eqs 11-13)."""
    up_up, up_down = counts
    # cell x (gap sign) x (measure sign); the other two outcomes are the transposed cells.
    table = np.stack(
        [
            np.stack([up_up, up_down.T], axis=-1),
            np.stack([up_down, up_up.T], axis=-1),
        ],
        axis=-2,
    ).reshape(-1, 2, 2)
    total = table.sum(axis=(1, 2))
    table, total = table[total > 0], total[total > 0]
    if not total.size:
        return float("nan")
    weight = total / total.sum()
    information, entropy = _cell_information(table, np.log)
    conditional_entropy = float(weight @ entropy)
    if conditional_entropy <= 0:
        return float("nan")
    return float(weight @ information) / conditional_entropy


def _pgdl_score(counts: list[np.ndarray], members: np.ndarray) -> float:
    """PGDL: mean over non-empty cells of MI over mean of the gap's entropy, base 2, x100."""
    up_up, up_down, down_up = counts
    total = np.outer(members, members)
    down_down = total - up_up - up_down - down_up
    # cell x (gap sign) x (measure sign)
    table = np.stack(
        [np.stack([up_up, down_up], axis=-1), np.stack([up_down, down_down], axis=-1)], axis=-2
    ).reshape(-1, 2, 2)
    table = table[total.reshape(-1) > 0]
    information, entropy = _cell_information(table, np.log2)
    if entropy.mean() <= 0:
        return float("nan")
    return PGDL_SCALE * float(information.mean() / entropy.mean())


def _cell_information(table: np.ndarray, log: np.ufunc) -> tuple[np.ndarray, np.ndarray]:
    """Mutual information and the gap's entropy of each cell's 2x2 count table (gap, measure)."""
    joint = table / table.sum(axis=(1, 2), keepdims=True)
    gap_marginal = joint.sum(axis=2, keepdims=True)
    measure_marginal = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * log(joint / (gap_marginal * measure_marginal))
        gap_terms = gap_marginal * log(gap_marginal)
    information = np.where(joint > 0, terms, 0.0).sum(axis=(1, 2))
    entropy = -np.where(gap_marginal > 0, gap_terms, 0.0).sum(axis=(1, 2))
    return information, entropy
