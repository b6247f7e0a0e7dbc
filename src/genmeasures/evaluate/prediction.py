"""Held-out prediction of the gap from one measure: a cross-validated R².

A rank score asks whether a measure orders the gaps; this asks how much of the gap a measure
predicts on configurations it was not fitted on. For each measure, a linear regression of the gap
on the measure alone (on a log scale where every value is positive, as for most norm- and
bound-based measures) is fitted on folds of configurations and scored on the fold left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.robust import hyperparameter_types
from genmeasures.evaluate.scoring import _measure_names, _scored_rows
from genmeasures.evaluate.table import level_codes, numeric_column, require_columns, require_rows

#: Folds of :func:`gap_prediction` unless told otherwise (fewer when there are fewer
#: configurations).
FOLDS = 5

#: The columns of :func:`gap_prediction`'s table.
PREDICTION_COLUMNS = ("r2", "scale", "models")


def gap_prediction(
    table: pd.DataFrame,
    measures: Sequence[str] | str | None = None,
    *,
    gap: str = "gap",
    hparams: Sequence[str] | str | None = None,
    folds: int | None = None,
) -> pd.DataFrame:
    """The held-out R² of a one-feature linear regression of the gap on each measure.

    The models are split into ``folds`` folds by configuration (their values of the
    hyperparameter types; the replicate columns ``seed`` and ``data_seed`` are left out of it), so
    all seeds of a configuration fall in the same fold (``sklearn.model_selection.GroupKFold``,
    deterministic). Each model's gap is predicted by the regression fitted on the other folds
    (``cross_val_predict``), and R² is that of the pooled out-of-fold predictions (``r2_score``):
    it is below 0 when the measure predicts worse than the mean gap. The feature is ``log μ``
    where every finite value of the measure is positive, else ``μ``.

    Rows whose ``status`` is not ``"done"`` and rows with a NaN gap are excluded; a measure's NaN
    values drop those models for that measure, whose R² is NaN if fewer than ``folds`` models or
    configurations remain.

    Args:
        table: One row per model: hyperparameter columns, the gap, a column per measure and
            optionally ``status``.
        measures: The measure columns; None: every measure column
            (:func:`~genmeasures.evaluate.scoring.measure_columns`).
        gap: The generalization gap column.
        hparams: The hyperparameter columns; None reads ``table.attrs["hparams"]``.
        folds: Folds of the cross-validation (at least 2); None: :data:`FOLDS`, or one per
            configuration when there are fewer.

    Returns:
        Rows: the measures (index name ``"measure"``). Columns: ``r2`` (held-out R²), ``scale``
        (``"log"`` or ``"linear"``: the feature used) and ``models`` (models with a finite value);
        ``attrs["folds"]`` holds the folds used.

    Raises:
        EvaluationError: For a bad ``folds``, a missing or non-numeric column, fewer than 2
            finished models, or fewer models or configurations than folds.
    """
    require_rows(table, "gap_prediction")
    if folds is not None and (
        isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2
    ):
        raise EvaluationError(f"folds must be an int >= 2; got {folds!r}")
    types, replicates = hyperparameter_types(table, hparams)
    require_columns(table, [gap], "gap")
    named = [measures] if isinstance(measures, str) else measures
    chosen = _measure_names(table, named, gap, (*types, *replicates))
    scored, g, _ = _scored_rows(table, gap)
    configuration = _configurations(scored, types)
    configurations = int(configuration.max()) + 1
    folds = min(FOLDS, max(configurations, 2)) if folds is None else int(folds)
    if len(g) < folds or configurations < folds:
        raise EvaluationError(
            f"gap_prediction with folds={folds} needs at least {folds} scored models and "
            f"{folds} configurations (values of {list(types)}); got {len(g)} models in "
            f"{configurations} configurations: pass a smaller folds"
        )
    rows = {}
    for name in chosen:
        mu = numeric_column(scored, name, "measure")
        finite = np.isfinite(mu)
        log = bool(finite.any() and (mu[finite] > 0).all())
        feature = np.log(mu[finite]) if log else mu[finite]
        rows[name] = {
            "r2": _held_out_r2(feature, g[finite], configuration[finite], folds),
            "scale": "log" if log else "linear",
            "models": int(finite.sum()),
        }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(PREDICTION_COLUMNS))
    frame.index.name = "measure"
    frame.attrs["folds"] = folds
    return frame


def _configurations(scored: pd.DataFrame, types: Sequence[str]) -> np.ndarray:
    """The configuration of each model: an integer per distinct tuple of type values."""
    if not types:
        return np.zeros(len(scored), dtype=np.int64)
    codes = level_codes(scored[list(types)])
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def _held_out_r2(feature: np.ndarray, g: np.ndarray, groups: np.ndarray, folds: int) -> float:
    """R² of the out-of-fold predictions of ``g`` from ``feature``; NaN if too few groups."""
    # Imported here: scikit-learn takes a second to import, which no other score needs.
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    if len(g) < folds or len(np.unique(groups)) < folds:
        return float("nan")
    predicted = cross_val_predict(
        LinearRegression(), feature[:, None], g, groups=groups, cv=GroupKFold(n_splits=folds)
    )
    return float(r2_score(g, predicted))
