"""Train one model until its training cross-entropy reaches a target, with training records.

The stopping rule and the records follow ``MEASURES.md`` §2.5 (Jiang et al. 2020, §2.1 and
appendix C): the training cross-entropy is estimated in eval mode at ``t = 0``, every
``check_every`` optimizer updates and at the final update (by default as the mean over
``check_batches`` random minibatches, as the paper does), and training stops at the first check at
or below the target. One model is a unit of one of the training kernel
(:func:`genmeasures.zoo.batched.train_batched`), so it trains to the same bits as it would in a
zoo's unit: the kernel's docstring states the guarantee, the seeding and what they assume (among
others: training runs with one torch thread). The checks, the rule and the records are those of
:mod:`genmeasures.zoo.recording`; the optimizers are those of the table in
:mod:`genmeasures.zoo.optimizers`.
"""

from __future__ import annotations

from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.zoo.batched import train_batched
from genmeasures.zoo.recording import (
    CHECK_STREAM,
    ORDER_STREAM,
    TORCH_STREAM,
    CheckCallback,
    TrainingRun,
    check_indices,
    evaluate,
    finish_run,
    training_streams,
)
from genmeasures.zoo.training_config import (
    CE_CHECK_MODES,
    OPTIMIZERS,
    TrainingConfig,
    learning_rate,
)

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


def _check_inputs(model: nn.Module, dataset: Dataset, config: TrainingConfig) -> None:
    if not isinstance(model, nn.Module):
        raise TrainingError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise TrainingError(
            f"dataset must be a genmeasures.data.Dataset, got {type(dataset).__name__}"
        )
    if not isinstance(config, TrainingConfig):
        raise TrainingError(f"config must be a TrainingConfig or None, got {type(config).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("model has no trainable parameters")


def train_to_target(
    model: nn.Module,
    dataset: Dataset,
    config: TrainingConfig | None = None,
    *,
    on_check: CheckCallback | None = None,
) -> TrainingRun:
    """Train ``model`` on ``dataset.train`` until the training cross-entropy reaches the target.

    A step is one optimizer update; ``t`` counts completed steps. The loss is checked at
    ``t = 0``, every ``config.check_every`` steps and at the final step; training stops at the
    first check ≤ ``config.target_ce`` (``"done"``), at a non-finite loss or check
    (``"diverged"``) or after ``config.max_epochs`` passes (``"not-converged"``). Deterministic
    for a given ``config.seed`` and initial model, and the same bits as the model would get in
    any unit of :func:`~genmeasures.zoo.batched.train_batched`; trains with one torch thread;
    the caller's global RNG state and thread setting are left unchanged. The data are moved to
    the model's device.

    Args:
        model: A freshly initialized network; trained in place and returned as ``run.model``.
        dataset: The data; its ``train`` split is fitted, its ``test`` split gives the gap.
        config: Optimizer, batch size, target and budget (defaults of :class:`TrainingConfig`).
        on_check: Called after every loss check with ``(t, ĉ_t)`` (model back in train mode),
            e.g. to drive a progress bar.

    Returns:
        The trained model, its initial copy, the status, the records and the final metrics.

    Raises:
        TrainingError: for a model without trainable parameters, an empty training split or
            arguments of the wrong type.
    """
    config = TrainingConfig() if config is None else config
    _check_inputs(model, dataset, config)
    callback = None if on_check is None else (lambda _index, t, ce: on_check(t, ce))
    (run,) = train_batched([model], dataset, [config], on_check=callback)
    return run
