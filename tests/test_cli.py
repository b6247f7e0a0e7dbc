from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genmeasures as gm
from genmeasures.cli import main
from genmeasures.measures import registry
from genmeasures.zoo.evaluating import count_test_examples
from genmeasures.zoo.store import Zoo

TRAIN = ["measure", "--dataset", "digits", "--train-size", "200", "--width", "32", "--depth", "1"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GENMEASURES_CACHE", str(folder))
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_every_measure(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    names = [spec.name for spec in gm.list_measures()]
    assert names
    listed = [line.split()[0] for line in out.splitlines()[1 : len(names) + 1]]
    assert listed == names
    assert f"{len(names)} measures" in out


def test_list_filters_by_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "*spec*")
    assert code == 0
    expected = {spec.name for spec in gm.list_measures("*spec*")}
    assert expected and all("spec" in name for name in expected)
    rows = out.splitlines()[1 : len(expected) + 1]
    assert {row.split()[0] for row in rows} == expected
    assert "param-norm" not in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["name"] for row in rows] == [spec.name for spec in gm.list_measures()]
    assert {"name", "eq", "family", "needs", "stochastic", "domain", "description"} <= set(rows[0])
    code, out, _ = run(capsys, "list", "*spec*", "--json")
    assert [row["name"] for row in json.loads(out)] == [s.name for s in gm.list_measures("*spec*")]


def test_list_one_measure_shows_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "1/sigma gaussian")  # an alias of pacbayes-flatness
    assert code == 0
    assert out.startswith("name:        pacbayes-flatness\n")
    s_max = next(line for line in out.splitlines() if line.startswith("s_max "))
    assert s_max.split()[:2] == ["s_max", "2.0"]
    assert "a finite number > 0" in s_max
    code, out, _ = run(capsys, "list", "pacbayes-flatness", "--json")
    options = {row["name"]: row for row in json.loads(out)["options"]}
    assert options["draws"]["default"] == 10
    assert options["steps"]["accepts"] == "an integer >= 1"
    code, out, _ = run(capsys, "list", "param-norm")
    assert "options:     none" in out


def test_list_without_match_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "no-such-*")
    assert code == 1
    assert out == ""
    assert "no-such-*" in err


def test_measure_train_save_and_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "model"
    measures = ["--measures", "param-norm", "path-norm"]
    code, out, err = run(capsys, *TRAIN, *measures, "--json", "--save", str(folder))
    assert code == 0, err
    trained = json.loads(out)
    assert list(trained) == ["param-norm", "path-norm"]
    for result in trained.values():
        assert result["status"] == "ok"
        assert math.isfinite(result["value"]) and result["value"] > 0
    assert "trained mlp on digits: done" in err
    assert {p.name for p in folder.iterdir()} >= {
        "final.safetensors",
        "init.safetensors",
        "model.json",
    }

    code, out, err = run(
        capsys,
        "measure",
        "--dataset", "digits",
        "--train-size", "200",
        "--weights", str(folder / "final.safetensors"),
        "--spec", str(folder / "model.json"),
        "--init", str(folder / "init.safetensors"),
        "--measures", "frob-distance", "param-norm",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    loaded = json.loads(out)
    assert "trained" not in err
    assert loaded["param-norm"]["value"] == pytest.approx(trained["param-norm"]["value"], rel=1e-12)
    assert math.isfinite(loaded["frob-distance"]["value"]) and loaded["frob-distance"]["value"] > 0


def test_measure_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *TRAIN, "--max-epochs", "1", "--measures", "num-params")
    assert code == 0, err
    lines = out.splitlines()
    assert "value" in lines[0]
    assert any(line.startswith("num-params") for line in lines)


def test_unknown_measure_suggests_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *TRAIN, "--max-epochs", "1", "--measures", "param-nrom")
    assert code == 2
    assert out == ""
    assert "param-nrom" in err and "param-norm" in err
    assert err.startswith("genmeasures: error:")


def test_weights_without_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = str(tmp_path / "final.safetensors")
    code, out, err = run(capsys, "measure", "--dataset", "digits", "--weights", weights)
    assert (code, out) == (2, "")
    assert "--spec" in err
    code, _, err = run(capsys, "measure", "--dataset", "digits", "--init", weights)
    assert code == 2
    assert "--weights" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "model.json"
    spec.write_text(
        json.dumps({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hparams": {}})
    )
    weights = tmp_path / "missing.safetensors"
    argv = ["measure", "--dataset", "digits", "--train-size", "200", "--measures", "param-norm"]
    code, out, err = run(capsys, *argv, "--weights", str(weights), "--spec", str(spec))
    assert (code, out) == (2, "")
    assert str(weights) in err and "does not exist" in err
    code, _, err = run(
        capsys, *argv, "--weights", str(weights), "--spec", str(tmp_path / "no.json")
    )
    assert code == 2
    assert "no.json" in err


def test_bad_arguments_exit_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "--dataset", "no-such-dataset"])
    assert exit_info.value.code == 2
    assert "no-such-dataset" in capsys.readouterr().err


def test_console_script_version() -> None:
    script = Path(sys.executable).with_name("genmeasures")
    command = str(script) if script.exists() else shutil.which("genmeasures")
    assert command, "the genmeasures console script is not installed"
    done = subprocess.run(
        [command, "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"genmeasures {gm.__version__}"


STUDY_SPACE = """
name = "cli-test"
[fixed]
dataset = "digits"
model = "mlp"
depth = 1
width = 8
train_size = 200
test_size = 100
batch_size = 32
target_ce = 0.1
check_every = 20
check_batches = 5
[grid]
lr = [0.05, 0.02]
"""


def test_train_show_and_measure_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.toml"
    space.write_text(STUDY_SPACE)
    study = tmp_path / "study"
    code, out, err = run(capsys, "train", "--space", str(space), "--out", str(study))
    assert code == 0, err
    assert "trained 2 models" in out and "2 done" in out
    code, out, _ = run(capsys, "train", "--space", str(space), "--out", str(study))
    assert code == 0 and "trained 0 models" in out and "2 already finished" in out
    code, out, err = run(capsys, "measure", str(study), "--measures", "param-norm", "*spec-init")
    assert code == 0, err
    assert "measured 2 models (4 values: 4 ok)" in out
    code, out, _ = run(capsys, "measure", str(study), "--measures", "param-norm")
    assert "2 already up to date" in out
    code, out, _ = run(capsys, "show", str(study), "--export", str(tmp_path / "t.csv"))
    assert code == 0 and "cli-test" in out and "2 done" in out and "gap" in out
    assert "param-norm" not in out and "measures stored: add --measures" in out
    code, out, _ = run(capsys, "show", str(study), "--measures")
    assert "param-norm" in out
    assert (tmp_path / "t.csv").read_text().startswith("hash,")
    code, out, _ = run(capsys, "show", str(study), "--json")
    rows = json.loads(out)
    assert len(rows) == 2 and {"hash", "lr", "gap", "param-norm"} <= set(rows[0])


def test_train_refuses_a_study_of_another_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(STUDY_SPACE)
    other = tmp_path / "other.toml"
    other.write_text(STUDY_SPACE.replace("lr = [0.05, 0.02]", "lr = [0.05, 0.01]"))
    study = tmp_path / "study"
    from genmeasures.zoo.space import load_space
    from genmeasures.zoo.store import Zoo

    Zoo.create(study, load_space(space))
    code, _, err = run(capsys, "train", "--space", str(other), "--out", str(study))
    assert code == 2 and "another space" in err and "lr" in err


def test_study_commands_report_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--preset", "no-such-preset", "--out", str(tmp_path))
    assert code == 2 and "no-such-preset" in err and "smoke" in err
    code, _, err = run(capsys, "show", str(tmp_path))
    assert code == 2 and "not a study folder" in err
    code, _, err = run(capsys, "measure", str(tmp_path), "--weights", "w.safetensors")
    assert code == 2 and "--weights" in err


def grid_space(tmp_path: Path) -> Path:
    """A 2 x 2 grid (learning rate x batch size) of the CLI test study."""
    space = tmp_path / "grid.toml"
    space.write_text(
        STUDY_SPACE.replace('name = "cli-test"', 'name = "cli-grid"')
        .replace("batch_size = 32\n", "")
        .replace("[grid]", "[grid]\nbatch_size = [16, 64]")
    )
    return space


def test_study_trains_measures_evaluates_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space, study = grid_space(tmp_path), tmp_path / "study"
    argv = ["study", "--space", str(space), "--out", str(study), "--workers", "1"]
    argv += ["--measures", "param-norm"]
    code, out, err = run(capsys, *argv, "path-norm")
    assert code == 0, err
    assert "trained 4 models" in out and "measured 4 models" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"param-norm", "path-norm", "random"} <= rows
    assert "τ-a" in out
    stages = re.search(
        r"^time: training ([\d.]+) s \(\d+ %\), measuring ([\d.]+) s \(\d+ %\), evaluating "
        r"([\d.]+) s \(\d+ %\), report ([\d.]+) s \(\d+ %\); total ([\d.]+) s$",
        out,
        re.MULTILINE,
    )
    assert stages is not None, out
    *parts, total = map(float, stages.groups())
    assert sum(parts) == pytest.approx(total, abs=0.3)  # each part rounded to 0.1 s
    report = study / "report"
    for name in ("report.md", "report.html", "ranks.csv", "cmi.csv", "pearson.csv", "ranks.tex"):
        assert (report / name).is_file(), name
    ranks = pd.read_csv(report / "ranks.csv", index_col=0)
    assert {"param-norm", "path-norm", "canonical ordering", "oracle 0.01"} <= set(ranks.index)
    code, again, err = run(capsys, *argv, "path-norm")
    assert code == 0, err
    assert "trained 0 models" in again and "4 already up to date" in again

    def scores(printed: str) -> str:  # the τ table onwards, without the stage times
        return printed.split("τ-a")[1].split("\ntime: ")[0]

    assert scores(again) == scores(out)  # same stored values, same seed


def test_study_and_measure_compute_the_spaces_measures_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space, study = tmp_path / "listed.toml", tmp_path / "study"
    listed = STUDY_SPACE.replace('name = "cli-test"', 'name = "cli-listed"')
    space.write_text(
        listed.replace("[fixed]", 'measures = ["*fro*", "!frob-*", "!*over*"]\n\n[fixed]', 1)
    )
    code, _, err = run(capsys, "study", "--space", str(space), "--out", str(study))
    assert code == 0, err
    optimization = {spec.name for spec in gm.list_measures() if spec.family == "optimization"}
    stored = set(Zoo(study).table().attrs["measures"]) - optimization  # stored while training
    assert stored == {"prod-of-fro", "sum-of-fro"}
    code, out, err = run(capsys, "measure", str(study))
    assert code == 0, err
    assert "already up to date" in out


def test_evaluate_a_study_and_an_exported_table_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study"
    assert main(["train", "--space", str(grid_space(tmp_path)), "--out", str(study)]) == 0
    assert main(["measure", str(study), "--measures", "param-norm"]) == 0
    assert main(["show", str(study), "--export", str(tmp_path / "t.csv")]) == 0
    capsys.readouterr()
    code, from_study, err = run(capsys, "evaluate", str(study), "--report", str(tmp_path / "r1"))
    assert code == 0, err
    test_size = count_test_examples(Zoo(study))
    code, from_csv, err = run(
        capsys, "evaluate", "--table", str(tmp_path / "t.csv"), "--hparams", "batch_size,lr",
        "--test-size", str(test_size),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "t-report" / "report.html").is_file()
    for stem in ("ranks", "robust"):
        study_scores = pd.read_csv(tmp_path / "r1" / f"{stem}.csv", index_col=0)
        csv_scores = pd.read_csv(tmp_path / "t-report" / f"{stem}.csv", index_col=0)
        pd.testing.assert_frame_equal(study_scores, csv_scores)
    header = next(line for line in from_study.splitlines() if line.startswith("measure "))
    assert header.split()[-3:] == ["worst", "R²", "unconv."]
    assert from_study == from_csv


def test_evaluate_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "evaluate")
    assert code == 2 and "--table" in err
    table = tmp_path / "t.csv"
    pd.DataFrame({"a": [1, 2, 1, 2], "gap": [0.1, 0.2, 0.3, 0.4], "m": [1, 2, 3, 4]}).to_csv(
        table, index=False
    )
    code, _, err = run(capsys, "evaluate", "--table", str(table))
    assert code == 2 and "--hparams" in err
    code, _, err = run(capsys, "evaluate", "--table", str(table), "--hparams", "a,b")
    assert code == 2 and "'b'" in err and "columns are" in err
    code, _, err = run(capsys, "evaluate", "--table", str(table), "--hparams", "a", "--gap", "g")
    assert code == 2 and "'g'" in err
    code, _, err = run(capsys, "evaluate", "--table", str(tmp_path / "none.csv"), "--hparams", "a")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "evaluate", "--table", str(table), "--hparams", "a")
    assert code == 2 and "--test-size N" in err and "--no-robust" in err
    code, _, err = run(capsys, "evaluate", str(tmp_path), "--test-size", "100")
    assert code == 2 and "describe a --table" in err
    code, out, err = run(capsys, "evaluate", "--table", str(table), "--hparams", "a", "--no-robust")
    assert code == 0, err
    assert "m" in {line.split()[0] for line in out.splitlines() if line.strip()}
    assert "worst" not in out


def test_baseline_seed_seeds_the_baselines_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"a": [1, 2, 3] * 4, "b": [1] * 6 + [2] * 6})
    table["gap"], table["m"] = rng.uniform(size=12), rng.uniform(size=12)
    table.to_csv(tmp_path / "t.csv", index=False)
    ranks, robust = [], []
    for seed in ("1", "2"):
        report = tmp_path / f"r{seed}"
        argv = ["evaluate", "--table", str(tmp_path / "t.csv"), "--hparams", "a,b"]
        argv += ["--test-size", "inf", "--baseline-seed", seed, "--report", str(report)]
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        assert json.loads((report / "summary.json").read_text())["seed"] == int(seed)
        ranks.append(pd.read_csv(report / "ranks.csv", index_col=0))
        robust.append(pd.read_csv(report / "robust.csv", index_col=0))
    for scores in (ranks, robust):
        pd.testing.assert_series_equal(scores[0].loc["m"], scores[1].loc["m"])
        assert not scores[0].loc["random"].equals(scores[1].loc["random"])
    # --seed is the seed of a model (`measure`); evaluate and study no longer take it.
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--table", str(tmp_path / "t.csv"), "--hparams", "a,b", "--seed", "1"])
    assert exited.value.code == 2 and "--seed" in capsys.readouterr().err


def test_study_scores_exactly_the_measures_it_was_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "smoke"
    argv = ["study", "--preset", "smoke", "--out", str(study), "--workers", "1", "--measures"]
    code, out, err = run(capsys, *argv, "path-norm", "param-norm")
    assert code == 0, err
    stored = set(Zoo(study).table().attrs["measures"])
    assert {"path-norm", "param-norm", "num-step-to-0.1-loss"} <= stored  # and training's
    baselines = ["oracle 0.01", "oracle 0.02", "oracle 0.05", "oracle 0.1", "random"]
    summary = json.loads((study / "report" / "summary.json").read_text())
    assert summary["measures"] == ["path-norm", "param-norm"]
    assert summary["title"] == "Study smoke" and "Smoke test" in summary["description"]
    assert summary["baselines"] == [*baselines[:4], "canonical ordering", "random"]
    ranks = pd.read_csv(study / "report" / "ranks.csv", index_col=0)
    assert list(ranks.index) == [*summary["measures"], *summary["baselines"]]
    assert [r["measure"] for r in summary["pearson"]] == ["path-norm", "param-norm"]
    printed = [line.split()[0] for line in out.split("τ-a")[1].splitlines()[2:] if line.strip()]
    assert printed[:2] == ["path-norm", "param-norm"] and "num-step-to-0.1-loss" not in printed
    # Aliases, patterns and exclusions select what they select among the stored measures.
    code, out, err = run(capsys, "evaluate", str(study), "--measures", "*-norm", "!path-norm")
    assert code == 0, err
    summary = json.loads((study / "report" / "summary.json").read_text())
    assert summary["measures"] == ["param-norm"]
    figures = {path.name for path in (study / "report" / "figures").iterdir()}
    assert "scatter-param-norm.png" in figures and "scatter-path-norm.png" not in figures
    code, _, err = run(capsys, "evaluate", str(study), "--measures", "sum-of-fro")
    assert code == 2 and "stores no value of sum-of-fro" in err
    # Without --measures, evaluate scores every stored measure, training's included.
    code, out, err = run(capsys, "evaluate", str(study))
    assert code == 0, err
    summary = json.loads((study / "report" / "summary.json").read_text())
    assert set(summary["measures"]) == stored


@pytest.mark.filterwarnings("ignore::genmeasures.GenMeasuresWarning")
def test_stale_values_are_named_by_show_and_evaluate_and_recomputed_by_measure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = tmp_path / "study"
    assert main(["train", "--space", str(grid_space(tmp_path)), "--out", str(study)]) == 0
    assert main(["measure", str(study), "--measures", "param-norm", "path-norm"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "show", str(study))
    assert code == 0 and "warning" not in err
    spec = gm.get_measure("param-norm")  # as a genmeasures whose param-norm changed would see it
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, version=2))
    code, _, err = run(capsys, "show", str(study))
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "param-norm (4 of 4 values: version 1, current 2)" in warning
    assert f"`genmeasures measure {study} --measures param-norm`" in warning
    assert "path-norm" not in warning
    code, _, err = run(capsys, "evaluate", str(study), "--measures", "path-norm")
    assert code == 0 and "warning" not in err, "param-norm is not scored"
    code, _, err = run(capsys, "evaluate", str(study))
    assert code == 0 and "warning: " in err and "param-norm (4 of 4" in err
    notes = (study / "report" / "report.md").read_text()
    assert "param-norm (4 of 4 values" in notes
    code, out, err = run(capsys, "measure", str(study), "--measures", "param-norm", "path-norm")
    assert code == 0, err
    assert "measured 4 models (4 values: 4 ok)" in out and "; 4 stale values recomputed" in out
    code, _, err = run(capsys, "show", str(study))
    assert code == 0 and "warning" not in err
    # A model sent back to pending shows no metrics, though its row keeps the old ones.
    zoo = Zoo(study)
    pending = zoo.configs()[0].hash
    zoo.invalidate(pending, "test")
    code, out, _ = run(capsys, "show", str(study), "--json")
    rows = {row["hash"]: row for row in json.loads(out)}
    assert rows[pending]["status"] == "pending"
    assert all(rows[pending][key] is None for key in ("gap", "steps", "train_error", "param-norm"))
    assert all(row["gap"] is not None for key, row in rows.items() if key != pending)
    code, out, _ = run(capsys, "show", str(study))
    (line,) = [line for line in out.splitlines() if line.startswith(pending)]
    assert line.split()[1:2] == ["pending"] and line.split()[-5:] == ["NaN"] * 5
