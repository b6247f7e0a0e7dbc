"""Tiny datasets and models shared by the zoo tests, and a study's bitwise fingerprint."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from genmeasures.data import Dataset
from genmeasures.zoo.schema import METRICS
from genmeasures.zoo.store import Zoo


def make_blobs(
    m: int = 40, *, m_test: int = 20, spread: float = 0.6, seed: int = 0, classes: int = 2
) -> Dataset:
    """``classes`` Gaussian blobs in 2-d, centred on a circle of radius 2 (separable)."""
    gen = torch.Generator().manual_seed(seed)
    angles = torch.arange(classes, dtype=torch.float32) * (2 * torch.pi / classes)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % classes
        inputs = centres[labels] + spread * torch.randn(n, 2, generator=gen)
        return inputs, labels

    return Dataset("blobs", split(m), split(m_test), classes, (2,))


@pytest.fixture
def blobs() -> Dataset:
    return make_blobs()


def bits(state: dict[str, torch.Tensor] | None) -> dict[str, bytes] | None:
    if state is None:
        return None
    return {
        key: value.contiguous().flatten().view(torch.uint8).numpy().tobytes()
        for key, value in state.items()
    }


def fingerprint(zoo: Zoo) -> dict[str, Any]:
    """Everything stored about each model that does not depend on wall-clock time."""
    table = zoo.table(measures=False)
    measures = zoo.measures_table().drop(columns=["seconds", "version"])
    result = {}
    for config in zoo.configs():
        run = zoo.load(config.hash)
        records = dict(run.records)
        epoch1 = records.pop("epoch1_state")
        records.pop("metrics")
        row = table.loc[config.hash]
        rows = measures[measures["model"] == config.hash]
        result[config.hash] = {
            "status": row["status"],
            "metrics": repr([row[name] for name in METRICS if name != "seconds"]),
            "records": repr(records),
            "model": bits(run.model.state_dict()),
            "init": bits(run.init_model.state_dict()),
            "epoch1": bits(epoch1),
            "measures": repr(rows.to_dict("records")),
        }
    return result


def assert_same_models(zoo: Zoo, reference: dict[str, Any]) -> None:
    found = fingerprint(zoo)
    assert found.keys() == reference.keys()
    for model_hash, expected in reference.items():
        for key, value in expected.items():
            assert found[model_hash][key] == value, f"model {model_hash}: {key} differs"
