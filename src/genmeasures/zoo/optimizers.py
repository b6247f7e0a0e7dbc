"""The optimizers of a zoo, one table: each entry updates one parameter tensor in place.

Jiang et al. 2020 (appendix C.3) train with SGD with momentum 0.9, Adam or RMSprop. Each is one
small frozen dataclass holding its fixed settings (PyTorch's defaults except SGD's momentum) and
its update of one parameter, written operation by operation as torch's single-tensor
implementations (``torch/optim/sgd.py``, ``adam.py``, ``rmsprop.py``, the path ``torch.optim``
takes for CPU tensors), so that a run equals one with the ``torch.optim`` optimizer bit for bit
(``tests/zoo/test_train.py`` checks it). The training kernel (:mod:`genmeasures.zoo.batched`)
applies it to every parameter of every member, with that member's learning rate.

The gradient an update receives has the coupled L2 penalty (the ``weight_decay`` argument of
``torch.optim``) already added, and decoupled weight decay is already applied to the parameter.
:data:`OPTIMIZER_TABLE` maps each name to its entry; ``genmeasures.zoo.train.OPTIMIZERS`` is its
tuple of names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from genmeasures.errors import TrainingError

__all__ = ["OPTIMIZER_TABLE", "SGD", "Adam", "Optimizer", "RMSprop", "get_optimizer"]

#: The optimizer state of one parameter: state name (as torch's) → tensor.
ParamState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Optimizer:
    """One entry of the optimizer table (a subclass per optimizer).

    Attributes:
        name: The name a :class:`~genmeasures.zoo.train.TrainingConfig` gives.
        torch_class: The ``torch.optim`` class whose single-tensor update this one reproduces.
    """

    name: ClassVar[str]
    torch_class: ClassVar[type[torch.optim.Optimizer]]

    def torch_settings(self) -> dict[str, object]:
        """The keyword arguments of :attr:`torch_class` that give this entry's update."""
        raise NotImplementedError

    def update(
        self, state: ParamState, param: torch.Tensor, grad: torch.Tensor, lr: float, step: int
    ) -> None:
        """One update of ``param`` in place (without autograd) and of its optimizer state.

        Args:
            state: This parameter's optimizer state (empty before the first update); updated.
            param: The parameter.
            grad: Its gradient, L2 penalty included; not modified.
            lr: The learning rate of this update.
            step: Updates completed before this one.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """``torch.optim.SGD`` with momentum (dampening 0, not Nesterov).

    The momentum buffer starts as a copy of the first gradient, then ``buf ← μ·buf + g``, and
    ``ϑ ← ϑ − η·buf``.
    """

    name: ClassVar[str] = "sgd"
    torch_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.SGD
    momentum: float = 0.9

    def torch_settings(self) -> dict[str, object]:
        """``momentum``."""
        return {"momentum": self.momentum}

    def update(
        self, state: ParamState, param: torch.Tensor, grad: torch.Tensor, lr: float, step: int
    ) -> None:
        """The momentum update (see the class docstring)."""
        if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf = state["momentum_buffer"].mul_(self.momentum).add_(grad)
        param.add_(buf, alpha=-lr)


@dataclass(frozen=True)
class Adam(Optimizer):
    """``torch.optim.Adam`` (not AMSGrad), with its bias corrections as Python floats."""

    name: ClassVar[str] = "adam"
    torch_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def torch_settings(self) -> dict[str, object]:
        """``betas`` and ``eps``."""
        return {"betas": self.betas, "eps": self.eps}

    def update(
        self, state: ParamState, param: torch.Tensor, grad: torch.Tensor, lr: float, step: int
    ) -> None:
        """The Adam update of update ``t = step + 1``."""
        beta1, beta2 = self.betas
        exp_avg = _zeros(state, "exp_avg", param)
        exp_avg_sq = _zeros(state, "exp_avg_sq", param)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = float(step + 1)
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` without momentum, not centered."""

    name: ClassVar[str] = "rmsprop"
    torch_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.RMSprop
    alpha: float = 0.99
    eps: float = 1e-8

    def torch_settings(self) -> dict[str, object]:
        """``alpha`` and ``eps``."""
        return {"alpha": self.alpha, "eps": self.eps}

    def update(
        self, state: ParamState, param: torch.Tensor, grad: torch.Tensor, lr: float, step: int
    ) -> None:
        """The RMSprop update."""
        square_avg = _zeros(state, "square_avg", param)
        square_avg.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
        avg = square_avg.sqrt().add_(self.eps)
        param.addcdiv_(grad, avg, value=-lr)


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
