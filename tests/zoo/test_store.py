from __future__ import annotations

import json
import math
import shutil
import sqlite3
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from genmeasures.errors import GenMeasuresWarning
from genmeasures.zoo import measuring, schema
from genmeasures.zoo.executors import plan_units, train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.schema import SCHEMA_VERSION
from genmeasures.zoo.space import Space, canonical_json, space_from_dict
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import (
    CHECKPOINT_DIR,
    DATABASE_FILE,
    CorruptCheckpointError,
    StudyError,
    Zoo,
)
from genmeasures.zoo.worker import TRAINING_MEASURES

FIXED = {
    "dataset": "digits",
    "model": "mlp",
    "depth": 1,
    "width": 8,
    "train_size": 200,
    "test_size": 100,
    "batch_size": 32,
    "target_ce": 0.1,
    "max_epochs": 100,
    "check_every": 20,
    "check_batches": 5,
}


def tiny_space(name: str = "tiny", **grid: list) -> Space:
    grid = grid or {"lr": [0.05, 0.02], "seed": [0, 1]}
    fixed = {key: value for key, value in FIXED.items() if key not in grid}
    return space_from_dict({"name": name, "fixed": fixed, "grid": grid}, source="test")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained") / "study"
    with Zoo.create(folder, tiny_space()) as zoo:
        train_zoo(zoo)
    return folder


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Zoo:
    """A private copy of a trained study, free to be modified."""
    return Zoo(shutil.copytree(trained_once, tmp_path / "study"))


def test_create_adds_one_pending_row_per_config(tmp_path: Path) -> None:
    space = tiny_space()
    zoo = Zoo.create(tmp_path / "study", space)
    assert zoo.counts()["pending"] == len(space) == 4
    assert [c.hash for c in zoo.configs()] == [c.hash for c in space.configs()]
    assert (tmp_path / "study" / DATABASE_FILE).is_file()
    assert Zoo.create(tmp_path / "study", tiny_space()).counts()["pending"] == 4  # reopened
    assert Zoo(tmp_path / "study").space.hash == space.hash


def test_another_space_is_refused_with_the_differences(tmp_path: Path) -> None:
    Zoo.create(tmp_path / "study", tiny_space())
    with pytest.raises(StudyError, match=r"another space(.|\n)*lr"):
        Zoo.create(tmp_path / "study", tiny_space(lr=[0.05, 0.01], seed=[0, 1]))


def test_not_a_study_and_unwritable_folders(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="not a study folder"):
        Zoo(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StudyError, match="cannot write the study folder"):
        Zoo.create(blocker / "study", tiny_space())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / DATABASE_FILE).write_text("not sqlite")
    with pytest.raises(StudyError, match="not a readable study database"):
        Zoo(tmp_path / "bad")


def test_train_stores_every_model_once_with_checkpoints(trained: Zoo) -> None:
    counts = trained.counts()
    assert counts["done"] == 4 and sum(counts.values()) == 4
    table = trained.table()
    assert list(table.columns[:4]) == ["index", "status", "lr", "seed"]
    assert (table["gap"] == table["test_error"] - table["train_error"]).all()
    assert (table["train_ce"] > 0).all() and (table["steps"] > 0).all()
    for name in TRAINING_MEASURES:
        assert name in table.columns
    assert table["num-step-to-0.1-loss"].notna().all()
    for config in trained.configs():
        folder = trained.checkpoint_dir(config.hash)
        assert {p.name for p in folder.iterdir()} >= {"final.safetensors", "init.safetensors"}
        run = trained.load(config.hash)
        assert run.records["ce_checks"][-1][1] <= 0.1
    summary = train_zoo(trained)
    assert summary.skipped == 4 and summary.trained == {}


def test_training_is_deterministic_across_studies_and_executors(
    trained: Zoo, tmp_path: Path
) -> None:
    other = Zoo.create(tmp_path / "other", tiny_space())
    train_zoo(other, batched=False)
    a, b = trained.table(), other.table()
    pd.testing.assert_series_equal(a["steps"], b["steps"])
    for config in trained.configs():
        state_a = trained.load(config.hash).model.state_dict()
        state_b = other.load(config.hash).model.state_dict()
        for key in state_a:
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-4, atol=1e-5)


def test_rows_left_running_are_retried(trained: Zoo) -> None:
    first = trained.configs()[0].hash
    trained.mark_running([first])
    assert trained.counts()["running"] == 1
    summary = train_zoo(trained)
    assert summary.reset == 1 and sum(summary.trained.values()) == 1
    assert trained.counts()["done"] == 4


def test_a_tampered_checkpoint_is_detected_and_retrained(trained: Zoo) -> None:
    config = trained.configs()[1]
    path = trained.checkpoint_dir(config.hash) / "final.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with (
        pytest.warns(GenMeasuresWarning, match="does not match"),
        pytest.raises(CorruptCheckpointError, match=r"final\.safetensors"),
    ):
        trained.load(config.hash)
    assert trained.counts()["pending"] == 1
    train_zoo(trained)
    assert trained.counts()["done"] == 4
    trained.load(config.hash)


def test_a_deleted_checkpoint_is_retrained_on_resume(trained: Zoo) -> None:
    config = trained.configs()[2]
    (trained.checkpoint_dir(config.hash) / "init.safetensors").unlink()
    with pytest.warns(GenMeasuresWarning, match="missing"):
        summary = train_zoo(trained)
    assert summary.invalidated == 1 and summary.trained == {"done": 1}


def test_a_second_trainer_is_refused(trained: Zoo) -> None:
    with trained.lock(), pytest.raises(StudyError, match="being trained by pid"):
        train_zoo(Zoo(trained.path))


def test_failures_are_recorded_and_retried_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = Zoo.create(tmp_path / "study", tiny_space())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of cheese")

    monkeypatch.setattr("genmeasures.zoo.worker.train_batched", broken)
    summary = train_zoo(zoo)
    assert summary.trained == {"failed": 4}
    assert "out of cheese" in zoo.error(zoo.configs()[0].hash)
    assert train_zoo(zoo).trained == {}
    monkeypatch.undo()
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))
    assert train_zoo(zoo, retry_failed=True).trained == {"done": 4}


def test_not_converged_models_are_stored_with_their_figures(tmp_path: Path) -> None:
    space = space_from_dict(
        {"name": "short", "fixed": FIXED | {"max_epochs": 1, "target_ce": 1e-4}, "grid": {}},
        source="test",
    )
    zoo = Zoo.create(tmp_path / "study", space)
    train_zoo(zoo)
    row = zoo.table().iloc[0]
    assert row["status"] == "not-converged" and row["train_ce"] > 1e-4
    assert math.isnan(row["num-step-0.1-to-0.01-loss"])


def test_measure_zoo_is_resumable_and_keys_values_by_parameters(trained: Zoo) -> None:
    summary = measure_zoo(trained, ["param-norm", "spec-init"])
    assert summary.measured == 4 and summary.values == 8
    again = measure_zoo(trained, ["param-norm", "spec-init"])
    assert again.measured == 0 and again.up_to_date == 4
    table = trained.table()
    assert table["param-norm"].notna().all() and table["spec-init"].notna().all()
    long = trained.measures_table()
    assert set(long["version"]) == {__import__("genmeasures").__version__}
    assert json.loads(long[long["name"] == "param-norm"]["params"].iloc[0]) == {}


@pytest.mark.filterwarnings("ignore::genmeasures.GenMeasuresWarning")
def test_measuring_in_worker_processes_stores_the_same_values(
    trained: Zoo, trained_once: Path, tmp_path: Path
) -> None:
    measures = ["param-norm", "pacbayes-flatness", "sharpness-flatness"]
    options = {
        "pacbayes-flatness": {"s_max": 2, "steps": 2, "draws": 2},
        "sharpness-flatness": {"restarts": 1, "ascent_steps": 2},
    }
    alone = measure_zoo(trained, measures, options=options)
    pooled_zoo = Zoo(shutil.copytree(trained_once, tmp_path / "pooled"))
    seen: list[tuple[int, int]] = []
    pooled = measure_zoo(
        pooled_zoo,
        measures,
        options=options,
        workers=2,
        on_model=lambda config, done, total: seen.append((done, total)),
    )
    assert (pooled.measured, pooled.values, pooled.statuses) == (
        alone.measured,
        alone.values,
        alone.statuses,
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    columns = ["model", "name", "params", "value", "converged", "status"]
    expected = trained.measures_table()[columns].sort_values(["model", "name"])
    received = pooled_zoo.measures_table()[columns].sort_values(["model", "name"])
    pd.testing.assert_frame_equal(
        received.reset_index(drop=True), expected.reset_index(drop=True), check_exact=True
    )
    with pytest.raises(StudyError, match="workers must be a positive int, got 0"):
        measure_zoo(pooled_zoo, measures, workers=0)


def test_a_warning_raised_by_many_models_is_one_line(
    trained: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_compute = measuring.compute
    hashes = [config.hash for config in trained.configs()]

    def warning_compute(*args: object, seed: int, **kwargs: object) -> object:
        warnings.warn("the same for every model", GenMeasuresWarning, stacklevel=1)
        if seed == trained.configs()[0].seed:
            warnings.warn("only these", GenMeasuresWarning, stacklevel=1)
        # One kind, other figures: a search that stops where each model makes it stop.
        stopped = (
            f"search for num-step-0.1-to-0.01-loss stopped: value {seed + 0.5:.4g}, target 0.1"
        )
        warnings.warn(stopped, GenMeasuresWarning, stacklevel=1)
        return real_compute(*args, seed=seed, **kwargs)

    monkeypatch.setattr(measuring, "compute", warning_compute)
    summary = measure_zoo(trained, ["param-norm"])
    first_seed = trained.configs()[0].seed
    assert sorted(summary.warnings) == sorted(
        [  # the tiny space has two models of each seed
            f"4 models ({hashes[0]}, ...): the same for every model",
            f"2 models ({hashes[0]}, ...): only these",
            f"4 models ({hashes[0]}, ...): search for num-step-0.1-to-0.01-loss stopped: value "
            f"{first_seed + 0.5:.4g}, target 0.1 (the first model's figures; others differ)",
        ]
    )


def test_a_warnings_kind_masks_its_numbers_but_not_its_names() -> None:
    assert (
        measuring.warning_kind("'sharpness-mag-alpha' (x2): value 1.907e-06 at 0.1188, target 0.1")
        == "'sharpness-mag-alpha' (x2): value # at #, target #"
    )
    assert measuring.warning_kind("num-step-0.1-to-0.01-loss took -3 steps") == (
        "num-step-0.1-to-0.01-loss took # steps"
    )


@pytest.mark.filterwarnings("ignore::genmeasures.GenMeasuresWarning")
def test_a_study_resumed_with_another_spelling_of_an_option_recomputes_nothing(
    trained: Zoo,
) -> None:
    options = {"s_max": 2, "steps": 1, "draws": 1}
    first = measure_zoo(trained, ["pacbayes-flatness"], options={"pacbayes-flatness": options})
    assert first.values == 4
    # Two search steps cannot converge: the summary counts those values per measure.
    assert first.unconverged == {
        "pacbayes-flatness": len(trained.unconverged()["pacbayes-flatness"])
    }
    assert first.unconverged["pacbayes-flatness"] > 0
    respelled = {"pacbayes-flatness": options | {"s_max": 2.0}}
    again = measure_zoo(trained, ["1/sigma gaussian"], options=respelled)
    assert again.values == 0 and again.up_to_date == 4
    other = measure_zoo(trained, ["pacbayes-flatness"], options={"pacbayes-flatness": {"steps": 1}})
    assert other.values == 4


def test_export_csv_and_parquet(trained: Zoo, tmp_path: Path) -> None:
    table = trained.table()
    csv = pd.read_csv(trained.export(tmp_path / "zoo.csv"), index_col="hash")
    assert list(csv.columns) == list(table.columns)
    pd.testing.assert_series_equal(csv["gap"], table["gap"])
    pytest.importorskip("pyarrow")
    parquet = pd.read_parquet(trained.export(tmp_path / "zoo.parquet"))
    pd.testing.assert_frame_equal(parquet, table)
    with pytest.raises(StudyError, match=r"\.csv or \.parquet"):
        trained.export(tmp_path / "zoo.xlsx")


def test_the_database_holds_no_pickle(trained: Zoo) -> None:
    files = [p for p in trained.path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".sqlite", ".safetensors", ".json", ""}
    connection = sqlite3.connect(trained.path / DATABASE_FILE)
    for (column_type,) in connection.execute(
        "SELECT DISTINCT type FROM pragma_table_info('models') "
        "UNION SELECT DISTINCT type FROM pragma_table_info('measures')"
    ):
        assert column_type != "BLOB"
    assert (trained.path / CHECKPOINT_DIR).is_dir()


def test_plan_units_groups_shared_architectures() -> None:
    space = tiny_space(lr=[0.05, 0.02, 0.01], width=[8, 16], seed=[0, 1])
    configs = space.configs()
    units = plan_units(configs, batched=True)
    assert sorted(len(u) for u in units) == [6, 6]
    assert all(len({c.model_hparams["width"] for c in u}) == 1 for u in units)
    assert [len(u) for u in plan_units(configs, batched=False)] == [1] * 12
    assert [len(u) for u in plan_units(configs, batched=True, max_unit=4)] == [3, 3, 3, 3]
    assert [u[0].index for u in units] == sorted(u[0].index for u in units), "grid order"


def test_a_parallel_plan_trains_single_models_the_costliest_first() -> None:
    space = tiny_space(lr=[0.05, 0.02, 0.01], width=[8, 16], seed=list(range(6)))
    configs = space.configs()  # 36: 18 of each width
    for batched in (True, False):
        units = plan_units(configs, batched=batched, workers=2)
        assert [len(u) for u in units] == [1] * 36
        widths = [u[0].model_hparams["width"] for u in units]
        assert widths == [16] * 18 + [8] * 18, "the wider (costlier) models first"
        assert sorted(u[0].index for u in units) == list(range(36))


#: The tables of a study as genmeasures wrote them before the schema carried a version (v1).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    hash TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    config TEXT NOT NULL,
    hparams TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'not-converged',
        'diverged', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    train_ce REAL, train_error REAL, test_ce REAL, test_error REAL, gap REAL, steps REAL,
    seconds REAL,
    records TEXT,
    checkpoints TEXT,
    error TEXT,
    updated REAL
);
CREATE TABLE measures (
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
"""


STATUSES_V1 = ("done", "pending", "failed", "pending")


def write_v1_study(folder: Path, space: Space) -> Path:
    """A study folder as the genmeasures before schema versions made it (one row done)."""
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_DIR).mkdir()
    connection = sqlite3.connect(folder / DATABASE_FILE)
    with connection:
        connection.executescript(V1_SCHEMA)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("space", canonical_json(space.to_json())),
                ("space_hash", space.hash),
                ("created", "0"),
                ("genmeasures_version", "0.1.0"),
            ],
        )
        connection.executemany(
            "INSERT INTO models (hash, idx, config, hparams, status, updated) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            [
                (c.hash, c.index, canonical_json(c.to_json()), canonical_json(c.hparams), status)
                for c, status in zip(space.configs(), STATUSES_V1, strict=True)
            ],
        )
    connection.close()
    return folder


def user_version(folder: Path) -> int:
    connection = sqlite3.connect(folder / DATABASE_FILE)
    try:
        return connection.execute("PRAGMA user_version").fetchone()[0]
    finally:
        connection.close()


def test_a_new_study_records_the_schema_version(tmp_path: Path) -> None:
    Zoo.create(tmp_path / "study", tiny_space()).close()
    assert user_version(tmp_path / "study") == SCHEMA_VERSION == 3


def test_a_study_without_a_schema_version_is_migrated_on_open(tmp_path: Path) -> None:
    folder = write_v1_study(tmp_path / "study", tiny_space())
    assert user_version(folder) == 0
    with Zoo(folder) as zoo:
        assert zoo.counts() == {
            "pending": 2,
            "running": 0,
            "done": 1,
            "not-converged": 0,
            "diverged": 0,
            "failed": 1,
        }
        assert [c.index for c in zoo.to_train(retry_failed=True)] == [1, 2, 3]
        zoo.mark_running([zoo.configs()[1].hash])
    assert user_version(folder) == SCHEMA_VERSION
    with Zoo.create(folder, tiny_space()) as zoo:  # reopened as a current study
        assert zoo.reset_stale() == 1


def test_a_failed_migration_changes_nothing_and_says_how_to_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_v1_study(tmp_path / "study", tiny_space())
    broken = ("CREATE TABLE extra (x)", "INSERT INTO no_such_table VALUES (1)")
    monkeypatch.setitem(schema.MIGRATIONS, 1, broken)
    with pytest.raises(
        StudyError,
        match=r"schema version 1 \(made by genmeasures 0\.1\.0\).* uses version 3 (.|\n)*"
        r"open it again",
    ):
        Zoo(folder)
    assert user_version(folder) == 0
    connection = sqlite3.connect(folder / DATABASE_FILE)
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert "extra" not in tables, "the migration runs in one transaction"


def test_a_study_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Zoo.create(tmp_path / "study", tiny_space()).close()
    connection = sqlite3.connect(tmp_path / "study" / DATABASE_FILE)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(
        StudyError, match=r"schema version 4 \(made by genmeasures .*\), newer than version 3"
    ):
        Zoo(tmp_path / "study")


def test_model_states_are_stored_as_their_strings(trained: Zoo) -> None:
    assert all(state.is_finished for state in (ModelState.DONE, ModelState.FAILED))
    assert not ModelState.RUNNING.is_finished and not ModelState.FAILED.is_trained
    assert f"{ModelState.NOT_CONVERGED}" == str(ModelState.NOT_CONVERGED) == "not-converged"
    connection = sqlite3.connect(trained.path / DATABASE_FILE)
    rows = connection.execute("SELECT DISTINCT status, typeof(status) FROM models").fetchall()
    connection.close()
    assert rows == [("done", "text")]
    assert next(iter(trained.counts())) is ModelState.PENDING
