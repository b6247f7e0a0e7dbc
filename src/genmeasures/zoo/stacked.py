"""The stacked state of a vmapped batch of models: parameters, optimizer state, forward passes.

The parameters of N models of one structure are stacked along a leading member dimension
(``torch.func.stack_module_state``); one vmapped forward pass (``torch.func.vmap`` of
``torch.func.functional_call``) gives every member's logits, and one backward pass of the sum of
the members' losses gives every member's gradient with respect to its own slice (the members are
independent, so the sum separates). A plain MLP (:func:`plain_mlp_layers`) skips
``functional_call`` and runs as a chain of batched matmuls (``torch.baddbmm``), the same
computation without its per-call overhead. The optimizer update is the table's
(:mod:`genmeasures.zoo.optimizers`), applied to the stacked tensors. The loss checks of the
members (:meth:`ParameterStack.estimate_ce`) are those of
:func:`genmeasures.zoo.recording.estimate_ce`, vectorized over members.

:func:`genmeasures.zoo.batched.train_batched` drives a :class:`ParameterStack`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from genmeasures.zoo.optimizers import ParamState, get_optimizer
from genmeasures.zoo.train import learning_rate

if TYPE_CHECKING:
    from genmeasures.zoo.train import TrainingConfig

__all__ = ["ParameterStack", "plain_mlp_layers"]

#: Rows (members × examples) per forward pass of a loss check: small enough for the activations
#: to stay in cache (larger passes measured slower on a 2-core CPU, not faster).
_CHECK_ROWS = 1 << 13

#: Draws the loss-check indices of the members at the given positions, ``(K, batch)`` each.
DrawChecks = Callable[[list[int]], list[torch.Tensor]]


def _per_member(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """One value per member, in ``like``'s dtype, shaped to broadcast over ``like``."""
    shape = (-1,) + (1,) * (like.dim() - 1)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


#: One layer of a plain MLP: ("linear", weight name, bias name or None), ("relu",) or
#: ("flatten", start_dim, end_dim).
_Layer = tuple[Any, ...]


def plain_mlp_layers(model: nn.Module) -> list[_Layer] | None:
    """The layers of ``model`` if it is a plain MLP that batched matmuls can run directly.

    A plain MLP is an ``nn.Sequential`` of ``Linear``, ``ReLU``, ``Flatten``, ``Identity`` and
    ``p = 0`` dropout modules (exact types, no hooks): its forward pass needs no
    ``functional_call``, whose per-call overhead is a large part of a small model's step.

    Returns:
        The layers in order (identities and ``p = 0`` dropouts left out), or None.
    """
    if type(model) is not nn.Sequential or model._forward_hooks or model._forward_pre_hooks:
        return None
    layers: list[_Layer] = []
    for name, module in model.named_children():
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        kind = type(module)
        if kind is nn.Linear:
            bias = f"{name}.bias" if module.bias is not None else None
            layers.append(("linear", f"{name}.weight", bias))
        elif kind is nn.ReLU:
            layers.append(("relu",))
        elif kind is nn.Flatten:
            layers.append(("flatten", module.start_dim, module.end_dim))
        elif not (kind is nn.Identity or (kind is nn.Dropout and module.p == 0)):
            return None
    return layers


def _stacked_dim(dim: int) -> int:
    """A per-member dimension index as an index into the stacked tensor."""
    return dim + 1 if dim >= 0 else dim


def _own(grads: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradients in their parameters' layouts, sharing no memory: safe to update in place."""
    owned, seen = {}, set()
    for name, grad in grads.items():
        param = like[name]
        if grad.stride() != param.stride() or grad.untyped_storage().data_ptr() in seen:
            grad = torch.empty_like(param).copy_(grad)
        seen.add(grad.untyped_storage().data_ptr())
        owned[name] = grad
    return owned


class ParameterStack:
    """The stacked state of the members still training, and their vectorized optimizer.

    ``theta`` holds the trainable parameters, ``fixed`` the frozen parameters and buffers, both
    with the members along dimension 0; ``state`` holds each parameter's optimizer tensors;
    ``configs`` the members' configurations, in stack order. The update is the optimizer
    table's (:meth:`genmeasures.zoo.optimizers.Optimizer.update`), after decoupled weight decay
    and the coupled L2 penalty, with each member's learning rate and penalty coefficients as a
    tensor broadcast over its slice.

    Args:
        models: The members' modules (same structure), in stack order.
        configs: Their configurations; they share the optimizer.
        template: A copy of a member on the meta device, to call with stacked parameters.
    """

    def __init__(
        self, models: list[nn.Module], configs: list[TrainingConfig], template: nn.Module
    ) -> None:
        params, buffers = stack_module_state(models)
        trainable = {name for name, p in models[0].named_parameters() if p.requires_grad}
        # Leaves of the backward pass; updated in place without gradient tracking.
        self.theta = {k: v.detach().requires_grad_() for k, v in params.items() if k in trainable}
        self.fixed = {k: v.detach() for k, v in params.items() if k not in trainable}
        self.fixed |= {k: v.detach() for k, v in buffers.items()}
        self.device = next(iter(self.theta.values())).device
        self.configs = configs
        self.optimizer = get_optimizer(configs[0].optimizer)
        self.state: dict[str, ParamState] = {}
        self.template = template.train()  # switched to eval mode only during loss checks
        self.order: torch.Tensor | None = None
        self._coefficients_at: int | None = None
        self._milestones = {t for config in configs for t in config.lr_milestones}
        self._layers = plain_mlp_layers(template)
        self._vmapped = vmap(self._logits)
        self._vmapped_shared = vmap(self._logits, in_dims=(0, 0, None))

    def __len__(self) -> int:
        return len(self.configs)

    def _logits(
        self, theta: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        return functional_call(self.template, (theta, fixed), (x,))

    def _forward(
        self,
        theta: dict[str, torch.Tensor],
        fixed: dict[str, torch.Tensor],
        x: torch.Tensor,
        shared: bool = False,
    ) -> torch.Tensor:
        """Every member's logits: ``x`` is one batch per member, or one for all (``shared``)."""
        if self._layers is None:
            return (self._vmapped_shared if shared else self._vmapped)(theta, fixed, x)
        h = x.expand(len(next(iter(theta.values()))), *x.shape) if shared else x
        for layer in self._layers:
            if layer[0] == "linear":
                weight = theta.get(layer[1], fixed.get(layer[1]))
                shape = h.shape
                rows = h.reshape(shape[0], -1, shape[-1])
                if layer[2] is None:
                    out = torch.bmm(rows, weight.transpose(1, 2))
                else:
                    bias = theta.get(layer[2], fixed.get(layer[2]))
                    out = torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
                h = out.view(*shape[:-1], out.shape[-1])
            elif layer[0] == "relu":
                h = h.relu()
            else:
                h = h.flatten(_stacked_dim(layer[1]), _stacked_dim(layer[2]))
        return h

    def _index(self, positions: list[int]) -> torch.Tensor:
        return torch.tensor(positions, dtype=torch.long, device=self.device)

    def keep(self, positions: list[int]) -> None:
        """Re-stack parameters, optimizer states and data orders of the members at ``positions``."""
        if len(positions) == len(self.configs):
            return
        index = self._index(positions)
        with torch.no_grad():
            self.theta = {k: v[index].requires_grad_() for k, v in self.theta.items()}
        self.fixed = {k: v[index] for k, v in self.fixed.items()}
        self.state = {
            name: {k: v[index] for k, v in tensors.items()} for name, tensors in self.state.items()
        }
        if self.order is not None:
            self.order = self.order[index]
        self.configs = [self.configs[p] for p in positions]
        self._coefficients_at = None

    def gradients(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-member gradients of the mean training cross-entropy, and the losses.

        Args:
            x: One minibatch per member, ``(members, b, *input_shape)``.
            y: Their labels, ``(members, b)``.

        Returns:
            The gradients, stacked as ``theta``, and the ``(members,)`` minibatch losses.
        """
        logits = self._forward(self.theta, self.fixed, x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(y.shape).mean(dim=1)
        names = list(self.theta)
        # The members are independent: the gradient of the sum is each member's own gradient.
        leaves = [self.theta[k] for k in names]
        grads = dict(zip(names, torch.autograd.grad(losses.sum(), leaves), strict=True))
        self._adopt_layouts(grads)
        return grads, losses.detach()

    def _adopt_layouts(self, grads: dict[str, torch.Tensor]) -> None:
        """Store each parameter (and its optimizer state) in the memory layout of its gradient.

        The weight gradients of a batched matmul come out transposed; elementwise updates that
        mix layouts are several times slower than same-layout ones, and a transposing copy of
        every gradient at every step costs as much. The values do not change; checked at every
        step, acted on once (at the first step, and after a re-stack that changes a layout).
        """
        for name, grad in grads.items():
            param = self.theta[name]
            if grad.stride() == param.stride():
                continue
            target = torch.empty_like(grad)  # the gradient's strides if it is dense
            if target.stride() != grad.stride():
                continue
            with torch.no_grad():
                self.theta[name] = target.copy_(param).requires_grad_()
            tensors = self.state.get(name, {})
            for kind, tensor in tensors.items():
                tensors[kind] = torch.empty_like(grad).copy_(tensor)

    def evaluator(self, positions: list[int]) -> Callable[[torch.Tensor, bool], torch.Tensor]:
        """Eval-mode logits of the members at ``positions``, without gradients.

        Returns:
            A function of ``(x, shared)``: ``x`` is one batch per member (``shared=False``,
            shape ``(members, n, ...)``) or one batch for all (``shared=True``, ``(n, ...)``).
        """
        theta, fixed = self.theta, self.fixed
        if len(positions) != len(self.configs):
            index = self._index(positions)
            theta = {k: v[index] for k, v in theta.items()}
            fixed = {k: v[index] for k, v in fixed.items()}

        def logits(x: torch.Tensor, shared: bool) -> torch.Tensor:
            self.template.eval()
            try:
                with torch.no_grad():
                    return self._forward(theta, fixed, x, shared)
            finally:
                self.template.train()

        return logits

    def _coefficients(self, step: int) -> None:
        """Per-member learning rate and penalties of the update after ``step`` updates."""
        if self._coefficients_at is not None and step not in self._milestones:
            return
        self._coefficients_at = step
        configs = self.configs
        lrs = [learning_rate(config, step) for config in configs]
        self.lr64 = torch.tensor(lrs, dtype=torch.float64, device=self.device)
        self.lr = {k: _per_member(lrs, v) for k, v in self.theta.items()}
        self.l2 = None
        if any(config.l2 for config in configs):
            l2 = [config.l2 for config in configs]
            self.l2 = {k: _per_member(l2, v) for k, v in self.theta.items()}
        self.decay = None
        if any(config.weight_decay for config in configs):
            # 1 − η_t·λ in double precision, as the sequential trainer's Python float.
            factors = [1 - lr * c.weight_decay for lr, c in zip(lrs, configs, strict=True)]
            self.decay = {k: _per_member(factors, v) for k, v in self.theta.items()}

    def update(self, grads: dict[str, torch.Tensor], step: int) -> None:
        """One optimizer update of every member; ``step`` updates were completed before it."""
        self._coefficients(step)
        prepared = self.optimizer.prepare(step, self.lr64)
        owned = _own(grads, self.theta)
        with torch.no_grad():
            for name, param in self.theta.items():
                if self.decay is not None:  # decoupled decay, before the update
                    param.mul_(self.decay[name])
                grad = owned[name]
                if self.l2 is not None:  # coupled: the optimizer's weight_decay argument
                    grad.addcmul_(self.l2[name], param)
                state = self.state.setdefault(name, {})
                self.optimizer.update(state, param, grad, self.lr[name], prepared)

    def write_back(self, position: int, model: nn.Module) -> None:
        """Copy the trained parameters of the member at ``position`` into its own module."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.theta:
                    param.copy_(self.theta[name][position])

    def example_losses(
        self, positions: list[int], inputs: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Eval-mode cross-entropy of every training example, ``(members, m)``, in float64."""
        parts = []
        logits_of = self.evaluator(positions)
        per_pass = max(1, _CHECK_ROWS // len(positions))
        for lo in range(0, len(labels), per_pass):
            logits = logits_of(inputs[lo : lo + per_pass], True)
            target = labels[lo : lo + per_pass].expand(len(positions), -1)
            ce = F.cross_entropy(logits.double().flatten(0, 1), target.flatten(), reduction="none")
            parts.append(ce.view(len(positions), -1))
        return torch.cat(parts, dim=1)

    def estimate_ce(
        self,
        positions: list[int],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        config: TrainingConfig,
        draw: DrawChecks,
    ) -> list[float]:
        """One loss check ĉ_t of each member at ``positions``, as a single model's estimate.

        The values are those of :func:`genmeasures.zoo.recording.estimate_ce`, up to rounding.

        Args:
            positions: Stack positions of the members to check.
            inputs: The training inputs, on the stack's device.
            labels: The training labels, on the stack's device.
            config: Gives the settings the members share: ``ce_check`` and K.
            draw: The members' check indices (from their own generators); not called for
                ``ce_check="full"``.

        Returns:
            One float per position.
        """
        m = len(labels)
        if config.ce_check == "full":
            return (self.example_losses(positions, inputs, labels).sum(dim=1) / m).tolist()
        index = torch.stack(draw(positions)).to(self.device)  # (members, K, batch)
        if m <= index[0].numel():
            # More draws than examples: the eval-mode loss of an example does not depend on its
            # minibatch (no batch statistics, no dropout), so evaluate each example once.
            losses = self.example_losses(positions, inputs, labels)
            values = losses.gather(1, index.flatten(1)).view(index.shape).mean(dim=2)
        else:
            parts = []
            logits_of = self.evaluator(positions)
            per_pass = max(1, _CHECK_ROWS // index[:, 0].numel())
            for lo in range(0, index.shape[1], per_pass):
                part = index[:, lo : lo + per_pass]
                logits = logits_of(inputs[part.flatten(1)], False)
                ce = F.cross_entropy(
                    logits.double().flatten(0, 1), labels[part.flatten()], reduction="none"
                )
                parts.append(ce.view(part.shape).mean(dim=2))
            values = torch.cat(parts, dim=1)
        totals = []
        for row in values.tolist():
            total = 0.0
            for value in row:  # summed in the order of the sequential trainer
                total += value
            totals.append(total / config.check_batches)
        return totals
