"""Train one model until its training cross-entropy reaches a target, with training records.

The stopping rule and the records follow ``MEASURES.md`` §2.5 (Jiang et al. 2020, §2.1 and
appendix C): the training cross-entropy is estimated in eval mode at ``t = 0``, every
``check_every`` optimizer updates and at the final update (by default as the mean over
``check_batches`` random minibatches, as the paper does), and training stops at the first check at
or below the target.

Seeding: three independent streams are derived from ``TrainingConfig.seed`` with
:func:`genmeasures.seeding.derive_seed`: the data order, the loss-check draws ``check_gen``, and the
torch CPU RNG used by dropout during training (forked, so that the caller's global RNG state is
left unchanged). Recording therefore never changes training.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.seeding import derive_seed
from genmeasures.validation import IncreasingIntegers, Integer, OneOf, Real, Settings, setting

OPTIMIZERS = ("sgd", "adam", "rmsprop")
CE_CHECK_MODES = ("minibatch", "full")

#: Purposes of the random streams derived from the run seed.
ORDER_STREAM, CHECK_STREAM, TORCH_STREAM = (
    "training/data-order",
    "training/loss-check",
    "training/torch",
)

#: Called at every loss check with (optimizer updates so far, estimated training cross-entropy).
CheckCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainingConfig(Settings):
    """How one model is trained (Jiang et al. 2020, appendix C.3).

    Attributes:
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"rmsprop"``.
        lr: Initial learning rate η.
        batch_size: Training batch size b.
        l2: Coefficient λ of the L2 penalty (λ/2)·‖ϑ‖² on all trainable parameters, added to the
            training loss (so its gradient λϑ passes through momentum and adaptive scaling; this
            is the optimizer's ``weight_decay`` argument in PyTorch and Jiang et al.'s
            "regularization coefficient"). The loss checks measure the data cross-entropy only.
        weight_decay: Coefficient λ of decoupled weight decay (Loshchilov & Hutter 2019):
            ϑ ← (1 − η_t·λ)·ϑ before every optimizer update, as ``torch.optim.AdamW`` does.
        lr_milestones: Steps t at which the learning rate is multiplied by 0.1 (Jiang et al.
            2020, appendix C.3: 60000 and 90000); the update after ``t`` milestones have passed
            uses η·0.1^k.
        target_ce: Stop at the first check whose training cross-entropy is ≤ this.
        max_epochs: Budget; a model still above the target after it is ``not-converged``.
        check_every: C, optimizer updates between loss checks.
        check_batches: K, minibatches per loss estimate (``ce_check="minibatch"``).
        ce_check: ``"minibatch"`` (the paper's estimate) or ``"full"`` (exact mean over S).
        seed: Run seed in ``[0, 2**64)``: data order, loss-check draws and dropout (separate
            streams, see the module docstring).

    Raises:
        TrainingError: naming the field, for a value of the wrong type or out of range.
    """

    WHERE = "training settings"
    ERROR = TrainingError

    optimizer: str = setting("sgd", OneOf(OPTIMIZERS), "the optimizer")
    lr: float = setting(0.01, Real(0.0, open_minimum=True), "initial learning rate")
    batch_size: int = setting(64, Integer(1), "training batch size")
    l2: float = setting(0.0, Real(0.0), "coefficient of the L2 penalty added to the loss")
    weight_decay: float = setting(0.0, Real(0.0), "coefficient of decoupled weight decay")
    lr_milestones: tuple[int, ...] = setting(
        (), IncreasingIntegers(1, "steps"), "steps at which the learning rate is multiplied by 0.1"
    )
    target_ce: float = setting(
        0.01, Real(0.0, open_minimum=True), "stop at the first check at or below this"
    )
    max_epochs: int = setting(300, Integer(1), "budget in epochs")
    check_every: int = setting(100, Integer(1), "optimizer updates between loss checks")
    check_batches: int = setting(100, Integer(1), "minibatches per loss estimate")
    ce_check: str = setting("minibatch", OneOf(CE_CHECK_MODES), "how the loss is estimated")
    seed: int = setting(0, Integer(0, 2**64 - 1), "run seed")


@dataclass
class TrainingRun:
    """The outcome of :func:`train_to_target`.

    Attributes:
        model: The trained model, in eval mode.
        init_model: The model before the first optimizer update, in eval mode.
        status: ``"done"`` (target reached), ``"not-converged"`` (budget spent) or
            ``"diverged"`` (non-finite training loss or loss check).
        records: Training-time records of ``MEASURES.md`` §2.5: ``ce_checks`` (R1, a list of
            ``(t, ĉ_t)``), ``epoch1_state`` (R2, parameters and buffers after ``steps_per_epoch``
            updates, or None when training stopped before the first epoch ended) and the
            metadata R3 (``batch_size``, ``steps_per_epoch``, ``check_every``,
            ``check_batches``, ``ce_check``, ``check_seed``, ``config``).
        metrics: Final exact train/test cross-entropy and 0-1 error, the gap, ``steps`` (the
            number of optimizer updates, equal to the ``t`` of the last check) and ``seconds``.
    """

    model: nn.Module
    init_model: nn.Module
    status: str
    records: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.l2)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.l2)
    return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.l2)


def learning_rate(config: TrainingConfig, step: int) -> float:
    """The learning rate of the update that follows ``step`` completed updates."""
    passed = sum(1 for milestone in config.lr_milestones if step >= milestone)
    return config.lr * 0.1**passed


def _decay_weights(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Decoupled weight decay: ϑ ← (1 − η_t·λ)·ϑ, with the learning rate of this update."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.mul_(1 - group["lr"] * weight_decay)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def evaluate(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Exact mean cross-entropy and 0-1 error of ``model`` in eval mode (train mode restored).

    Args:
        model: The network; its output is the logits.
        inputs: Examples, on the model's device or the CPU.
        labels: Integer labels, same length as ``inputs``.
        batch_size: Examples per forward pass.

    Returns:
        ``(cross_entropy, error)`` as floats; the cross-entropy is summed in float64.

    Raises:
        TrainingError: if there are no examples.
    """
    if len(labels) == 0:
        raise TrainingError("evaluate needs at least one example, got 0")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    loss, wrong = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                logits = model(inputs[start : start + batch_size].to(device))
                target = labels[start : start + batch_size].to(device)
                loss += float(F.cross_entropy(logits.double(), target, reduction="sum"))
                wrong += int((logits.argmax(dim=1) != target).sum())
    finally:
        model.train(was_training)
    return loss / len(labels), wrong / len(labels)


def _estimate_ce(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainingConfig,
    check_gen: torch.Generator,
) -> float:
    """One loss check ĉ_t of ``MEASURES.md`` §2.5, in eval mode (train mode restored)."""
    if config.ce_check == "full":
        return evaluate(model, inputs, labels)[0]
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for index in check_indices(len(labels), config, check_gen).to(inputs.device):
                logits = model(inputs[index])
                total += float(F.cross_entropy(logits.double(), labels[index]))
    finally:
        model.train(was_training)
    return total / config.check_batches


def check_indices(m: int, config: TrainingConfig, check_gen: torch.Generator) -> torch.Tensor:
    """The example indices of one minibatch loss check (``MEASURES.md`` §2.5), on the CPU.

    Each of the ``config.check_batches`` minibatches holds ``min(batch_size, m)`` examples drawn
    uniformly without replacement (the first entries of one ``randperm`` from ``check_gen``).

    Args:
        m: Number of training examples.
        config: Gives the batch size and the number of minibatches K.
        check_gen: The run's loss-check generator; advanced by K permutations.

    Returns:
        An int64 tensor of shape ``(K, min(batch_size, m))``.
    """
    batch = min(config.batch_size, m)
    return torch.stack(
        [torch.randperm(m, generator=check_gen)[:batch] for _ in range(config.check_batches)]
    )


@contextmanager
def _private_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout) from ``seed`` and restore the caller's state after."""
    if device.type != "cuda":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        torch.default_generator.manual_seed(seed)
        torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _outcome(ce: float, target: float) -> str | None:
    if not math.isfinite(ce):
        return "diverged"
    return "done" if ce <= target else None


def _check_inputs(model: nn.Module, dataset: Dataset, config: TrainingConfig) -> None:
    if not isinstance(model, nn.Module):
        raise TrainingError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise TrainingError(
            f"dataset must be a genmeasures.data.Dataset, got {type(dataset).__name__}"
        )
    if not isinstance(config, TrainingConfig):
        raise TrainingError(f"config must be a TrainingConfig or None, got {type(config).__name__}")
    inputs, labels = dataset.train
    if len(labels) == 0 or len(inputs) != len(labels):
        raise TrainingError(
            f"dataset {dataset.name!r}: the train split needs at least one example and as many "
            f"labels as inputs, got {len(inputs)} inputs and {len(labels)} labels"
        )


def train_to_target(
    model: nn.Module,
    dataset: Dataset,
    config: TrainingConfig | None = None,
    *,
    on_check: CheckCallback | None = None,
) -> TrainingRun:
    """Train ``model`` on ``dataset.train`` until the training cross-entropy reaches the target.

    A step is one executed ``optimizer.step()``; ``t`` counts completed steps. The loss is
    checked at ``t = 0``, every ``config.check_every`` steps and at the final step; training
    stops at the first check ≤ ``config.target_ce`` (``"done"``), at a non-finite loss or check
    (``"diverged"``) or after ``config.max_epochs`` passes (``"not-converged"``). Deterministic on
    CPU for a given ``config.seed`` and initial model; the caller's global RNG state is left
    unchanged. The data are moved to the model's device.

    Args:
        model: A freshly initialized network; trained in place and returned as ``run.model``.
        dataset: The data; its ``train`` split is fitted, its ``test`` split gives the gap.
        config: Optimizer, batch size, target and budget (defaults of :class:`TrainingConfig`).
        on_check: Called after every loss check (model back in train mode), e.g. to drive a
            progress bar.

    Returns:
        The trained model, its initial copy, the status, the records and the final metrics.

    Raises:
        TrainingError: for a model without trainable parameters, an empty training split or
            arguments of the wrong type.
    """
    config = TrainingConfig() if config is None else config
    _check_inputs(model, dataset, config)
    device = _model_device(model)
    inputs, labels = (tensor.to(device) for tensor in dataset.train)
    m = len(labels)
    steps_per_epoch = math.ceil(m / config.batch_size)
    order_gen, check_gen, check_seed = training_streams(config)
    init_model = copy.deepcopy(model).eval()
    optimizer = _make_optimizer(model, config)
    ce_checks: list[tuple[int, float]] = []
    epoch1_state: dict[str, torch.Tensor] | None = None
    step, start = 0, time.perf_counter()

    def check() -> float:
        ce = _estimate_ce(model, inputs, labels, config, check_gen)
        ce_checks.append((step, ce))
        if on_check is not None:
            on_check(step, ce)
        return ce

    model.train()
    with _private_torch_rng(derive_seed(config.seed, TORCH_STREAM), device):
        status = _outcome(check(), config.target_ce)
        epoch = 0
        while status is None and epoch < config.max_epochs:
            order = torch.randperm(m, generator=order_gen).to(device)
            for batch_start in range(0, m, config.batch_size):
                index = order[batch_start : batch_start + config.batch_size]
                loss = F.cross_entropy(model(inputs[index]), labels[index])
                if not torch.isfinite(loss):
                    status = "diverged"
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                if config.weight_decay:
                    _decay_weights(optimizer, config.weight_decay)
                optimizer.step()
                step += 1
                if step == steps_per_epoch:
                    epoch1_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if step % config.check_every == 0:
                    status = _outcome(check(), config.target_ce)
                    if status is not None:
                        break
            epoch += 1
        if ce_checks[-1][0] != step:
            # The check at the final update (budget spent, or a non-finite training loss).
            final = _outcome(check(), config.target_ce)
            status = status or final
    status = status or "not-converged"
    return finish_run(
        model,
        init_model,
        dataset,
        config,
        status=status,
        ce_checks=ce_checks,
        epoch1_state=epoch1_state,
        check_seed=check_seed,
        start=start,
    )


def training_streams(config: TrainingConfig) -> tuple[torch.Generator, torch.Generator, int]:
    """The data-order and loss-check generators of a run, derived from ``config.seed``.

    Args:
        config: The run's configuration.

    Returns:
        ``(order_gen, check_gen, check_seed)``: CPU generators of the data order and of the loss
        checks, and the seed of the latter (record R3 of ``MEASURES.md`` §2.5).
    """
    order_gen = torch.Generator().manual_seed(derive_seed(config.seed, ORDER_STREAM))
    check_seed = derive_seed(config.seed, CHECK_STREAM)
    return order_gen, torch.Generator().manual_seed(check_seed), check_seed


def finish_run(
    model: nn.Module,
    init_model: nn.Module,
    dataset: Dataset,
    config: TrainingConfig,
    *,
    status: str,
    ce_checks: list[tuple[int, float]],
    epoch1_state: dict[str, torch.Tensor] | None,
    check_seed: int,
    start: float,
) -> TrainingRun:
    """Assemble the :class:`TrainingRun` of a finished run: final metrics and records.

    The model is put in eval mode and evaluated exactly on both splits (:func:`evaluate`); the
    number of steps is the ``t`` of the last loss check (Jiang et al. 2020, appendix C;
    ``MEASURES.md`` §2.5).

    Args:
        model: The trained model.
        init_model: Its copy before the first update, in eval mode.
        dataset: The data it was trained on.
        config: Its configuration.
        status: ``"done"``, ``"not-converged"`` or ``"diverged"``.
        ce_checks: Record R1, ending with the check at the final update.
        epoch1_state: Record R2, or None.
        check_seed: Seed of the loss-check generator (record R3).
        start: ``time.perf_counter()`` when training started; ``seconds`` is measured from it.

    Returns:
        The run.
    """
    device = _model_device(model)
    inputs, labels = (tensor.to(device) for tensor in dataset.train)
    model.eval()
    train_ce, train_error = evaluate(model, inputs, labels)
    test_inputs, test_labels = (tensor.to(device) for tensor in dataset.test)
    test_ce, test_error = (
        evaluate(model, test_inputs, test_labels) if len(test_labels) else (math.nan, math.nan)
    )
    metrics = {
        "train_ce": train_ce,
        "train_error": train_error,
        "test_ce": test_ce,
        "test_error": test_error,
        "gap": test_error - train_error,
        "steps": float(ce_checks[-1][0]),
        "seconds": time.perf_counter() - start,
    }
    records = {
        "ce_checks": ce_checks,
        "epoch1_state": epoch1_state,
        "batch_size": config.batch_size,
        "steps_per_epoch": math.ceil(len(labels) / config.batch_size),
        "check_every": config.check_every,
        "check_batches": config.check_batches,
        "ce_check": config.ce_check,
        "check_seed": check_seed,
        "config": asdict(config) | {"lr_milestones": list(config.lr_milestones)},
    }
    return TrainingRun(
        model=model, init_model=init_model, status=status, records=records, metrics=metrics
    )
