from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import granulated_tau, score_table
from genmeasures.zoo.evaluating import evaluate_zoo, scoring_table
from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.space import space_from_dict
from genmeasures.zoo.store import DATABASE_FILE, Zoo

FIXED = {
    "dataset": "digits",
    "model": "mlp",
    "depth": 1,
    "width": 8,
    "train_size": 200,
    "test_size": 100,
    "batch_size": 32,
    "target_ce": 0.3,
    "max_epochs": 60,
    "check_every": 20,
    "check_batches": 5,
}
# Two optimizers with their own learning rates (Jiang et al. 2020, appendix C.3), replicated.
GRID = {
    "optimizer": ["sgd", "adam"],
    "lr": {"sgd": [0.1, 0.03], "adam": [0.01, 0.003]},
    "seed": [0, 1],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    folder = tmp_path_factory.mktemp("evaluating")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMEASURES_CACHE", str(folder / "cache"))
        space = space_from_dict({"name": "per-opt", "fixed": FIXED, "grid": GRID}, source="test")
        zoo = Zoo.create(folder / "study", space)
        train_zoo(zoo)
        measure_zoo(zoo, ["param-norm", "path-norm"])
    return zoo


def test_scoring_table_groups_per_optimizer_values_by_level(study: Zoo) -> None:
    table, canonical, notes = scoring_table(study)
    configs = {config.hash: config for config in study.configs()}
    assert table.attrs["hparams"] == ["optimizer", "lr"]  # the seed replicates, it is no type
    assert {"param-norm", "path-norm", "num-step-to-0.1-loss"} <= set(table.attrs["measures"])
    for model_hash, row in table.iterrows():
        assert row["lr"] == configs[model_hash].levels["lr"]
        assert canonical["lr"][model_hash] == -configs[model_hash].hparams["lr"]
        assert canonical["optimizer"][model_hash] == ["sgd", "adam"].index(row["optimizer"])
    assert (table["model"] == "mlp").all()
    assert any("per optimizer" in note for note in notes)
    assert any("seed" in note for note in notes)


def test_per_optimizer_levels_make_the_optimizer_groups(study: Zoo) -> None:
    table, _, _ = scoring_table(study)
    result = granulated_tau(table, "param-norm")
    # Levels pair sgd's k-th rate with adam's: 2 levels x 2 optimizers, both seeds in each group.
    assert result.groups_used == {"optimizer": 2, "lr": 2}
    raw = study.table()  # raw rates: no sgd and adam model share a learning rate
    unusable = granulated_tau(raw, "param-norm", hparams=["optimizer", "lr"])
    assert unusable.groups_used["optimizer"] == 0 and np.isnan(unusable.psi["optimizer"])


def test_evaluate_zoo_scores_every_stored_measure_and_the_baselines(study: Zoo) -> None:
    evaluation = evaluate_zoo(study, seed=3)
    done = (study.table()["status"] == "done").sum()
    assert evaluation.models == done and evaluation.hparams == ("optimizer", "lr")
    assert {"param-norm", "path-norm"} <= set(evaluation.measures)
    assert list(evaluation.pearson.columns) == ["mlp"]
    canonical = evaluation.ranks.loc["canonical ordering"]
    assert np.isfinite(canonical["optimizer"]) and np.isfinite(canonical["lr"])
    table, ranks, _ = scoring_table(study)
    by_hand = score_table(table, ["param-norm"], canonical=ranks, seed=3)
    pd.testing.assert_series_equal(
        evaluation.ranks.loc["canonical ordering"], by_hand.ranks.loc["canonical ordering"]
    )
    assert any("per optimizer" in note for note in evaluation.notes)


def test_evaluate_zoo_without_measures_says_what_to_run(tmp_path: Path) -> None:
    space = space_from_dict(
        {"name": "empty", "fixed": FIXED, "grid": {"lr": [0.1, 0.03]}}, source="test"
    )
    zoo = Zoo.create(tmp_path / "study", space)
    with pytest.raises(EvaluationError, match="genmeasures measure"):
        evaluate_zoo(zoo)


def test_evaluate_zoo_scores_the_stored_measures_its_selection_names(study: Zoo) -> None:
    training = ["num-step-to-0.1-loss", "num-step-0.1-to-0.01-loss", "grad-noise-final"]
    assert set(training) <= set(study.table().attrs["measures"])  # stored while training
    # Names and aliases come out canonical, in the order given; baselines are added as ever.
    evaluation = evaluate_zoo(study, ["path norm", "param-norm"])
    assert evaluation.measures == ("path-norm", "param-norm")
    assert list(evaluation.ranks.index) == [*evaluation.measures, *evaluation.baselines]
    assert list(evaluation.pearson.index) == ["path-norm", "param-norm"]
    # Patterns select among the stored measures only; exclusions remove.
    assert set(evaluate_zoo(study, "*-norm").measures) == {"param-norm", "path-norm"}
    assert evaluate_zoo(study, ["all", "!num-step-*", "!grad-noise-*"]).measures == (
        "param-norm",
        "path-norm",
    )
    with pytest.raises(EvaluationError, match="stores no value of sum-of-fro"):
        evaluate_zoo(study, ["param-norm", "sum-of-fro"])
    with pytest.raises(EvaluationError, match="select no measure"):
        evaluate_zoo(study, "*fro*")


def test_values_that_did_not_converge_are_counted_and_can_be_left_out(
    study: Zoo, tmp_path: Path
) -> None:
    copy = Zoo(shutil.copytree(study.path, tmp_path / "copy"))
    done = list(copy.table().query("status == 'done'").index)
    flagged = done[:3]
    with sqlite3.connect(copy.path / DATABASE_FILE) as connection:
        connection.executemany(
            "UPDATE measures SET converged = 0 WHERE model = ? AND name = 'path-norm'",
            [(model,) for model in flagged],
        )
        saturated = {"search": "sharpness-mag-alpha", "reason": "saturated", "saturated": "low"}
        connection.execute(
            "UPDATE measures SET extra = ? WHERE model = ? AND name = 'path-norm'",
            (json.dumps(saturated), flagged[0]),
        )
    assert copy.unconverged() == {"path-norm": flagged}
    assert copy.unconverged_reasons() == {
        "path-norm": "search sharpness-mag-alpha saturated low: at its smallest scale the accuracy "
        "already moves by more than the target (1 model); stopped: reason not recorded (2 models)"
    }
    scored = evaluate_zoo(copy, seed=3)
    assert scored.unconverged == {"path-norm": tuple(flagged)} and not scored.converged_only
    assert "path-norm" not in scored.dropped
    assert any(
        "3 values did not converge (path-norm 3): scored as computed" in n for n in scored.notes
    )
    left_out = evaluate_zoo(copy, seed=3, converged_only=True)
    assert left_out.unconverged == {"path-norm": tuple(flagged)} and left_out.converged_only
    assert left_out.dropped["path-norm"] == 3
    table, ranks, _ = scoring_table(copy)
    table.loc[flagged, "path-norm"] = np.nan
    by_hand = score_table(table, ["path-norm"], canonical=ranks, seed=3)
    assert left_out.ranks.at["path-norm", "tau"] == by_hand.ranks.at["path-norm", "tau"]
    assert scored.ranks.at["param-norm", "tau"] == left_out.ranks.at["param-norm", "tau"]
