"""Score a study's measures: its table, read the way :mod:`genmeasures.evaluate` expects.

A study knows more than a plain table does, and this module passes it on:

- Hyperparameter types are the grid's keys, except the seeds (``seed``, ``data_seed``), which
  are replicates rather than hyperparameters: their models share a group.
- A type given per optimizer (``lr``, ``l2``, ``weight_decay`` with a list per optimizer,
  Jiang et al. 2020, appendix C.3) is grouped by its level, the position of the value in its
  optimizer's list, so that ψ_optimizer compares models that differ only in the optimizer.
- The canonical ordering of each type (appendix C.4) is ranked from the actual values with the
  space's own orders (:meth:`~genmeasures.zoo.space.Space.canonical_rank`).
- The architecture of the Pearson table is the space's model.
- The measures to score are chosen as :func:`~genmeasures.zoo.measuring.measure_zoo` chooses
  those to compute (names, aliases, glob patterns, ``!`` exclusions), so that a study scores
  exactly what it computed.
- Values computed by another implementation version of their measure (stale,
  :mod:`genmeasures.zoo.versions`) are scored as stored, with a note naming the measures and
  how to recompute them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import Evaluation, score_table, with_robust_scores
from genmeasures.evaluate.baselines import ORACLE_EPSILONS
from genmeasures.evaluate.report import write_report
from genmeasures.evaluate.table import HPARAMS_ATTR, MEASURES_ATTR, REPLICATE_COLUMNS
from genmeasures.measures.registry import resolve_measures
from genmeasures.zoo.space import PER_OPTIMIZER
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import Zoo
from genmeasures.zoo.versions import stale_warning
from genmeasures.zoo.worker import cached_dataset

#: The column naming each model's architecture in the scoring table.
ARCHITECTURE = "model"

#: The report's folder inside a study folder, unless told otherwise.
REPORT_FOLDER = "report"


def scoring_table(zoo: Zoo) -> tuple[pd.DataFrame, dict[str, pd.Series], list[str]]:
    """The study's table prepared for scoring, its canonical ranks and notes on the preparation.

    Returns:
        The table (``attrs["hparams"]`` lists the types scored; per-optimizer types hold their
        level), the canonical rank of each model per type that has a canonical order, and
        sentences for the report.
    """
    table = zoo.table()
    space = zoo.space
    configs = {config.hash: config for config in zoo.configs()}
    rows = [configs[model_hash] for model_hash in table.index]
    notes = []
    hparams = [key for key in space.grid if key not in REPLICATE_COLUMNS]
    replicated = [key for key in space.grid if key in REPLICATE_COLUMNS]
    if replicated:
        notes.append(
            f"{', '.join(replicated)} replicate configurations: models that differ only there "
            "share their group."
        )
    for key in hparams:
        if key in PER_OPTIMIZER and isinstance(space.grid[key], Mapping):
            table[key] = [config.levels[key] for config in rows]
            notes.append(
                f"{key} is given per optimizer: models are grouped by its level (the position "
                "of the value in its optimizer's list)."
            )
    canonical = {}
    for key in hparams:
        ranks = [space.canonical_rank(key, config.hparams[key]) for config in rows]
        if all(rank is not None for rank in ranks):
            canonical[key] = pd.Series(ranks, index=table.index, dtype=float)
    table[ARCHITECTURE] = space.fixed["model"]
    table.attrs[HPARAMS_ATTR] = hparams
    return table, canonical, notes


def _selection(
    zoo: Zoo, stored: Sequence[str], measures: str | Iterable[str]
) -> tuple[list[str], list[str]]:
    """The stored measures that ``measures`` selects, and those of them named explicitly.

    Args:
        zoo: The study.
        stored: The measures it stores.
        measures: Names, aliases, glob patterns or ``!`` exclusions, as
            :func:`~genmeasures.zoo.measuring.measure_zoo` takes them
            (:func:`~genmeasures.measures.registry.resolve_measures`).

    Returns:
        The canonical names of the selected measures that the study stores, in the order of
        the selection, and the subset that ``measures`` names one by one (not by a pattern).

    Raises:
        UnknownMeasureError: For a name that is not registered.
        MeasureError: For a pattern that matches no measure.
        EvaluationError: If a measure named explicitly is not stored, or none selected is.
    """
    selected = resolve_measures(measures)
    named = [spec.name for spec, explicit in selected if explicit]
    absent = [name for name in named if name not in stored]
    if absent:
        raise EvaluationError(
            f"study {zoo.path} stores no value of {', '.join(absent)}: compute them with "
            f"`genmeasures measure {zoo.path} --measures {' '.join(absent)}` first"
        )
    chosen = [spec.name for spec, _ in selected if spec.name in stored]
    if not chosen:
        raise EvaluationError(
            f"measures {measures!r} select no measure that study {zoo.path} stores; stored: "
            f"{', '.join(stored) or 'none'}"
        )
    return chosen, named


def evaluate_zoo(
    zoo: Zoo,
    measures: str | Iterable[str] | None = None,
    *,
    epsilons: Sequence[float] = ORACLE_EPSILONS,
    draws: int = 10,
    seed: int = 0,
    converged_only: bool = False,
    robust: bool = True,
    min_ess: float | None = None,
    data_root: str | None = None,
) -> Evaluation:
    """Score the stored measures of a study (:func:`genmeasures.evaluate.score_table`).

    A value that did not converge (an iterative search stopped before its criterion, e.g. a
    sharpness search saturated at its bound) is a number the measure's definition does not
    vouch for. By default it is scored as computed and counted per measure in
    ``Evaluation.unconverged`` and a note: leaving it out would drop exactly the models where a
    search saturates, which are not a random subset (the widest networks, for the magnitude-aware
    sharpness), and change the population a measure is ranked on. ``converged_only`` leaves them
    out instead: each such value counts as missing for its measure.

    Args:
        zoo: The study.
        measures: Names, aliases, glob patterns or ``!`` exclusions, as
            :func:`~genmeasures.zoo.measuring.measure_zoo` takes them: the stored measures they
            select are scored; None: every stored measure. A measure with fewer than 2 finite
            values is left out with a note, unless it is named explicitly: then it is an error.
        epsilons: Noise levels of the oracle rows.
        draws: Draws averaged per oracle.
        seed: Seed of the oracle and random draws.
        converged_only: Score only the values that converged.
        robust: Add the sign-error over environments and the held-out gap prediction
            (:func:`~genmeasures.evaluate.with_robust_scores`), weighted by the study's test-set
            size (:func:`count_test_examples`).
        min_ess: Their ESS threshold; None: the default
            (:func:`~genmeasures.evaluate.robust.default_min_ess`).
        data_root: Folder of file-based datasets, read for the test-set size.

    Returns:
        The :class:`~genmeasures.evaluate.Evaluation`, with notes on how the study was read,
        and one (:func:`~genmeasures.zoo.versions.stale_warning`) if a measure scored has stale
        values.

    Raises:
        EvaluationError: If no measure is stored yet, a measure named is not stored or has
            fewer than 2 finite values, or too few models finished.
        MeasureError: If ``measures`` names no registered measure.
    """
    table, canonical, notes = scoring_table(zoo)
    if measures is None and not table.attrs[MEASURES_ATTR]:
        raise EvaluationError(
            f"study {zoo.path} has no stored measure yet: compute some with "
            f"`genmeasures measure {zoo.path}` (or genmeasures.zoo.measure_zoo) first"
        )
    named: list[str] = []
    if measures is not None:
        table.attrs[MEASURES_ATTR], named = _selection(zoo, table.attrs[MEASURES_ATTR], measures)
    flagged = {
        name: [model for model in models if model in table.index]
        for name, models in zoo.unconverged().items()
        if name in table.attrs[MEASURES_ATTR]
    }
    if converged_only:
        for name, models in flagged.items():
            table.loc[models, name] = float("nan")
    evaluation = score_table(
        table,
        None,  # the measures of attrs, without the ones too few models have a value of
        gap="gap",
        canonical=canonical,
        architecture=ARCHITECTURE,
        epsilons=epsilons,
        draws=draws,
        seed=seed,
    )
    unscored = [name for name in named if name not in evaluation.measures]
    if unscored:
        raise EvaluationError(
            f"too few finite values to score {', '.join(unscored)} (fewer than 2 among the "
            f"{evaluation.models} finished models): leave them out of the measures to score"
        )
    scored = set(evaluation.scored.index)
    unconverged = {
        name: models
        for name, flagged_models in flagged.items()
        if name in evaluation.measures
        and (models := tuple(m for m in flagged_models if m in scored))
    }
    if unconverged:
        counts = ", ".join(f"{name} {len(models)}" for name, models in unconverged.items())
        treatment = (
            "left out (converged values only)"
            if converged_only
            else "scored as computed and flagged (--converged-only leaves them out)"
        )
        notes.append(
            f"{sum(map(len, unconverged.values()))} values did not converge ({counts}): "
            f"{treatment}."
        )
        reasons = zoo.unconverged_reasons()
        notes += [f"{name}: {reasons[name]}." for name in unconverged if name in reasons]
    stale = stale_warning(zoo, evaluation.measures)
    if stale is not None:
        notes.append(f"Warning: {stale}.")
    evaluation = dataclasses.replace(
        evaluation,
        notes=[*evaluation.notes, *notes],
        unconverged=unconverged,
        converged_only=converged_only,
    )
    if robust:
        test_size = count_test_examples(zoo, data_root)
        evaluation = with_robust_scores(evaluation, test_size=test_size, min_ess=min_ess)
    return evaluation


def count_test_examples(zoo: Zoo, data_root: str | None = None) -> int:
    """The number of test examples behind the study's test errors: the smallest if they differ.

    Read from each distinct data setting of the finished models (a dataset is loaded once per
    setting, from the cache for a generated one), so a grid over ``test_size`` weighs every
    pair by its least certain test error.

    Raises:
        EvaluationError: If no model has finished.
        DataError: If a dataset cannot be read.
    """
    settings = {config.data_hash: config for config in zoo.configs((ModelState.DONE,))}
    if not settings:
        raise EvaluationError(f"study {zoo.path} has no finished model: nothing has a test error")
    return min(len(cached_dataset(config, data_root).test[1]) for config in settings.values())


def write_zoo_report(
    zoo: Zoo,
    evaluation: Evaluation,
    folder: str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
) -> Path:
    """Write the report of a study's evaluation (:func:`~genmeasures.evaluate.report.write_report`).

    Args:
        zoo: The study.
        evaluation: Its scores, from :func:`evaluate_zoo`.
        folder: The report folder; None: :data:`REPORT_FOLDER` inside the study folder.
        workers: Processes that draw the figures.

    Returns:
        The path of ``report.md``, whose title names the study's space and whose description is
        the space's.
    """
    return write_report(
        evaluation,
        zoo.path / REPORT_FOLDER if folder is None else folder,
        title=f"Study {zoo.space.name}",
        description=zoo.space.description,
        workers=workers,
    )
