"""Train one model until its training cross-entropy reaches a target, with training records.

The stopping rule and the records follow ``MEASURES.md`` §2.5 (Jiang et al. 2020, §2.1 and
appendix C): the training cross-entropy is estimated in eval mode at ``t = 0``, every
``check_every`` optimizer updates and at the final update (by default as the mean over
``check_batches`` random minibatches, as the paper does), and training stops at the first check at
or below the target. The checks, the rule and the records are those of
:mod:`genmeasures.zoo.recording`, shared with the batched trainer; the optimizers are those of the
table in :mod:`genmeasures.zoo.optimizers`.

Seeding: three independent streams are derived from ``TrainingConfig.seed`` with
:func:`genmeasures.seeding.derive_seed`: the data order, the loss-check draws ``check_gen``, and the
torch CPU RNG used by dropout during training (forked, so that the caller's global RNG state is
left unchanged). Recording therefore never changes training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.seeding import derive_seed
from genmeasures.validation import IncreasingIntegers, Integer, OneOf, Real, Settings, setting
from genmeasures.zoo.optimizers import OPTIMIZER_TABLE
from genmeasures.zoo.recording import (
    CHECK_STREAM,
    ORDER_STREAM,
    TORCH_STREAM,
    CheckCallback,
    RunRecorder,
    TrainingRun,
    check_indices,
    estimate_ce,
    evaluate,
    finish_run,
    model_device,
    training_streams,
)
from genmeasures.zoo.states import ModelState

__all__ = [
    "CE_CHECK_MODES",
    "CHECK_STREAM",
    "OPTIMIZERS",
    "ORDER_STREAM",
    "TORCH_STREAM",
    "CheckCallback",
    "TrainingConfig",
    "TrainingError",
    "TrainingRun",
    "check_indices",
    "evaluate",
    "finish_run",
    "learning_rate",
    "train_to_target",
    "training_streams",
]

#: The optimizer names a config accepts: the keys of the optimizer table.
OPTIMIZERS = tuple(OPTIMIZER_TABLE)
CE_CHECK_MODES = ("minibatch", "full")


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


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("model has no trainable parameters")
    return OPTIMIZER_TABLE[config.optimizer].build(params, lr=config.lr, l2=config.l2)


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


def _optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, config: TrainingConfig, step: int
) -> None:
    """Update ``step`` (0-based): the gradient of ``loss``, the scheduled rate, weight decay."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    if config.weight_decay:
        _decay_weights(optimizer, config.weight_decay)
    optimizer.step()


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
    device = model_device(model)
    inputs, labels = (tensor.to(device) for tensor in dataset.train)
    m = len(labels)
    steps_per_epoch = math.ceil(m / config.batch_size)
    run = RunRecorder.begin(model, config, on_check=on_check)
    optimizer = _make_optimizer(model, config)
    step = 0

    def check() -> ModelState | None:
        return run.record_check(step, estimate_ce(model, inputs, labels, config, run.check_gen))

    model.train()
    with _private_torch_rng(derive_seed(config.seed, TORCH_STREAM), device):
        status = check()
        epoch = 0
        while status is None and epoch < config.max_epochs:
            order = torch.randperm(m, generator=run.order_gen).to(device)
            for batch_start in range(0, m, config.batch_size):
                index = order[batch_start : batch_start + config.batch_size]
                loss = F.cross_entropy(model(inputs[index]), labels[index])
                if not torch.isfinite(loss):
                    status = ModelState.DIVERGED
                    break
                _optimizer_step(optimizer, loss, config, step)
                step += 1
                if step == steps_per_epoch:
                    run.record_epoch1(model)
                if step % config.check_every == 0:
                    status = check()
                    if status is not None:
                        break
            epoch += 1
        if not run.checked_at(step):
            # The check at the final update (budget spent, or a non-finite training loss).
            final = check()
            status = status or final
    return run.finish(model, dataset, status)
