"""Many small models trained to a cross-entropy target at once, with ``torch.func.vmap``.

A model zoo (Jiang et al. 2020, §2 and appendix C) holds many small networks that differ only in
their hyperparameters; on a CPU each one alone is too small to keep the cores busy. Here the
parameters of N models of the same structure are stacked along a leading member dimension
(``torch.func.stack_module_state``); at each step one vmapped forward pass
(``torch.func.vmap`` of ``torch.func.functional_call``) gives every member's logits, and one
backward pass of the sum of the members' losses gives every member's gradient with respect to
its own slice of the stacked parameters (the members are independent, so the sum separates).
On a 2-core CPU this measured faster than ``vmap(grad(loss))``, which also decomposes the
cross-entropy in Python at every step. A plain MLP (a ``Sequential`` of ``Linear``, ``ReLU``,
``Flatten`` and identity-like modules, the zoo's usual model) skips ``functional_call`` and
runs as a chain of batched matmuls (``torch.baddbmm``), the same computation without its
per-call overhead. The optimizers are written out over the stacked tensors.

Each member gets exactly the run that :func:`genmeasures.zoo.train.train_to_target` would give
it alone, up to floating-point rounding: its own initialization, learning rate (and milestones),
L2 penalty, decoupled weight decay, target, budget and seed; the same data order and loss-check
draws (the streams of :func:`~genmeasures.zoo.train.training_streams`); the same loss checks at
``t = 0``, every C updates and at the final update (``MEASURES.md`` §2.5); the same stopping and
divergence rules; the same records and metrics. The third stream of the sequential trainer, the
torch RNG of dropout, is never needed: a model with active dropout cannot be batched
(:func:`batch_incompatibility`), and nothing else here draws from torch's global RNG.

A member that stops (``done``, ``not-converged`` or ``diverged``) leaves the stack at once: the
remaining members' parameters and optimizer states are re-stacked, so it costs no further
compute, and ``on_finish`` receives its run while the others go on training.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from genmeasures.data import Dataset
from genmeasures.zoo.train import (
    TrainingConfig,
    TrainingError,
    TrainingRun,
    _model_device,
    _outcome,
    check_indices,
    finish_run,
    learning_rate,
    training_streams,
)

__all__ = ["BatchedCheckCallback", "FinishCallback", "batch_incompatibility", "train_batched"]

#: Called when member ``index`` stops, with its finished run.
FinishCallback = Callable[[int, TrainingRun], None]

#: Called at every loss check with (member index, optimizer updates so far, estimated CE).
BatchedCheckCallback = Callable[[int, int, float], None]

#: Settings that every member of a batch must share: they fix the shape of each step.
SHARED_FIELDS = ("batch_size", "optimizer", "ce_check", "check_every", "check_batches")

#: Fixed optimizer settings, as in :func:`genmeasures.zoo.train._make_optimizer` (torch defaults).
_SGD_MOMENTUM = 0.9
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_RMSPROP_ALPHA = 0.99
_RMSPROP_EPS = 1e-8

#: Rows (members × examples) per forward pass of a loss check: small enough for the activations
#: to stay in cache (larger passes measured slower on a 2-core CPU, not faster).
_CHECK_ROWS = 1 << 13


def batch_incompatibility(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained in a vmapped batch, or None if it can.

    A model can be batched when its training step is a pure function of its parameters and the
    minibatch: no module updates buffers in train mode (BatchNorm running statistics, instance
    norm with running statistics) and none draws random numbers (dropout with ``p > 0``, RReLU),
    since a vmapped batch cannot reproduce the masks that the sequential run draws from torch's
    global RNG. Dropout with ``p = 0`` is the identity and is fine. The model also needs
    trainable parameters.

    Args:
        model: The network.

    Returns:
        None, or a sentence naming the offending module and the reason.
    """
    if not isinstance(model, nn.Module):
        return f"it is not a torch.nn.Module but a {type(model).__name__}"
    for name, module in model.named_modules():
        where = f"module {name!r}" if name else "the model"
        kind = type(module).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return (
                f"{where} is a BatchNorm ({kind}): in train mode it normalizes with batch "
                f"statistics and updates running-statistics buffers"
            )
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (
            module.track_running_stats
        ):
            return f"{where} ({kind}) updates running-statistics buffers in train mode"
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return (
                f"{where} is an active dropout ({kind}, p={module.p}): its masks come from "
                f"torch's global RNG and cannot reproduce those of the sequential run"
            )
        if isinstance(module, nn.RReLU):
            return f"{where} is an RReLU: it draws random slopes in train mode"
    if not any(p.requires_grad for p in model.parameters()):
        return "it has no trainable parameters"
    return None


def _signature(model: nn.Module) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """What two models must share to be stacked: module types, parameters, buffers."""
    return [
        ("modules", [(name, type(module).__name__) for name, module in model.named_modules()]),
        (
            "parameters",
            [
                (name, tuple(p.shape), p.dtype, p.device, p.requires_grad)
                for name, p in model.named_parameters()
            ],
        ),
        (
            "buffers",
            [(name, tuple(b.shape), b.dtype, b.device) for name, b in model.named_buffers()],
        ),
    ]


def _structure_difference(reference: nn.Module, model: nn.Module) -> str | None:
    for (kind, expected), (_, received) in zip(
        _signature(reference), _signature(model), strict=True
    ):
        for want, got in zip(expected, received, strict=False):
            if want != got:
                return f"{kind} differ: expected {want} (as model 0), received {got}"
        if len(expected) != len(received):
            return f"{kind} differ: expected {len(expected)} (as model 0), received {len(received)}"
    return None


def _validate(models: list[nn.Module], dataset: Dataset, configs: list[TrainingConfig]) -> None:
    if not isinstance(dataset, Dataset):
        raise TrainingError(
            f"dataset must be a genmeasures.data.Dataset, got {type(dataset).__name__}"
        )
    if not models:
        raise TrainingError("train_batched needs at least one model, received 0")
    if len(configs) != len(models):
        raise TrainingError(
            f"train_batched needs one config per model: expected {len(models)} configs, "
            f"received {len(configs)}"
        )
    inputs, labels = dataset.train
    if len(labels) == 0 or len(inputs) != len(labels):
        raise TrainingError(
            f"dataset {dataset.name!r}: the train split needs at least one example and as many "
            f"labels as inputs, got {len(inputs)} inputs and {len(labels)} labels"
        )
    seen: dict[int, int] = {}
    for index, (model, config) in enumerate(zip(models, configs, strict=True)):
        if not isinstance(config, TrainingConfig):
            raise TrainingError(
                f"configs[{index}] must be a TrainingConfig, got {type(config).__name__}"
            )
        reason = batch_incompatibility(model)
        if reason is not None:
            raise TrainingError(
                f"model {index} cannot be trained in a vmapped batch: {reason}; train it with "
                f"train_to_target instead"
            )
        if id(model) in seen:
            raise TrainingError(
                f"model {index} is the same object as model {seen[id(model)]}: each member is "
                f"trained in place and needs its own module"
            )
        seen[id(model)] = index
        difference = _structure_difference(models[0], model)
        if difference is not None:
            raise TrainingError(
                f"model {index} does not have the structure of model 0 (all models of a batch "
                f"must have the same module types and parameter and buffer names, shapes, "
                f"dtypes and devices): {difference}"
            )
        for name in SHARED_FIELDS:
            want, got = getattr(configs[0], name), getattr(config, name)
            if got != want:
                raise TrainingError(
                    f"configs[{index}].{name}: all members of a batch must share {name}; "
                    f"expected {want!r} (as configs[0]), received {got!r}"
                )


@dataclass
class _Member:
    """Bookkeeping of one member: its streams and records."""

    index: int
    config: TrainingConfig
    order_gen: torch.Generator
    check_gen: torch.Generator
    check_seed: int
    init_model: nn.Module
    ce_checks: list[tuple[int, float]] = field(default_factory=list)
    epoch1_state: dict[str, torch.Tensor] | None = None


def _per_member(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """One value per member, in ``like``'s dtype, shaped to broadcast over ``like``."""
    shape = (-1,) + (1,) * (like.dim() - 1)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


#: One layer of a plain MLP: ("linear", weight name, bias name or None), ("relu",) or
#: ("flatten", start_dim, end_dim).
_Layer = tuple[Any, ...]


def _plain_mlp_layers(model: nn.Module) -> list[_Layer] | None:
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


class _Stack:
    """The stacked state of the members still training, and their vectorized optimizer.

    ``theta`` holds the trainable parameters, ``fixed`` the frozen parameters and buffers, both
    with the members along dimension 0; ``state`` holds the optimizer's per-parameter tensors.
    The updates are those of torch's single-tensor implementations (``torch/optim/sgd.py``,
    ``adam.py``, ``rmsprop.py``), operation by operation, with each member's learning rate and
    penalty coefficients as a tensor broadcast over its slice.
    """

    def __init__(
        self, models: list[nn.Module], members: list[_Member], template: nn.Module
    ) -> None:
        params, buffers = stack_module_state(models)
        trainable = {name for name, p in models[0].named_parameters() if p.requires_grad}
        # Leaves of the backward pass; updated in place without gradient tracking.
        self.theta = {k: v.detach().requires_grad_() for k, v in params.items() if k in trainable}
        self.fixed = {k: v.detach() for k, v in params.items() if k not in trainable}
        self.fixed |= {k: v.detach() for k, v in buffers.items()}
        self.device = next(iter(self.theta.values())).device
        self.members = members
        self.optimizer = members[0].config.optimizer
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.template = template.train()  # switched to eval mode only during loss checks
        self.order: torch.Tensor | None = None
        self._coefficients_at: int | None = None
        self._milestones = {t for member in members for t in member.config.lr_milestones}
        self._layers = _plain_mlp_layers(template)
        self._vmapped = vmap(self._logits)
        self._vmapped_shared = vmap(self._logits, in_dims=(0, 0, None))

    def __len__(self) -> int:
        return len(self.members)

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
        if len(positions) == len(self.members):
            return
        index = self._index(positions)
        with torch.no_grad():
            self.theta = {k: v[index].requires_grad_() for k, v in self.theta.items()}
        self.fixed = {k: v[index] for k, v in self.fixed.items()}
        self.state = {
            kind: {k: v[index] for k, v in tensors.items()} for kind, tensors in self.state.items()
        }
        if self.order is not None:
            self.order = self.order[index]
        self.members = [self.members[p] for p in positions]
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
            for tensors in self.state.values():
                if name in tensors:
                    tensors[name] = torch.empty_like(grad).copy_(tensors[name])

    def evaluator(self, positions: list[int]) -> Callable[[torch.Tensor, bool], torch.Tensor]:
        """Eval-mode logits of the members at ``positions``, without gradients.

        Returns:
            A function of ``(x, shared)``: ``x`` is one batch per member (``shared=False``,
            shape ``(members, n, ...)``) or one batch for all (``shared=True``, ``(n, ...)``).
        """
        theta, fixed = self.theta, self.fixed
        if len(positions) != len(self.members):
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
        configs = [member.config for member in self.members]
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
        if self.optimizer == "adam":
            # Bias corrections of update step + 1, as Python floats (torch's non-capturable path).
            beta1, beta2 = _ADAM_BETAS
            bias_correction1 = 1 - beta1 ** float(step + 1)
            self._bias_correction2_sqrt = (1 - beta2 ** float(step + 1)) ** 0.5
            step_size = self.lr64 / bias_correction1
            self._step_size = {
                k: step_size.to(v.dtype).view(self.lr[k].shape) for k, v in self.theta.items()
            }
        owned = _own(grads, self.theta)
        with torch.no_grad():
            for name, param in self.theta.items():
                if self.decay is not None:  # decoupled decay, before the update
                    param.mul_(self.decay[name])
                grad = owned[name]
                if self.l2 is not None:  # coupled: the optimizer's weight_decay argument
                    grad.addcmul_(self.l2[name], param)
                if self.optimizer == "sgd":
                    self._sgd(name, param, grad)
                elif self.optimizer == "adam":
                    self._adam(name, param, grad)
                else:
                    self._rmsprop(name, param, grad)

    def _zeros(self, kind: str, name: str, like: torch.Tensor) -> torch.Tensor:
        tensors = self.state.setdefault(kind, {})
        if name not in tensors:
            tensors[name] = torch.zeros_like(like)
        return tensors[name]

    def _sgd(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        # torch.optim.SGD(momentum=0.9, dampening=0, nesterov=False): the buffer starts as a copy
        # of the first gradient; param ← param − η·buf.
        momentum = self.state.setdefault("momentum_buffer", {})
        if name not in momentum:
            buf = momentum[name] = grad  # a copy of the first gradient (not used elsewhere)
        else:
            buf = momentum[name].mul_(_SGD_MOMENTUM).add_(grad)
        param.addcmul_(self.lr[name], buf, value=-1)

    def _adam(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        # torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8, amsgrad=False).
        exp_avg = self._zeros("exp_avg", name, param)
        exp_avg_sq = self._zeros("exp_avg_sq", name, param)
        exp_avg.lerp_(grad, 1 - _ADAM_BETAS[0])
        exp_avg_sq.mul_(_ADAM_BETAS[1]).addcmul_(grad, grad, value=1 - _ADAM_BETAS[1])
        denom = (exp_avg_sq.sqrt() / self._bias_correction2_sqrt).add_(_ADAM_EPS)
        param.addcmul_(self._step_size[name], exp_avg / denom, value=-1)

    def _rmsprop(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        # torch.optim.RMSprop(alpha=0.99, eps=1e-8, momentum=0, centered=False).
        square_avg = self._zeros("square_avg", name, param)
        square_avg.mul_(_RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - _RMSPROP_ALPHA)
        avg = square_avg.sqrt().add_(_RMSPROP_EPS)
        param.addcmul_(self.lr[name], grad / avg, value=-1)

    def write_back(self, position: int, model: nn.Module) -> None:
        """Copy the trained parameters of the member at ``position`` into its own module."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.theta:
                    param.copy_(self.theta[name][position])


def train_batched(
    models: Sequence[nn.Module],
    dataset: Dataset,
    configs: Sequence[TrainingConfig],
    *,
    on_finish: FinishCallback | None = None,
    on_check: BatchedCheckCallback | None = None,
) -> list[TrainingRun]:
    """Train several models of one structure at once, each as :func:`train_to_target` would.

    The models are stacked and trained by one vmapped step per update (Jiang et al. 2020,
    appendix C: SGD with momentum 0.9, Adam or RMSprop, trained until the estimated training
    cross-entropy reaches the target). Member ``i`` follows ``configs[i]`` exactly as
    ``train_to_target(models[i], dataset, configs[i])`` would, up to floating-point rounding:
    same data order, loss checks (at ``t = 0``, every ``check_every`` updates and at the final
    update, with their own generator), stopping rule, divergence rule (a non-finite minibatch loss
    stops the member before that update), ``epoch1_state``, ``init_model``, metrics (computed by
    :func:`~genmeasures.zoo.train.evaluate` on the member's own module) and records. Members leave
    the batch as they stop. The data are moved to the models' device; the dtype is the models'.

    Args:
        models: Freshly initialized networks of the same structure (module types, parameter and
            buffer names, shapes, dtypes, devices), each batchable (:func:`batch_incompatibility`)
            and a distinct object; each is trained in place and returned as its run's ``model``.
        dataset: The data; its ``train`` split is fitted, its ``test`` split gives the gap.
        configs: One per model. They must agree on ``batch_size``, ``optimizer``, ``ce_check``,
            ``check_every`` and ``check_batches``; ``lr``, ``l2``, ``weight_decay``,
            ``lr_milestones``, ``target_ce``, ``max_epochs`` and ``seed`` may differ.
        on_finish: Called with ``(i, run)`` as soon as member ``i`` stops, in stopping order
            (members stopping at the same update in index order), e.g. to store the result
            before the others finish.
        on_check: Called after every loss check with ``(i, t, ĉ_t)``.

    Returns:
        The runs, in the order of ``models``. ``metrics["seconds"]`` is the wall-clock time from
        the start of the batch until the member's run was assembled.

    Raises:
        TrainingError: naming the member, for a different number of models and configs, models
            of different structures, an unbatchable model, configs that disagree on a shared
            setting, an empty training split or arguments of the wrong type.
    """
    models, configs = list(models), list(configs)
    _validate(models, dataset, configs)
    start = time.perf_counter()
    device = _model_device(models[0])
    inputs, labels = (tensor.to(device) for tensor in dataset.train)
    m = len(labels)
    shared = configs[0]
    batch_size = shared.batch_size
    steps_per_epoch = math.ceil(m / batch_size)

    members = []
    for index, (model, config) in enumerate(zip(models, configs, strict=True)):
        order_gen, check_gen, check_seed = training_streams(config)
        members.append(
            _Member(index, config, order_gen, check_gen, check_seed, copy.deepcopy(model).eval())
        )
        model.train()
    template = copy.deepcopy(models[0]).to("meta").train()
    stack = _Stack(models, members, template)
    runs: dict[int, TrainingRun] = {}
    step = 0
    # The K permutations of a check cost as much as a forward pass over the training set: draw
    # them for several members at once (each member's generator is used by one task at a time).
    workers = min(torch.get_num_threads(), len(models))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def draw_checks(chosen: list[_Member]) -> list[torch.Tensor]:
        def draw(member: _Member) -> torch.Tensor:
            return check_indices(m, shared, member.check_gen)

        return list(pool.map(draw, chosen) if pool is not None else map(draw, chosen))

    def example_losses(positions: list[int]) -> torch.Tensor:
        """Eval-mode cross-entropy of every training example, ``(members, m)``, in float64."""
        parts = []
        logits_of = stack.evaluator(positions)
        per_pass = max(1, _CHECK_ROWS // len(positions))
        for lo in range(0, m, per_pass):
            logits = logits_of(inputs[lo : lo + per_pass], True)
            target = labels[lo : lo + per_pass].expand(len(positions), -1)
            ce = F.cross_entropy(logits.double().flatten(0, 1), target.flatten(), reduction="none")
            parts.append(ce.view(len(positions), -1))
        return torch.cat(parts, dim=1)

    def estimate(positions: list[int]) -> list[float]:
        """One loss check ĉ_t of the members at ``positions`` (train_to_target's estimate)."""
        if shared.ce_check == "full":
            return (example_losses(positions).sum(dim=1) / m).tolist()
        chosen = [stack.members[p] for p in positions]
        index = torch.stack(draw_checks(chosen)).to(device)  # (members, K, batch)
        if m <= index[0].numel():
            # More draws than examples: the eval-mode loss of an example does not depend on its
            # minibatch (no batch statistics, no dropout), so evaluate each example once.
            values = example_losses(positions).gather(1, index.flatten(1)).view(index.shape)
            values = values.mean(dim=2)
        else:
            parts = []
            logits_of = stack.evaluator(positions)
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
            totals.append(total / shared.check_batches)
        return totals

    def check(positions: list[int]) -> list[str | None]:
        """Loss checks of the members at ``positions``, recorded; their outcomes."""
        if not positions:
            return []
        outcomes = []
        for position, ce in zip(positions, estimate(positions), strict=True):
            member = stack.members[position]
            member.ce_checks.append((step, ce))
            if on_check is not None:
                on_check(member.index, step, ce)
            outcomes.append(_outcome(ce, member.config.target_ce))
        return outcomes

    def stop(stopping: dict[int, str | None]) -> None:
        """Finish the members at the given positions (with their status so far) and unstack."""
        if not stopping:
            return
        unchecked = [p for p in stopping if stack.members[p].ce_checks[-1][0] != step]
        for position, final in zip(unchecked, check(unchecked), strict=True):
            # The check at the final update (budget spent, or a non-finite training loss).
            stopping[position] = stopping[position] or final
        for position in sorted(stopping):
            member = stack.members[position]
            model = models[member.index]
            stack.write_back(position, model)
            run = finish_run(
                model,
                member.init_model,
                dataset,
                member.config,
                status=stopping[position] or "not-converged",
                ce_checks=member.ce_checks,
                epoch1_state=member.epoch1_state,
                check_seed=member.check_seed,
                start=start,
            )
            runs[member.index] = run
            if on_finish is not None:
                on_finish(member.index, run)
        stack.keep([p for p in range(len(stack)) if p not in stopping])

    try:
        outcomes = check(list(range(len(stack))))
        stop({p: outcome for p, outcome in enumerate(outcomes) if outcome is not None})
        epoch = 0
        while len(stack):
            stack.order = torch.stack(
                [torch.randperm(m, generator=member.order_gen) for member in stack.members]
            ).to(device)
            for lo in range(0, m, batch_size):
                index = stack.order[:, lo : lo + batch_size]
                grads, losses = stack.gradients(inputs[index], labels[index])
                finite = torch.isfinite(losses)
                if not bool(finite.all()):
                    bad = (~finite).nonzero().flatten().tolist()
                    stop(dict.fromkeys(bad, "diverged"))  # before this update
                    if not len(stack):
                        break
                    keep = finite.nonzero().flatten()
                    grads = {k: v[keep] for k, v in grads.items()}
                stack.update(grads, step)
                step += 1
                if step == steps_per_epoch:
                    for position, member in enumerate(stack.members):
                        stack.write_back(position, models[member.index])
                        member.epoch1_state = {
                            k: v.detach().clone()
                            for k, v in models[member.index].state_dict().items()
                        }
                if step % shared.check_every == 0:
                    outcomes = check(list(range(len(stack))))
                    stop({p: outcome for p, outcome in enumerate(outcomes) if outcome is not None})
                    if not len(stack):
                        break
            epoch += 1
            stop(
                {
                    p: None
                    for p, member in enumerate(stack.members)
                    if member.config.max_epochs <= epoch
                }
            )
    finally:
        if pool is not None:
            pool.shutdown()
    return [runs[index] for index in range(len(models))]
