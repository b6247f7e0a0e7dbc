"""The features a representation measure reads: the penultimate (or first) layer of a network.

**The penultimate layer** of a network is the input of its last weight layer (an ``nn.Linear`` or
``nn.Conv1d/2d/3d`` module, the last one to run in the forward pass), flattened per example, read
with a forward hook. It is defined when that layer runs once per forward pass, its input and
output have the batch as their first dimension, and it has one output (unit or channel) per
logit, i.e. it is the classification head; otherwise :func:`feature_layer` raises
``UnsupportedLayerError`` naming the layer and the reason. The first layer's output is what
Natekar & Sharma's code clusters (max-pooled over 4×4 windows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.errors import UnsupportedLayerError
from genmeasures.measures.context import MeasureContext
from genmeasures.models.probe import WEIGHT_TYPES

__all__ = [
    "FIRST_LAYER_POOL",
    "LAYERS",
    "FeatureLayer",
    "feature_batches",
    "feature_layer",
    "features_of",
    "first_argument",
]

#: Which layer's features a measure reads: the input of the last weight layer, or (the Natekar
#: & Sharma code's choice for the Davies-Bouldin index) the output of the first one.
LAYERS = ("penultimate", "first")

#: Natekar & Sharma max-pool the first layer's feature maps over 4×4 windows before clustering.
FIRST_LAYER_POOL = 4


@dataclass(frozen=True)
class FeatureLayer:
    """The weight layer whose input (penultimate) or output (first) is read as the features.

    Attributes:
        which: ``"penultimate"`` (the layer's input) or ``"first"`` (its output).
        name: The module's path in ``ctx.model``.
        module: The module.
    """

    which: str
    name: str
    module: nn.Module

    @property
    def reads_output(self) -> bool:
        """Whether the features are the layer's output (else its input)."""
        return self.which == "first"

    def describe(self) -> str:
        """How results and messages name it: ``input of `out` (Linear)``."""
        what = "output" if self.reads_output else "input"
        return f"{what} of `{self.name}` ({type(self.module).__name__})"


@dataclass(frozen=True)
class _Call:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


def first_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a module was called with first: its input, as a forward hook receives it."""
    return args[0] if args else next(iter(kwargs.values()), None)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _weight_layer_calls(model: nn.Module, inputs: torch.Tensor) -> tuple[list[_Call], Any]:
    """Every call of a Linear or Conv module during one no-grad forward pass, and the output."""
    calls: list[_Call] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_TYPES):

            def hook(
                module: nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                output: Any,
                name: str = name,
            ) -> None:
                calls.append(
                    _Call(name, module, _shape(first_argument(args, kwargs)), _shape(output))
                )

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls, output


def _outputs_per_example(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def feature_layer(ctx: MeasureContext, which: str = "penultimate") -> FeatureLayer:
    """The layer whose features the measures read (module docstring), found once per context.

    Two probe forward passes, on the first one and the first two training examples, record every
    call of a Linear or Conv module.

    Args:
        ctx: The measure context (its training inputs are probed).
        which: ``"penultimate"``: the input of the last weight layer to run; ``"first"``: the
            output of the first one.

    Raises:
        UnsupportedLayerError: naming the model or the layer, when no weight layer runs, when the
            layer runs more than once per forward pass, when the batch is not the first dimension
            of what is read, or (penultimate) when the layer's outputs are not one per logit.
    """
    if which not in LAYERS:
        raise ValueError(f"which must be one of {LAYERS}, got {which!r}")
    return ctx.cached(("representation/layer", which), lambda: _find_layer(ctx, which))


def _find_layer(ctx: MeasureContext, which: str) -> FeatureLayer:
    inputs, _ = ctx.require_data()
    model = ctx.model
    network = type(getattr(model, "network", model)).__name__
    last = which == "penultimate"
    ordinal = "last" if last else "first"
    read = "input" if last else "output"
    probes = {}
    for batch in (2, 1):
        calls, output = _weight_layer_calls(model, inputs[:batch])
        if not calls:
            raise UnsupportedLayerError(
                f"no Linear or Conv module runs in the forward pass of `{network}`: the "
                f"{which}-layer features are the {read} of the {ordinal} one"
            )
        probes[batch] = (calls, output)
    calls, output = probes[2]
    chosen = calls[-1] if last else calls[0]
    name, module = chosen.name, chosen.module
    layer = f"the {ordinal} weight layer `{name}` ({type(module).__name__})"
    runs = sum(call.module is module for call in calls)
    if runs > 1:
        raise UnsupportedLayerError(
            f"{layer} runs {runs} times in one forward pass: its {read} is not one feature "
            "vector per example"
        )
    single = probes[1][0][-1] if last else probes[1][0][0]
    if single.module is not module:
        raise UnsupportedLayerError(
            f"{layer} is not the {ordinal} weight layer to run on a batch of one example "
            f"(`{single.name}` is): the network's layers depend on the batch"
        )
    for batch, call in ((2, chosen), (1, single)):
        shape = call.input_shape if last else call.output_shape
        if shape is None or len(shape) < 2 or shape[0] != batch:
            raise UnsupportedLayerError(
                f"the {read} of {layer} has shape {shape} for a batch of {batch} example(s): "
                "its first dimension is not the batch, so it holds no feature vector per example"
            )
    if last:
        logits = output if isinstance(output, torch.Tensor) else None
        classes = logits.shape[-1] if logits is not None and logits.ndim == 2 else None
        outputs = _outputs_per_example(module)
        if classes is not None and outputs != classes:
            raise UnsupportedLayerError(
                f"{layer} has {outputs} outputs, not one per logit ({classes}): it is not the "
                "network's classification head, so the input of a Linear or Conv head, the "
                "penultimate layer, is not defined for this network"
            )
    return FeatureLayer(which=which, name=name, module=module)


def _pooled(features: torch.Tensor, layer: FeatureLayer) -> torch.Tensor:
    """The first layer's feature maps max-pooled over 4×4 windows (each side at most its size)."""
    if not layer.reads_output or not isinstance(layer.module, nn.modules.conv._ConvNd):
        return features
    spatial = features.shape[2:]
    if not 1 <= len(spatial) <= 3:
        return features
    window = tuple(min(FIRST_LAYER_POOL, side) for side in spatial)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(spatial) - 1]
    return pool(features, window, window)


def features_of(ctx: MeasureContext, layer: FeatureLayer, inputs: torch.Tensor) -> torch.Tensor:
    """The features of ``inputs`` at ``layer``, flattened per example, in float64.

    The inputs are run through ``ctx.model`` in batches of ``ctx.batch_size``, in eval mode and
    without gradients.
    """
    return torch.cat(list(feature_batches(ctx, layer, inputs)))


def feature_batches(
    ctx: MeasureContext, layer: FeatureLayer, inputs: torch.Tensor
) -> Iterator[torch.Tensor]:
    """:func:`features_of` one batch of ``ctx.batch_size`` at a time (a stream, for big sets)."""
    store: list[torch.Tensor] = []

    def keep(tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise UnsupportedLayerError(f"the {layer.describe()} is not a tensor")
        # A copy in float64: a later in-place operation (ReLU(inplace=True)) must not change it.
        store.append(_pooled(tensor.detach(), layer).flatten(1).to(torch.float64, copy=True))

    if layer.reads_output:
        handle = layer.module.register_forward_hook(lambda m, args, output: keep(output))
    else:
        handle = layer.module.register_forward_pre_hook(
            lambda m, args, kwargs: keep(first_argument(args, kwargs)), with_kwargs=True
        )
    try:
        for start in range(0, len(inputs), ctx.batch_size):
            store.clear()
            with torch.no_grad():
                ctx.model(inputs[start : start + ctx.batch_size])
            yield store[-1]
    finally:
        handle.remove()
