"""Measure implementation versions in a study: stale values, the v2 → v3 migration, and rows
whose metrics belong to a model that is not finished."""

from __future__ import annotations

import dataclasses
import math
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from test_store import tiny_space

from genmeasures.measures import registry
from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.schema import METRICS, SCHEMA_VERSION
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import DATABASE_FILE, Zoo
from genmeasures.zoo.versions import is_stale, stale_measures, stale_warning
from genmeasures.zoo.worker import TRAINING_MEASURES

MEASURES = ["param-norm", "spec-init"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def measured_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("versions") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMEASURES_CACHE", str(folder.parent / "cache"))
        with Zoo.create(folder, tiny_space("versions", lr=[0.05, 0.02])) as zoo:
            train_zoo(zoo)
            measure_zoo(zoo, MEASURES)
    return folder


@pytest.fixture
def measured(measured_once: Path, tmp_path: Path) -> Zoo:
    """A private copy of a trained study whose models have MEASURES, free to be modified."""
    return Zoo(shutil.copytree(measured_once, tmp_path / "study"))


def bump(monkeypatch: pytest.MonkeyPatch, name: str, version: int) -> None:
    """Register ``name`` at another implementation version, as a new genmeasures would."""
    spec = registry.get_measure(name)
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, version=version))


def stored_rows(zoo: Zoo) -> pd.DataFrame:
    return zoo.measures_table().set_index(["model", "name", "params"]).sort_index()


def test_the_stale_rule() -> None:
    assert not is_stale(1, 1)
    assert is_stale(1, 2) and is_stale(2, 1), "another version, older or newer, is stale"
    assert is_stale(None, 1), "a value stored before measures had versions is stale"
    assert not is_stale(None, None), "a measure no longer registered cannot be recomputed"


def test_values_are_stored_with_their_measure_version(measured: Zoo) -> None:
    long = measured.measures_table()
    versions = dict(zip(long["name"], long["measure_version"], strict=True))
    assert versions["param-norm"] == registry.get_measure("param-norm").version == 1
    assert not long["stale"].any()
    assert stale_measures(measured) == [] and stale_warning(measured) is None
    again = measure_zoo(measured, MEASURES)
    assert again.values == again.recomputed == 0 and again.up_to_date == 2


def test_stale_values_are_recomputed_and_replaced(
    measured: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stored_rows(measured)
    bump(monkeypatch, "param-norm", 2)
    (stale,) = stale_measures(measured)
    assert (stale.name, stale.stale, stale.values, stale.stored, stale.current) == (
        "param-norm",
        2,
        2,
        ("1",),
        2,
    )
    warning = stale_warning(measured)
    assert warning is not None and "\n" not in warning
    assert "param-norm (2 of 2 values: version 1, current 2)" in warning
    assert f"genmeasures measure {measured.path} --measures param-norm" in warning
    assert "spec-init" not in warning
    assert stale_measures(measured, ["spec-init"]) == []
    summary = measure_zoo(measured, MEASURES)
    assert (summary.measured, summary.values, summary.recomputed) == (2, 2, 2)
    after = stored_rows(measured)
    assert after.index.equals(before.index), "replaced, not added beside the stale ones"
    assert (after.xs("param-norm", level="name")["measure_version"] == 2).all()
    pd.testing.assert_series_equal(after["value"], before["value"])  # same code, same numbers
    assert stale_warning(measured) is None
    again = measure_zoo(measured, MEASURES)
    assert again.recomputed == 0 and again.up_to_date == 2


def test_a_stale_value_is_recomputed_only_when_asked_for(
    measured: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    bump(monkeypatch, "spec-init", 3)
    summary = measure_zoo(measured, ["param-norm"])
    assert summary.recomputed == 0 and summary.up_to_date == 2
    assert [entry.name for entry in stale_measures(measured)] == ["spec-init"]


def test_values_of_models_that_are_not_done_do_not_count(
    measured: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    bump(monkeypatch, "param-norm", 2)
    first, _ = measured.configs()
    connection = sqlite3.connect(measured.path / DATABASE_FILE)
    with connection:
        connection.execute(
            "UPDATE models SET status = 'not-converged' WHERE hash = ?", (first.hash,)
        )
    connection.close()
    (stale,) = stale_measures(measured)
    assert (stale.stale, stale.values) == (1, 1), "only the done model's value is scored"


V2_MEASURES = """
CREATE TABLE measures_v2 (
    model TEXT NOT NULL REFERENCES models (hash),
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    log_value REAL,
    converged INTEGER NOT NULL,
    seconds REAL NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    extra TEXT,
    version TEXT NOT NULL,
    PRIMARY KEY (model, name, params)
);
INSERT INTO measures_v2 SELECT model, name, params, value, log_value, converged, seconds, status,
    message, extra, version FROM measures;
DROP TABLE measures;
ALTER TABLE measures_v2 RENAME TO measures;
PRAGMA user_version = 2;
"""


def as_version_2(zoo: Zoo) -> Path:
    """Rewrite a study's database as genmeasures wrote it before measure versions (schema 2)."""
    zoo.close()
    connection = sqlite3.connect(zoo.path / DATABASE_FILE)
    connection.executescript(V2_MEASURES)
    connection.close()
    return zoo.path


def test_a_version_2_study_keeps_its_rows_and_its_values_are_stale(measured: Zoo) -> None:
    before = stored_rows(measured)
    table = measured.table()
    folder = as_version_2(measured)
    with Zoo(folder) as zoo:
        (version,) = (
            sqlite3.connect(folder / DATABASE_FILE).execute("PRAGMA user_version").fetchone()
        )
        assert version == SCHEMA_VERSION == 3
        migrated = stored_rows(zoo)
        assert migrated.index.equals(before.index), "every row is kept"
        columns = ["value", "log_value", "converged", "seconds", "status", "version"]
        pd.testing.assert_frame_equal(migrated[columns], before[columns])
        assert migrated["measure_version"].isna().all() and migrated["stale"].all()
        pd.testing.assert_frame_equal(zoo.table(), table)  # still shown, and scored
        warning = stale_warning(zoo)
        assert warning is not None
        assert "param-norm (2 of 2 values: version unknown, current 1)" in warning
        assert "spec-init (2 of 2 values" in warning
        summary = measure_zoo(zoo, MEASURES)
        assert summary.recomputed == summary.values == 4
        assert stale_measures(zoo, MEASURES) == []
        stale = {entry.name for entry in stale_measures(zoo)}
        assert stale == set(TRAINING_MEASURES), "stored while training, not asked for here"
        pd.testing.assert_series_equal(stored_rows(zoo)["value"], before["value"])


@pytest.mark.filterwarnings("ignore::genmeasures.GenMeasuresWarning")
def test_a_model_that_is_not_finished_shows_no_metrics(measured: Zoo) -> None:
    done, other = measured.configs()
    trained = measured.table()
    measured.invalidate(done.hash, "test")  # back to pending: its row keeps the old figures
    connection = sqlite3.connect(measured.path / DATABASE_FILE)
    row = connection.execute("SELECT gap, steps FROM models WHERE hash = ?", (done.hash,))
    assert all(value is not None for value in row.fetchone()), "the old figures are still there"
    connection.close()
    columns = [*METRICS, *MEASURES]
    for state in (ModelState.PENDING, ModelState.RUNNING, ModelState.FAILED):
        connection = sqlite3.connect(measured.path / DATABASE_FILE)
        with connection:
            connection.execute("UPDATE models SET status = ? WHERE hash = ?", (state, done.hash))
        connection.close()
        table = measured.table()
        assert table.loc[done.hash, columns].isna().all(), state
        pd.testing.assert_series_equal(table.loc[other.hash], trained.loc[other.hash])
        exported = pd.read_csv(measured.export(measured.path / "t.csv"), index_col="hash")
        assert exported.loc[done.hash, list(METRICS)].isna().all()
    for state in (ModelState.NOT_CONVERGED, ModelState.DIVERGED):
        connection = sqlite3.connect(measured.path / DATABASE_FILE)
        with connection:
            connection.execute("UPDATE models SET status = ? WHERE hash = ?", (state, done.hash))
        connection.close()
        metrics = measured.table().loc[done.hash, list(METRICS)]
        pd.testing.assert_series_equal(metrics, trained.loc[done.hash, list(METRICS)])
        assert not math.isnan(metrics["gap"]), state
