"""The report's tables of an :class:`~genmeasures.evaluate.scoring.Evaluation`, as DataFrames.

The paper's tables (Jiang et al. 2020, tables 5-6; Tsuzuku et al. 2020, tables 1-2) ready to
print, with what the writers of :mod:`~genmeasures.evaluate.report.formats` read in their
``attrs``; how each measure moves along each hyperparameter, rescaled to [0, 1] per
architecture (:func:`trend_table`; Tsuzuku et al. 2020, figures 1-2); and the sentences on the
population summary (:func:`population_notes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genmeasures.evaluate.robust import ALL_TYPES
from genmeasures.evaluate.scoring import Evaluation
from genmeasures.evaluate.table import REPLICATE_COLUMNS

#: The statement that every rank table carries: τ is Kendall's τ-a (``EVALUATION.md``).
TAU_A = "Kendall τ-a: ties count 0"

#: A model "fits its training set" in the population summary when its training error is below
#: this (training accuracy above 99%, Jiang et al. 2020, figure 1, left).
FIT_ERROR = 0.01

#: Columns of :func:`trend_table` after ``measure`` and the hyperparameter's own column.
TREND_COLUMNS = ("series", "series_level", "mean", "std", "count")

#: Keys of ``DataFrame.attrs`` that the table builders set and the writers read (the decimals
#: of every real column, and of some columns apart: a mapping column → decimals).
BASELINES_ATTR, DECIMALS_ATTR, COLUMN_DECIMALS_ATTR, CAPTION_ATTR, LABEL_ATTR = (
    "baselines",
    "decimals",
    "column_decimals",
    "caption",
    "label",
)

_READABLE = {"tau": "τ", "Psi": "Ψ"}


def rank_table(ev: Evaluation) -> pd.DataFrame:
    """The rank-correlation table (Jiang et al. 2020, eqs 2-5, table 5).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures, then the baselines. Columns: ψ_i labelled by the hyperparameter
        type, ``τ`` (Kendall's τ-a over every scored model) and ``Ψ``. ``attrs`` holds the
        baseline rows, the decimals (3), a caption and a LaTeX label for the writers.
    """
    table = _with_unconverged(ev, ev.ranks.rename(columns=_READABLE).rename_axis("measure"))
    caption = (
        "Rank correlation with the generalization gap (Jiang et al. 2020, eqs 2-5, table 5). "
        f"{TAU_A}. Columns: ψ_i per hyperparameter type (τ within groups of models that differ "
        "only in that type, averaged over the groups), τ over every scored model, Ψ = mean of "
        "ψ_i"
        + ("; unconverged: the values that did not converge" if ev.unconverged else "")
        + ". "
        + _baselines_sentence(ev)
    )
    return _annotated(table, ev.baselines, decimals=3, caption=caption, label="tab:ranks")


def robust_table(ev: Evaluation) -> pd.DataFrame:
    """The sign-error over environments (Dziugaite et al. 2020) and the held-out R² of the gap.

    Args:
        ev: The scores with their robust part
            (:func:`~genmeasures.evaluate.robust.with_robust_scores`).

    Returns:
        Rows: the measures, then the oracles and the random measure. Columns: the ``mean``, the
        90th percentile (``p90``) and the ``worst`` (maximum) environment loss over every type,
        the worst per type (``worst <type>``), the ``environments`` kept, and ``R²`` (held out,
        the measures only). ``attrs`` as in :func:`rank_table`, with 3 decimals.

    Raises:
        ValueError: If ``ev`` has no robust part.
    """
    robust = ev.robust
    if robust is None or ev.prediction is None:
        raise ValueError("this evaluation has no robust part: see with_robust_scores")
    summary = robust.summary
    table = pd.DataFrame(
        {
            "mean": summary[(ALL_TYPES, "mean")],
            "p90": summary[(ALL_TYPES, "p90")],
            "worst": summary[(ALL_TYPES, "max")],
            **{f"worst {name}": summary[(name, "max")] for name in robust.hparams},
            "environments": pd.array(summary[(ALL_TYPES, "environments")], dtype="Int64"),
            "R²": ev.prediction["r2"].reindex(summary.index),
        },
        index=summary.index,
    )
    kept = sum(kept for kept, _ in robust.environment_counts.values())
    total = kept + sum(low for _, low in robust.environment_counts.values())
    noise = (
        "without test noise"
        if math.isinf(robust.test_size)
        else f"with n = {robust.test_size:g} test examples"
    )
    caption = (
        "Sign-error over environments (Dziugaite et al. 2020). A coupled pair is two models that "
        "differ in one hyperparameter type; an environment, the coupled pairs along one type "
        "that share the values of the others. A pair's error is 0 when the measure orders the "
        "two gaps right, 1 when wrong, ½ when it ties them, weighted by the Hoeffding "
        f"confidence that the sign of the gap difference is not test-set noise ({noise}); "
        f"environments with an effective sample size below {robust.min_ess:g} are dropped "
        f"({kept} of {total} kept, all types). Columns: the mean, 90th percentile and worst "
        "environment loss over every type, the worst per type, the environments kept, and R²: "
        "the held-out R² of a one-feature regression of the gap on the measure (log scale for "
        f"positive measures; {ev.prediction.attrs.get('folds', 'several')} folds by "
        "configuration). Baselines below the measures: ε-oracles "
        f"(losses averaged over {ev.draws} draws) and a random measure."
    )
    return _annotated(table, robust.baselines, decimals=3, caption=caption, label="tab:robust")


def _with_unconverged(ev: Evaluation, table: pd.DataFrame) -> pd.DataFrame:
    """The table with an ``unconverged`` count per measure, if some values did not converge."""
    if not ev.unconverged:
        return table
    counts = [
        len(ev.unconverged.get(str(name), ())) if name in ev.measures else None
        for name in table.index
    ]
    return table.assign(unconverged=pd.array(counts, dtype="Int64"))


def cmi_table(ev: Evaluation) -> pd.DataFrame:
    """The conditional mutual information table (Jiang et al. 2020, appendix B, table 6).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures, then the baselines that have a CMI row (the oracles and the random
        measure). Columns: Î(μ, {i}) labelled by the hyperparameter type, the minima over
        ``|S|=0``, ``|S|=1``, ``|S|=2``, ``K`` (eq 14) and ``K set``. ``attrs`` as in
        :func:`rank_table`, with 4 decimals.
    """
    caption = (
        "Conditional mutual information Î(μ, S) = I(V_μ; V_g | U_S) / H(V_g | U_S) between the "
        "sign of a measure's difference and the sign of the gap's difference over pairs of "
        "models (Jiang et al. 2020, appendix B, eqs 11-14, table 6). Columns: Î conditioned on "
        "each hyperparameter type, its minimum over the sets S with |S| = 0, 1 and 2, K = min "
        "over |S| ≤ 2 and the minimizing set (∅: the empty set). Pairs tied in the measure or "
        "the gap are dropped. " + _baselines_sentence(ev, canonical=False)
    )
    table = _with_unconverged(ev, ev.cmi.rename_axis("measure"))
    return _annotated(table, ev.baselines, decimals=4, caption=caption, label="tab:cmi")


def pearson_table(ev: Evaluation) -> pd.DataFrame:
    """Pearson's r between each measure and the gap, per architecture (Tsuzuku et al. 2020).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures. Columns: one per architecture (``r`` when the table was scored as
        one architecture). ``attrs`` as in :func:`rank_table`, with 3 decimals and no baselines.
    """
    table = ev.pearson.rename_axis("measure")
    if ev.architecture is None:
        table = table.rename(columns={"all": "r"})
    by = f" per {ev.architecture}" if ev.architecture is not None else ""
    caption = (
        f"Pearson correlation r between each measure and the generalization gap{by} (Tsuzuku "
        "et al. 2020, section 8, tables 1-2), over the scored models with a finite value."
    )
    return _annotated(table, (), decimals=3, caption=caption, label="tab:pearson")


def trend_hparams(ev: Evaluation) -> tuple[str, ...]:
    """The hyperparameters that :func:`trend_table` and :func:`trend_figure` run along.

    They are the types of ``ev.hparams`` with at least 2 numeric levels among the scored models
    (widths, depths, fractions of random labels; not an optimizer's name), seeds
    (:data:`REPLICATE_COLUMNS`) left out: a seed replicates a model, it is no trend axis.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        The hyperparameter columns, in the order of ``ev.hparams``.
    """
    return tuple(
        name
        for name in ev.hparams
        if name not in REPLICATE_COLUMNS
        and pd.api.types.is_numeric_dtype(ev.scored[name])
        and not pd.api.types.is_bool_dtype(ev.scored[name])
        and ev.scored[name].nunique() >= 2
    )


def trend_table(ev: Evaluation, hparam: str) -> pd.DataFrame:
    """How each measure and the gap move along a hyperparameter (Tsuzuku et al. 2020, figs 1-2).

    Each measure's column and the gap are rescaled to [0, 1] by min-max over the scored models
    of each architecture (``ev.architecture``; all models as one when None), as the paper's
    figure 1 does for the fractions of random labels: a constant column rescales to 0, and NaN
    or infinite values are left out. The rescaled values are then averaged over the models at
    each level of ``hparam``. When :func:`trend_hparams` finds exactly two axes (width and depth,
    the paper's figure 2), the trend along one is split by the levels of the other, the series;
    otherwise the mean runs over every model at the level: its seeds and every other type.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        hparam: One of :func:`trend_hparams`.

    Returns:
        Long format, one row per measure (``ev.measures``, then the gap labelled ``ev.gap``),
        level of ``hparam`` and level of the series, in that order of sorting. Columns:
        ``measure``; ``hparam`` (its level); ``series`` (the series hyperparameter, None without
        one); ``series_level`` (its level, None without one); ``mean``; ``std`` (ddof 1, NaN
        when ``count`` is 1); ``count`` (models with a finite value at the level).

    Raises:
        KeyError: If ``hparam`` is not one of :func:`trend_hparams`.
    """
    return _trend(ev, hparam, _series(ev, hparam), [*ev.measures, ev.gap])


def _series(ev: Evaluation, hparam: str) -> str | None:
    """The other axis when :func:`trend_hparams` finds two, checking ``hparam`` is one."""
    axes = trend_hparams(ev)
    if hparam not in axes:
        raise KeyError(
            f"{hparam!r} is not a hyperparameter with 2 or more numeric levels (seeds excluded); "
            f"trend axes: {', '.join(axes) or 'none'}"
        )
    return next(name for name in axes if name != hparam) if len(axes) == 2 else None


def _scope(ev: Evaluation) -> str:
    """Over which models :func:`trend_table` rescales, in words."""
    return "per architecture" if ev.architecture is not None else "over the scored models"


def _rescaled(ev: Evaluation, columns: Sequence[str]) -> pd.DataFrame:
    """The scored models' ``columns`` min-max rescaled to [0, 1] per architecture (NaN kept)."""
    scored = ev.scored.reset_index(drop=True)
    values = scored[list(columns)].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    values = values.where(np.isfinite(values))
    architecture = (
        scored[ev.architecture] if ev.architecture is not None else pd.Series(0, index=scored.index)
    )
    groups = values.groupby(architecture, dropna=False)
    low, span = groups.transform("min"), groups.transform("max") - groups.transform("min")
    return ((values - low) / span.where(span > 0)).where(span > 0, 0.0).where(values.notna())


def _trend(ev: Evaluation, hparam: str, series: str | None, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of :func:`trend_table` for ``columns``, split by ``series`` unless None."""
    scored = ev.scored.reset_index(drop=True)
    keys = [scored[hparam]] if series is None else [scored[hparam], scored[series]]
    grouped = _rescaled(ev, columns).groupby(keys, sort=True)
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    levels = mean.index.to_frame(index=False)
    parts = [
        pd.DataFrame(
            {
                "measure": column,
                hparam: levels.iloc[:, 0],
                "series": series,
                "series_level": levels.iloc[:, 1] if series is not None else None,
                "mean": mean[column].to_numpy(),
                "std": std[column].to_numpy(),
                "count": count[column].to_numpy(dtype=np.int64),
            }
        )
        for column in columns
    ]
    return pd.concat(parts, ignore_index=True)


def _annotated(
    table: pd.DataFrame, baselines: Sequence[str], *, decimals: int, caption: str, label: str
) -> pd.DataFrame:
    """``table`` with what the writers read in its ``attrs``: baseline rows, decimals, caption."""
    table.attrs = {
        BASELINES_ATTR: tuple(row for row in baselines if row in table.index),
        DECIMALS_ATTR: decimals,
        CAPTION_ATTR: caption,
        LABEL_ATTR: label,
    }
    return table


def _baselines_sentence(ev: Evaluation, *, canonical: bool = True) -> str:
    parts = [
        f"ε-oracles: the gap plus N(0, ε²) noise, scores averaged over {ev.draws} "
        f"draw{'s' if ev.draws != 1 else ''} (seed {ev.seed})"
    ]
    if canonical:
        parts.append("canonical ordering: ψ of each type's believed order, only for its own type")
    parts.append("random: a random measure")
    return "Baselines below the measures (Jiang et al. 2020, section 4.1, table 1): " + (
        "; ".join(parts) + "."
    )


def _population_parts(ev: Evaluation) -> tuple[bool, bool]:
    columns = ev.population.columns
    return "train_error" in columns, "train_ce" in columns


def population_notes(ev: Evaluation) -> list[str]:
    """Sentences on the population summary: what it shows and which panels are skipped.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        One sentence per skipped panel (a table without ``train_error`` or ``train_ce``, as a
        CSV from elsewhere may be) and the count of models that fit their training set.
    """
    has_error, has_ce = _population_parts(ev)
    total = len(ev.population)
    notes = []
    if has_error:
        error = pd.to_numeric(ev.population["train_error"], errors="coerce")
        fitted = int((error < FIT_ERROR).sum())
        notes.append(
            f"{fitted} of the {total} models in the table (finished or not) reached a training "
            f"accuracy above {100 * (1 - FIT_ERROR):g}% (train_error < {FIT_ERROR:g})."
        )
    else:
        notes.append(
            "The population summary has no panel of models above 99% training accuracy: the "
            "table has no train_error column."
        )
    if not has_ce:
        notes.append(
            "The population summary has no histogram of the training cross-entropy: the table "
            "has no train_ce column."
        )
    return notes
