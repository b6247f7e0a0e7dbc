"""The scoring table: which columns are hyperparameters, the gap and measures; what is scored.

Every score reads one plain table with a row per trained model (``EVALUATION.md``): a column per
hyperparameter type, the generalization gap and a column per measure. This module checks such a
table at the public entry points and gives the scores the rows they may use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError

#: Key of ``DataFrame.attrs`` naming the hyperparameter columns (set by ``Zoo.table()``), used
#: when a score is called with ``hparams=None``.
HPARAMS_ATTR = "hparams"

#: Hyperparameter columns that replicate a configuration rather than change it: a study's
#: evaluation averages over them, and they are never a trend axis of the report.
REPLICATE_COLUMNS = ("seed", "data_seed")

#: Key of ``DataFrame.attrs`` naming the measure columns (set by ``Zoo.table()``).
MEASURES_ATTR = "measures"

#: Columns that describe a model's training rather than a measure (a study table's metrics and
#: bookkeeping): never taken as measures unless named.
BOOKKEEPING = (
    "hash",
    "index",
    "status",
    "train_ce",
    "train_error",
    "test_ce",
    "test_error",
    "steps",
    "seconds",
)

#: Value of a ``status`` column marking a model that reached its stopping criterion; rows with
#: another status are excluded from every score (``EVALUATION.md``, "Generalization gap").
DONE = "done"


@dataclass(frozen=True)
class Scored:
    """The rows of one measure that a score uses.

    Attributes:
        mu: The measure's finite values.
        gap: The gap of the same rows.
        hparams: The hyperparameter values of the same rows (one column per type).
        excluded: Rows left out because their model did not reach its stopping criterion.
        dropped: Rows left out because the measure or the gap is NaN or infinite.
    """

    mu: np.ndarray
    gap: np.ndarray
    hparams: pd.DataFrame
    excluded: int
    dropped: int


def resolve_hparams(table: pd.DataFrame, hparams: Sequence[str] | str | None) -> tuple[str, ...]:
    """The hyperparameter columns: ``hparams``, or the table's ``attrs["hparams"]`` when None.

    Raises:
        EvaluationError: If neither names a column list, or a named column is missing.
    """
    if hparams is None:
        hparams = table.attrs.get(HPARAMS_ATTR)
        if hparams is None:
            raise EvaluationError(
                "hparams=None needs a table that names its hyperparameter columns in "
                f"attrs[{HPARAMS_ATTR!r}] (as Zoo.table() does); got a table without it: pass "
                "hparams=[...] (columns: " + ", ".join(map(str, table.columns)) + ")"
            )
    if isinstance(hparams, str):
        hparams = [hparams]
    names = tuple(hparams)
    if len(set(names)) != len(names):
        raise EvaluationError(f"hparams lists a column twice: {list(names)}")
    require_columns(table, names, "hyperparameter")
    return names


def require_columns(table: pd.DataFrame, columns: Iterable[str], role: str) -> None:
    """Raise EvaluationError naming every ``role`` column that ``table`` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"{role} column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"not in the table; its columns are: {', '.join(map(str, table.columns))}"
        )


def done_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of models that reached their stopping criterion, and how many were excluded.

    A table without a ``status`` column (a CSV from elsewhere) is taken as all finished.
    """
    if "status" not in table.columns:
        return table, 0
    # A missing status of a nullable string column compares as <NA>: not done, and counted.
    done = table["status"].eq(DONE).fillna(False).to_numpy(dtype=bool)
    return table[done], int((~done).sum())


def numeric_column(table: pd.DataFrame, column: str, role: str) -> np.ndarray:
    """``table[column]`` as float64, NaN for missing values.

    Raises:
        EvaluationError: If the column holds values that are not numbers.
    """
    require_columns(table, [column], role)
    try:
        return pd.to_numeric(table[column], errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise EvaluationError(f"{role} column {column!r} must hold numbers; got {error}") from error


def scored_rows(table: pd.DataFrame, measure: str, gap: str, hparams: Sequence[str]) -> Scored:
    """The finite (measure, gap) rows of ``table``'s finished models, with their hyperparameters.

    Raises:
        EvaluationError: If a column is missing or not numeric, the measure or the gap has no
            finite value, or fewer than two rows remain.
    """
    require_columns(table, [gap], "gap")
    table, excluded = done_rows(table)
    mu = numeric_column(table, measure, "measure")
    g = numeric_column(table, gap, "gap")
    keep = np.isfinite(mu) & np.isfinite(g)
    for name, values in ((measure, mu), (gap, g)):
        if len(values) and not np.isfinite(values).any():
            raise EvaluationError(
                f"column {name!r} has no finite value in its {len(values)} rows: nothing to score"
            )
    if keep.sum() < 2:
        raise EvaluationError(
            f"measure {measure!r} needs at least 2 finished models with a finite value and gap "
            f"to be ranked; got {int(keep.sum())} of {len(table)} rows"
        )
    return Scored(
        mu=mu[keep],
        gap=g[keep],
        hparams=table.loc[keep, list(hparams)].reset_index(drop=True),
        excluded=excluded,
        dropped=int((~keep).sum()),
    )


def level_codes(hparams: pd.DataFrame) -> np.ndarray:
    """Integer codes (rows x types) of each hyperparameter value, in sorted order per type.

    Raises:
        EvaluationError: If a hyperparameter column has missing values.
    """
    codes = np.empty(hparams.shape, dtype=np.int64)
    for j, column in enumerate(hparams.columns):
        values = hparams[column]
        if values.isna().any():
            raise EvaluationError(
                f"hyperparameter column {column!r} has {int(values.isna().sum())} missing "
                "values: every scored model needs a value of every hyperparameter type"
            )
        codes[:, j] = pd.factorize(values, sort=True)[0]
    return codes


def grid_coverage(hparams: pd.DataFrame) -> tuple[int, int]:
    """How many distinct hyperparameter combinations the rows hold, of the full grid's."""
    if hparams.shape[1] == 0:
        return (1 if len(hparams) else 0), 1
    present = len(hparams.drop_duplicates())
    full = math.prod(int(hparams[c].nunique()) for c in hparams.columns)
    return present, full


def require_rows(table: pd.DataFrame, where: str) -> None:
    """Raise EvaluationError if ``table`` has no row; ``where`` names it (a file, a function)."""
    if len(table) == 0:
        columns = ", ".join(map(str, table.columns)) or "none"
        raise EvaluationError(
            f"{where}: table expected one row per trained model (scoring needs at least 2 "
            f"finished models), received 0 rows and {len(table.columns)} columns ({columns})."
        )


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a scoring table from a ``.csv`` or ``.parquet`` file.

    Any such table works: ``genmeasures show --export``'s, or one from another lab.

    Raises:
        EvaluationError: If the file is missing, has another suffix, is empty, cannot be parsed
            or holds no row.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise EvaluationError(f"a table is a .csv or .parquet file; got {str(path)!r}")
    if not path.is_file():
        raise EvaluationError(f"table file {str(path)!r} does not exist")
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError as error:
        raise EvaluationError(
            f"{str(path)!r}: table expected a header row naming the columns, then one row per "
            "trained model, received an empty file."
        ) from error
    except (ValueError, OSError, ImportError) as error:
        raise EvaluationError(f"cannot read table {str(path)!r}: {error}") from error
    require_rows(table, repr(str(path)))
    return table
