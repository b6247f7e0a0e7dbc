"""The weight layers the measures see, in forward order (MEASURES.md §1.2, §2.2).

:func:`weight_layers` lists every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` in data-flow order as
:class:`WeightLayer` records with the geometry and the input shape the measures need (kernel area
``k_i²``, channels ``c_i``, the operator spectral norm at the layer's real input size). Forward
order and input shapes come from the probe forward pass (:mod:`genmeasures.models.probe`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from genmeasures.errors import ModelError, UnsupportedLayerError
from genmeasures.models.probe import (
    BN_TYPES,
    WEIGHT_TYPES,
    check_model,
    describe,
    record_calls,
    resolve_shape,
)

__all__ = ["ConvGeometry", "WeightLayer", "weight_layers"]

_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)


def _kind(module: nn.Module) -> str:
    for cls, kind in (
        (nn.Linear, "linear"),
        (nn.Conv1d, "conv1d"),
        (nn.Conv2d, "conv2d"),
        (nn.Conv3d, "conv3d"),
    ):
        if isinstance(module, cls):
            return kind
    raise AssertionError(f"not a weight layer: {type(module).__name__}")


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the kernel that defines a convolution, with padding resolved to integers.

    Attributes:
        kernel_size: Kernel size per spatial dimension.
        stride: Stride per spatial dimension.
        padding: ``(before, after)`` padding per spatial dimension, in the order of the spatial
            dimensions. String paddings are resolved as PyTorch does: ``'valid'`` is no padding;
            ``'same'`` pads ``dilation·(kernel−1)`` in total, ``total // 2`` before and the rest
            after (asymmetric for even kernels).
        dilation: Dilation per spatial dimension.
        groups: Number of groups.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
    """

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str

    @classmethod
    def from_module(cls, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> ConvGeometry:
        """Read the geometry of a ``nn.Conv1d/2d/3d``."""
        kernel = tuple(int(k) for k in conv.kernel_size)
        dilation = tuple(int(d) for d in conv.dilation)
        if conv.padding == "valid":
            padding = tuple((0, 0) for _ in kernel)
        elif conv.padding == "same":
            totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
            padding = tuple((t // 2, t - t // 2) for t in totals)
        else:
            padding = tuple((int(p), int(p)) for p in conv.padding)
        return cls(
            kernel_size=kernel,
            stride=tuple(int(s) for s in conv.stride),
            padding=padding,
            dilation=dilation,
            groups=int(conv.groups),
            padding_mode=str(conv.padding_mode),
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (1, 2 or 3)."""
        return len(self.kernel_size)

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for an input of spatial size ``spatial``."""
        return tuple(
            (n + before + after - d * (k - 1) - 1) // s + 1
            for n, (before, after), d, k, s in zip(
                spatial, self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )

    def conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the convolution with kernel ``weight`` (and ``bias``) to the batch ``x``.

        This reproduces the module's forward exactly for every padding mode, so that it can be used
        with another kernel (for example ``W − W⁰``) or in float64.
        """
        conv_fn = _CONV_FUNCTIONS[self.ndim - 1]
        before = tuple(p[0] for p in self.padding)
        after = tuple(p[1] for p in self.padding)
        if self.padding_mode == "zeros" and before == after:
            return conv_fn(x, weight, bias, self.stride, before, self.dilation, self.groups)
        pad = [v for pair in reversed(self.padding) for v in pair]
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return conv_fn(
            F.pad(x, pad, mode=mode), weight, bias, self.stride, 0, self.dilation, self.groups
        )


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer (``nn.Linear`` or ``nn.Conv1d/2d/3d``) of a network.

    Attributes:
        name: Module path in the model (as in ``named_modules()``).
        module: The layer itself (not a copy: its tensors are the model's).
        kind: ``'linear'``, ``'conv1d'``, ``'conv2d'`` or ``'conv3d'``.
        geometry: The convolution's geometry; ``None`` for a Linear layer.
        input_shape: Shape of one input example to this layer, without the batch dimension,
            recorded with forward hooks; ``None`` if no input shape was available.
    """

    name: str
    module: nn.Module
    kind: str
    geometry: ConvGeometry | None
    input_shape: tuple[int, ...] | None

    @property
    def weight(self) -> torch.Tensor:
        """The weight tensor in PyTorch layout (output channels first)."""
        return self.module.weight

    @property
    def matrix(self) -> torch.Tensor:
        """The weight viewed as an ``out × (in/groups · kernel area)`` matrix (MEASURES.md §1.4)."""
        weight = self.weight
        return weight.reshape(weight.shape[0], -1)

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias, or ``None`` if the layer has none."""
        return self.module.bias

    @property
    def kernel_area(self) -> int:
        """``k_i²`` of MEASURES.md §2.2: product of the kernel dimensions; 1 for a Linear layer."""
        return 1 if self.geometry is None else math.prod(self.geometry.kernel_size)


def _check_supported(model: nn.Module) -> None:
    """Raise for a module the measures cannot see through (MEASURES.md §1.2)."""
    for path, module in model.named_modules():
        if isinstance(module, WEIGHT_TYPES + BN_TYPES) and parametrize.is_parametrized(module):
            raise UnsupportedLayerError(
                f"module {describe(path, module)} has a registered parametrization; remove it "
                "(torch.nn.utils.parametrize.remove_parametrizations) before computing measures."
            )
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, WEIGHT_TYPES + BN_TYPES):
            extra = sorted(set(own) - {"weight", "bias"})
            if extra:
                raise UnsupportedLayerError(
                    f"module {describe(path, module)} has re-parametrized weights (parameters "
                    f"{extra}, e.g. weight_norm); only plain 'weight' and 'bias' are supported."
                )
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in own.values()):
                raise ModelError(
                    f"module {describe(path, module)} is a lazy module that was never run; "
                    "run one forward pass to initialize it."
                )
        elif own:
            raise UnsupportedLayerError(
                f"module {describe(path, module)} has its own parameters {sorted(own)}; only "
                "Linear, Conv1d/2d/3d and BatchNorm1d/2d/3d layers are supported by the measures."
            )


def weight_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[WeightLayer]:
    """List the weight layers of ``model`` in forward (data-flow) order (MEASURES.md §1.2, §2.2).

    A weight layer is an ``nn.Linear`` or ``nn.Conv1d/2d/3d``; BatchNorm, pooling, dropout and
    activations are not. Call it on the folded model (:func:`fold_batchnorm`) for the measures.

    The order and each layer's input shape come from forward hooks during one eval-mode, no-grad
    forward pass of a zero tensor of shape ``(1, *input_shape)`` (the model's train/eval modes are
    restored afterwards). If no input shape is known (neither the argument nor
    ``model.input_shape``), the layers are listed in registration order (``named_modules()``) with
    ``input_shape=None``; that order is the data-flow order only for simple sequential models.

    Args:
        model: The network.
        input_shape: Shape of one input example without the batch dimension; defaults to
            ``getattr(model, "input_shape", None)``.

    Returns:
        One :class:`WeightLayer` per weight layer, in forward order.

    Raises:
        UnsupportedLayerError: If a module other than Linear, Conv1d/2d/3d and BatchNorm1d/2d/3d
            has its own parameters (LayerNorm, GroupNorm, ConvTranspose, Embedding, attention,
            custom modules with ``nn.Parameter``), if a weight layer is re-parametrized, or if a
            weight layer is used more than once (weight sharing). The message names the module
            path and type.
        ModelError: If ``model`` is not a module, the input shape is invalid, the forward pass
            fails, or a weight layer is not used by the forward pass.
    """
    check_model(model)
    _check_supported(model)
    shape = resolve_shape(model, input_shape)
    named = [(path, m) for path, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]
    if shape is None:
        paths: dict[int, str] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, WEIGHT_TYPES) and paths.setdefault(id(module), path) != path:
                raise UnsupportedLayerError(
                    f"weight layer {describe(paths[id(module)], module)} is also registered as "
                    f"'{path}' (weight sharing), which the measures do not support."
                )
        return [_make_layer(path, m, None) for path, m in named]
    calls = record_calls(model, shape, [m for _, m in named])
    path_of = {id(m): path for path, m in named}
    counts = Counter(id(call.module) for call in calls)
    for path, module in named:
        if counts[id(module)] == 0:
            raise ModelError(
                f"weight layer {describe(path, module)} is not used by the forward pass of an "
                f"input of shape {shape}; remove unused layers before computing measures."
            )
        if counts[id(module)] > 1:
            raise UnsupportedLayerError(
                f"weight layer {describe(path, module)} is called {counts[id(module)]} times in "
                "one forward pass (weight sharing), which the measures do not support."
            )
    return [
        _make_layer(path_of[id(call.module)], call.module, tuple(call.input.shape[1:]))
        for call in calls
    ]


def _make_layer(path: str, module: nn.Module, input_shape: tuple[int, ...] | None) -> WeightLayer:
    geometry = None if isinstance(module, nn.Linear) else ConvGeometry.from_module(module)
    return WeightLayer(path, module, _kind(module), geometry, input_shape)
