"""How one model is trained: :class:`TrainingConfig` and its learning-rate schedule.

The settings of Jiang et al. 2020, appendix C.3 (optimizer, learning rate and its milestones,
batch size, L2 and decoupled weight decay), the stopping rule of ``MEASURES.md`` §2.5 (target,
budget, loss checks) and the run seed. Shared by :mod:`genmeasures.zoo.train` and
:mod:`genmeasures.zoo.batched` (the training kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

from genmeasures.errors import TrainingError
from genmeasures.validation import IncreasingIntegers, Integer, OneOf, Real, Settings, setting
from genmeasures.zoo.optimizers import OPTIMIZER_TABLE

__all__ = ["CE_CHECK_MODES", "OPTIMIZERS", "TrainingConfig", "learning_rate"]

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
            streams, see :mod:`genmeasures.zoo.batched`).

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


def learning_rate(config: TrainingConfig, step: int) -> float:
    """The learning rate of the update that follows ``step`` completed updates."""
    passed = sum(1 for milestone in config.lr_milestones if step >= milestone)
    return config.lr * 0.1**passed
