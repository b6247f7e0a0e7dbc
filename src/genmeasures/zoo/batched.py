"""The training kernel: models trained to a cross-entropy target, one or many at a time.

Every model of genmeasures is trained here: :func:`genmeasures.zoo.train.train_to_target` is a
unit of one, and a zoo's worker trains a *unit* of configurations that share their data and batch
size (:func:`genmeasures.zoo.executors.plan_units`) with :func:`train_batched`. A unit advances its
members in lockstep, one optimizer update of each per step, but a member's arithmetic never meets
another's: each member is its own module, fed its own minibatch (a fresh tensor), updated by its
own optimizer entry (:mod:`genmeasures.zoo.optimizers`, torch's single-tensor updates written out)
with its own learning rate, penalties and state, and draws its dropout masks from its own random
stream. One backward pass of the sum of the members' losses gives each member's gradient: the sum
passes exactly 1 to every loss, and no tensor is shared between members.

**One configuration, one model.** A member's weights, records and metrics are therefore the same
bits whatever else is in its unit (nothing, or any number of other members in any order), so
training alone, in a unit of any size, resumed after a kill, retrained after a corrupt checkpoint,
with ``--no-batch``, in a worker process or on Ray all give one model. What the guarantee assumes
is what torch's kernels depend on: the same torch build on the same kind of CPU (instruction set),
the same device, and the same number of intra-op threads. The last is fixed here: training runs
with **one torch thread** (the caller's setting is restored afterwards), the setting of every
worker process, since several threads may split a reduction differently and round differently.
The data are copied once into fresh tensors, so that every slice a member reads has the same
memory alignment in every process (vectorized kernels may round differently at other alignments).
``tests/zoo/test_routes.py`` checks every route bitwise in float32.

The rule of each run (``MEASURES.md`` §2.5, Jiang et al. 2020, §2.1 and appendix C) is that of
:mod:`genmeasures.zoo.recording`: loss checks at ``t = 0``, every ``check_every`` updates and at the
final update; stop at the first check at or below the target (``done``), at a non-finite
minibatch loss (before that update) or check (``diverged``), or when the budget is spent
(``not-converged``). A member that stops leaves the unit at once and ``on_finish`` receives its run
while the others go on.

Seeding: three independent streams are derived from each member's ``TrainingConfig.seed``
(:func:`genmeasures.seeding.derive_seed`): the data order, the loss-check draws, and the torch
RNG of dropout and other random modules, swapped into torch's global generator around the
member's passes; the caller's global RNG state is left unchanged. Recording never changes training.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import TrainingError
from genmeasures.seeding import derive_seed
from genmeasures.zoo.optimizers import Optimizer, ParamState, get_optimizer
from genmeasures.zoo.recording import (
    TORCH_STREAM,
    RunRecorder,
    TrainingRun,
    estimate_ce,
    model_device,
)
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.training_config import TrainingConfig, learning_rate

__all__ = [
    "SHARED_FIELDS",
    "BatchedCheckCallback",
    "FinishCallback",
    "one_torch_thread",
    "train_batched",
]

#: Called when member ``index`` stops, with its finished run.
FinishCallback = Callable[[int, TrainingRun], None]

#: Called at every loss check with (member index, optimizer updates so far, estimated CE).
BatchedCheckCallback = Callable[[int, int, float], None]

#: Settings that every member of a unit must share: they fix where its steps, epochs and loss
#: checks fall, which the members pass in lockstep.
SHARED_FIELDS = ("batch_size", "ce_check", "check_every", "check_batches")


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
        if not isinstance(model, nn.Module):
            raise TrainingError(
                f"model {index} must be a torch.nn.Module, got {type(model).__name__}"
            )
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
    """Member ``index`` can join a unit whose first member is ``first_model``."""
    if not isinstance(config, TrainingConfig):
        raise TrainingError(
            f"configs[{index}] must be a TrainingConfig, got {type(config).__name__}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError(f"model {index} has no trainable parameters")
    device, first_device = model_device(model), model_device(first_model)
    if device != first_device:
        raise TrainingError(
            f"model {index} is on {device}: all members of a unit must be on one device; "
            f"expected {first_device} (as model 0)"
        )
    for name in SHARED_FIELDS:
        want, got = getattr(first_config, name), getattr(config, name)
        if got != want:
            raise TrainingError(
                f"configs[{index}].{name}: all members of a unit must share {name}; "
                f"expected {want!r} (as configs[0]), received {got!r}"
            )


class _RandomStream:
    """A member's stream of torch's global RNG (dropout masks): swapped in around its passes."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cpu = torch.Generator().manual_seed(seed).get_state()
        self.cuda = None
        if device.type == "cuda":
            self.cuda = torch.Generator(device).manual_seed(seed).get_state()
        self.device = device

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Torch's global generators hold this stream inside the block; it advances with them."""
        torch.default_generator.set_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.default_generator.get_state()
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)


@dataclass
class _Member:
    """A member still training: its position in the caller's list, its module and its state."""

    index: int
    model: nn.Module
    run: RunRecorder
    optimizer: Optimizer
    stream: _RandomStream
    params: list[nn.Parameter]
    states: list[ParamState]
    updates: list[int]
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    @property
    def config(self) -> TrainingConfig:
        return self.run.config


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the caller's setting.

    Training runs so (see the module docstring), and so should anything computed from a run
    that must be the same bits in every process, e.g. the zoo's training measures.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fresh_copy(dataset: Dataset, device: torch.device) -> Dataset:
    """The dataset in freshly allocated tensors on ``device``: the same alignment everywhere."""

    def fresh(split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = split
        return (
            inputs.to(device).clone(memory_format=torch.contiguous_format),
            labels.to(device).clone(memory_format=torch.contiguous_format),
        )

    return Dataset(
        dataset.name,
        fresh(dataset.train),
        fresh(dataset.test),
        dataset.num_classes,
        dataset.input_shape,
        dataset.preprocessing,
    )


def train_batched(
    models: Sequence[nn.Module],
    dataset: Dataset,
    configs: Sequence[TrainingConfig],
    *,
    on_finish: FinishCallback | None = None,
    on_check: BatchedCheckCallback | None = None,
) -> list[TrainingRun]:
    """Train a unit of models, each to its own target, bit for bit as it would train alone.

    Member ``i`` follows ``configs[i]`` (Jiang et al. 2020, appendix C: SGD with momentum 0.9,
    Adam or RMSprop, until the estimated training cross-entropy reaches the target) and its run
    does not depend on the other members: see the module docstring for the guarantee and what it
    assumes. Training uses one torch thread; the data are copied to the models' device.

    Args:
        models: Freshly initialized networks on one device, each a distinct object with
            trainable parameters (any architecture: BatchNorm, dropout and other random modules
            included); each is trained in place and returned as its run's ``model``.
        dataset: The data; its ``train`` split is fitted, its ``test`` split gives the gap.
        configs: One per model. They must agree on ``batch_size``, ``ce_check``,
            ``check_every`` and ``check_batches`` (:data:`SHARED_FIELDS`); the optimizer,
            ``lr``, ``l2``, ``weight_decay``, ``lr_milestones``, ``target_ce``, ``max_epochs``
            and ``seed`` may differ.
        on_finish: Called with ``(i, run)`` as soon as member ``i`` stops, in stopping order
            (members stopping at the same update in index order), e.g. to store the result
            before the others finish.
        on_check: Called after every loss check with ``(i, t, ĉ_t)``, the model in train mode.

    Returns:
        The runs, in the order of ``models``. ``metrics["seconds"]`` is the wall-clock time from
        the start of the unit until the member's run was assembled.

    Raises:
        TrainingError: naming the member, for a different number of models and configs, models
            on different devices or without trainable parameters, configs that disagree on a
            shared setting, an empty training split or arguments of the wrong type.
    """
    models, configs = list(models), list(configs)
    _validate(models, dataset, configs)
    device = model_device(models[0])
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with one_torch_thread(), torch.random.fork_rng(devices=rng_devices):
        return _Unit(models, _fresh_copy(dataset, device), configs, on_finish, on_check).train()


class _Unit:
    """The state of one :func:`train_batched` call: the members left, the runs, the step."""

    def __init__(
        self,
        models: list[nn.Module],
        dataset: Dataset,
        configs: list[TrainingConfig],
        on_finish: FinishCallback | None,
        on_check: BatchedCheckCallback | None,
    ) -> None:
        start = time.perf_counter()
        self.dataset, self.on_finish, self.count = dataset, on_finish, len(models)
        self.inputs, self.labels = dataset.train
        self.m = len(self.labels)
        self.shared = configs[0]
        self.members: list[_Member] = []
        for index, (model, config) in enumerate(zip(models, configs, strict=True)):
            callback = None if on_check is None else functools.partial(on_check, index)
            params = [p for p in model.parameters() if p.requires_grad]
            self.members.append(
                _Member(
                    index=index,
                    model=model.train(),
                    run=RunRecorder.begin(model, config, start=start, on_check=callback),
                    optimizer=get_optimizer(config.optimizer),
                    stream=_RandomStream(
                        derive_seed(config.seed, TORCH_STREAM), model_device(model)
                    ),
                    params=params,
                    states=[{} for _ in params],
                    updates=[0 for _ in params],
                )
            )
        self.runs: dict[int, TrainingRun] = {}
        self.step = 0

    def train(self) -> list[TrainingRun]:
        """Train until every member has stopped; the runs in the order of the models."""
        self._stop(_stopped(self._check(self.members)))
        epoch = 0
        while self.members:
            self._epoch()
            epoch += 1
            self._stop({m.index: None for m in self.members if m.config.max_epochs <= epoch})
        return [self.runs[index] for index in range(self.count)]

    def _epoch(self) -> None:
        """One pass over the training set in each member's own order, with its loss checks."""
        batch_size = self.shared.batch_size
        steps_per_epoch = math.ceil(self.m / batch_size)
        device = self.inputs.device
        for member in self.members:
            member.order = torch.randperm(self.m, generator=member.run.order_gen).to(device)
        for lo in range(0, self.m, batch_size):
            losses = self._losses(lo, batch_size)
            diverged = {i: ModelState.DIVERGED for i, loss in losses.items() if loss is None}
            self._stop(diverged)  # before this update
            if not self.members:
                return
            self._update([loss for m in self.members if (loss := losses[m.index]) is not None])
            self.step += 1
            if self.step == steps_per_epoch:
                for member in self.members:
                    member.run.record_epoch1(member.model)
            if self.step % self.shared.check_every == 0:
                self._stop(_stopped(self._check(self.members)))
                if not self.members:
                    return

    def _losses(self, lo: int, batch_size: int) -> dict[int, torch.Tensor | None]:
        """Each member's minibatch loss at ``order[lo : lo + batch_size]``; None if not finite."""
        losses: dict[int, torch.Tensor | None] = {}
        for member in self.members:
            index = member.order[lo : lo + batch_size]
            with member.stream.active():
                loss = F.cross_entropy(member.model(self.inputs[index]), self.labels[index])
            losses[member.index] = loss if bool(torch.isfinite(loss)) else None
        return losses

    def _update(self, losses: list[torch.Tensor]) -> None:
        """One optimizer update of every member, from the gradients of its own loss."""
        params = [p for member in self.members for p in member.params]
        # The sum passes exactly 1 to each loss: every member gets its own loss's gradient.
        grads = iter(torch.autograd.grad(torch.stack(losses).sum(), params, allow_unused=True))
        with torch.no_grad():
            for member in self.members:
                config = member.config
                lr = learning_rate(config, self.step)
                for k, param in enumerate(member.params):
                    grad = next(grads)
                    if grad is None:  # not used by the forward pass: left alone, as torch.optim
                        continue
                    if config.weight_decay:  # decoupled: before the update
                        param.mul_(1 - lr * config.weight_decay)
                    if config.l2:  # coupled: the weight_decay argument of torch.optim
                        grad = grad.add(param, alpha=config.l2)
                    member.optimizer.update(member.states[k], param, grad, lr, member.updates[k])
                    member.updates[k] += 1

    def _check(self, members: list[_Member]) -> dict[int, ModelState | None]:
        """Loss checks of ``members``, recorded; their outcomes by member index."""
        outcomes = {}
        for member in members:
            with member.stream.active():
                ce = estimate_ce(
                    member.model, self.inputs, self.labels, member.config, member.run.check_gen
                )
            outcomes[member.index] = member.run.record_check(self.step, ce)
        return outcomes

    def _stop(self, stopping: dict[int, ModelState | None]) -> None:
        """Finish the members with the given indices (with their status so far)."""
        if not stopping:
            return
        leaving = [m for m in self.members if m.index in stopping]
        unchecked = [m for m in leaving if not m.run.checked_at(self.step)]
        for index, final in self._check(unchecked).items():
            # The check at the final update (budget spent, or a non-finite training loss).
            stopping[index] = stopping[index] or final
        self.members = [m for m in self.members if m.index not in stopping]
        for member in leaving:
            with member.stream.active():
                run = member.run.finish(member.model, self.dataset, stopping[member.index])
            self.runs[member.index] = run
            if self.on_finish is not None:
                self.on_finish(member.index, run)


def _stopped(outcomes: dict[int, ModelState | None]) -> dict[int, ModelState | None]:
    """The members whose check stopped them."""
    return {index: outcome for index, outcome in outcomes.items() if outcome is not None}
