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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import Evaluation, score_table
from genmeasures.evaluate.baselines import ORACLE_EPSILONS
from genmeasures.evaluate.table import HPARAMS_ATTR, MEASURES_ATTR, REPLICATE_COLUMNS
from genmeasures.zoo.space import PER_OPTIMIZER
from genmeasures.zoo.store import Zoo

#: The column naming each model's architecture in the scoring table.
ARCHITECTURE = "model"


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


def evaluate_zoo(
    zoo: Zoo,
    measures: Sequence[str] | None = None,
    *,
    epsilons: Sequence[float] = ORACLE_EPSILONS,
    draws: int = 10,
    seed: int = 0,
) -> Evaluation:
    """Score the stored measures of a study (:func:`genmeasures.evaluate.score_table`).

    Args:
        zoo: The study.
        measures: Measure columns to score; None: every stored measure.
        epsilons: Noise levels of the oracle rows.
        draws: Draws averaged per oracle.
        seed: Seed of the oracle and random draws.

    Returns:
        The :class:`~genmeasures.evaluate.Evaluation`, with notes on how the study was read.

    Raises:
        EvaluationError: If no measure is stored yet, or too few models finished.
    """
    table, canonical, notes = scoring_table(zoo)
    if measures is None and not table.attrs[MEASURES_ATTR]:
        raise EvaluationError(
            f"study {zoo.path} has no stored measure yet: compute some with "
            f"`genmeasures measure {zoo.path}` (or genmeasures.zoo.measure_zoo) first"
        )
    evaluation = score_table(
        table,
        measures,
        gap="gap",
        canonical=canonical,
        architecture=ARCHITECTURE,
        epsilons=epsilons,
        draws=draws,
        seed=seed,
    )
    return dataclasses.replace(evaluation, notes=[*evaluation.notes, *notes])
