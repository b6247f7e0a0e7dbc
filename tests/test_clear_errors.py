"""Ordinary mistakes end with a named genmeasures error, never a traceback (issue 15, item 5).

Each case is tried through the command line, as a user meets it: the exit status is non-zero, the
message is on stderr and says what was expected, what was received and where.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.cli import main
from genmeasures.errors import EvaluationError, MeasureError, ModelError, ReportError, SpaceError
from genmeasures.evaluate import read_table, score_table
from genmeasures.evaluate.report import check_report_folder, destination, write_report
from genmeasures.zoo.checkpoint import model_spec, save_spec, save_state
from genmeasures.zoo.space import Space, list_presets, load_space, memory


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GENMEASURES_CACHE", str(folder))
    return folder


def refused_argument(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command line, expect argparse to refuse an argument (status 2); its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    return err


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command line, expect a clear failure; its stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("genmeasures: error: ") or "error:" in err
    return err


# -------------------------------------------------- 1. a space file that is not UTF-8


def test_a_space_file_that_is_not_utf8_is_named_with_the_byte_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.toml"
    text = '[fixed]\ndataset = "digits"\n# café\nmodel = "mlp"\n'
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index("é".encode("latin-1"))
    with pytest.raises(SpaceError, match=rf"latin1\.toml: expected UTF-8 text.*offset {offset}"):
        load_space(path)
    err = fails(capsys, "train", "--space", str(path), "--out", str(tmp_path / "study"))
    assert str(path) in err and "UTF-8" in err and f"byte offset {offset}" in err
    assert not (tmp_path / "study").exists()


# -------------------------------------------------- 2. a report folder that cannot be created


def small_table(path: Path) -> Path:
    rows = [
        (lr, width, 0.1 * i + lr, float(i))
        for i, (lr, width) in enumerate([(0.1, 16), (0.1, 32), (0.01, 16), (0.01, 32)])
    ]
    pd.DataFrame(rows, columns=["lr", "width", "gap", "sharpness"]).to_csv(path, index=False)
    return path


def test_a_report_folder_under_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = small_table(tmp_path / "results.csv")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    report = blocker / "report"
    err = refused_argument(
        capsys, "evaluate", "--table", str(table), "--hparams", "lr,width", "--report", str(report)
    )
    assert f"report folder {str(report)!r}" in err
    assert f"{str(blocker)!r} is a file, not a folder (Not a directory)" in err
    # a study folder is not even opened: the argument is refused first
    err = refused_argument(capsys, "evaluate", str(tmp_path / "no-study"), "--report", str(report))
    assert "is a file, not a folder" in err
    err = refused_argument(capsys, "evaluate", "--table", str(table), "--report", str(blocker))
    assert "it is a file, not a folder" in err


def test_a_report_folder_without_write_permission_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(destination.os, "access", lambda path, mode: False)
    with pytest.raises(ReportError, match=r"no permission to write in .* \(Permission denied\)"):
        check_report_folder(tmp_path / "report")


def test_write_report_names_a_folder_it_cannot_create(tmp_path: Path) -> None:
    table = pd.read_csv(small_table(tmp_path / "results.csv"))
    evaluation = score_table(table, ["sharpness"], hparams=["lr", "width"], draws=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(ReportError, match=r"'.*file' is a file, not a folder \(Not a directory"):
        write_report(evaluation, tmp_path / "file" / "report", title="t")
    assert write_report(evaluation, tmp_path / "a" / "b", title="t").is_file()


# -------------------------------------------------- 3. a database of another schema


def foreign_database(folder: Path, script: str, *, space: bool = False) -> Path:
    """A zoo.sqlite that genmeasures did not write: ``script``, optionally a study's space."""
    folder.mkdir()
    connection = sqlite3.connect(folder / "zoo.sqlite")
    connection.executescript(script)
    if space:
        stored = json.dumps(load_space("smoke").to_json())
        connection.execute("INSERT INTO meta VALUES ('space', ?)", (stored,))
    connection.commit()
    connection.close()
    return folder


@pytest.mark.parametrize(
    ("script", "space", "message"),
    [
        ("CREATE TABLE photos (id INTEGER, path TEXT);", False, "'meta'"),
        ("CREATE TABLE meta (key TEXT, value TEXT); PRAGMA user_version = 7;", False, "version 7"),
        ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);", True, "'models'"),
        (
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
            "CREATE TABLE models (hash TEXT, config TEXT);"
            "CREATE TABLE measures (model TEXT);",
            True,
            "'models'",
        ),
    ],
    ids=["unrelated-tables", "future-version", "no-models-table", "other-columns"],
)
def test_show_on_a_database_of_another_schema_is_a_study_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], script: str, space: bool, message: str
) -> None:
    folder = foreign_database(tmp_path / "study", script, space=space)
    err = fails(capsys, "show", str(folder))
    assert str(folder / "zoo.sqlite") in err and message in err
    assert "OperationalError" not in err


# -------------------------------------------------- 4. a table without rows


def test_a_csv_without_rows_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    path.write_text("lr,gap,sharpness\n")
    with pytest.raises(EvaluationError, match="0 rows and 3 columns"):
        read_table(path)
    err = fails(capsys, "evaluate", "--table", str(path), "--hparams", "lr")
    assert str(path) in err
    assert "table expected one row per trained model" in err
    assert "received 0 rows and 3 columns (lr, gap, sharpness)" in err
    assert "at least 2" in err
    assert "no measure column" not in err


def test_an_empty_csv_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    path.write_text("")
    err = fails(capsys, "evaluate", "--table", str(path), "--hparams", "lr")
    assert str(path) in err and "empty file" in err and "header row" in err


def test_score_table_without_rows_says_so() -> None:
    table = pd.DataFrame({"lr": [], "gap": [], "sharpness": []})
    expected = "score_table: table expected one row per trained model"
    with pytest.raises(EvaluationError, match=expected):
        score_table(table, hparams=["lr"])


# -------------------------------------------------- 5. data that do not fit the model


def test_a_digits_model_measured_on_mnist1d_names_both_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = model_spec("mlp", (1, 8, 8), 10, depth=1, width=8, seed=0)
    model = gm.build_model("mlp", (1, 8, 8), 10, **spec["hparams"])
    save_state(tmp_path / "final.safetensors", model.state_dict())
    save_spec(tmp_path / "model.json", spec)
    err = fails(
        capsys,
        "measure",
        "--weights",
        str(tmp_path / "final.safetensors"),
        "--spec",
        str(tmp_path / "model.json"),
        "--dataset",
        "mnist1d",
        "--measures",
        "param-norm",
    )
    assert "inputs of shape (1, 8, 8) per example" in err
    assert "received dataset 'mnist1d' with inputs of shape (40,)" in err
    assert "mat1" not in err


def test_a_dataset_with_other_classes_than_the_models_outputs_is_refused() -> None:
    digits = gm.load_dataset("digits", train_size=20)
    model = gm.build_model("mlp", (1, 8, 8), 3, depth=1, width=4, seed=0)
    expected = r"data expected 3 classes \(the model has 3 outputs\), received dataset 'digits'"
    with pytest.raises(MeasureError, match=expected + " with 10 classes"):
        gm.compute(model, digits, measures="param-norm")
    inputs, labels = digits.train
    with pytest.raises(MeasureError, match=r"received data with labels up to 9"):
        gm.compute(model, (inputs, labels), measures="param-norm")


def test_a_forward_pass_that_fails_names_the_shape_of_an_example() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # records no input_shape
    data = (torch.zeros(4, 40), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ModelError, match=r"one example of the data \(shape \(40,\)\) failed"):
        gm.compute(model, data, measures="param-norm")


# -------------------------------------------------- 6. a model that cannot fit in memory

HUGE = """
[fixed]
dataset = "digits"
model = "mlp"
depth = 1
batch_size = 32

[grid]
width = [16, 100000000000]
"""


def test_a_model_that_cannot_fit_in_memory_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(HUGE)
    study = tmp_path / "study"
    err = fails(capsys, "train", "--space", str(path), "--out", str(study))
    assert f"{path}: config 1 expected hyperparameters whose model can be trained in this " in err
    assert "'width': 100000000000" in err and "'batch_size': 32" in err
    parameters = 64 * 10**11 + 10**11 + 10**11 * 10 + 10
    assert f"{parameters:,} parameters × 4 bytes × 5 copies" in err
    total = (parameters * 5 + (10**11 + 10) * 32) * 4
    assert f"Training it needs at least {memory.human_bytes(total)} ({total:,} bytes)" in err
    assert "TiB" in memory.human_bytes(total)
    assert f"({memory.human_bytes(memory.machine_memory())} of RAM)" in err
    assert "Configurations that do not fit: 1 of 2." in err
    assert not study.exists()


def test_a_tensor_too_large_for_torch_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(HUGE.replace("depth = 1", "depth = 2"))
    with pytest.raises(SpaceError, match=r"at least 8 EiB .*exceed 2\*\*63 bytes"):
        load_space(path)


def test_a_float_width_is_refused_as_not_an_integer(tmp_path: Path) -> None:
    path = tmp_path / "float.toml"
    path.write_text(HUGE.replace("100000000000", "1e11"))
    with pytest.raises(SpaceError, match=r"grid.width\[1\] expected an integer >= 1, received 1"):
        load_space(path)


def test_the_memory_need_counts_the_parameters_and_one_batch_of_activations() -> None:
    space = load_space("smoke")
    config = space.configs()[0]
    need = memory.memory_need(config)
    model = config.build_model(config.load_dataset())
    assert need.parameters == sum(p.numel() for p in model.parameters())
    width = config.model_hparams["width"]
    assert need.activations == width + 10  # the outputs of fc1 and out, per example
    assert need.total == (need.parameters * 5 + need.activations * need.batch_size) * 4


def test_every_preset_fits_and_the_check_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list_presets():
        load_space(name)  # checked against this machine's memory
    quick = load_space("quick")
    assert len(quick) == 81
    memory._model_size.cache_clear()
    start = time.perf_counter()
    memory.check_memory(quick)
    assert time.perf_counter() - start < 1.0


def test_a_stored_space_is_read_back_on_a_smaller_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = load_space("smoke")
    monkeypatch.setattr(memory, "machine_memory", lambda: 1000)
    with pytest.raises(SpaceError, match=r"\(1000 bytes of RAM\).* do not fit: 8 of 8"):
        load_space("smoke")
    assert Space.from_json(smoke.to_json()) == smoke
