from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs
from torch import nn

import genmeasures as gm
from genmeasures.data import Dataset
from genmeasures.zoo.optimizers import OPTIMIZER_TABLE, get_optimizer
from genmeasures.zoo.train import (
    OPTIMIZERS,
    TrainingConfig,
    TrainingError,
    TrainingRun,
    evaluate,
    learning_rate,
    train_to_target,
)


def mlp(data: Dataset, *, seed: int = 0, **hparams: object) -> torch.nn.Module:
    hparams = {"depth": 1, "width": 16, **hparams}
    return gm.build_model("mlp", data.input_shape, data.num_classes, seed=seed, **hparams)


def train(
    data: Dataset, model_seed: int = 0, model_kwargs: dict | None = None, **config
) -> TrainingRun:
    settings = {"lr": 0.05, "batch_size": 8, "check_every": 3, "check_batches": 5} | config
    model = mlp(data, seed=model_seed, **(model_kwargs or {}))
    return train_to_target(model, data, TrainingConfig(**settings))


def as_float64(data: Dataset) -> Dataset:
    (x, y), (x_test, y_test) = data.train, data.test
    return Dataset(data.name, (x.double(), y), (x_test.double(), y_test), 2, data.input_shape)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reaches_the_target_on_an_easy_problem(blobs: Dataset) -> None:
    run = train(blobs, target_ce=0.05, max_epochs=200, ce_check="full")
    checks = run.records["ce_checks"]
    assert run.status == "done"
    assert checks[-1][1] <= 0.05
    assert all(ce > 0.05 for _, ce in checks[:-1]), "training must stop at the first check ≤ target"
    assert run.metrics["steps"] == checks[-1][0] > 0
    assert run.metrics["train_ce"] == pytest.approx(checks[-1][1], rel=1e-12)
    assert run.metrics["train_error"] == 0.0
    assert not run.model.training
    assert not run.init_model.training


def test_metrics_and_metadata(blobs: Dataset) -> None:
    run = train(blobs, target_ce=0.05, max_epochs=200, batch_size=16, check_every=7)
    metrics = run.metrics
    assert set(metrics) == {
        "train_ce", "train_error", "test_ce", "test_error", "gap", "steps", "seconds"
    }  # fmt: skip
    assert metrics["gap"] == metrics["test_error"] - metrics["train_error"]
    assert all(math.isfinite(v) for v in metrics.values())
    records = run.records
    assert records["batch_size"] == 16
    assert records["steps_per_epoch"] == 3  # ceil(40 / 16)
    assert records["check_every"] == 7
    assert records["check_batches"] == 5
    assert records["ce_check"] == "minibatch"
    assert isinstance(records["check_seed"], int)
    assert records["config"]["lr"] == 0.05


@pytest.mark.parametrize(
    ("batch_size", "epochs", "check_every", "expected"),
    [
        (16, 3, 4, [0, 4, 8, 9]),  # 3 updates per epoch, 9 in all: the final one is checked
        (10, 3, 4, [0, 4, 8, 12]),  # the final update is a multiple of C: checked once
        (8, 2, 100, [0, 10]),  # C larger than the budget
        (40, 5, 1, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_check_schedule(
    blobs: Dataset, batch_size: int, epochs: int, check_every: int, expected: list[int]
) -> None:
    run = train(
        blobs, batch_size=batch_size, max_epochs=epochs, check_every=check_every, target_ce=1e-9
    )
    assert run.status == "not-converged"
    assert [t for t, _ in run.records["ce_checks"]] == expected
    assert run.metrics["steps"] == expected[-1]


def test_on_check_sees_every_check_with_the_model_in_train_mode(blobs: Dataset) -> None:
    model = mlp(blobs, batchnorm=True).eval()
    seen = []

    def on_check(step: int, ce: float) -> None:
        assert model.training, "train mode must be restored after a check"
        seen.append((step, ce))

    config = TrainingConfig(
        lr=0.05, batch_size=8, check_every=2, check_batches=5, max_epochs=2, target_ce=1e-9
    )
    run = train_to_target(model, blobs, config, on_check=on_check)
    assert seen == run.records["ce_checks"]
    assert [t for t, _ in seen] == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize(("m", "batch_size"), [(37, 8), (40, 8), (40, 64)])
def test_epoch1_state_is_the_state_after_the_first_pass(m: int, batch_size: int) -> None:
    data = make_blobs(m)
    kwargs = {"batchnorm": True}
    config = {"batch_size": batch_size, "target_ce": 1e-9, "check_every": 2}
    full = train(data, model_kwargs=kwargs, max_epochs=4, **config)
    one = train(data, model_kwargs=kwargs, max_epochs=1, **config)
    steps_per_epoch = math.ceil(m / batch_size)
    assert full.records["steps_per_epoch"] == steps_per_epoch
    assert one.metrics["steps"] == steps_per_epoch
    epoch1 = full.records["epoch1_state"]
    assert any("running_mean" in key for key in epoch1), "buffers must be included"
    assert states_equal(epoch1, one.model.state_dict())
    assert not states_equal(epoch1, full.model.state_dict())
    assert not states_equal(epoch1, full.init_model.state_dict())
    assert int(epoch1["bn1.num_batches_tracked"]) == steps_per_epoch


def test_epoch1_state_is_a_copy(blobs: Dataset) -> None:
    run = train(blobs, max_epochs=3, target_ce=1e-9)
    epoch1 = run.records["epoch1_state"]
    for key, value in run.model.state_dict().items():
        assert value.data_ptr() != epoch1[key].data_ptr()


def test_no_epoch1_state_when_stopping_before_the_first_epoch_ends(blobs: Dataset) -> None:
    run = train(blobs, target_ce=10.0)  # the check at t = 0 is already below the target
    assert run.status == "done"
    assert run.metrics["steps"] == 0
    assert run.records["ce_checks"][0][0] == 0
    assert len(run.records["ce_checks"]) == 1
    assert run.records["epoch1_state"] is None


def test_same_seed_same_run_different_seed_different_run(blobs: Dataset) -> None:
    config = {"max_epochs": 3, "target_ce": 1e-9, "seed": 4}
    kwargs = {"dropout": 0.3, "batchnorm": True}
    rng_before = torch.get_rng_state()
    first = train(blobs, model_kwargs=kwargs, **config)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG must be left alone"
    torch.manual_seed(12345)  # training must not depend on the global RNG
    second = train(blobs, model_kwargs=kwargs, **config)
    other = train(blobs, model_kwargs=kwargs, **(config | {"seed": 5}))
    assert states_equal(first.model.state_dict(), second.model.state_dict())
    assert states_equal(first.records["epoch1_state"], second.records["epoch1_state"])
    assert first.records["ce_checks"] == second.records["ce_checks"]
    assert first.records["check_seed"] == second.records["check_seed"]
    assert {k: v for k, v in first.metrics.items() if k != "seconds"} == {
        k: v for k, v in second.metrics.items() if k != "seconds"
    }
    assert not states_equal(first.model.state_dict(), other.model.state_dict())
    assert first.records["ce_checks"] != other.records["ce_checks"]
    assert first.records["check_seed"] != other.records["check_seed"]


def test_recording_does_not_change_training(blobs: Dataset) -> None:
    base = {"max_epochs": 3, "target_ce": 1e-9, "model_kwargs": {"batchnorm": True}}
    runs = [
        train(blobs, check_batches=1, check_every=1, **base),
        train(blobs, check_batches=20, check_every=5, **base),
        train(blobs, ce_check="full", check_every=2, **base),
    ]
    for run in runs[1:]:
        assert states_equal(runs[0].model.state_dict(), run.model.state_dict())


def test_budget_too_small_is_not_converged(blobs: Dataset) -> None:
    run = train(blobs, lr=1e-4, max_epochs=2, target_ce=0.01)
    assert run.status == "not-converged"
    assert run.records["ce_checks"][-1][1] > 0.01
    assert run.metrics["steps"] == 10 == run.records["ce_checks"][-1][0]
    assert all(math.isfinite(v) for v in run.metrics.values())
    assert run.metrics["train_ce"] > 0.01


@pytest.mark.parametrize("lr", [1e3, 1e6])
@pytest.mark.parametrize("check_every", [3, 1000])
def test_huge_learning_rate_diverges(blobs: Dataset, lr: float, check_every: int) -> None:
    run = train(blobs, lr=lr, max_epochs=50, target_ce=1e-9, check_every=check_every)
    assert run.status == "diverged"
    checks = run.records["ce_checks"]
    assert run.metrics["steps"] == checks[-1][0] < 20, "training must stop when it diverges"
    assert checks[0][0] == 0 and math.isfinite(checks[0][1])


def test_a_non_finite_check_at_the_final_update_is_diverged(blobs: Dataset) -> None:
    # One update blows the weights up; only the check at the final update sees it.
    run = train(blobs, lr=1e30, batch_size=40, max_epochs=1, check_every=1000, target_ce=1e-9)
    assert [t for t, _ in run.records["ce_checks"]] == [0, 1]
    assert not math.isfinite(run.records["ce_checks"][-1][1])
    assert run.status == "diverged"


def test_diverged_when_the_initial_model_is_not_finite(blobs: Dataset) -> None:
    model = mlp(blobs)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    run = train_to_target(model, blobs, TrainingConfig(max_epochs=3))
    assert run.status == "diverged"
    assert run.metrics["steps"] == 0
    assert len(run.records["ce_checks"]) == 1


def test_init_model_is_the_model_before_training(blobs: Dataset) -> None:
    run = train(blobs, model_seed=7, max_epochs=5, target_ce=1e-9)
    rebuilt = mlp(blobs, seed=7)
    assert states_equal(run.init_model.state_dict(), rebuilt.state_dict())
    assert not states_equal(run.model.state_dict(), rebuilt.state_dict())
    assert run.init_model is not run.model


def test_the_callers_model_is_trained_in_place(blobs: Dataset) -> None:
    model = mlp(blobs)
    run = train_to_target(model, blobs, TrainingConfig(max_epochs=1, target_ce=1e-9))
    assert run.model is model


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("optimizer", "adamw"),
        ("lr", 0.0),
        ("lr", math.nan),
        ("lr", True),
        ("lr", "0.1"),
        ("target_ce", -1.0),
        ("target_ce", math.inf),
        ("weight_decay", -0.1),
        ("weight_decay", math.inf),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("max_epochs", -1),
        ("check_every", 0),
        ("check_batches", 0),
        ("ce_check", "exact"),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(TrainingError, match=rf"^training settings: {field} expected .*, received "):
        TrainingConfig(**{field: value})


def test_invalid_training_inputs(blobs: Dataset) -> None:
    with pytest.raises(TrainingError, match="model"):
        train_to_target("not a model", blobs)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="dataset"):
        train_to_target(mlp(blobs), blobs.train)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="config"):
        train_to_target(mlp(blobs), blobs, {"lr": 0.1})  # type: ignore[arg-type]
    empty = Dataset(
        "empty", (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), blobs.test, 2, (2,)
    )
    with pytest.raises(TrainingError, match="train split"):
        train_to_target(mlp(blobs), empty)
    assert issubclass(TrainingError, gm.GenMeasuresError)


def test_full_check_is_the_exact_training_cross_entropy(blobs: Dataset) -> None:
    model = mlp(blobs, seed=3)
    inputs, labels = blobs.train
    with torch.no_grad():
        exact0 = float(F.cross_entropy(model(inputs).double(), labels))
    run = train_to_target(
        model, blobs, TrainingConfig(lr=0.05, batch_size=8, max_epochs=2, ce_check="full")
    )
    with torch.no_grad():
        exact = float(F.cross_entropy(run.model(inputs).double(), labels))
    checks = run.records["ce_checks"]
    assert checks[0][1] == pytest.approx(exact0, rel=1e-12)
    assert checks[-1][1] == pytest.approx(exact, rel=1e-12)
    assert evaluate(run.model, inputs, labels)[0] == pytest.approx(exact, rel=1e-12)


def test_minibatch_check_estimates_the_cross_entropy(blobs: Dataset) -> None:
    model = mlp(blobs, seed=3)
    exact = evaluate(model, *blobs.train)[0]
    run = train_to_target(
        model, blobs, TrainingConfig(batch_size=8, max_epochs=1, check_batches=200)
    )
    estimate = run.records["ce_checks"][0][1]
    assert estimate != exact
    assert estimate == pytest.approx(exact, rel=0.05)


def test_evaluate_restores_the_mode_and_counts_errors(blobs: Dataset) -> None:
    model = mlp(blobs).train()
    inputs, labels = blobs.train
    ce, error = evaluate(model, inputs, labels, batch_size=7)
    assert model.training
    with torch.no_grad():
        logits = model.eval()(inputs)
    assert ce == pytest.approx(float(F.cross_entropy(logits.double(), labels)), rel=1e-12)
    assert error == float((logits.argmax(1) != labels).float().mean())


def test_decoupled_weight_decay_shrinks_before_the_update(blobs: Dataset) -> None:
    # One full-batch update with lr η and decay λ: ϑ ← (1 − ηλ)ϑ − η∇L(ϑ).
    torch.manual_seed(0)
    model = nn.Linear(2, 2).double()
    reference = copy.deepcopy(model)
    data = as_float64(blobs)
    config = TrainingConfig(
        lr=0.1, weight_decay=0.5, batch_size=len(blobs.train[1]), max_epochs=1, target_ce=1e-9
    )
    train_to_target(model, data, config)
    params = list(reference.parameters())
    loss = F.cross_entropy(reference(data.train[0]), data.train[1])
    grads = torch.autograd.grad(loss, params)  # at ϑ, as AdamW: decay and update both use ϑ
    for p, g, trained in zip(params, grads, model.parameters(), strict=True):
        expected = (1 - 0.1 * 0.5) * p.detach() - 0.1 * g
        torch.testing.assert_close(trained, expected, rtol=1e-12, atol=1e-12)


def test_l2_is_the_penalty_on_the_loss(blobs: Dataset) -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2).double()
    reference = copy.deepcopy(model)
    data = as_float64(blobs)
    config = TrainingConfig(
        lr=0.1, l2=0.3, batch_size=len(blobs.train[1]), max_epochs=1, target_ce=1e-9
    )
    train_to_target(model, data, config)
    params = list(reference.parameters())
    loss = F.cross_entropy(reference(data.train[0]), data.train[1])
    loss = loss + 0.3 / 2 * sum((p**2).sum() for p in params)
    grads = torch.autograd.grad(loss, params)
    for p, g, trained in zip(params, grads, model.parameters(), strict=True):
        torch.testing.assert_close(trained, p.detach() - 0.1 * g, rtol=1e-12, atol=1e-12)


def test_learning_rate_drops_tenfold_at_each_milestone() -> None:
    config = TrainingConfig(lr=0.5, lr_milestones=(3, 5))
    assert [learning_rate(config, t) for t in range(7)] == pytest.approx(
        [0.5, 0.5, 0.5, 0.05, 0.05, 0.005, 0.005]
    )
    assert TrainingConfig(lr_milestones=[3, 5]).lr_milestones == (3, 5)
    with pytest.raises(TrainingError, match="lr_milestones"):
        TrainingConfig(lr_milestones=(5, 3))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_optimizer_table_names_each_torch_optimizer(name: str) -> None:
    # tests/zoo/test_batched.py checks that each entry's updates are its torch class's, bitwise.
    entry = OPTIMIZER_TABLE[name]
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
    assert entry.torch_class is expected[name]
    group = entry.torch_class([torch.nn.Parameter(torch.zeros(2))], **entry.torch_settings())
    settings = group.param_groups[0]
    if name == "sgd":
        assert settings["momentum"] == 0.9 and settings["dampening"] == 0
        assert not settings["nesterov"]
    with pytest.raises(TrainingError, match="optimizer must be one of"):
        get_optimizer("lbfgs")
