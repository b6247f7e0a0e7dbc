"""One configuration, one model: every route that trains the smoke space gives the same bits.

The smoke preset's 8 MLPs (digits, float32) are trained in this process in units, one at a time
(``--no-batch``), in a process pool of two workers (which also cuts the units differently), on
Ray, resumed after a train stopped between the members of a unit, and retrained after a corrupt
checkpoint. Each study's weights (final, initial, after the first epoch), records, metrics (the
wall-clock ``seconds`` aside) and training measures are compared bitwise with the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import assert_same_models, fingerprint

from genmeasures.errors import GenMeasuresWarning, StudyError
from genmeasures.zoo import Zoo, load_space, train_zoo
from genmeasures.zoo.store import ModelResult

SPACE = load_space("smoke")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    zoo = Zoo.create(tmp_path_factory.mktemp("reference") / "study", SPACE)
    summary = train_zoo(zoo)
    assert summary.trained == {"done": len(SPACE)}
    return fingerprint(zoo)


@pytest.mark.parametrize(
    "route",
    [{"batched": False}, {"workers": 2}],
    ids=["no-batch", "pool"],
)
def test_every_executor_trains_the_same_models(
    route: dict[str, Any], reference: dict[str, Any], tmp_path: Path
) -> None:
    zoo = Zoo.create(tmp_path / "study", SPACE)
    train_zoo(zoo, **route)
    assert_same_models(zoo, reference)


def test_ray_trains_the_same_models(reference: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    zoo = Zoo.create(tmp_path / "study", SPACE)
    train_zoo(zoo, executor="ray")
    assert_same_models(zoo, reference)


class Stop(BaseException):
    """Stands for a kill between two stored results (a BaseException, as KeyboardInterrupt)."""


def test_a_resumed_study_retrains_the_rest_of_a_unit_alone(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    zoo = Zoo.create(tmp_path / "study", SPACE)

    def stop_after_three(result: ModelResult, done: int, total: int) -> None:
        if done == 3:  # the first member of the second unit is stored, its partner is not
            raise Stop

    with pytest.raises(Stop):
        train_zoo(zoo, on_result=stop_after_three)
    summary = train_zoo(zoo)
    assert summary.reset == 1  # the partner, left running: it now trains alone
    assert summary.skipped == 3
    assert_same_models(zoo, reference)


def test_a_model_retrained_after_a_corrupt_checkpoint_is_the_same(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    zoo = Zoo.create(tmp_path / "study", SPACE)
    train_zoo(zoo)
    victim = zoo.configs()[5].hash
    weights = next(zoo.checkpoint_dir(victim).glob("final*"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.warns(GenMeasuresWarning, match="does not match the digest"):
        summary = train_zoo(zoo)
    assert summary.invalidated == 1
    assert summary.trained == {"done": 1}
    assert_same_models(zoo, reference)


def test_bad_executor_arguments(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "study", SPACE)
    with pytest.raises(StudyError, match="executor must be one of"):
        train_zoo(zoo, executor="slurm")
    with pytest.raises(StudyError, match="workers must be a positive int, got 0"):
        train_zoo(zoo, workers=0)
