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
from genmeasures.zoo.batched import SHARED_FIELDS, batch_incompatibility, train_batched
from genmeasures.zoo.stacked import plain_mlp_layers
from genmeasures.zoo.train import TrainingConfig, TrainingRun, train_to_target

RTOL = 1e-6
SHARED = {"batch_size": 8, "check_every": 3, "check_batches": 4}

#: Per optimizer: learning rates of two members that reach the target at different steps, of a
#: third with its lr decayed early, and of a member that diverges at once.
LEARNING_RATES = {
    "sgd": (0.05, 0.2, 0.1, 1e12),
    "adam": (0.01, 0.1, 0.03, 1e200),
    "rmsprop": (0.005, 0.02, 0.01, 1e200),
}


def float64_blobs() -> Dataset:
    data = make_blobs(40, classes=3)
    (x, y), (x_test, y_test) = data.train, data.test
    return Dataset("blobs", (x.double(), y), (x_test.double(), y_test), 3, data.input_shape)


def mlp(data: Dataset, seed: int, **hparams: object) -> nn.Module:
    hparams = {"depth": 1, "width": 8, **hparams}
    return gm.build_model("mlp", data.input_shape, data.num_classes, seed=seed, **hparams)


def configs_for(optimizer: str, check_batches: int = 4) -> list[TrainingConfig]:
    fast, slow, decayed, huge = LEARNING_RATES[optimizer]
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


def assert_same_run(batched: TrainingRun, alone: TrainingRun) -> None:
    assert batched.status == alone.status
    assert batched.records.keys() == alone.records.keys()
    assert batched.metrics.keys() == alone.metrics.keys()
    checks, expected = batched.records["ce_checks"], alone.records["ce_checks"]
    assert [t for t, _ in checks] == [t for t, _ in expected]
    torch.testing.assert_close(
        torch.tensor([ce for _, ce in checks]),
        torch.tensor([ce for _, ce in expected]),
        rtol=RTOL,
        atol=0.0,
        equal_nan=True,
    )
    for key, value in alone.records.items():
        if key not in ("ce_checks", "epoch1_state"):
            assert batched.records[key] == value, key
    state, expected_state = batched.records["epoch1_state"], alone.records["epoch1_state"]
    assert (state is None) == (expected_state is None)
    if state is not None:
        assert state.keys() == expected_state.keys()
        for key in state:
            torch.testing.assert_close(state[key], expected_state[key], rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(flat(batched.model), flat(alone.model), rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(flat(batched.init_model), flat(alone.init_model), rtol=0, atol=0)
    assert not batched.model.training
    assert not batched.init_model.training
    for key, value in alone.metrics.items():
        if key != "seconds":
            assert batched.metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-12, nan_ok=True), (
                key
            )


def leaky(model: nn.Module) -> nn.Module:
    """The MLP with LeakyReLU activations: not a plain MLP, so trained through vmap."""
    for name, module in model.named_children():
        if isinstance(module, nn.ReLU):
            setattr(model, name, nn.LeakyReLU(0.1))
    return model


@pytest.mark.parametrize(
    ("optimizer", "check_batches", "plain"),
    # K·b = 32 draws < m = 40 examples: the checks evaluate the drawn rows; 48 ≥ 40: the checks
    # evaluate every example once and average the drawn ones. Plain MLPs run as batched
    # matmuls, other models through vmap(functional_call).
    [
        ("sgd", 4, True),
        ("sgd", 6, True),
        ("adam", 4, True),
        ("rmsprop", 6, True),
        ("sgd", 6, False),
        ("adam", 4, False),
        ("rmsprop", 4, False),
    ],
)
def test_each_member_trains_as_it_would_alone(
    optimizer: str, check_batches: int, plain: bool
) -> None:
    data = float64_blobs()
    configs = configs_for(optimizer, check_batches)
    models = [mlp(data, seed=i).double() for i in range(len(configs))]
    if not plain:
        models = [leaky(model) for model in models]
    assert (plain_mlp_layers(models[0]) is not None) == plain
    alone = [
        train_to_target(copy.deepcopy(model), data, config)
        for model, config in zip(models, configs, strict=True)
    ]
    finished: list[int] = []
    runs = train_batched(models, data, configs, on_finish=lambda i, run: finished.append(i))
    for run, reference in zip(runs, alone, strict=True):
        assert_same_run(run, reference)
    statuses = [run.status for run in runs]
    assert statuses == ["done", "done", "done", "diverged", "not-converged"]
    steps = [run.metrics["steps"] for run in runs]
    assert len(set(steps)) >= 3, "members must stop at different steps"
    assert steps[4] == 3 * 5, "the budget is max_epochs * steps_per_epoch"
    assert sorted(finished) == list(range(len(configs)))
    assert [runs[i].model for i in range(len(models))] == models, "trained in place"


def test_full_checks_and_float32() -> None:
    data = make_blobs(30)
    configs = [
        TrainingConfig(lr=lr, ce_check="full", target_ce=0.05, max_epochs=30, seed=s, **SHARED)
        for s, lr in enumerate((0.05, 0.1, 0.2))
    ]
    models = [mlp(data, seed=i) for i in range(len(configs))]
    alone = [
        train_to_target(copy.deepcopy(m), data, c) for m, c in zip(models, configs, strict=True)
    ]
    runs = train_batched(models, data, configs)
    for run, reference in zip(runs, alone, strict=True):
        assert run.status == reference.status == "done"
        assert [t for t, _ in run.records["ce_checks"]] == [
            t for t, _ in reference.records["ce_checks"]
        ]
        assert run.records["ce_checks"][-1][1] == pytest.approx(
            reference.records["ce_checks"][-1][1], rel=1e-4
        )
        assert flat(run.model).dtype == torch.float32


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


def testplain_mlp_layers() -> None:
    data = make_blobs(8)
    layers = plain_mlp_layers(mlp(data, seed=0, depth=2, dropout=0.0))
    assert layers == [
        ("flatten", 1, -1),
        ("linear", "fc1.weight", "fc1.bias"),
        ("relu",),
        ("linear", "fc2.weight", "fc2.bias"),
        ("relu",),
        ("linear", "out.weight", "out.bias"),
    ]
    assert plain_mlp_layers(mlp(data, seed=0, bias=False))[1] == ("linear", "fc1.weight", None)
    assert plain_mlp_layers(leaky(mlp(data, seed=0))) is None
    assert plain_mlp_layers(nn.Linear(2, 2)) is None  # not a Sequential: vmap
    hooked = mlp(data, seed=0)
    hooked.fc1.register_forward_hook(lambda module, args, out: out * 2)
    assert plain_mlp_layers(hooked) is None


def test_global_rng_is_left_alone() -> None:
    data = make_blobs(20)
    configs = [TrainingConfig(lr=0.1, max_epochs=2, seed=s, **SHARED) for s in range(2)]
    before = torch.get_rng_state()
    train_batched([mlp(data, seed=i) for i in range(2)], data, configs)
    assert torch.equal(torch.get_rng_state(), before)


def test_batch_incompatibility_reasons() -> None:
    data = make_blobs(8)
    assert batch_incompatibility(mlp(data, seed=0)) is None
    assert batch_incompatibility(mlp(data, seed=0, dropout=0.0)) is None
    assert batch_incompatibility(nn.Linear(2, 2)) is None
    assert "BatchNorm" in batch_incompatibility(mlp(data, seed=0, batchnorm=True))
    reason = batch_incompatibility(mlp(data, seed=0, dropout=0.3))
    assert "dropout" in reason and "0.3" in reason
    assert "running" in batch_incompatibility(nn.InstanceNorm1d(3, track_running_stats=True))
    assert "parameters" in batch_incompatibility(nn.Flatten())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert "trainable" in batch_incompatibility(frozen)


def test_mismatched_inputs_raise_naming_the_member() -> None:
    data = make_blobs(8)
    config = TrainingConfig(**SHARED)
    models = [mlp(data, seed=i) for i in range(3)]
    with pytest.raises(TrainingError, match="expected 3 configs, received 2"):
        train_batched(models, data, [config, config])
    with pytest.raises(TrainingError, match="at least one model"):
        train_batched([], data, [])
    other = [*models[:2], mlp(data, seed=2, width=9)]
    with pytest.raises(TrainingError, match=r"model 2 .*structure.*fc1\.weight"):
        train_batched(other, data, [config] * 3)
    deeper = [*models[:2], mlp(data, seed=2, depth=2)]
    with pytest.raises(TrainingError, match=r"model 2 .*structure"):
        train_batched(deeper, data, [config] * 3)
    dropout = [models[0], mlp(data, seed=1, dropout=0.5), models[2]]
    with pytest.raises(TrainingError, match="model 1 cannot be trained in a vmapped batch"):
        train_batched(dropout, data, [config] * 3)
    batchnorm = [mlp(data, seed=i, batchnorm=True) for i in range(3)]
    with pytest.raises(TrainingError, match=r"model 0 .*BatchNorm"):
        train_batched(batchnorm, data, [config] * 3)
    with pytest.raises(TrainingError, match="model 2 is the same object as model 0"):
        train_batched([*models[:2], models[0]], data, [config] * 3)
    with pytest.raises(TrainingError, match=r"configs\[1\] must be a TrainingConfig"):
        train_batched(models, data, [config, {"lr": 0.1}, config])  # type: ignore[list-item]
    with pytest.raises(TrainingError, match="dataset"):
        train_batched(models, data.train, [config] * 3)  # type: ignore[arg-type]
    assert models[0].fc1.weight.dtype == torch.float32  # nothing was trained
    double = [*models[:2], mlp(data, seed=2).double()]
    with pytest.raises(TrainingError, match=r"model 2 .*float64"):
        train_batched(double, data, [config] * 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 16),
        ("optimizer", "adam"),
        ("ce_check", "full"),
        ("check_every", 7),
        ("check_batches", 2),
    ],
)
def test_shared_settings_must_agree(name: str, value: object) -> None:
    assert name in SHARED_FIELDS
    data = make_blobs(8)
    config = TrainingConfig(**SHARED)
    other = TrainingConfig(**(SHARED | {name: value}))
    models = [mlp(data, seed=i) for i in range(3)]
    with pytest.raises(TrainingError, match=rf"configs\[2\]\.{name}.*expected .* received"):
        train_batched(models, data, [config, config, other])


def test_per_member_settings_may_differ() -> None:
    data = make_blobs(16)
    fields = {
        "lr": (0.1, 0.05),
        "l2": (0.0, 1e-3),
        "weight_decay": (0.0, 1e-2),
        "lr_milestones": ((), (3,)),
        "target_ce": (0.01, 0.5),
        "max_epochs": (2, 1),
        "seed": (0, 9),
    }
    configs = [TrainingConfig(**SHARED, **{k: v[i] for k, v in fields.items()}) for i in range(2)]
    runs = train_batched([mlp(data, seed=i) for i in range(2)], data, configs)
    assert all(math.isfinite(run.metrics["train_ce"]) for run in runs)
    assert [run.records["config"]["seed"] for run in runs] == [0, 9]
