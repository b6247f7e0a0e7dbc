"""The probe forward pass the network surgery reads the model's structure from.

One eval-mode, no-grad forward pass of a zero tensor of shape ``(1, *input_shape)`` with forward
hooks on the watched modules (:func:`record_calls`) gives the weight layers' order and input shapes
(:mod:`genmeasures.models.layers`) and, when ``torch.fx`` cannot trace the model, which layer feeds
which BatchNorm (:mod:`genmeasures.models.folding`). Also the checks and names those modules share.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genmeasures.errors import ModelError

__all__ = [
    "BN_TYPES",
    "WEIGHT_TYPES",
    "Call",
    "check_model",
    "describe",
    "eval_mode",
    "probe_input",
    "record_calls",
    "resolve_shape",
]

#: The weight layers of the measures (MEASURES.md §2.2) and the BatchNorms they fold.
WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Pooling, reshapes and dropout (in eval mode): positively homogeneous and piecewise linear.
POOLING_AND_RESHAPE_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)


def describe(path: str, module: nn.Module) -> str:
    """How messages name a module: its path and type, ``'features.0' (Conv2d)``."""
    return f"'{path}' ({type(module).__name__})"


def check_model(model: object) -> None:
    """Raise ModelError unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, received {type(model).__name__}.")


def resolve_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """The checked input shape: the argument, else ``model.input_shape``, else None."""
    shape = getattr(model, "input_shape", None) if input_shape is None else input_shape
    if shape is None:
        return None
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or not shape
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape)
    ):
        raise ModelError(
            "input_shape must be a non-empty sequence of positive integers (one example, no batch "
            f"dimension), received {shape!r}."
        )
    return tuple(int(s) for s in shape)


@dataclass(frozen=True)
class Call:
    """One call of a watched module during the probe forward pass."""

    module: nn.Module
    input: torch.Tensor
    input_version: int
    output: Any
    output_version: int


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else next(iter(kwargs.values()), None)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def probe_input(model: nn.Module, shape: tuple[int, ...], batch: int) -> torch.Tensor:
    """Zeros of shape ``(batch, *shape)`` in the dtype and on the device of the model."""
    tensors = [*model.parameters(), *model.buffers()]
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is None:
        return torch.zeros((batch, *shape))
    return torch.zeros((batch, *shape), dtype=reference.dtype, device=reference.device)


def record_calls(
    model: nn.Module, shape: tuple[int, ...], watched: Sequence[nn.Module]
) -> list[Call]:
    """Run one eval-mode, no-grad forward pass of zeros and record each call of ``watched``."""
    calls: list[Call] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        inp = _first_tensor(args, kwargs)
        calls.append(
            Call(
                module=module,
                input=inp,
                input_version=getattr(inp, "_version", -1),
                output=output,
                output_version=getattr(output, "_version", -1),
            )
        )

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in watched]
    x = probe_input(model, shape, batch=1)
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    except Exception as exc:
        raise ModelError(
            f"the forward pass of a zero input of shape {tuple(x.shape)} (batch of one example "
            f"of input_shape {shape}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return calls
