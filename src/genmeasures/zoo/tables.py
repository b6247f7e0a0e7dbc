"""A study database read as tables: one row per model (:func:`study_table`) or per value.

:meth:`Zoo.table <genmeasures.zoo.store.Zoo.table>` and :meth:`Zoo.measures_table
<genmeasures.zoo.store.Zoo.measures_table>` return these. A row presents metrics and measure
values only for a model whose training ran to an outcome and left a network (``done``,
``not-converged``, ``diverged``: :attr:`ModelState.is_trained
<genmeasures.zoo.states.ModelState.is_trained>`): a model sent back to ``pending`` (e.g. by a
corrupt checkpoint), being trained again or ``failed`` shows NaN, whatever an earlier run left
in its row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

from genmeasures.errors import StudyError
from genmeasures.evaluate.table import HPARAMS_ATTR, MEASURES_ATTR
from genmeasures.measures import list_measures
from genmeasures.zoo.schema import METRICS
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.versions import current_versions, is_stale

__all__ = ["long_measures", "study_table"]


def study_table(
    connection: sqlite3.Connection, hparam_names: list[str], *, measures: bool = True
) -> pd.DataFrame:
    """One row per model: hash, status, hyperparameters, metrics and measure values.

    Args:
        connection: The study's database.
        hparam_names: The grid's keys, one column each.
        measures: Add one column per stored measure name (the most recently stored value
            when a measure was computed with several parameter sets).

    Returns:
        The table of :meth:`Zoo.table <genmeasures.zoo.store.Zoo.table>`.
    """
    rows = connection.execute(
        f"SELECT hash, idx, status, hparams, {', '.join(METRICS)} FROM models ORDER BY idx"
    ).fetchall()
    records = [
        {"hash": model_hash, "index": index, "status": status}
        | {name: json.loads(hparams).get(name) for name in hparam_names}
        | dict(zip(METRICS, metrics, strict=True))
        for model_hash, index, status, hparams, *metrics in rows
    ]
    frame = pd.DataFrame.from_records(
        records, columns=["hash", "index", "status", *hparam_names, *METRICS]
    ).set_index("hash")
    frame[list(METRICS)] = frame[list(METRICS)].astype(float)
    names: list[str] = []
    if measures:
        wide = _wide_measures(connection)
        frame, names = frame.join(wide), list(wide.columns)
        frame.attrs[MEASURES_ATTR] = names
    frame.attrs[HPARAMS_ATTR] = hparam_names
    untrained = ~frame["status"].map(lambda status: ModelState(status).is_trained)
    frame.loc[untrained, [*METRICS, *names]] = float("nan")
    return frame


def _wide_measures(connection: sqlite3.Connection) -> pd.DataFrame:
    """Model × measure name: the most recently stored value, measures in the catalog's order."""
    stored = pd.read_sql_query("SELECT model, name, value FROM measures ORDER BY rowid", connection)
    wide = stored.drop_duplicates(["model", "name"], keep="last").pivot(
        index="model", columns="name", values="value"
    )
    catalog = {spec.name: position for position, spec in enumerate(list_measures())}
    order = sorted(wide.columns, key=lambda name: (catalog.get(name, len(catalog)), name))
    return wide[order].astype(float)


#: What a search's stopping reason means, for the report (``MEASURES.md`` §5).
_REASONS = {
    ("saturated", "low"): "saturated low: at its smallest scale the accuracy already moves by "
    "more than the target",
    ("saturated", "high"): "saturated high: at its largest scale the accuracy still moves by "
    "less than the target",
    ("max-steps", None): "ran out of steps before reaching the target's tolerance",
}


def unconverged_values(connection: sqlite3.Connection) -> dict[str, list[str]]:
    """Measure name → the models whose most recently stored value did not converge."""
    flagged = _unconverged_rows(connection)
    return {str(name): list(group["model"]) for name, group in flagged.groupby("name", sort=False)}


def unconverged_reasons(connection: sqlite3.Connection) -> dict[str, str]:
    """Measure name → why its values did not converge: each search, reason and count."""
    flagged = _unconverged_rows(connection)
    reasons: dict[str, str] = {}
    for name, group in flagged.groupby("name", sort=False):
        counts: dict[str, int] = {}
        for extra in group["extra"]:
            details = json.loads(extra) if isinstance(extra, str) and extra else {}
            why = _REASONS.get(
                (details.get("reason"), details.get("saturated")),
                f"stopped: {details.get('reason', 'reason not recorded')}",
            )
            search = details.get("search")
            key = f"search {search} {why}" if search else why
            counts[key] = counts.get(key, 0) + 1
        reasons[str(name)] = "; ".join(
            f"{key} ({n} model{'s' * (n != 1)})" for key, n in counts.items()
        )
    return reasons


def _unconverged_rows(connection: sqlite3.Connection) -> pd.DataFrame:
    stored = pd.read_sql_query(
        "SELECT model, name, converged, extra FROM measures ORDER BY rowid", connection
    ).drop_duplicates(["model", "name"], keep="last")
    return stored[stored["converged"] == 0]


def long_measures(connection: sqlite3.Connection) -> pd.DataFrame:
    """Every stored measure value in long form, with its parameters, status and versions.

    Returns:
        Columns ``model, name, params, value, log_value, converged, seconds, status, message,
        version`` (the library's), ``measure_version`` (the measure's; NaN for a value stored
        before measures had versions) and ``stale`` (:func:`~genmeasures.zoo.versions.is_stale`).
    """
    long = pd.read_sql_query(
        "SELECT model, name, params, value, log_value, converged, seconds, status, message, "
        "version, measure_version FROM measures ORDER BY model, name",
        connection,
    )
    versions = current_versions()
    long["stale"] = [
        is_stale(None if pd.isna(stored) else int(stored), versions.get(name))
        for name, stored in zip(long["name"], long["measure_version"], strict=True)
    ]
    return long


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a study's table to ``.csv`` or ``.parquet`` (by the file's suffix).

    Raises:
        StudyError: for another suffix, or Parquet without ``pyarrow``.
    """
    path = Path(path)
    if path.suffix == ".csv":
        table.to_csv(path)
    elif path.suffix == ".parquet":
        try:
            table.to_parquet(path)
        except ImportError as error:
            raise StudyError(
                f"writing {path} needs pyarrow: pip install pyarrow ({error})"
            ) from error
    else:
        raise StudyError(f"export to .csv or .parquet, got {path.name!r}")
    return path
