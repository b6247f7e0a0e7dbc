"""The process pool and Ray executors give the same study as training in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_store import tiny_space

from genmeasures.errors import StudyError
from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.store import Zoo


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


def assert_same_models(a: Zoo, b: Zoo) -> None:
    assert a.table()["steps"].equals(b.table()["steps"])
    for config in a.configs():
        state_a = a.load(config.hash).model.state_dict()
        state_b = b.load(config.hash).model.state_dict()
        for key in state_a:
            # One torch thread in workers, two here: float32 sums may differ in the last bits.
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    zoo = Zoo.create(tmp_path_factory.mktemp("reference") / "study", tiny_space())
    train_zoo(zoo, batched=False)
    return zoo


def test_process_pool(reference: Zoo, tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "study", tiny_space())
    summary = train_zoo(zoo, workers=2, batched=False)
    assert summary.trained == {"done": 4}
    assert_same_models(reference, zoo)


def test_ray_local_instance(reference: Zoo, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    zoo = Zoo.create(tmp_path / "study", tiny_space())
    summary = train_zoo(zoo, executor="ray", batched=False)
    assert summary.trained == {"done": 4}
    assert_same_models(reference, zoo)


def test_bad_executor_arguments(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "study", tiny_space())
    with pytest.raises(StudyError, match="executor must be one of"):
        train_zoo(zoo, executor="slurm")
    with pytest.raises(StudyError, match="workers must be a positive int, got 0"):
        train_zoo(zoo, workers=0)
