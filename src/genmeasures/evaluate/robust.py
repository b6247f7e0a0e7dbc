"""Robust evaluation: the sign-error of a measure over environments (Dziugaite et al. 2020).

Dziugaite, Drouin, Neal, Rajkumar, Caballero, Wang, Mitliagkas and Roy, "In search of robust
measures of generalization", NeurIPS 2020, §3-4: an average over groups of models (τ, Ψ) hides
the settings in which a measure fails. Scored on *environments* instead, a measure is judged by
the distribution of its loss over them, and above all by its worst case.

The project's reading of the paper:

- The hyperparameter types are the ``hparams`` columns less the replicate columns
  (:data:`~genmeasures.evaluate.table.REPLICATE_COLUMNS`): models that differ only in their
  seeds replicate one configuration.
- A *coupled pair* is two scored models whose values differ in exactly one type i; their seeds
  may be anything. Each unordered pair counts once (its sign-error and weight are symmetric).
- An *environment* is a type i together with the values of every other type: the coupled pairs
  along i that share those values. The paper's code (``experiments/coupled_networks`` of
  nitarshan/robust-generalization-measures) makes one environment of each ordered pair of
  configurations; here an environment holds every pair of values of type i in one context, so
  with two values per type the environments are the same, and with more they are fewer and larger.
- A pair's sign-error is ½(1 − sgn(Δμ)·sgn(Δg)): 0 when the measure orders the two gaps right,
  1 when wrong, ½ for a tie in μ.
- A pair's weight is the confidence that the sign of Δg is not test-set noise
  (:func:`~genmeasures.evaluate.environments.pair_weights`). An environment's loss is the weighted
  mean of its pairs' sign-errors; its weight is its effective sample size ESS = (Σw)² / Σw², and
  environments with an ESS below ``min_ess`` are dropped (and counted). The paper keeps environments
  of ESS 12 or more; an environment here can reach that only with enough pairs (with one seed per
  configuration and 3 values of a type it holds 3), so by default the threshold is 12 or half the
  pairs of the largest environment, whichever is smaller (:func:`default_min_ess`).

A measure's score is then the distribution of its environment losses: per type and over all types
together, the mean, the 90th percentile and the maximum (the robust sign-error, the paper's
supremum over the family of environments).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.baselines import ORACLE_EPSILONS, oracle_draws, random_measure
from genmeasures.evaluate.environments import (
    HOEFFDING_Z,
    Couplings,
    effective_sample_size,
    environment_losses,
    find_couplings,
    kept_environments,
)
from genmeasures.evaluate.scoring import (
    RANDOM_ROW,
    Evaluation,
    _count,
    _measure_names,
    _scored_rows,
    oracle_row,
)
from genmeasures.evaluate.table import (
    REPLICATE_COLUMNS,
    level_codes,
    numeric_column,
    require_columns,
    require_rows,
    resolve_hparams,
)

#: The minimum effective sample size of an environment: 12, the value behind every figure of
#: Dziugaite et al. 2020 (``min_ess=12`` in the makefile of their ``coupled_networks`` code).
MIN_ESS = 12.0

#: The column label of the statistics over every type's environments together.
ALL_TYPES = "all"

#: The statistics of :attr:`RobustEvaluation.summary` for each type and for ``"all"``: the mean,
#: 90th percentile and maximum of the kept environments' losses, the number of environments kept
#: and the number dropped for an ESS below ``min_ess``.
STATISTICS = ("mean", "p90", "max", "environments", "dropped")

#: The label of an environment of a population with a single hyperparameter type.
NO_OTHER_TYPE = "(no other type)"


@dataclass(frozen=True)
class RobustEvaluation:
    """The sign-error of a table's measures and baselines over environments.

    Attributes:
        summary: Rows: the measures, then the oracles and the random measure (index name
            ``"measure"``). Columns: a two-level MultiIndex, (type or ``"all"``, statistic) with
            the statistics of :data:`STATISTICS`. A row and type without a kept environment has
            NaN statistics.
        environments: The loss of every kept environment of every row, for distribution figures:
            one line per (row, environment), columns ``row``, ``type``, ``environment`` (the
            values of the other types, ``"name=value, ..."``), ``loss`` and ``ess``.
        measures: The measure columns scored, in order.
        baselines: The baseline row labels, in order.
        gap: The gap column.
        hparams: The hyperparameter types (the replicate columns left out).
        test_size: The test-set size behind the pair weights (``math.inf``: no test noise).
        min_ess: The minimum effective sample size of a kept environment.
        models: Models scored (finished with a finite gap; a measure may drop more for NaN,
            see ``dropped``).
        excluded: Models left out because they did not reach their stopping criterion.
        dropped: For each measure with NaN values, how many models it dropped.
        pairs: For each type, the coupled pairs along it.
        environment_counts: For each type, its environments kept and dropped for a low ESS,
            with the weights of every model (the rows without NaN values).
        epsilons: The oracles' noise levels.
        draws: Draws averaged per oracle.
        seed: The seed of the oracle and random draws.
        notes: Sentences for a report: exclusions, drops, replicate columns, then
            :attr:`environment_notes`.
        environment_notes: The sentences on the environments alone: the ESS threshold when it
            is capped (:func:`default_min_ess`), the environments dropped, or why none is kept.
    """

    summary: pd.DataFrame
    environments: pd.DataFrame
    measures: tuple[str, ...]
    baselines: tuple[str, ...]
    gap: str
    hparams: tuple[str, ...]
    test_size: float
    min_ess: float
    models: int
    excluded: int
    dropped: dict[str, int]
    pairs: dict[str, int]
    environment_counts: dict[str, tuple[int, int]]
    epsilons: tuple[float, ...]
    draws: int
    seed: int
    notes: list[str] = field(default_factory=list)
    environment_notes: list[str] = field(default_factory=list)


def robust_scores(
    table: pd.DataFrame,
    measures: Sequence[str] | str | None = None,
    *,
    gap: str = "gap",
    hparams: Sequence[str] | str | None = None,
    test_size: float | None = None,
    min_ess: float | None = None,
    epsilons: Sequence[float] = ORACLE_EPSILONS,
    draws: int = 10,
    seed: int = 0,
) -> RobustEvaluation:
    """The sign-error of every measure and baseline over environments (Dziugaite et al. 2020).

    See the module's docstring for the definitions of coupled pairs, environments, the sign-error
    and its weights (:func:`~genmeasures.evaluate.environments.pair_weights`). Rows whose ``status``
    is not ``"done"`` and rows with a NaN gap are excluded; a measure's NaN values drop those models
    for that measure only (its pairs with them, and so its environments' weights and ESS).

    The statistics of a row are those of the empirical distribution of its kept environments'
    losses, each environment counted once, as in the paper's figures (its code takes the plain
    mean, 90th percentile and maximum of the kept losses; the ESS is a threshold, not a weight of
    the mean): ``p90`` interpolates linearly (``numpy.percentile``). ``"all"`` pools the
    environments of every type. The oracles (the gap plus Gaussian noise) average each
    environment's loss over the draws; the random measure is one seeded draw at the population's
    size.

    Args:
        table: One row per model: hyperparameter columns, the gap, a column per measure and
            optionally ``status``.
        measures: The measure columns; None: every measure column
            (:func:`~genmeasures.evaluate.scoring.measure_columns`), leaving out (with a note)
            those with fewer than 2 finite values.
        gap: The generalization gap column, as a fraction (0-1 errors).
        hparams: The hyperparameter columns; None reads ``table.attrs["hparams"]``. Replicate
            columns (``seed``, ``data_seed``) among them are replicates, not types.
        test_size: The number of test examples behind each model's test error;
            ``math.inf`` for gaps without test noise. Required.
        min_ess: Environments with a smaller effective sample size are dropped; None:
            :func:`default_min_ess` (the paper's 12 where the environments are large enough).
        epsilons: Noise levels of the oracle rows.
        draws: Draws averaged per oracle.
        seed: Seed of the oracle and random draws: the same seed gives the same tables.

    Returns:
        A :class:`RobustEvaluation`.

    Raises:
        EvaluationError: For ``test_size`` missing or not positive, a bad ``min_ess``, a missing
            or non-numeric column, a type with a single value, no coupled pair among the scored
            models, or a named measure with fewer than 2 finite values. Every environment
            dropped for a low ESS is no error: the statistics are NaN and a note says why.
    """
    require_rows(table, "robust_scores")
    test_size = _test_size(test_size)
    types, replicates = hyperparameter_types(table, hparams)
    require_columns(table, [gap], "gap")
    named = [measures] if isinstance(measures, str) else measures
    chosen = _measure_names(table, named, gap, (*types, *replicates))
    clashes = sorted({*chosen} & {RANDOM_ROW, *(oracle_row(e) for e in epsilons)})
    if clashes:
        raise EvaluationError(f"measure columns may not be named like the baseline rows: {clashes}")
    scored, g, excluded = _scored_rows(table, gap)
    _require_varied(scored, types)
    couplings = find_couplings(level_codes(scored[list(types)]), g, test_size, types)
    largest = int(np.diff(np.r_[couplings.starts, len(couplings.first)]).max())
    capped = min_ess is None and default_min_ess(largest) < MIN_ESS
    min_ess = default_min_ess(largest) if min_ess is None else _min_ess(min_ess)
    kept = kept_environments(effective_sample_size(couplings.total, couplings.square), min_ess)
    mu, chosen, unscored = _measure_matrix(scored, chosen, named is not None)
    labels = (*chosen, *(oracle_row(e) for e in epsilons), RANDOM_ROW)
    loss, ess = _row_losses(mu, g, couplings, epsilons, draws, seed)
    kept_rows = kept_environments(ess, min_ess)
    counts = {}
    for i, name in enumerate(types):
        of_type = kept[couplings.env_type == i]
        counts[name] = (int(of_type.sum()), int((~of_type).sum()))
    environment = _environment_notes(counts, min_ess, test_size, largest, capped)
    dropped = {name: int(n) for name, n in zip(chosen, np.isnan(mu).sum(axis=0), strict=True) if n}
    per_type = np.bincount(couplings.pair_type, minlength=len(types))
    values = scored[list(types)].to_numpy(dtype=object)
    return RobustEvaluation(
        summary=_summary(loss, kept_rows, couplings.env_type, labels, types),
        environments=_long_table(loss, ess, kept_rows, couplings, labels, types, values),
        measures=chosen,
        baselines=labels[len(chosen) :],
        gap=gap,
        hparams=types,
        test_size=test_size,
        min_ess=min_ess,
        models=len(g),
        excluded=excluded,
        dropped=dropped,
        pairs={name: int(n) for name, n in zip(types, per_type, strict=True)},
        environment_counts=counts,
        epsilons=tuple(epsilons),
        draws=draws,
        seed=seed,
        notes=_notes(len(table), len(g), excluded, replicates, dropped, unscored) + environment,
        environment_notes=environment,
    )


def _environment_notes(
    counts: dict[str, tuple[int, int]],
    min_ess: float,
    test_size: float,
    largest: int,
    capped: bool,
) -> list[str]:
    """Sentences on the environments: the threshold when capped, those dropped, or why none."""
    notes = []
    if capped:
        notes.append(
            f"Environments need an effective sample size of {min_ess:g}: half the {largest} "
            f"coupled pairs of the largest (Dziugaite et al.'s {MIN_ESS:g} needs larger "
            "environments, e.g. more seeds per configuration)."
        )
    kept = sum(k for k, _ in counts.values())
    total = kept + sum(low for _, low in counts.values())
    clear = (
        f"; with {test_size:g} test examples a pair counts only when the gaps differ by more "
        f"than {HOEFFDING_Z / math.sqrt(test_size):.3g}"
        if math.isfinite(test_size)
        else ""
    )
    if not kept:
        notes.append(
            f"No sign-error over environments: none of the {total} environments reaches an "
            f"effective sample size of {min_ess:g}{clear}. A larger test set, more seeds per "
            "configuration or a smaller min_ess would give some."
        )
    elif kept < total:
        per_type = ", ".join(f"{name} {k} of {k + low}" for name, (k, low) in counts.items())
        notes.append(
            f"Sign-error: {kept} of {total} environments kept ({per_type}); the others have an "
            f"effective sample size below {min_ess:g}{clear}."
        )
    return notes


def default_min_ess(largest: int) -> float:
    """The default threshold of ESS: Dziugaite et al.'s 12, or half of ``largest`` if smaller.

    ``largest`` is the number of coupled pairs of the largest environment. An environment of k
    pairs has an ESS of at most k (all weights equal), so a population whose environments hold
    fewer than 12 pairs, e.g. 3 values of a type and one seed per configuration, would keep none
    under the paper's threshold; half its pairs keeps the environments where the gap differences
    of at least half the pairs are clear of the test-set noise.
    """
    return min(MIN_ESS, largest / 2)


def hyperparameter_types(
    table: pd.DataFrame, hparams: Sequence[str] | str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The hyperparameter types of a table, and the replicate columns left out of them.

    Raises:
        EvaluationError: If a column is missing or named ``"all"`` (the label of every type).
    """
    names = resolve_hparams(table, hparams)
    if ALL_TYPES in names:
        raise EvaluationError(
            f"a hyperparameter column may not be named {ALL_TYPES!r}, the label of every type "
            "together: rename it"
        )
    types = tuple(name for name in names if name not in REPLICATE_COLUMNS)
    return types, tuple(name for name in names if name in REPLICATE_COLUMNS)


def _test_size(test_size: float | None) -> float:
    if test_size is None:
        raise EvaluationError(
            "robust scoring weighs each pair of models by how sure the sign of their gap "
            "difference is, which needs test_size: pass the number of test examples behind each "
            "test error (--test-size), or math.inf for gaps without test noise; got None"
        )
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.number)):
        raise EvaluationError(f"test_size must be a number of test examples; got {test_size!r}")
    if not test_size > 0:
        raise EvaluationError(
            "test_size must be positive (a number of test examples, or math.inf); got "
            f"{test_size!r}"
        )
    return float(test_size)


def _min_ess(min_ess: float) -> float:
    if isinstance(min_ess, bool) or not isinstance(min_ess, (int, float, np.number)):
        raise EvaluationError(f"min_ess must be a number >= 0; got {min_ess!r}")
    if not (math.isfinite(min_ess) and min_ess >= 0):
        raise EvaluationError(f"min_ess must be a finite number >= 0; got {min_ess!r}")
    return float(min_ess)


def _require_varied(scored: pd.DataFrame, types: Sequence[str]) -> None:
    """Raise EvaluationError for a type with a single value among the scored models."""
    for name in types:
        values = scored[name].dropna().unique()
        if len(values) == 1:
            raise EvaluationError(
                f"hyperparameter type {name!r} takes a single value ({values[0]!r}) among the "
                f"{len(scored)} scored models: no pair of models differs in it; leave it out "
                "of hparams=[...]"
            )


def _measure_matrix(
    scored: pd.DataFrame, chosen: Sequence[str], named: bool
) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """The measures' values (models x measures, NaN where not finite), those kept and left out.

    Raises:
        EvaluationError: For a named measure with fewer than 2 finite values, or no measure with
            2 finite values.
    """
    columns, kept, unscored = [], [], []
    for name in chosen:
        mu = numeric_column(scored, name, "measure")
        finite = np.isfinite(mu)
        if finite.sum() < 2:
            if named:
                raise EvaluationError(
                    f"measure {name!r} has {int(finite.sum())} finite values among {len(mu)} "
                    "finished models: at least 2 are needed (leave it out of measures=[...])"
                )
            unscored.append(name)
            continue
        columns.append(np.where(finite, mu, np.nan))
        kept.append(name)
    if not kept:
        raise EvaluationError(
            f"no measure has 2 finite values among the {len(scored)} finished models: "
            f"{', '.join(unscored)}"
        )
    return np.stack(columns, axis=1), tuple(kept), unscored


def _row_losses(
    mu: np.ndarray,
    g: np.ndarray,
    couplings: Couplings,
    epsilons: Sequence[float],
    draws: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Environment losses and ESS (environments x rows): measures, oracles, random measure.

    An oracle's loss is the mean over its draws; its weights, and so its ESS, are the gap's.
    """
    loss, ess = environment_losses(mu, couplings)
    losses, sizes = [loss], [ess]
    for epsilon in epsilons:
        loss, ess = environment_losses(oracle_draws(g, epsilon, draws, seed), couplings)
        losses.append(loss.mean(axis=1, keepdims=True))
        sizes.append(ess[:, :1])
    loss, ess = environment_losses(random_measure(len(g), seed)[:, None], couplings)
    losses.append(loss)
    sizes.append(ess)
    return np.concatenate(losses, axis=1), np.concatenate(sizes, axis=1)


def _summary(
    loss: np.ndarray,
    kept: np.ndarray,
    env_type: np.ndarray,
    labels: Sequence[str],
    types: Sequence[str],
) -> pd.DataFrame:
    """Mean, p90, max, kept and dropped environments per row, for each type and ``"all"``."""
    columns: dict[tuple[str, str], np.ndarray] = {}
    for i, name in enumerate((*types, ALL_TYPES)):
        of_type = env_type == i if name != ALL_TYPES else np.ones(len(env_type), dtype=bool)
        stats = _statistics(loss[of_type], kept[of_type])
        for statistic in STATISTICS:
            columns[(name, statistic)] = stats[statistic]
    summary = pd.DataFrame(columns, index=pd.Index(list(labels), name="measure"))
    summary.columns.names = ["type", "statistic"]
    return summary


def _statistics(loss: np.ndarray, kept: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of the kept losses of each column (NaN for a column with none kept)."""
    rows = loss.shape[1]
    environments = kept.sum(axis=0)
    stats = {name: np.full(rows, np.nan) for name in ("mean", "p90", "max")}
    some = environments > 0
    if some.any():
        masked = np.where(kept, loss, np.nan)[:, some]
        stats["mean"][some] = np.nanmean(masked, axis=0)
        stats["p90"][some] = np.nanpercentile(masked, 90, axis=0)
        stats["max"][some] = np.nanmax(masked, axis=0)
    return stats | {"environments": environments, "dropped": len(kept) - environments}


def _long_table(
    loss: np.ndarray,
    ess: np.ndarray,
    kept: np.ndarray,
    couplings: Couplings,
    labels: Sequence[str],
    types: Sequence[str],
    values: np.ndarray,
) -> pd.DataFrame:
    """One line per (row, kept environment): row, type, environment, loss, ESS.

    ``values`` holds the models' hyperparameter values (models x types).
    """
    row, env = np.nonzero(kept.T)
    names = []
    for model, i in zip(couplings.env_model, couplings.env_type, strict=True):
        parts = [f"{name}={values[model, j]}" for j, name in enumerate(types) if j != i]
        names.append(", ".join(parts) or NO_OTHER_TYPE)
    return pd.DataFrame(
        {
            "row": np.asarray(labels, dtype=object)[row],
            "type": np.asarray(types, dtype=object)[couplings.env_type[env]],
            "environment": np.asarray(names, dtype=object)[env],
            "loss": loss[env, row],
            "ess": ess[env, row],
        }
    )


def _notes(
    rows: int,
    models: int,
    excluded: int,
    replicates: Sequence[str],
    dropped: dict[str, int],
    unscored: Sequence[str],
) -> list[str]:
    notes = [f"{_count(models, 'model')} scored of {rows} in the table."]
    if excluded:
        notes.append(
            f"{_count(excluded, 'model')} did not reach their stopping criterion: excluded."
        )
    if rows - excluded > models:
        notes.append(f"{_count(rows - excluded - models, 'finished model')} without a finite gap.")
    if replicates:
        notes.append(
            f"{', '.join(replicates)} replicate configurations: pairs of models may differ there."
        )
    for name, count in dropped.items():
        notes.append(f"{name}: {_count(count, 'model')} with a NaN value dropped from its pairs.")
    for name in unscored:
        notes.append(f"{name}: fewer than 2 finite values among the finished models: not scored.")
    return notes


def with_robust_scores(
    ev: Evaluation, *, test_size: float | None, min_ess: float | None = None
) -> Evaluation:
    """An evaluation with its robust scores and held-out gap prediction added.

    Both are computed on the table ``ev`` was scored from (:attr:`Evaluation.population`), for
    the same measures, gap, hyperparameter types and baseline draws, so that a study and its
    exported table give the same numbers.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        test_size: The number of test examples behind each test error (:func:`robust_scores`).
        min_ess: The ESS threshold of an environment; None: :func:`default_min_ess`.

    Returns:
        ``ev`` with :attr:`~Evaluation.robust` (:func:`robust_scores`) and
        :attr:`~Evaluation.prediction` (:func:`~genmeasures.evaluate.prediction.gap_prediction`).

    Raises:
        EvaluationError: As :func:`robust_scores` and
            :func:`~genmeasures.evaluate.prediction.gap_prediction` do.
    """
    from genmeasures.evaluate.prediction import gap_prediction  # it builds on this module

    table, measures = ev.population, list(ev.measures)
    robust = robust_scores(
        table,
        measures,
        gap=ev.gap,
        hparams=ev.hparams,
        test_size=test_size,
        min_ess=min_ess,
        epsilons=ev.epsilons,
        draws=ev.draws,
        seed=ev.seed,
    )
    prediction = gap_prediction(table, measures, gap=ev.gap, hparams=ev.hparams)
    notes = [*ev.notes, *robust.environment_notes]
    return dataclasses.replace(ev, robust=robust, prediction=prediction, notes=notes)
