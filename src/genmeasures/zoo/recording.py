"""What a training run records and when it stops, shared by the single and batched trainers.

``MEASURES.md`` §2.5 (Jiang et al. 2020, §2.1 and appendix C): the training cross-entropy ĉ_t is
estimated in eval mode at ``t = 0``, every ``check_every`` optimizer updates and at the final
update (the mean over ``check_batches`` random minibatches drawn by :func:`check_indices`, or
the exact mean with ``ce_check="full"``); a run stops at the first check at or below the target
(``done``), at a non-finite loss or check (``diverged``) or when its budget is spent
(``not-converged``). :class:`RunRecorder` keeps one run's streams and records (R1 ``ce_checks``,
R2 ``epoch1_state``, R3 metadata) and applies that rule;
:meth:`RunRecorder.finish` assembles the :class:`TrainingRun` with its final exact metrics.
:func:`genmeasures.zoo.batched.train_batched` (the training kernel) drives one per member of a
unit.

Seeding: the data order and the loss-check draws come from two independent streams derived from
``TrainingConfig.seed`` (:func:`training_streams`), so recording never changes training.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.seeding import derive_seed
from genmeasures.zoo.states import ModelState

if TYPE_CHECKING:
    from genmeasures.zoo.training_config import TrainingConfig

__all__ = [
    "CHECK_STREAM",
    "ORDER_STREAM",
    "TORCH_STREAM",
    "CheckCallback",
    "RunRecorder",
    "TrainingRun",
    "check_indices",
    "check_outcome",
    "estimate_ce",
    "evaluate",
    "finish_run",
    "model_device",
    "training_streams",
]

#: Purposes of the random streams derived from the run seed.
ORDER_STREAM, CHECK_STREAM, TORCH_STREAM = (
    "training/data-order",
    "training/loss-check",
    "training/torch",
)

#: Called at every loss check with (optimizer updates so far, estimated training cross-entropy).
CheckCallback = Callable[[int, float], None]


@dataclass
class TrainingRun:
    """The outcome of :func:`~genmeasures.zoo.train.train_to_target` (or of a batch member).

    Attributes:
        model: The trained model, in eval mode.
        init_model: The model before the first optimizer update, in eval mode.
        status: ``done`` (target reached), ``not-converged`` (budget spent) or ``diverged``
            (non-finite training loss or loss check).
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
    status: ModelState
    records: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


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


def check_outcome(ce: float, target: float) -> ModelState | None:
    """The stopping rule at one loss check: ``diverged``, ``done`` or None (go on training).

    Args:
        ce: The estimated training cross-entropy ĉ_t.
        target: The run's target cross-entropy.

    Returns:
        ``diverged`` for a non-finite ĉ_t, ``done`` for ĉ_t ≤ target, else None.
    """
    if not math.isfinite(ce):
        return ModelState.DIVERGED
    return ModelState.DONE if ce <= target else None


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
    device = model_device(model)
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


def estimate_ce(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainingConfig,
    check_gen: torch.Generator,
) -> float:
    """One loss check ĉ_t of one model, in eval mode (train mode restored).

    Args:
        model: The network being trained.
        inputs: The training inputs, on the model's device.
        labels: The training labels, on the model's device.
        config: Gives ``ce_check``, the batch size and K.
        check_gen: The run's loss-check generator (unused for ``ce_check="full"``).

    Returns:
        The exact mean training cross-entropy (``"full"``) or the mean over K minibatches of
        their mean cross-entropy, each computed in float64 and summed in order.
    """
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


@dataclass
class RunRecorder:
    """One run's random streams and records as training goes, and its stopping rule.

    Attributes:
        config: The run's configuration.
        init_model: The model before the first update, in eval mode.
        order_gen: Generator of the data order (one ``randperm`` per epoch).
        check_gen: Generator of the loss-check draws.
        check_seed: Seed of ``check_gen`` (record R3).
        start: ``time.perf_counter()`` when training started; ``seconds`` is measured from it.
        on_check: Called after every recorded check with ``(t, ĉ_t)``.
        ce_checks: Record R1 so far.
        epoch1_state: Record R2, once the first epoch has ended.
    """

    config: TrainingConfig
    init_model: nn.Module
    order_gen: torch.Generator
    check_gen: torch.Generator
    check_seed: int
    start: float
    on_check: CheckCallback | None = None
    ce_checks: list[tuple[int, float]] = field(default_factory=list)
    epoch1_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def begin(
        cls,
        model: nn.Module,
        config: TrainingConfig,
        *,
        start: float | None = None,
        on_check: CheckCallback | None = None,
    ) -> RunRecorder:
        """Start recording the run of ``model`` (copied as the initial model) under ``config``.

        Args:
            model: The freshly initialized model, before any update.
            config: The run's configuration; its seed gives the streams.
            start: Start time (``time.perf_counter()``); now when None.
            on_check: Called after every recorded check with ``(t, ĉ_t)``.
        """
        order_gen, check_gen, check_seed = training_streams(config)
        return cls(
            config=config,
            init_model=copy.deepcopy(model).eval(),
            order_gen=order_gen,
            check_gen=check_gen,
            check_seed=check_seed,
            start=time.perf_counter() if start is None else start,
            on_check=on_check,
        )

    def record_check(self, step: int, ce: float) -> ModelState | None:
        """Record the loss check ĉ_t at ``t = step``; its outcome (:func:`check_outcome`)."""
        self.ce_checks.append((step, ce))
        if self.on_check is not None:
            self.on_check(step, ce)
        return check_outcome(ce, self.config.target_ce)

    def checked_at(self, step: int) -> bool:
        """Whether the last recorded check is at ``t = step`` (else a final check is due)."""
        return bool(self.ce_checks) and self.ce_checks[-1][0] == step

    def record_epoch1(self, model: nn.Module) -> None:
        """Record R2: a copy of the model's parameters and buffers after the first epoch."""
        self.epoch1_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish(self, model: nn.Module, dataset: Dataset, status: ModelState | None) -> TrainingRun:
        """The finished run; call after the check at the final update.

        Args:
            model: The trained model (put in eval mode).
            dataset: The data it was trained on.
            status: ``done`` or ``diverged`` as the rule decided, None when the budget was
                spent (``not-converged``).
        """
        return finish_run(
            model,
            self.init_model,
            dataset,
            self.config,
            status=ModelState.NOT_CONVERGED if status is None else status,
            ce_checks=self.ce_checks,
            epoch1_state=self.epoch1_state,
            check_seed=self.check_seed,
            start=self.start,
        )


def finish_run(
    model: nn.Module,
    init_model: nn.Module,
    dataset: Dataset,
    config: TrainingConfig,
    *,
    status: ModelState,
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
        status: ``done``, ``not-converged`` or ``diverged``.
        ce_checks: Record R1, ending with the check at the final update.
        epoch1_state: Record R2, or None.
        check_seed: Seed of the loss-check generator (record R3).
        start: ``time.perf_counter()`` when training started; ``seconds`` is measured from it.

    Returns:
        The run.
    """
    device = model_device(model)
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
        model=model,
        init_model=init_model,
        status=ModelState(status),
        records=records,
        metrics=metrics,
    )
