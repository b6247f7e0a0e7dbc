"""Many small models trained to a cross-entropy target at once, with ``torch.func.vmap``.

A model zoo (Jiang et al. 2020, §2 and appendix C) holds many small networks that differ only in
their hyperparameters; on a CPU each one alone is too small to keep the cores busy. Here the
parameters of N models of the same structure are stacked along a leading member dimension
(``torch.func.stack_module_state``, held by :class:`~genmeasures.zoo.stacked.ParameterStack`);
at each step one vmapped forward pass (``torch.func.vmap`` of ``torch.func.functional_call``)
gives every member's logits, and one backward pass of the sum of the members' losses gives every
member's gradient with respect to its own slice of the stacked parameters (the members are
independent, so the sum separates). On a 2-core CPU this measured faster than
``vmap(grad(loss))``, which also decomposes the cross-entropy in Python at every step. A plain MLP
(a ``Sequential`` of ``Linear``, ``ReLU``, ``Flatten`` and identity-like modules, the zoo's usual
model) skips ``functional_call`` and runs as a chain of batched matmuls (``torch.baddbmm``), the
same computation without its per-call overhead. The optimizers are those of the table
(:mod:`genmeasures.zoo.optimizers`), written out over the stacked tensors.

Each member gets exactly the run that :func:`genmeasures.zoo.train.train_to_target` would give
it alone, up to floating-point rounding: its own initialization, learning rate (and milestones),
L2 penalty, decoupled weight decay, target, budget and seed; the same data order and loss-check
draws (the streams of :func:`~genmeasures.zoo.recording.training_streams`); the same loss checks
at ``t = 0``, every C updates and at the final update (``MEASURES.md`` §2.5); the same stopping
and divergence rules; the same records and metrics: each member's run is recorded by its own
:class:`~genmeasures.zoo.recording.RunRecorder`, as the single-model trainer's. The third stream
of the sequential trainer, the torch RNG of dropout, is never needed: a model with active dropout
cannot be batched (:func:`batch_incompatibility`), and nothing else here draws from torch's
global RNG.

A member that stops (``done``, ``not-converged`` or ``diverged``) leaves the stack at once: the
remaining members' parameters and optimizer states are re-stacked, so it costs no further
compute, and ``on_finish`` receives its run while the others go on training.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.zoo.recording import (
    RunRecorder,
    TrainingRun,
    check_indices,
    model_device,
)
from genmeasures.zoo.stacked import ParameterStack
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.train import TrainingConfig

__all__ = [
    "SHARED_FIELDS",
    "BatchedCheckCallback",
    "FinishCallback",
    "batch_incompatibility",
    "train_batched",
]

#: Called when member ``index`` stops, with its finished run.
FinishCallback = Callable[[int, TrainingRun], None]

#: Called at every loss check with (member index, optimizer updates so far, estimated CE).
BatchedCheckCallback = Callable[[int, int, float], None]

#: Settings that every member of a batch must share: they fix the shape of each step (and, for
#: ``optimizer``, the entry of :data:`~genmeasures.zoo.optimizers.OPTIMIZER_TABLE` that updates
#: the stack).
SHARED_FIELDS = ("batch_size", "optimizer", "ce_check", "check_every", "check_batches")


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
        if id(model) in seen:
            raise TrainingError(
                f"model {index} is the same object as model {seen[id(model)]}: each member is "
                f"trained in place and needs its own module"
            )
        seen[id(model)] = index
        _validate_member(index, model, config, models[0], configs[0])


def _validate_member(
    index: int,
    model: nn.Module,
    config: TrainingConfig,
    first_model: nn.Module,
    first_config: TrainingConfig,
) -> None:
    """Member ``index`` can join a batch whose first member is ``first_model``."""
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
    difference = _structure_difference(first_model, model)
    if difference is not None:
        raise TrainingError(
            f"model {index} does not have the structure of model 0 (all models of a batch "
            f"must have the same module types and parameter and buffer names, shapes, "
            f"dtypes and devices): {difference}"
        )
    for name in SHARED_FIELDS:
        want, got = getattr(first_config, name), getattr(config, name)
        if got != want:
            raise TrainingError(
                f"configs[{index}].{name}: all members of a batch must share {name}; "
                f"expected {want!r} (as configs[0]), received {got!r}"
            )


@dataclass
class _Member:
    """A member still training: its position in the caller's list and its run's records."""

    index: int
    run: RunRecorder

    @property
    def config(self) -> TrainingConfig:
        return self.run.config


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
    # The K permutations of a check cost as much as a forward pass over the training set: draw
    # them for several members at once (each member's generator is used by one task at a time).
    workers = min(torch.get_num_threads(), len(models))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        return _Batch(models, dataset, configs, pool, on_finish, on_check).train()
    finally:
        if pool is not None:
            pool.shutdown()


class _Batch:
    """The state of one :func:`train_batched` call: the stack, the members left, the runs."""

    def __init__(
        self,
        models: list[nn.Module],
        dataset: Dataset,
        configs: list[TrainingConfig],
        pool: ThreadPoolExecutor | None,
        on_finish: FinishCallback | None,
        on_check: BatchedCheckCallback | None,
    ) -> None:
        start = time.perf_counter()
        self.models, self.dataset, self.pool, self.on_finish = models, dataset, pool, on_finish
        self.device = model_device(models[0])
        self.inputs, self.labels = (tensor.to(self.device) for tensor in dataset.train)
        self.m = len(self.labels)
        self.shared = configs[0]
        self.members = []
        for index, (model, config) in enumerate(zip(models, configs, strict=True)):
            callback = None if on_check is None else functools.partial(on_check, index)
            self.members.append(
                _Member(index, RunRecorder.begin(model, config, start=start, on_check=callback))
            )
            model.train()
        template = copy.deepcopy(models[0]).to("meta").train()
        self.stack = ParameterStack(models, configs, template)
        self.runs: dict[int, TrainingRun] = {}
        self.step = 0

    def train(self) -> list[TrainingRun]:
        """Train until every member has stopped; the runs in the order of the models."""
        self._stop(_stopped(self._check(self._all())))
        epoch = 0
        while self.members:
            self._epoch()
            epoch += 1
            self._stop(
                {
                    p: None
                    for p, member in enumerate(self.members)
                    if member.config.max_epochs <= epoch
                }
            )
        return [self.runs[index] for index in range(len(self.models))]

    def _all(self) -> list[int]:
        return list(range(len(self.members)))

    def _epoch(self) -> None:
        """One pass over the training set in each member's own order, with its loss checks."""
        steps_per_epoch = math.ceil(self.m / self.shared.batch_size)
        self.stack.order = torch.stack(
            [torch.randperm(self.m, generator=member.run.order_gen) for member in self.members]
        ).to(self.device)
        for lo in range(0, self.m, self.shared.batch_size):
            index = self.stack.order[:, lo : lo + self.shared.batch_size]
            grads, losses = self.stack.gradients(self.inputs[index], self.labels[index])
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten().tolist()
                self._stop(dict.fromkeys(bad, ModelState.DIVERGED))  # before this update
                if not self.members:
                    return
                keep = finite.nonzero().flatten()
                grads = {k: v[keep] for k, v in grads.items()}
            self.stack.update(grads, self.step)
            self.step += 1
            if self.step == steps_per_epoch:
                self._record_epoch1()
            if self.step % self.shared.check_every == 0:
                self._stop(_stopped(self._check(self._all())))
                if not self.members:
                    return

    def _record_epoch1(self) -> None:
        for position, member in enumerate(self.members):
            self.stack.write_back(position, self.models[member.index])
            member.run.record_epoch1(self.models[member.index])

    def _draw(self, positions: list[int]) -> list[torch.Tensor]:
        def indices(position: int) -> torch.Tensor:
            return check_indices(self.m, self.shared, self.members[position].run.check_gen)

        pool = self.pool
        return list(pool.map(indices, positions) if pool is not None else map(indices, positions))

    def _check(self, positions: list[int]) -> dict[int, ModelState | None]:
        """Loss checks of the members at ``positions``, recorded; their outcomes."""
        if not positions:
            return {}
        estimates = self.stack.estimate_ce(
            positions, self.inputs, self.labels, self.shared, self._draw
        )
        return {
            position: self.members[position].run.record_check(self.step, ce)
            for position, ce in zip(positions, estimates, strict=True)
        }

    def _stop(self, stopping: dict[int, ModelState | None]) -> None:
        """Finish the members at the given positions (with their status so far) and unstack."""
        if not stopping:
            return
        unchecked = [p for p in stopping if not self.members[p].run.checked_at(self.step)]
        for position, final in self._check(unchecked).items():
            # The check at the final update (budget spent, or a non-finite training loss).
            stopping[position] = stopping[position] or final
        for position in sorted(stopping):
            member = self.members[position]
            model = self.models[member.index]
            self.stack.write_back(position, model)
            run = member.run.finish(model, self.dataset, stopping[position])
            self.runs[member.index] = run
            if self.on_finish is not None:
                self.on_finish(member.index, run)
        kept = [p for p in range(len(self.members)) if p not in stopping]
        self.stack.keep(kept)
        self.members = [self.members[p] for p in kept]


def _stopped(outcomes: dict[int, ModelState | None]) -> dict[int, ModelState | None]:
    """The members whose check stopped them."""
    return {p: outcome for p, outcome in outcomes.items() if outcome is not None}
