from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_blobs
from torch import nn

import genmeasures as gm
from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.zoo.batched import SHARED_FIELDS, train_batched
from genmeasures.zoo.train import OPTIMIZERS, TrainingConfig, TrainingRun, train_to_target
from reference import train_epochs_with_torch_optim

SHARED = {"batch_size": 8, "check_every": 3, "check_batches": 4}

#: Per optimizer: learning rates of two members that reach the target at different steps, of a
#: third with its lr decayed early, and of a member that diverges at once (Adam and RMSprop
#: normalize the step: the rate itself must be huge; a float32 run caps it below 3.4e38).
LEARNING_RATES = {
    "sgd": (0.05, 0.2, 0.1, 1e12),
    "adam": (0.01, 0.1, 0.03, 1e200),
    "rmsprop": (0.005, 0.02, 0.01, 1e200),
}

#: Architectures a unit trains: a plain MLP, one with LeakyReLU, and one with BatchNorm (batch
#: statistics and running averages) and dropout (masks from each member's own stream).
KINDS = ("plain", "leaky", "batchnorm-dropout")


def float64_blobs() -> Dataset:
    data = make_blobs(40, classes=3)
    (x, y), (x_test, y_test) = data.train, data.test
    return Dataset("blobs", (x.double(), y), (x_test.double(), y_test), 3, data.input_shape)


def mlp(data: Dataset, seed: int, **hparams: object) -> nn.Module:
    hparams = {"depth": 1, "width": 8, **hparams}
    return gm.build_model("mlp", data.input_shape, data.num_classes, seed=seed, **hparams)


def model_of_kind(kind: str, data: Dataset, seed: int) -> nn.Module:
    if kind == "batchnorm-dropout":
        return mlp(data, seed=seed, depth=2, width=16, batchnorm=True, dropout=0.1)
    model = mlp(data, seed=seed)
    return leaky(model) if kind == "leaky" else model


def configs_for(
    optimizer: str, check_batches: int = 4, dtype: torch.dtype = torch.float64
) -> list[TrainingConfig]:
    fast, slow, decayed, huge = LEARNING_RATES[optimizer]
    huge = min(huge, 1e30) if dtype == torch.float32 else huge
    base = {"optimizer": optimizer, "target_ce": 0.05, "max_epochs": 40, **SHARED}
    base["check_batches"] = check_batches
    return [
        TrainingConfig(lr=fast, l2=1e-3, seed=0, **base),
        TrainingConfig(lr=slow, weight_decay=1e-2, lr_milestones=(10, 25), seed=1, **base),
        TrainingConfig(lr=decayed, l2=1e-4, weight_decay=1e-3, lr_milestones=(20,), seed=2, **base),
        TrainingConfig(lr=huge, seed=3, **base),
        TrainingConfig(**(base | {"lr": fast / 100, "max_epochs": 3}), seed=4),
    ]


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal bits compare equal, nan included."""
    return tensor.detach().contiguous().flatten().view(torch.uint8)


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key in state:
        assert state[key].dtype == expected[key].dtype, key
        assert torch.equal(bits(state[key]), bits(expected[key])), key


def assert_same_run(run: TrainingRun, alone: TrainingRun) -> None:
    """Bit for bit: weights, buffers, records and metrics (wall-clock seconds aside)."""
    assert run.status == alone.status
    assert run.records.keys() == alone.records.keys()
    for key, value in alone.records.items():
        if key != "epoch1_state":  # repr: exact for floats, and nan equals nan
            assert repr(run.records[key]) == repr(value), key
    state, expected_state = run.records["epoch1_state"], alone.records["epoch1_state"]
    assert (state is None) == (expected_state is None)
    if state is not None:
        assert_same_state(state, expected_state)
    assert_same_state(run.model.state_dict(), alone.model.state_dict())
    assert_same_state(run.init_model.state_dict(), alone.init_model.state_dict())
    assert not run.model.training
    assert not run.init_model.training
    assert run.metrics.keys() == alone.metrics.keys()
    for key, value in alone.metrics.items():
        if key != "seconds":
            assert repr(run.metrics[key]) == repr(value), key


def leaky(model: nn.Module) -> nn.Module:
    """The MLP with LeakyReLU activations."""
    for name, module in model.named_children():
        if isinstance(module, nn.ReLU):
            setattr(model, name, nn.LeakyReLU(0.1))
    return model


@pytest.mark.parametrize(
    ("optimizer", "check_batches", "kind", "dtype"),
    # K·b = 32 draws < m = 40 examples: the checks evaluate the drawn rows; 48 ≥ 40: every
    # example at least once.
    [
        ("sgd", 4, "plain", torch.float32),
        ("sgd", 6, "plain", torch.float64),
        ("adam", 4, "plain", torch.float32),
        ("rmsprop", 6, "plain", torch.float32),
        ("sgd", 6, "leaky", torch.float32),
        ("adam", 4, "leaky", torch.float64),
        ("sgd", 4, "batchnorm-dropout", torch.float32),
        ("adam", 6, "batchnorm-dropout", torch.float32),
        ("rmsprop", 4, "batchnorm-dropout", torch.float32),
    ],
)
def test_each_member_trains_as_it_would_alone(
    optimizer: str, check_batches: int, kind: str, dtype: torch.dtype
) -> None:
    data = float64_blobs() if dtype == torch.float64 else make_blobs(40, classes=3)
    configs = configs_for(optimizer, check_batches, dtype)
    models = [model_of_kind(kind, data, seed=i).to(dtype) for i in range(len(configs))]
    alone = [
        train_to_target(copy.deepcopy(model), data, config)
        for model, config in zip(models, configs, strict=True)
    ]
    backwards = train_batched(
        [copy.deepcopy(m) for m in reversed(models)], data, list(reversed(configs))
    )
    finished: list[int] = []
    runs = train_batched(models, data, configs, on_finish=lambda i, run: finished.append(i))
    for run, reversed_run, reference in zip(runs, reversed(backwards), alone, strict=True):
        assert_same_run(run, reference)
        assert_same_run(reversed_run, reference)
    statuses = [run.status for run in runs]
    assert statuses[3:] == ["diverged", "not-converged"]
    steps = [run.metrics["steps"] for run in runs]
    assert len(set(steps)) >= 3, "members must stop at different steps"
    assert steps[4] == 3 * 5, "the budget is max_epochs * steps_per_epoch"
    assert sorted(finished) == list(range(len(configs)))
    assert [runs[i].model for i in range(len(models))] == models, "trained in place"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_member_is_trained_as_by_torch_optim(optimizer: str, kind: str) -> None:
    # The textbook loop of tests/reference.py (torch.optim, loss.backward(), one thread) gives
    # the same bits as a member of a unit: the kernel's arithmetic is torch's.
    data = make_blobs(40, classes=3)
    lr = LEARNING_RATES[optimizer][0]
    settings = {"optimizer": optimizer, "target_ce": 1e-9, "max_epochs": 2, **SHARED}
    configs = [
        TrainingConfig(lr=lr, l2=1e-3, weight_decay=1e-2, lr_milestones=(4,), seed=7, **settings),
        TrainingConfig(lr=lr / 2, seed=8, **settings),
    ]
    models = [model_of_kind(kind, data, seed=i) for i in range(2)]
    expected = [
        train_epochs_with_torch_optim(copy.deepcopy(m), *data.train, config, epochs=2)
        for m, config in zip(models, configs, strict=True)
    ]
    runs = train_batched(models, data, configs)
    for run, reference in zip(runs, expected, strict=True):
        assert run.status == "not-converged"
        assert_same_state(run.model.state_dict(), reference.state_dict())


def test_on_finish_in_stopping_order_and_on_check() -> None:
    data = float64_blobs()
    configs = configs_for("sgd")
    models = [mlp(data, seed=i).double() for i in range(len(configs))]
    finished: list[tuple[int, TrainingRun]] = []
    checks: dict[int, list[tuple[int, float]]] = {}

    def on_finish(index: int, run: TrainingRun) -> None:
        assert all(index != i for i, _ in finished), "called once per member"
        finished.append((index, run))

    def on_check(index: int, step: int, ce: float) -> None:
        checks.setdefault(index, []).append((step, ce))

    runs = train_batched(models, data, configs, on_finish=on_finish, on_check=on_check)
    assert sorted(i for i, _ in finished) == list(range(len(configs)))
    assert all(run is runs[i] for i, run in finished)
    stopped_at = [run.metrics["steps"] for _, run in finished]
    assert stopped_at == sorted(stopped_at), "members are reported as they stop"
    assert [i for i, _ in finished] != list(range(len(configs)))
    for index, run in enumerate(runs):
        assert checks[index] == run.records["ce_checks"]


def test_members_done_at_the_first_check_and_a_single_member() -> None:
    data = float64_blobs()
    configs = [
        TrainingConfig(lr=0.1, target_ce=10.0, seed=0, **SHARED),
        TrainingConfig(lr=0.1, target_ce=0.05, max_epochs=2, seed=1, **SHARED),
    ]
    models = [mlp(data, seed=i).double() for i in range(2)]
    early, other = train_batched(models, data, configs)
    assert early.status == "done"
    assert early.metrics["steps"] == 0
    assert early.records["epoch1_state"] is None
    assert other.metrics["steps"] == 10
    model = mlp(data, seed=1).double()
    reference = train_to_target(copy.deepcopy(model), data, configs[1])
    (alone,) = train_batched([model], data, configs[1:])
    assert_same_run(alone, reference)


def test_frozen_parameters_and_multidimensional_inputs() -> None:
    # Frozen parameters are neither updated nor decayed (they are not in the optimizer); inputs
    # of shape (1, 2) go through the model's Flatten.
    blobs = float64_blobs()
    (x, y), (x_test, y_test) = blobs.train, blobs.test
    data = Dataset("blobs", (x[:, None], y), (x_test[:, None], y_test), 3, (1, 2))
    base = {"l2": 1e-3, "weight_decay": 1e-2, "target_ce": 0.05, "max_epochs": 10, **SHARED}
    configs = [TrainingConfig(lr=lr, seed=s, **base) for s, lr in enumerate((0.05, 0.2))]
    models = []
    for seed in range(2):
        model = mlp(data, seed=seed).double()
        model.fc1.requires_grad_(False)
        models.append(model)
    alone = [
        train_to_target(copy.deepcopy(m), data, c) for m, c in zip(models, configs, strict=True)
    ]
    initial = [model.fc1.weight.detach().clone() for model in models]
    runs = train_batched(models, data, configs)
    for run, reference, weight in zip(runs, alone, initial, strict=True):
        assert_same_run(run, reference)
        assert torch.equal(run.model.fc1.weight, weight)
        assert not torch.equal(run.model.out.weight, run.init_model.out.weight)


def test_nin_members_with_batchnorm_and_dropout_train_in_a_unit_as_alone() -> None:
    # The convolutional NiN of Jiang et al. 2020 (BatchNorm2d after every convolution, dropout
    # after every block) on 1x8x8 images, three optimizers in one unit, float32: each member is
    # the bits of its own single run, in either order of the unit.
    data = gm.load_dataset("digits", normalize=True, train_size=60, test_size=30)
    base = {"target_ce": 0.3, "max_epochs": 6, **SHARED}
    configs = [
        TrainingConfig(optimizer="sgd", lr=0.1, l2=5e-4, seed=0, **base),
        TrainingConfig(optimizer="adam", lr=1e-3, seed=1, **base),
        TrainingConfig(optimizer="rmsprop", lr=1e-3, l2=3e-4, seed=2, **base | {"max_epochs": 3}),
    ]
    models = [
        gm.build_model("nin", data.input_shape, 10, depth=2, width=8, dropout=0.25, seed=i)
        for i in range(len(configs))
    ]
    alone = [
        train_to_target(copy.deepcopy(m), data, c) for m, c in zip(models, configs, strict=True)
    ]
    backwards = train_batched(
        [copy.deepcopy(m) for m in reversed(models)], data, list(reversed(configs))
    )
    runs = train_batched(models, data, configs)
    for run, reversed_run, reference in zip(runs, reversed(backwards), alone, strict=True):
        assert_same_run(run, reference)
        assert_same_run(reversed_run, reference)
        running_mean = run.model.state_dict()["block1.bn1.running_mean"]
        assert not torch.equal(running_mean, run.init_model.state_dict()["block1.bn1.running_mean"])
    assert len({run.metrics["steps"] for run in runs}) >= 2, "members must stop apart"


def test_global_rng_and_threads_are_left_alone() -> None:
    data = make_blobs(20)
    configs = [TrainingConfig(lr=0.1, max_epochs=2, seed=s, **SHARED) for s in range(2)]
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    models = [mlp(data, seed=i, dropout=0.5) for i in range(2)]
    train_batched(models, data, configs)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def test_mismatched_inputs_raise_naming_the_member() -> None:
    data = make_blobs(8)
    config = TrainingConfig(**SHARED)
    models = [mlp(data, seed=i) for i in range(3)]
    with pytest.raises(TrainingError, match="expected 3 configs, received 2"):
        train_batched(models, data, [config, config])
    with pytest.raises(TrainingError, match="at least one model"):
        train_batched([], data, [])
    with pytest.raises(TrainingError, match="model 2 is the same object as model 0"):
        train_batched([*models[:2], models[0]], data, [config] * 3)
    with pytest.raises(TrainingError, match=r"configs\[1\] must be a TrainingConfig"):
        train_batched(models, data, [config, {"lr": 0.1}, config])  # type: ignore[list-item]
    with pytest.raises(TrainingError, match=r"model 1 must be a torch\.nn\.Module"):
        train_batched([models[0], "mlp"], data, [config] * 2)  # type: ignore[list-item]
    with pytest.raises(TrainingError, match="dataset"):
        train_batched(models, data.train, [config] * 3)  # type: ignore[arg-type]
    frozen = [models[0], nn.Linear(2, 2).requires_grad_(False)]
    with pytest.raises(TrainingError, match="model 1 has no trainable parameters"):
        train_batched(frozen, data, [config] * 2)
    empty = Dataset("empty", (data.train[0][:0], data.train[1][:0]), data.test, 2, (2,))
    with pytest.raises(TrainingError, match="at least one example"):
        train_batched(models, empty, [config] * 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [("batch_size", 16), ("ce_check", "full"), ("check_every", 7), ("check_batches", 2)],
)
def test_shared_settings_must_agree(name: str, value: object) -> None:
    assert name in SHARED_FIELDS
    data = make_blobs(8)
    config = TrainingConfig(**SHARED)
    other = TrainingConfig(**(SHARED | {name: value}))
    models = [mlp(data, seed=i) for i in range(3)]
    with pytest.raises(TrainingError, match=rf"configs\[2\]\.{name}.*expected .* received"):
        train_batched(models, data, [config, config, other])


def test_per_member_settings_and_architectures_may_differ() -> None:
    data = make_blobs(16)
    fields = {
        "optimizer": ("sgd", "adam"),
        "lr": (0.1, 0.05),
        "l2": (0.0, 1e-3),
        "weight_decay": (0.0, 1e-2),
        "lr_milestones": ((), (3,)),
        "target_ce": (0.01, 0.5),
        "max_epochs": (2, 1),
        "seed": (0, 9),
    }
    configs = [TrainingConfig(**SHARED, **{k: v[i] for k, v in fields.items()}) for i in range(2)]
    models = [mlp(data, seed=0), mlp(data, seed=1, depth=2, width=5)]
    runs = train_batched(models, data, configs)
    assert all(math.isfinite(run.metrics["train_ce"]) for run in runs)
    assert [run.records["config"]["seed"] for run in runs] == [0, 9]
    alone = train_to_target(mlp(data, seed=1, depth=2, width=5), data, configs[1])
    assert_same_run(runs[1], alone)
