"""Train one model until its training cross-entropy reaches a target, with training records.

The stopping rule and the records follow ``MEASURES.md`` §2.5 (Jiang et al. 2020, §2.1 and
appendix C): every ``check_every`` optimizer updates the training cross-entropy is estimated in
eval mode (by default as the mean over ``check_batches`` random minibatches, as the paper does)
and training stops at the first check at or below the target.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import GenMeasuresError

OPTIMIZERS = ("sgd", "adam", "rmsprop")
CE_CHECK_MODES = ("minibatch", "full")

#: Called at every loss check with (optimizer updates so far, estimated training cross-entropy).
CheckCallback = Callable[[int, float], None]


class TrainingError(GenMeasuresError, ValueError):
    """A training configuration is invalid."""


@dataclass(frozen=True)
class TrainingConfig:
    """How one model is trained (Jiang et al. 2020, appendix C.3).

    Attributes:
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"rmsprop"``.
        lr: Learning rate.
        batch_size: Training batch size.
        weight_decay: The optimizer's weight decay coefficient λ.
        target_ce: Stop at the first check whose training cross-entropy is ≤ this.
        max_epochs: Budget; a model still above the target after it is ``not-converged``.
        check_every: C, optimizer updates between loss checks.
        check_batches: K, minibatches per loss estimate (``ce_check="minibatch"``).
        ce_check: ``"minibatch"`` (the paper's estimate) or ``"full"`` (exact mean over S).
        seed: Seed of the data order and of the loss-check draws (separate streams).
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    target_ce: float = 0.01
    max_epochs: int = 300
    check_every: int = 100
    check_batches: int = 100
    ce_check: str = "minibatch"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.ce_check not in CE_CHECK_MODES:
            raise TrainingError(f"ce_check must be one of {CE_CHECK_MODES}, got {self.ce_check!r}")
        for name in ("lr", "target_ce"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise TrainingError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise TrainingError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")
        for name in ("batch_size", "max_epochs", "check_every", "check_batches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise TrainingError(f"{name} must be a positive int, got {value!r}")


@dataclass
class TrainingRun:
    """The outcome of :func:`train_to_target`.

    Attributes:
        model: The trained model, in eval mode.
        init_model: The model before the first optimizer update.
        status: ``"done"`` (target reached), ``"not-converged"`` (budget spent) or
            ``"diverged"`` (non-finite loss).
        records: Training-time records of ``MEASURES.md`` §2.5: ``ce_checks`` (R1),
            ``epoch1_state`` (R2) and the metadata R3.
        metrics: Final train/test cross-entropy and 0-1 error, the gap, steps, seconds.
    """

    model: nn.Module
    init_model: nn.Module
    status: str
    records: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.weight_decay)


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024):
    """Exact mean cross-entropy and 0-1 error of ``model`` in eval mode (train mode restored).

    Returns:
        ``(cross_entropy, error)`` as floats.
    """
    was_training = model.training
    model.eval()
    loss, wrong = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(inputs[start : start + batch_size])
            target = labels[start : start + batch_size]
            loss += float(F.cross_entropy(logits.double(), target, reduction="sum"))
            wrong += int((logits.argmax(dim=1) != target).sum())
    model.train(was_training)
    return loss / len(labels), wrong / len(labels)


def _estimate_ce(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainingConfig,
    check_gen: torch.Generator,
) -> float:
    if config.ce_check == "full":
        return evaluate(model, inputs, labels)[0]
    was_training = model.training
    model.eval()
    batch = min(config.batch_size, len(labels))
    total = 0.0
    with torch.no_grad():
        for _ in range(config.check_batches):
            index = torch.randperm(len(labels), generator=check_gen)[:batch]
            total += float(F.cross_entropy(model(inputs[index]).double(), labels[index]))
    model.train(was_training)
    return total / config.check_batches


def train_to_target(
    model: nn.Module,
    dataset: Dataset,
    config: TrainingConfig | None = None,
    *,
    on_check: CheckCallback | None = None,
) -> TrainingRun:
    """Train ``model`` on ``dataset.train`` until the training cross-entropy reaches the target.

    Deterministic on CPU for a given ``config.seed`` and initial model. The caller's model is
    trained in place and returned as ``run.model``; ``run.init_model`` is a copy taken before
    the first update.

    Args:
        model: A freshly initialized network.
        dataset: The data; its ``train`` split is fitted, its ``test`` split gives the gap.
        config: Optimizer, batch size, target and budget (defaults of :class:`TrainingConfig`).
        on_check: Called at every loss check, e.g. to drive a progress bar.

    Returns:
        The trained model, its initial copy, the status, the records and the final metrics.
    """
    config = config or TrainingConfig()
    inputs, labels = dataset.train
    m = len(labels)
    steps_per_epoch = math.ceil(m / config.batch_size)
    order_gen = torch.Generator().manual_seed(config.seed)
    check_seed = config.seed + 1_000_003
    check_gen = torch.Generator().manual_seed(check_seed)
    init_model = copy.deepcopy(model).eval()
    optimizer = _make_optimizer(model, config)
    ce_checks: list[tuple[int, float]] = []
    epoch1_state: dict[str, torch.Tensor] = {}
    status, step, start = "not-converged", 0, time.perf_counter()

    def check() -> float:
        ce = _estimate_ce(model, inputs, labels, config, check_gen)
        ce_checks.append((step, ce))
        if on_check is not None:
            on_check(step, ce)
        return ce

    model.train()
    ce = check()
    for _ in range(config.max_epochs):
        if ce <= config.target_ce or status == "diverged":
            break
        order = torch.randperm(m, generator=order_gen)
        for batch_start in range(0, m, config.batch_size):
            index = order[batch_start : batch_start + config.batch_size]
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            if not torch.isfinite(loss):
                status = "diverged"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps_per_epoch:
                epoch1_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if step % config.check_every == 0:
                ce = check()
                if ce <= config.target_ce or not math.isfinite(ce):
                    break
        if not math.isfinite(ce):
            status = "diverged"
    if status != "diverged":
        if ce_checks[-1][0] != step:
            ce = check()
        status = "done" if ce <= config.target_ce else "not-converged"
    model.eval()
    train_ce, train_error = evaluate(model, inputs, labels)
    test_ce, test_error = evaluate(model, *dataset.test)
    metrics = {
        "train_ce": train_ce,
        "train_error": train_error,
        "test_ce": test_ce,
        "test_error": test_error,
        "gap": test_error - train_error,
        "steps": float(step),
        "seconds": time.perf_counter() - start,
    }
    records = {
        "ce_checks": ce_checks,
        "epoch1_state": epoch1_state,
        "batch_size": config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "check_every": config.check_every,
        "check_batches": config.check_batches,
        "ce_check": config.ce_check,
        "check_seed": check_seed,
        "config": asdict(config),
    }
    return TrainingRun(
        model=model, init_model=init_model, status=status, records=records, metrics=metrics
    )
