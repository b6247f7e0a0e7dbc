"""Small networks and data shared by the measures tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures.context import MeasureContext
from genmeasures.zoo.train import TrainingConfig, train_to_target


def argmax_labels(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Labels the model fits perfectly, so that every margin is positive."""
    with torch.no_grad():
        return model.eval()(inputs).argmax(dim=1)


def measure_context(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 512,
    seed: int = 0,
    init_model: nn.Module | None = None,
) -> MeasureContext:
    """A context as :func:`genmeasures.compute` builds it, on the CPU, for calling internals."""
    return MeasureContext(
        model,
        inputs,
        labels,
        init_model=init_model,
        records=None,
        seed=seed,
        device=torch.device("cpu"),
        batch_size=batch_size,
        input_shape=tuple(inputs.shape[1:]),
    )


def tiny_mlp(seed: int = 0, *, batchnorm: bool = False) -> nn.Module:
    """A float64 ReLU MLP 5 → 4 → 3 → 3 with random weights."""
    return gm.build_model("mlp", (5,), 3, depth=2, width=4, batchnorm=batchnorm, seed=seed).double()


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A float64 conv net on (2, 6, 6): strided, padded, grouped and 1×1 convs, then Linear."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(27, 3),
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    model.input_shape = (2, 6, 6)
    return model


@pytest.fixture
def mlp_setup():
    """(model, init_model, inputs, labels) for the tiny MLP, labels fitted exactly."""
    model, init = tiny_mlp(0), tiny_mlp(1)
    inputs = torch.randn(40, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, init, inputs, argmax_labels(model, inputs)


@pytest.fixture
def cnn_setup():
    """(model, init_model, inputs, labels) for the tiny CNN, labels fitted exactly."""
    model, init = tiny_cnn(0), tiny_cnn(1)
    inputs = torch.randn(
        30, 2, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    return model, init, inputs, argmax_labels(model, inputs)


@pytest.fixture(scope="session")
def trained_bn_mlp():
    """An MLP with BatchNorm trained on 300 digits to cross-entropy 0.01: (run, dataset).

    The run's records (``MEASURES.md`` §2.5) reach both thresholds of eqs 63-64 and hold an
    epoch-1 state, so every measure has a finite value.
    """
    data = gm.load_dataset("digits", train_size=300, test_size=100)
    model = gm.build_model(
        "mlp", data.input_shape, data.num_classes, depth=2, width=32, batchnorm=True, seed=0
    )
    config = TrainingConfig(
        lr=0.05, batch_size=32, target_ce=0.01, check_every=20, check_batches=10, max_epochs=100
    )
    run = train_to_target(model, data, config)
    assert run.status == "done"
    return run, data


@pytest.fixture(scope="session")
def trained_nin():
    """A small Network-in-Network with BatchNorm trained on 300 digits to 0.01: (run, dataset)."""
    data = gm.load_dataset("digits", train_size=300, test_size=100)
    model = gm.build_model("nin", data.input_shape, data.num_classes, depth=1, width=16, seed=0)
    config = TrainingConfig(
        optimizer="adam",
        lr=0.02,
        batch_size=32,
        target_ce=0.01,
        check_every=20,
        check_batches=10,
        max_epochs=200,  # 620-880 updates to 0.01, depending on the thread count's rounding
    )
    run = train_to_target(model, data, config)
    assert run.status == "done"
    return run, data
