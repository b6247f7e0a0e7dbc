"""What ``compute`` checks and prepares before any measure: device, dtype, the model's logits.

A user's network may live on another device, hold half-precision weights, be given inputs of
another dtype, or return something other than a tensor (a Hugging Face ``ModelOutput``, a dict,
a tuple). These functions turn each case into either a well-defined computation or an error that
names what was received and what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from genmeasures.errors import GenMeasuresWarning, MeasureError, ModelError

__all__ = [
    "LogitsOf",
    "OutputFn",
    "check_input_shape",
    "check_labels",
    "computation_dtype",
    "logits_selector",
    "resolve_device",
]

#: Selects the logits ``(N, classes)`` from whatever the model's forward returns.
OutputFn = Callable[[Any], torch.Tensor]

#: Weights of these dtypes are computed in float32 (their precision would swamp the measures).
_UPCAST = (torch.float16, torch.bfloat16)


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The device to compute on: ``device``, else the model's; checked to exist here.

    Raises:
        MeasureError: for a string that names no device, or a device this torch build or machine
            does not have.
        ModelError: for a model whose tensors are on the ``meta`` device (shapes without values).
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise ModelError(
            f"model {type(model).__name__} has tensors on the 'meta' device (shapes without "
            "values): load or initialize its weights (e.g. model.to_empty(device='cpu') and "
            "load_state_dict) before computing measures"
        )
    if device is None:
        return tensors[0].device if tensors else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise MeasureError(
            f"compute: device expected a torch device such as 'cpu' or 'cuda:0', received "
            f"{device!r} ({error})"
        ) from None
    available = _available(resolved)
    if available is not None:
        raise MeasureError(f"compute: device {str(resolved)!r} is not available: {available}")
    return resolved


def _available(device: torch.device) -> str | None:
    """None if tensors can be placed on ``device``, else why not."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this torch build or machine has no CUDA device; use device='cpu'"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"there are {count} CUDA devices (cuda:0 to cuda:{count - 1})"
        return None
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "MPS is not available here"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        return str(error)
    return None


def computation_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the measures compute in: the model's, float32 for half precision.

    Half-precision weights are upcast (with a warning): the measures sum and multiply many
    small terms, and float16 would round them away.

    Raises:
        ModelError: for a model whose floating parameters mix dtypes.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        raise ModelError(
            f"model {type(model).__name__} mixes parameter dtypes {sorted(map(str, dtypes))}: "
            "cast it to one dtype (e.g. model.float()) before computing measures"
        )
    dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
    if dtype in _UPCAST:
        warnings.warn(
            f"the model's weights are {dtype}; the measures are computed on a float32 copy",
            GenMeasuresWarning,
            stacklevel=3,
        )
        return torch.float32
    return dtype


def check_input_shape(model: nn.Module, inputs: torch.Tensor, source: str) -> None:
    """The data's examples have the shape the model was built for, when the model records it.

    A model from :func:`genmeasures.build_model` (or a model spec) records the shape of one input
    as ``model.input_shape``; a model without it is not checked here (a forward pass that fails
    is reported by :func:`logits_selector`).

    Args:
        model: The network.
        inputs: The training inputs ``(m, *input_shape)``.
        source: The data as named in messages (``"dataset 'mnist1d'"``).

    Raises:
        MeasureError: naming both shapes and the data.
    """
    expected = getattr(model, "input_shape", None)
    if not isinstance(expected, tuple | list) or not all(isinstance(n, int) for n in expected):
        return
    received = tuple(inputs.shape[1:])
    if tuple(expected) != received:
        raise MeasureError(
            f"compute: data expected inputs of shape {tuple(expected)} per example (the "
            f"model's input_shape, the shape it was built for), received {source} with inputs "
            f"of shape {received}."
        )


def check_labels(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    source: str,
    num_classes: int | None,
) -> None:
    """The model has one output per class of the data; checked on one example's logits.

    Args:
        model: The network, returning logits (the measure context's eval-mode copy).
        inputs: The training inputs.
        labels: The training labels.
        source: The data as named in messages.
        num_classes: The classes the data declares (a :class:`~genmeasures.data.Dataset`'s),
            or None: then only the labels must be below the number of outputs.

    Raises:
        MeasureError: naming the model's number of outputs and the data's classes or labels.
    """
    with torch.no_grad():
        logits = model(inputs[:1])
    if logits.ndim != 2:
        return  # reported with the logits' shape by the first measure that reads them
    outputs = logits.shape[1]
    if num_classes is not None and num_classes != outputs:
        raise MeasureError(
            f"compute: data expected {outputs} classes (the model has {outputs} outputs), "
            f"received {source} with {num_classes} classes."
        )
    largest = int(labels.max())
    if largest >= outputs:
        raise MeasureError(
            f"compute: data expected labels in [0, {outputs}) (the model has {outputs} "
            f"outputs), received {source} with labels up to {largest}."
        )


def logits_selector(
    model: nn.Module, example: torch.Tensor, output_fn: OutputFn | None
) -> OutputFn | None:
    """How to read the logits from the model's output; None when the output is the logits.

    The output of one forward pass on ``example`` decides: a tensor is the logits; a mapping or
    Hugging Face ``ModelOutput`` with ``logits`` gives them; a tuple or list whose first element is
    a tensor gives that element. ``output_fn``, when given, is used as it is.

    Raises:
        ModelError: for a forward pass that fails on ``example`` (naming its shape), or any other
            output, naming its type and the ``output_fn`` option.
    """
    if output_fn is not None:
        return output_fn
    try:
        with torch.no_grad():
            output = model(example)
    except RuntimeError as error:
        raise ModelError(
            f"model {type(model).__name__}: a forward pass on one example of the data (shape "
            f"{tuple(example.shape[1:])}) failed: {error}. Are the data those the model was "
            "built for?"
        ) from error
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return _logits_entry
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return _first_element
    raise ModelError(
        f"model {type(model).__name__} returned {_describe(output)}; the measures need the "
        "logits, a tensor of shape (N, classes): pass output_fn=, a function from the model's "
        "output to its logits, e.g. output_fn=lambda out: out['scores']"
    )


def _logits_entry(output: Any) -> torch.Tensor:
    return output["logits"]


def _first_element(output: Any) -> torch.Tensor:
    return output[0]


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)} and no 'logits' tensor"
    if isinstance(output, tuple | list):
        kinds = [type(item).__name__ for item in output]
        return f"a {type(output).__name__} of {kinds} whose first element is not a tensor"
    return f"a {type(output).__name__}"


class LogitsOf(nn.Module):
    """A network whose forward returns the logits selected from another network's output.

    The wrapped network is the child ``network``: parameter names gain the prefix ``network.``.
    """

    def __init__(self, network: nn.Module, select: OutputFn) -> None:
        super().__init__()
        self.network = network
        self.select = select
        if hasattr(network, "input_shape"):
            self.input_shape = network.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``network(x)``."""
        return self.select(self.network(x))
