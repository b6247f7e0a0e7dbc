"""The optimizers of a zoo, one table: each entry builds its torch optimizer and updates a stack.

Jiang et al. 2020 (appendix C.3) train with SGD with momentum 0.9, Adam or RMSprop. Each is one
small frozen dataclass holding its fixed settings (PyTorch's defaults except SGD's momentum) and
the two ways of applying them, which must agree bit for bit:

- :meth:`Optimizer.build`: the ``torch.optim`` optimizer of a single model
  (:func:`genmeasures.zoo.train.train_to_target`);
- :meth:`Optimizer.prepare` and :meth:`Optimizer.update`: the same update written out over
  parameters stacked along a leading member dimension (:mod:`genmeasures.zoo.batched`), operation
  by operation as torch's single-tensor implementations (``torch/optim/sgd.py``, ``adam.py``,
  ``rmsprop.py``), with each member's learning rate as a tensor broadcast over its slice.

Both receive the gradient with the coupled L2 penalty (the ``weight_decay`` argument of
``torch.optim``) already added, and decoupled weight decay already applied to the parameters.
:data:`OPTIMIZER_TABLE` maps each name to its entry; ``genmeasures.zoo.train.OPTIMIZERS`` is its
tuple of names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genmeasures.errors import TrainingError

__all__ = ["OPTIMIZER_TABLE", "SGD", "Adam", "Optimizer", "RMSprop", "get_optimizer"]

#: The optimizer state of one stacked parameter: state name (as torch's) → stacked tensor.
ParamState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Optimizer:
    """One entry of the optimizer table (a subclass per optimizer).

    Attributes:
        name: The name a :class:`~genmeasures.zoo.train.TrainingConfig` gives.
    """

    name: ClassVar[str]

    def build(
        self, params: Iterable[torch.nn.Parameter], lr: float, l2: float
    ) -> torch.optim.Optimizer:
        """The torch optimizer of a single model, with these settings.

        Args:
            params: The trainable parameters.
            lr: Learning rate η.
            l2: Coefficient of the coupled L2 penalty (torch's ``weight_decay`` argument).
        """
        raise NotImplementedError

    def prepare(self, step: int, lr64: torch.Tensor) -> Any:
        """What every parameter's stacked update after ``step`` completed updates shares.

        Args:
            step: Updates completed before this one.
            lr64: The members' learning rates of this update, ``(members,)``, in float64.

        Returns:
            Passed to :meth:`update` for every parameter of this step (None by default).
        """
        return None

    def update(
        self,
        state: ParamState,
        param: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        prepared: Any,
    ) -> None:
        """One update of a stacked parameter, in place, and of its optimizer state.

        Args:
            state: This parameter's optimizer state (empty before the first update); updated.
            param: The stacked parameter, members along dimension 0; updated without autograd.
            grad: Its stacked gradient, L2 penalty included; owned (may be kept or modified).
            lr: The members' learning rates, in ``param``'s dtype, shaped to broadcast over it.
            prepared: What :meth:`prepare` returned for this step.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """``torch.optim.SGD`` with momentum (dampening 0, not Nesterov).

    The momentum buffer starts as a copy of the first gradient, then ``buf ← μ·buf + g``, and
    ``ϑ ← ϑ − η·buf``.
    """

    name: ClassVar[str] = "sgd"
    momentum: float = 0.9

    def build(
        self, params: Iterable[torch.nn.Parameter], lr: float, l2: float
    ) -> torch.optim.Optimizer:
        """``torch.optim.SGD(params, lr, momentum, weight_decay=l2)``."""
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=l2)

    def update(
        self,
        state: ParamState,
        param: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        prepared: Any,
    ) -> None:
        """The momentum update of a stacked parameter (see the class docstring)."""
        if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = grad  # the first gradient, owned: not used elsewhere
        else:
            buf = state["momentum_buffer"].mul_(self.momentum).add_(grad)
        param.addcmul_(lr, buf, value=-1)


@dataclass(frozen=True)
class Adam(Optimizer):
    """``torch.optim.Adam`` (not AMSGrad), with its bias corrections as Python floats."""

    name: ClassVar[str] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(
        self, params: Iterable[torch.nn.Parameter], lr: float, l2: float
    ) -> torch.optim.Optimizer:
        """``torch.optim.Adam(params, lr, betas, eps, weight_decay=l2)``."""
        return torch.optim.Adam(params, lr=lr, betas=self.betas, eps=self.eps, weight_decay=l2)

    def prepare(self, step: int, lr64: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The float64 step sizes η/(1 − β₁ᵗ) and √(1 − β₂ᵗ) of update ``t = step + 1``."""
        # torch's non-capturable path: the bias corrections are Python floats.
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1 ** float(step + 1)
        bias_correction2_sqrt = (1 - beta2 ** float(step + 1)) ** 0.5
        return lr64 / bias_correction1, bias_correction2_sqrt

    def update(
        self,
        state: ParamState,
        param: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        prepared: tuple[torch.Tensor, float],
    ) -> None:
        """The Adam update of a stacked parameter, as ``torch.optim.adam._single_tensor_adam``."""
        step_size64, bias_correction2_sqrt = prepared
        step_size = step_size64.to(param.dtype).view(lr.shape)
        exp_avg = _zeros(state, "exp_avg", param)
        exp_avg_sq = _zeros(state, "exp_avg_sq", param)
        exp_avg.lerp_(grad, 1 - self.betas[0])
        exp_avg_sq.mul_(self.betas[1]).addcmul_(grad, grad, value=1 - self.betas[1])
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcmul_(step_size, exp_avg / denom, value=-1)


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` without momentum, not centered."""

    name: ClassVar[str] = "rmsprop"
    alpha: float = 0.99
    eps: float = 1e-8

    def build(
        self, params: Iterable[torch.nn.Parameter], lr: float, l2: float
    ) -> torch.optim.Optimizer:
        """``torch.optim.RMSprop(params, lr, alpha, eps, weight_decay=l2)``."""
        return torch.optim.RMSprop(params, lr=lr, alpha=self.alpha, eps=self.eps, weight_decay=l2)

    def update(
        self,
        state: ParamState,
        param: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        prepared: Any,
    ) -> None:
        """The RMSprop update of a stacked parameter, as torch's single-tensor implementation."""
        square_avg = _zeros(state, "square_avg", param)
        square_avg.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
        avg = square_avg.sqrt().add_(self.eps)
        param.addcmul_(lr, grad / avg, value=-1)


def _zeros(state: ParamState, name: str, like: torch.Tensor) -> torch.Tensor:
    if name not in state:
        state[name] = torch.zeros_like(like)
    return state[name]


#: Every optimizer of a zoo, by name, in the order the docs and the CLI list them.
OPTIMIZER_TABLE: dict[str, Optimizer] = {entry.name: entry for entry in (SGD(), Adam(), RMSprop())}


def get_optimizer(name: str) -> Optimizer:
    """The table's entry for ``name``.

    Raises:
        TrainingError: for a name that is not in the table, listing the names.
    """
    try:
        return OPTIMIZER_TABLE[name]
    except (KeyError, TypeError):
        raise TrainingError(
            f"optimizer must be one of {tuple(OPTIMIZER_TABLE)}, got {name!r}"
        ) from None
