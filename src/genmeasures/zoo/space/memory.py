"""Whether a configuration's model can be trained in this machine's memory, known before training.

A space read by :func:`~genmeasures.zoo.space.load_space` or
:func:`~genmeasures.zoo.space.space_from_dict` is refused (:class:`~genmeasures.errors.SpaceError`)
when one of its configurations needs more memory to train than the machine has: the message names
the configuration's values, the memory it needs and the memory there is, before any model is
trained. A study read back from its folder (:meth:`Space.from_json`) is not checked again, so
that a study trained on a large machine can be shown and evaluated on a small one.

The need is a *lower bound*, so that no configuration that fits is refused:

- the parameters, counted without building the model (:func:`genmeasures.models.build_meta_model`
  builds it on the ``meta`` device: shapes without values), times their bytes per element (4 for
  float32), times :data:`COPIES`, the copies of the parameters that training holds at once: the
  weights, their gradients, at least one optimizer state per weight (SGD's momentum; Adam keeps
  two), the initial model and the state after the first epoch (training records R1 and R2,
  ``MEASURES.md`` §2.5);
- the activations of one training batch: the outputs of the modules that hold parameters (Linear,
  convolutions, BatchNorm), which autograd keeps for the backward pass, for ``batch_size``
  examples; measured by one forward pass on the ``meta`` device.

A model one of whose tensors would exceed ``2**63`` bytes (torch cannot even describe it) needs at
least that much.

The memory there is: the machine's physical memory (``os.sysconf("SC_PHYS_PAGES") *
os.sysconf("SC_PAGE_SIZE")``), not what is free at the moment, so that whether a space is valid
does not depend on what else runs. Where the system does not report it, nothing is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from genmeasures.data import DATASETS
from genmeasures.models import build_meta_model
from genmeasures.zoo.space.checks import fail

if TYPE_CHECKING:
    from genmeasures.zoo.space.config import Config
    from genmeasures.zoo.space.grid import Space

__all__ = [
    "COPIES",
    "MemoryNeed",
    "check_memory",
    "forward_multiply_adds",
    "human_bytes",
    "machine_memory",
    "memory_need",
]

#: Copies of the parameters training holds at once: weights, gradients, optimizer state (at
#: least one), the initial model and the state after the first epoch.
COPIES = 5

#: The need of a model torch cannot describe (a tensor of more than 2**63 bytes).
OVERFLOW = 2**63

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


@dataclass(frozen=True)
class MemoryNeed:
    """The memory one configuration needs to train, at least.

    Attributes:
        parameters: Number of parameters; None when a tensor would exceed ``2**63`` bytes.
        element_bytes: Bytes per parameter (4 for float32).
        activations: Elements of the activations kept for one example's backward pass.
        batch_size: Examples per training batch.
    """

    parameters: int | None
    element_bytes: int
    activations: int
    batch_size: int

    @property
    def total(self) -> int:
        """Bytes: parameters × bytes × :data:`COPIES` + one batch's activations."""
        if self.parameters is None:
            return OVERFLOW
        per_copy = self.parameters * self.element_bytes
        return per_copy * COPIES + self.activations * self.batch_size * self.element_bytes

    def explain(self) -> str:
        """How :attr:`total` is made, in words."""
        if self.parameters is None:
            return "one of its weight tensors alone would exceed 2**63 bytes"
        activations = self.activations * self.batch_size * self.element_bytes
        return (
            f"{self.parameters:,} parameters × {self.element_bytes} bytes × {COPIES} copies "
            "(weights, gradients, optimizer state, initial model, state after epoch 1) + "
            f"{human_bytes(activations)} of activations for a batch of {self.batch_size}"
        )


def human_bytes(count: int) -> str:
    """``count`` bytes in binary units, three significant digits (``"1.5 GiB"``)."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.3g} {unit}"


def machine_memory() -> int | None:
    """The machine's physical memory in bytes; None where the system does not report it."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


@cache
def _model_size(
    model: str, dataset: str, hparams: tuple[tuple[str, Any], ...]
) -> tuple[int | None, int, int, int]:
    """(parameters, bytes per parameter, activation elements, multiply-adds) per example."""
    spec = DATASETS[dataset]
    try:
        network = build_meta_model(model, spec.input_shape, spec.num_classes, **dict(hparams))
    except RuntimeError:  # a storage size over 2**63 bytes: torch cannot describe the tensor
        return None, 4, 0, OVERFLOW
    parameters = list(network.parameters())
    outputs: list[int] = []
    multiply_adds: list[int] = []

    def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        outputs.append(output.numel())
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            # A dense or convolutional layer: each weight is used once per output position.
            multiply_adds.append(weight.numel() * (output.numel() // output.shape[1]))

    hooks = [
        module.register_forward_hook(record)
        for module in network.modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    with torch.no_grad():
        network.eval()(torch.zeros(1, *spec.input_shape, device="meta"))
    for hook in hooks:
        hook.remove()
    element_bytes = parameters[0].element_size() if parameters else 4
    return sum(p.numel() for p in parameters), element_bytes, sum(outputs), sum(multiply_adds)


def memory_need(config: Config) -> MemoryNeed:
    """The memory training ``config`` needs, at least (see the module docstring).

    Raises:
        ModelError: If the configuration's model cannot be built for its dataset.
    """
    parameters, element_bytes, activations, _ = _model_size(
        config.model, config.dataset, tuple(sorted(config.model_hparams.items()))
    )
    return MemoryNeed(parameters, element_bytes, activations, config.training.batch_size)


def forward_multiply_adds(config: Config) -> int:
    """Multiply-adds of one example's forward pass through the dense and convolutional layers.

    A model's training time per epoch grows with it: the zoo orders its units of work by it,
    costliest first (:func:`genmeasures.zoo.executors.plan_units`). Counted without building the
    model, like :func:`memory_need`.

    Raises:
        ModelError: If the configuration's model cannot be built for its dataset.
    """
    return _model_size(config.model, config.dataset, tuple(sorted(config.model_hparams.items())))[3]


def _values(config: Config) -> dict[str, Any]:
    return {
        "dataset": config.dataset,
        "model": config.model,
        **config.model_hparams,
        "batch_size": config.training.batch_size,
    }


def check_memory(space: Space, available: int | None = None) -> None:
    """Refuse a space one of whose configurations cannot be trained in the machine's memory.

    Args:
        space: The space.
        available: The memory there is, in bytes; None: :func:`machine_memory`.

    Raises:
        SpaceError: Naming the first configuration that does not fit (its index and values), the
            memory it needs and how, the memory there is and how many configurations do not fit.
        ModelError: If a configuration's model cannot be built for its dataset.
    """
    available = machine_memory() if available is None else available
    if available is None:
        return
    too_large: list[tuple[Config, MemoryNeed]] = []
    for config in space.configs():
        need = memory_need(config)
        if need.total > available:
            too_large.append((config, need))
    if too_large:
        config, need = too_large[0]
        fail(
            space.source,
            f"config {config.index}",
            _values(config),
            f"hyperparameters whose model can be trained in this machine's memory "
            f"({human_bytes(available)} of RAM)",
            f" Training it needs at least {human_bytes(need.total)} ({need.total:,} bytes): "
            f"{need.explain()}. Configurations that do not fit: {len(too_large)} of "
            f"{len(space)}.",
        )
