"""Score every measure of a table at once: the paper's tables as DataFrames.

:func:`score_table` gives, for each measure and each baseline, ψ_i per hyperparameter type, τ and
Ψ (Jiang et al. 2020, table 5), Î per type, the minima over |S| = 0, 1, 2 and K (table 6), and the
Pearson correlation with the gap per architecture (Tsuzuku et al. 2020, tables 1-2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.baselines import (
    ORACLE_EPSILONS,
    canonical_measure,
    null_psi_sd,
    oracle_draws,
    random_measure,
)
from genmeasures.evaluate.cmi import (
    Conditioning,
    cmi_matrix,
    condition_sets,
    conditioning,
    summarize_sets,
)
from genmeasures.evaluate.rank import Groups, kendall_tau, psi_groups, psi_matrix
from genmeasures.evaluate.table import (
    BOOKKEEPING,
    DONE,
    MEASURES_ATTR,
    done_rows,
    grid_coverage,
    level_codes,
    numeric_column,
    require_columns,
    require_rows,
    resolve_hparams,
)

if TYPE_CHECKING:  # robust.py builds on this module
    from genmeasures.evaluate.robust import RobustEvaluation

#: Row label of the canonical-ordering baseline and of the random measure.
CANONICAL_ROW, RANDOM_ROW = "canonical ordering", "random"

#: Columns of :attr:`Evaluation.ranks` after the per-type ψ_i, and of :attr:`Evaluation.cmi`
#: after the per-type Î.
RANK_COLUMNS = ("tau", "Psi")
CMI_COLUMNS = ("|S|=0", "|S|=1", "|S|=2", "K", "K set")


def oracle_row(epsilon: float) -> str:
    """The row label of the ε-oracle."""
    return f"oracle {epsilon:g}"


@dataclass(frozen=True)
class Evaluation:
    """Every score of a table's measures and baselines.

    Attributes:
        ranks: Rows: the measures, then the oracles, the canonical ordering and the random
            measure. Columns: ψ_i per hyperparameter type, ``tau`` (Kendall's τ-a over every
            model), ``Psi``. The canonical ordering has only its own types' ψ_i.
        cmi: Rows: the measures, the oracles and the random measure. Columns: Î(μ, {i}) per
            type, the minima over ``|S|=0``, ``|S|=1``, ``|S|=2``, ``K`` and ``K set`` (the
            types of the minimizing S, ``"∅"`` for the empty set).
        pearson: Rows: the measures. Columns: Pearson's r with the gap per architecture.
        population: A copy of the table as given, every model included (for the population
            summary).
        scored: Its rows that were scored: finished models with a finite gap.
        measures: The measure columns scored, in order.
        baselines: The baseline row labels, in order.
        gap: The gap column.
        hparams: The hyperparameter columns.
        architecture: The column that tells architectures apart in :attr:`pearson`, if any.
        models: Models scored (finished; a measure may drop more for NaN, see ``dropped``).
        excluded: Models left out because they did not reach their stopping criterion.
        dropped: For each measure with NaN values, how many models it dropped.
        coverage: Hyperparameter combinations present among the scored models, and in the full
            grid of their values.
        groups: For each type, the groups (models agreeing on every other type) used for ψ_i
            and skipped, for measures without NaN.
        epsilons: The oracles' noise levels.
        draws: Draws averaged per oracle.
        seed: The seed of the oracle and random draws.
        notes: Sentences for the report: exclusions, drops, incomplete grid, constant types.
        null_psi_sd: For each measure and baseline row, the standard deviation of Ψ of a random
            ranking of the same models (:func:`~genmeasures.evaluate.baselines.null_psi_sd`):
            Ψ divided by it is the row's margin over chance.
        unconverged: For each measure, the scored models (row labels of :attr:`scored`) whose
            value did not converge (known for a study,
            :func:`genmeasures.zoo.evaluating.evaluate_zoo`; empty for a plain table).
        converged_only: Whether those values were left out of the scores (else scored, flagged).
        robust: The sign-error over environments (Dziugaite et al. 2020), when computed
            (:func:`~genmeasures.evaluate.robust.with_robust_scores`).
        prediction: The held-out R² of the gap per measure, computed with :attr:`robust`
            (:func:`~genmeasures.evaluate.prediction.gap_prediction`).
    """

    ranks: pd.DataFrame
    cmi: pd.DataFrame
    pearson: pd.DataFrame
    population: pd.DataFrame
    scored: pd.DataFrame
    measures: tuple[str, ...]
    baselines: tuple[str, ...]
    gap: str
    hparams: tuple[str, ...]
    architecture: str | None
    models: int
    excluded: int
    dropped: dict[str, int]
    coverage: tuple[int, int]
    groups: dict[str, tuple[int, int]]
    epsilons: tuple[float, ...]
    draws: int
    seed: int
    notes: list[str] = field(default_factory=list)
    null_psi_sd: dict[str, float] = field(default_factory=dict)
    unconverged: dict[str, tuple[str, ...]] = field(default_factory=dict)
    converged_only: bool = False
    robust: RobustEvaluation | None = None
    prediction: pd.DataFrame | None = None


def measure_columns(table: pd.DataFrame, gap: str, hparams: Sequence[str]) -> tuple[str, ...]:
    """The measure columns of a table.

    They are ``attrs["measures"]`` if the table names them (as ``Zoo.table()`` does), else every
    numeric column that is not the gap, a hyperparameter or a bookkeeping column
    (:data:`~genmeasures.evaluate.table.BOOKKEEPING`).
    """
    named = table.attrs.get(MEASURES_ATTR)
    if named is not None:
        return tuple(named)
    skip = {gap, *hparams, *BOOKKEEPING}
    return tuple(
        str(c) for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])
    )


def _measure_names(
    table: pd.DataFrame, measures: Sequence[str] | None, gap: str, names: Sequence[str]
) -> tuple[str, ...]:
    """The measure columns to score: those named, or every measure column of the table."""
    chosen = tuple(measures) if measures is not None else measure_columns(table, gap, names)
    if not chosen:
        raise EvaluationError(
            "no measure column to score: name them (measures=[...] / --measures); columns: "
            + ", ".join(map(str, table.columns))
        )
    require_columns(table, chosen, "measure")
    return chosen


def _scored_rows(table: pd.DataFrame, gap: str) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The finished models with a finite gap, their gaps, and how many rows were not finished."""
    finished, excluded = done_rows(table)
    g = numeric_column(finished, gap, "gap")
    gap_ok = np.isfinite(g)
    if gap_ok.sum() < 2:
        raise EvaluationError(
            f"scoring needs at least 2 finished models with a finite gap; got {int(gap_ok.sum())}"
            f" of {len(table)} rows ({excluded} not finished)"
        )
    return finished[gap_ok], g[gap_ok], excluded


def score_table(
    table: pd.DataFrame,
    measures: Sequence[str] | str | None = None,
    *,
    gap: str = "gap",
    hparams: Sequence[str] | str | None = None,
    canonical: Mapping[str, str | tuple[Any, ...] | pd.Series] | None = None,
    architecture: str | None = None,
    epsilons: Sequence[float] = ORACLE_EPSILONS,
    draws: int = 10,
    seed: int = 0,
) -> Evaluation:
    """Score every measure and baseline of a table (Jiang et al. 2020, tables 5-6).

    K is the minimum of Î over the conditioning sets of at most 2 types (eq 14).

    Args:
        table: One row per model: hyperparameter columns, the gap, a column per measure and
            optionally ``status`` (rows not ``"done"`` are excluded from every score).
        measures: The measure columns; None: :func:`measure_columns`, leaving out (with a note)
            those with fewer than 2 finite values.
        gap: The generalization gap column.
        hparams: The hyperparameter columns; None reads ``table.attrs["hparams"]``.
        canonical: The canonical ordering of each type: ``"increasing"``, ``"decreasing"``, a
            tuple of values, or a Series of ranks aligned with ``table`` (larger predicts a larger
            gap); None: no canonical rows. A study's orders come from its space
            (:func:`genmeasures.zoo.evaluating.evaluate_zoo`); the defaults of Jiang et al.,
            appendix C.4, are :data:`genmeasures.zoo.space.CANONICAL_ORDERS`.
        architecture: A column whose values tell architectures apart for the Pearson table;
            None: one column, ``"all"``.
        epsilons: Noise levels of the oracle rows.
        draws: Draws averaged per oracle.
        seed: Seed of the oracle and random draws: the same seed gives the same tables.

    Returns:
        An :class:`Evaluation`.

    Raises:
        EvaluationError: For a table without rows, a missing column, no measure, a named measure
            with fewer than 2 finite values, fewer than 2 finished models, or a bad canonical
            order.
    """
    require_rows(table, "score_table")
    names = resolve_hparams(table, hparams)
    clashes = [name for name in names if name in (*RANK_COLUMNS, *CMI_COLUMNS)]
    if clashes:
        raise EvaluationError(
            f"hyperparameter columns may not be named like the score columns "
            f"{[*RANK_COLUMNS, *CMI_COLUMNS]}; rename {clashes}"
        )
    require_columns(table, [gap], "gap")
    if isinstance(measures, str):
        measures = [measures]
    chosen = _measure_names(table, measures, gap, names)
    if architecture is not None:
        require_columns(table, [architecture], "architecture")
    scored, g, excluded = _scored_rows(table, gap)
    codes = level_codes(scored[list(names)])
    design = _design(codes)

    rank_rows: dict[str, dict[str, float]] = {}
    cmi_rows: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    unscored: list[str] = []
    full_null_sd = null_psi_sd(g, design.groups, seed=seed)
    null_sd: dict[str, float] = {}
    for name in chosen:
        mu = numeric_column(scored, name, "measure")
        keep = np.isfinite(mu)
        if keep.sum() < 2:
            if measures is not None:
                raise EvaluationError(
                    f"measure {name!r} has {int(keep.sum())} finite values among {len(mu)} "
                    "finished models: at least 2 are needed (leave it out of measures=[...])"
                )
            unscored.append(name)
            continue
        if not keep.all():
            dropped[name] = int((~keep).sum())
        own = design if keep.all() else _design(codes[keep])
        rank_rows[name], cmi_rows[name] = _scores(mu[keep, None], g[keep], own, names)
        null_sd[name] = full_null_sd if keep.all() else null_psi_sd(g[keep], own.groups, seed=seed)
    chosen = tuple(name for name in chosen if name not in unscored)
    if not chosen:
        raise EvaluationError(
            f"no measure has 2 finite values among the {len(g)} finished models: "
            f"{', '.join(unscored)}"
        )
    for epsilon in epsilons:
        label = oracle_row(epsilon)
        rank_rows[label], cmi_rows[label] = _scores(
            oracle_draws(g, epsilon, draws, seed), g, design, names
        )
    rank_rows[CANONICAL_ROW] = _canonical_psi(scored, g, design, names, canonical)
    rank_rows[RANDOM_ROW], cmi_rows[RANDOM_ROW] = _scores(
        random_measure(len(g), seed)[:, None], g, design, names
    )
    baselines = (*(oracle_row(e) for e in epsilons), CANONICAL_ROW, RANDOM_ROW)
    null_sd |= {label: full_null_sd for label in baselines if label != CANONICAL_ROW}
    ranks = pd.DataFrame.from_dict(rank_rows, orient="index", columns=[*names, *RANK_COLUMNS])
    cmi = pd.DataFrame.from_dict(cmi_rows, orient="index", columns=[*names, *CMI_COLUMNS])
    ranks.index.name = cmi.index.name = "measure"
    groups = {name: (own.used, own.skipped) for name, own in zip(names, design.groups, strict=True)}
    coverage = grid_coverage(scored[list(names)])
    return Evaluation(
        ranks=ranks,
        cmi=cmi,
        pearson=_pearson(scored, g, chosen, architecture),
        population=table.copy(),
        scored=scored.copy(),
        measures=chosen,
        baselines=baselines,
        gap=gap,
        hparams=names,
        architecture=architecture,
        models=len(g),
        excluded=excluded,
        dropped=dropped,
        coverage=coverage,
        groups=groups,
        epsilons=tuple(epsilons),
        draws=draws,
        seed=seed,
        notes=_notes(table, excluded, len(g), dropped, coverage, groups, scored, names)
        + [
            f"{name}: fewer than 2 finite values among the finished models: not scored."
            for name in unscored
        ],
        null_psi_sd=null_sd,
    )


@dataclass(frozen=True)
class _Design:
    """What every measure scored on the same models shares: ψ groups and CMI cells."""

    groups: list[Groups]
    cells: Conditioning


def _design(codes: np.ndarray) -> _Design:
    types = codes.shape[1]
    return _Design(
        groups=[psi_groups(codes, i) for i in range(types)],
        cells=conditioning(codes, condition_sets(types, 2, pgdl=False)),
    )


def _scores(
    mu: np.ndarray, g: np.ndarray, design: _Design, names: Sequence[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """A rank row and a CMI row for the columns of ``mu`` (averaged over them: oracle draws)."""
    psi = {
        name: float(psi_matrix(mu, g, groups).mean())
        for name, groups in zip(names, design.groups, strict=True)
    }
    finite = [value for value in psi.values() if np.isfinite(value)]
    tau = float(np.mean([kendall_tau(column, g) for column in mu.T]))
    rank_row = psi | {"tau": tau, "Psi": float(np.mean(finite)) if finite else np.nan}
    sets = design.cells.sets
    summary = summarize_sets(cmi_matrix(mu, g, design.cells).mean(axis=1), sets, names)
    cmi_row: dict[str, Any] = dict(summary.single)
    cmi_row |= {f"|S|={size}": summary.minima.get(size, np.nan) for size in range(3)}
    k_set = ", ".join(summary.K_set) or "∅" if np.isfinite(summary.K) else ""
    cmi_row |= {"K": summary.K, "K set": k_set}
    return rank_row, cmi_row


def _canonical_psi(
    scored: pd.DataFrame,
    g: np.ndarray,
    design: _Design,
    names: Sequence[str],
    canonical: Mapping[str, str | tuple[Any, ...] | pd.Series] | None,
) -> dict[str, float]:
    """ψ_i of type i's canonical ordering, for each type that has one (appendix C.4)."""
    orders = {} if canonical is None else dict(canonical)
    row = dict.fromkeys([*names, *RANK_COLUMNS], np.nan)
    for i, name in enumerate(names):
        order = orders.get(name)
        if order is None:
            continue
        if isinstance(order, pd.Series):
            if not order.index.is_unique:
                raise EvaluationError(
                    f"the canonical ranks of {name!r} must have one value per model; their "
                    "index repeats labels"
                )
            ranks = order.reindex(scored.index).to_numpy(dtype=np.float64)
            if not np.isfinite(ranks).all():
                raise EvaluationError(
                    f"the canonical ranks of {name!r} miss some scored models or are NaN"
                )
        else:
            ranks = canonical_measure(scored[name], order).to_numpy()
        row[name] = float(psi_matrix(ranks[:, None], g, design.groups[i])[0])
    return row


def _pearson(
    scored: pd.DataFrame, g: np.ndarray, measures: Sequence[str], architecture: str | None
) -> pd.DataFrame:
    """Pearson's r of each measure with the gap, per architecture (Tsuzuku et al., tables 1-2)."""
    if architecture is None:
        groups = {"all": np.ones(len(scored), dtype=bool)}
    else:
        labels = scored[architecture].astype(str).to_numpy()
        groups = {label: labels == label for label in sorted(set(labels))}
    rows = {}
    for name in measures:
        mu = numeric_column(scored, name, "measure")
        rows[name] = {label: _correlation(mu[rows_], g[rows_]) for label, rows_ in groups.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(groups))
    frame.index.name = "measure"
    return frame


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _notes(
    table: pd.DataFrame,
    excluded: int,
    models: int,
    dropped: Mapping[str, int],
    coverage: tuple[int, int],
    groups: Mapping[str, tuple[int, int]],
    scored: pd.DataFrame,
    names: Sequence[str],
) -> list[str]:
    notes = [f"{_count(models, 'model')} scored of {len(table)} in the table."]
    if excluded:
        statuses = table.loc[table["status"] != DONE, "status"].value_counts()
        notes.append(
            f"{_count(excluded, 'model')} did not reach their stopping criterion and "
            f"{'is' if excluded == 1 else 'are'} excluded from "
            f"every score ({', '.join(f'{n} {status}' for status, n in statuses.items())})."
        )
    if len(scored) < len(table) - excluded:
        missing = len(table) - excluded - len(scored)
        notes.append(f"{_count(missing, 'finished model')} without a finite gap.")
    for name, count in dropped.items():
        notes.append(f"{name}: {_count(count, 'model')} with a NaN value dropped from its scores.")
    present, full = coverage
    if present < full:
        notes.append(
            f"Incomplete grid: {present} of the {full} hyperparameter combinations are present; "
            "ψ is scored on the groups that hold every value of their type."
        )
    for name in names:
        used, skipped = groups[name]
        if scored[name].nunique() < 2:
            notes.append(f"{name} takes a single value: its ψ is undefined.")
        elif skipped:
            notes.append(
                f"ψ of {name}: {used} groups used, {skipped} skipped (fewer than 2 models or not "
                "every value present)."
            )
    return notes


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
