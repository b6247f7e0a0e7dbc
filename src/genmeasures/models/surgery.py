"""The network the measures see: weight layers in forward order and BatchNorm folding.

Implements MEASURES.md §1.2 and §2.2. Jiang et al. 2020 (appendix C.1) remove batch normalization
before computing any measure by fusing its scale, shift and running statistics into the
convolution that precedes it; :func:`fold_batchnorm` does this on a copy of the model and replaces
each BatchNorm by ``nn.Identity``. :func:`weight_layers` then lists every ``nn.Linear`` and
``nn.Conv1d/2d/3d`` in data-flow order, with the geometry and the input shape the measures need
(kernel area ``k_i²``, channels ``c_i``, the operator spectral norm at the layer's real input size).

Forward order and input shapes come from forward hooks during one eval-mode, no-grad forward pass of
a zero tensor of shape ``(1, *input_shape)``; the pair "layer → BatchNorm" is read from the
``torch.fx`` graph, or from forward hooks when the model cannot be traced.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from genmeasures.errors import ModelError, UnsupportedLayerError

__all__ = [
    "ConvGeometry",
    "WeightLayer",
    "fold_batchnorm",
    "uses_piecewise_linear_activations",
    "weight_layers",
]

_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)
_BN_FOR = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


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


def _describe(path: str, module: nn.Module) -> str:
    return f"'{path}' ({type(module).__name__})"


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


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, received {type(model).__name__}.")


def _check_supported(model: nn.Module) -> None:
    """Raise for a module the measures cannot see through (MEASURES.md §1.2)."""
    for path, module in model.named_modules():
        if isinstance(module, _WEIGHT_TYPES + _BN_TYPES) and parametrize.is_parametrized(module):
            raise UnsupportedLayerError(
                f"module {_describe(path, module)} has a registered parametrization; remove it "
                "(torch.nn.utils.parametrize.remove_parametrizations) before computing measures."
            )
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, _WEIGHT_TYPES + _BN_TYPES):
            extra = sorted(set(own) - {"weight", "bias"})
            if extra:
                raise UnsupportedLayerError(
                    f"module {_describe(path, module)} has re-parametrized weights (parameters "
                    f"{extra}, e.g. weight_norm); only plain 'weight' and 'bias' are supported."
                )
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in own.values()):
                raise ModelError(
                    f"module {_describe(path, module)} is a lazy module that was never run; "
                    "run one forward pass to initialize it."
                )
        elif own:
            raise UnsupportedLayerError(
                f"module {_describe(path, module)} has its own parameters {sorted(own)}; only "
                "Linear, Conv1d/2d/3d and BatchNorm1d/2d/3d layers are supported by the measures."
            )


def _resolve_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
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
class _Call:
    """One call of a watched module during the probe forward pass."""

    module: nn.Module
    input: torch.Tensor
    input_version: int
    output: Any
    output_version: int


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else next(iter(kwargs.values()), None)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def _probe_input(model: nn.Module, shape: tuple[int, ...], batch: int) -> torch.Tensor:
    tensors = [*model.parameters(), *model.buffers()]
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is None:
        return torch.zeros((batch, *shape))
    return torch.zeros((batch, *shape), dtype=reference.dtype, device=reference.device)


def _record_calls(
    model: nn.Module, shape: tuple[int, ...], watched: Sequence[nn.Module]
) -> list[_Call]:
    """Run one eval-mode, no-grad forward pass of zeros and record each call of ``watched``."""
    calls: list[_Call] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        inp = _first_tensor(args, kwargs)
        calls.append(
            _Call(
                module=module,
                input=inp,
                input_version=getattr(inp, "_version", -1),
                output=output,
                output_version=getattr(output, "_version", -1),
            )
        )

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in watched]
    x = _probe_input(model, shape, batch=1)
    try:
        with _eval_mode(model), torch.no_grad():
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
    _check_model(model)
    _check_supported(model)
    shape = _resolve_shape(model, input_shape)
    named = [(path, m) for path, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]
    if shape is None:
        paths: dict[int, str] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, _WEIGHT_TYPES) and paths.setdefault(id(module), path) != path:
                raise UnsupportedLayerError(
                    f"weight layer {_describe(paths[id(module)], module)} is also registered as "
                    f"'{path}' (weight sharing), which the measures do not support."
                )
        return [_make_layer(path, m, None) for path, m in named]
    calls = _record_calls(model, shape, [m for _, m in named])
    path_of = {id(m): path for path, m in named}
    counts = Counter(id(call.module) for call in calls)
    for path, module in named:
        if counts[id(module)] == 0:
            raise ModelError(
                f"weight layer {_describe(path, module)} is not used by the forward pass of an "
                f"input of shape {shape}; remove unused layers before computing measures."
            )
        if counts[id(module)] > 1:
            raise UnsupportedLayerError(
                f"weight layer {_describe(path, module)} is called {counts[id(module)]} times in "
                "one forward pass (weight sharing), which the measures do not support."
            )
    return [
        _make_layer(path_of[id(call.module)], call.module, tuple(call.input.shape[1:]))
        for call in calls
    ]


def _make_layer(path: str, module: nn.Module, input_shape: tuple[int, ...] | None) -> WeightLayer:
    geometry = None if isinstance(module, nn.Linear) else ConvGeometry.from_module(module)
    return WeightLayer(path, module, _kind(module), geometry, input_shape)


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps every weight layer and BatchNorm as one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _WEIGHT_TYPES + _BN_TYPES) or super().is_leaf_module(
            m, module_qualified_name
        )


def _describe_node(model: nn.Module, node: object) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return "the network's input"
    if node.op == "call_module":
        return f"the output of module {_describe(node.target, model.get_submodule(node.target))}"
    if node.op == "call_method":
        return f"the result of Tensor.{node.target}"
    return f"the result of {getattr(node.target, '__name__', node.target)}"


def _unfoldable(path: str, bn: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"BatchNorm {_describe(path, bn)} cannot be folded: {why}.")


def _pairs_from_graph(
    model: nn.Module, graph: fx.Graph, bns: Sequence[tuple[str, nn.Module]]
) -> dict[str, str]:
    """Map each BatchNorm path to the path of the weight layer it folds into, from the fx graph."""
    nodes = [node for node in graph.nodes if node.op == "call_module"]
    counts = Counter(node.target for node in nodes)
    pairs = {}
    for path, bn in bns:
        bn_nodes = [node for node in nodes if node.target == path]
        if not bn_nodes:
            raise ModelError(
                f"BatchNorm {_describe(path, bn)} is not used by the forward pass; remove it."
            )
        if len(bn_nodes) > 1:
            raise _unfoldable(path, bn, f"it is called {len(bn_nodes)} times in one forward pass")
        node = bn_nodes[0]
        src = node.args[0] if node.args else node.kwargs.get("input")
        if not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(model.get_submodule(src.target), _WEIGHT_TYPES)
        ):
            raise _unfoldable(
                path,
                bn,
                f"its input is {_describe_node(model, src)}, not directly the output of a "
                "Linear/Conv layer (e.g. a pre-activation BatchNorm placed before its convolution)",
            )
        layer = model.get_submodule(src.target)
        if len(src.users) > 1:
            others = ", ".join(str(user.name) for user in src.users if user is not node)
            raise _unfoldable(
                path,
                bn,
                f"the output of its input layer {_describe(src.target, layer)} is also used by "
                f"{others}",
            )
        if counts[src.target] > 1:
            raise _unfoldable(
                path,
                bn,
                f"its input layer {_describe(src.target, layer)} is called {counts[src.target]} "
                "times in one forward pass (weight sharing)",
            )
        pairs[path] = src.target
    return pairs


def _pairs_from_calls(
    calls: Sequence[_Call], bns: Sequence[tuple[str, nn.Module]], path_of: dict[int, str]
) -> dict[str, str]:
    """Map each BatchNorm path to its weight layer's path, from tensor identity in forward hooks."""
    produced = {id(call.output): call for call in calls if isinstance(call.module, _WEIGHT_TYPES)}
    counts = Counter(id(call.module) for call in calls)
    pairs: dict[str, str] = {}
    for path, bn in bns:
        bn_calls = [call for call in calls if call.module is bn]
        if not bn_calls:
            raise ModelError(
                f"BatchNorm {_describe(path, bn)} is not used by the forward pass; remove it."
            )
        if len(bn_calls) > 1:
            raise _unfoldable(path, bn, f"it is called {len(bn_calls)} times in one forward pass")
        call = bn_calls[0]
        src = produced.get(id(call.input))
        if src is None or src.output is not call.input:
            raise _unfoldable(
                path,
                bn,
                "its input is not directly the output of a Linear/Conv layer (e.g. a "
                "pre-activation BatchNorm placed before its convolution)",
            )
        layer_path = path_of[id(src.module)]
        if src.output_version != call.input_version:
            raise _unfoldable(
                path,
                bn,
                f"the output of {_describe(layer_path, src.module)} is modified in place before "
                "it reaches the BatchNorm",
            )
        if layer_path in pairs.values():
            raise _unfoldable(
                path,
                bn,
                f"the output of {_describe(layer_path, src.module)} also feeds another BatchNorm",
            )
        if counts[id(src.module)] > 1:
            raise _unfoldable(
                path,
                bn,
                f"its input layer {_describe(layer_path, src.module)} is called "
                f"{counts[id(src.module)]} times in one forward pass (weight sharing)",
            )
        pairs[path] = layer_path
    return pairs


def _check_pair(
    bn_path: str, bn: nn.Module, layer_path: str, layer: nn.Module, calls: Sequence[_Call] | None
) -> None:
    """Check that ``bn`` normalizes exactly the output channels of ``layer``."""
    expected = next(bn_type for cls, bn_type in _BN_FOR.items() if isinstance(layer, cls))
    if not isinstance(bn, expected):
        raise _unfoldable(bn_path, bn, f"a {type(layer).__name__} output needs {expected.__name__}")
    channels = layer.weight.shape[0]
    if bn.num_features != channels:
        raise _unfoldable(
            bn_path,
            bn,
            f"num_features={bn.num_features} but {_describe(layer_path, layer)} has {channels} "
            "output channels",
        )
    if isinstance(layer, nn.Linear) and calls is not None:
        output = next(call.output for call in calls if call.module is layer)
        if output.dim() != 2:
            raise _unfoldable(
                bn_path,
                bn,
                f"the output of {_describe(layer_path, layer)} has shape {tuple(output.shape)}; "
                "BatchNorm1d then normalizes dimension 1, not the Linear layer's features",
            )


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Merge an eval-mode BatchNorm into the layer before it (float64, written in layer dtype)."""
    weight = layer.weight
    f64 = {"dtype": torch.float64, "device": weight.device}
    mean = bn.running_mean.to(**f64)
    var = bn.running_var.to(**f64)
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.to(**f64)
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.to(**f64)
    bias = torch.zeros_like(mean) if layer.bias is None else layer.bias.to(**f64)
    scale = gamma / torch.sqrt(var + bn.eps)
    new_weight = weight.to(**f64) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * scale + beta
    weight.copy_(new_weight.to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _replace(model: nn.Module, target: nn.Module) -> None:
    """Replace every registration of ``target`` in ``model`` by ``nn.Identity()``."""
    paths = [p for p, m in model.named_modules(remove_duplicate=False) if m is target]
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, nn.Identity())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _verify_same_function(original: nn.Module, folded: nn.Module, shape: tuple[int, ...]) -> None:
    """Check on a random float64 input that folding kept the eval-mode function (hook fallback)."""
    ref = copy.deepcopy(original).double().eval()
    new = copy.deepcopy(folded).double().eval()
    device = _probe_input(ref, shape, batch=1).device
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((2, *shape), generator=generator, dtype=torch.float64, device=device)
    with torch.no_grad():
        expected, received = _tensors(ref(x)), _tensors(new(x))
    for a, b in zip(expected, received, strict=True):
        scale = float(a.abs().max()) if a.numel() else 0.0
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale):
            raise UnsupportedLayerError(
                "folding the BatchNorms changed the network's output (the model cannot be traced "
                "with torch.fx, and some Linear/Conv output feeding a BatchNorm is also used "
                "elsewhere); this architecture is not supported."
            )


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every BatchNorm merged into the layer before it.

    Jiang et al. 2020, appendix C.1, and MEASURES.md §1.2. For a BatchNorm whose input is directly
    the output of a Linear/Conv layer L (nothing in between in the forward graph, and L's output
    used by nothing else), with per-channel scale ``s = γ / sqrt(running_var + eps)`` (``γ = 1``
    if ``affine=False``)::

        W_L ← W_L · s          (output channel o scaled by s[o])
        b_L ← (b_L − μ) · s + β  (b_L = 0 if L had no bias: folding creates a bias parameter)

    and the BatchNorm is replaced by ``nn.Identity()``. The arithmetic is done in float64 and
    written back in the layer's dtype. The caller's model is never modified. A model without
    BatchNorm is returned as an eval-mode deep copy.

    The pair (L, BatchNorm) is read from the ``torch.fx`` graph (weight layers and BatchNorms kept
    as leaves). If the model cannot be traced (data-dependent control flow), forward hooks check
    that the BatchNorm's input tensor *is* L's output tensor, unmodified; as hooks cannot see other
    uses of that tensor, the folded model's output is then compared with the original's on a
    random float64 input. With an input shape (the argument or ``model.input_shape``), hooks also
    check that a Linear layer feeding a BatchNorm1d has 2-d output; without one this is assumed.

    Args:
        model: The network.
        input_shape: Shape of one input example without the batch dimension; defaults to
            ``getattr(model, "input_shape", None)``. Required only if fx tracing fails.

    Returns:
        The folded model, a new module in eval mode without BatchNorm modules.

    Raises:
        UnsupportedLayerError: If a BatchNorm cannot be folded: its input is not directly a
            Linear/Conv output (e.g. a pre-activation BatchNorm before its conv), it has
            ``track_running_stats=False``, its type or ``num_features`` does not match the layer,
            it or its layer is used twice. The message names the BatchNorm's module path.
        ModelError: If ``model`` is not a module, a BatchNorm is unused, the forward pass fails, or
            the model cannot be traced and no input shape is known.
    """
    _check_model(model)
    folded = copy.deepcopy(model).eval()
    bns = [(path, m) for path, m in folded.named_modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return folded
    for path, bn in bns:
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            raise _unfoldable(
                path,
                bn,
                "it has no running statistics (track_running_stats=False), so it "
                "normalizes with batch statistics even in eval mode",
            )
    shape = _resolve_shape(folded, input_shape)
    weights = [(p, m) for p, m in folded.named_modules() if isinstance(m, _WEIGHT_TYPES)]
    path_of = {id(m): p for p, m in weights}
    watched = [m for _, m in weights] + [bn for _, bn in bns]
    calls = None if shape is None else _record_calls(folded, shape, watched)
    try:
        graph: fx.Graph | None = _LeafTracer().trace(folded)
        trace_error = ""
    except Exception as exc:
        graph, trace_error = None, f"{type(exc).__name__}: {exc}"
    if graph is not None:
        pairs = _pairs_from_graph(folded, graph, bns)
    elif calls is not None:
        pairs = _pairs_from_calls(calls, bns, path_of)
    else:
        raise ModelError(
            f"the model cannot be traced with torch.fx ({trace_error}) and no input shape is known "
            "for the forward-hook fallback; pass input_shape."
        )
    for bn_path, bn in bns:
        layer = folded.get_submodule(pairs[bn_path])
        _check_pair(bn_path, bn, pairs[bn_path], layer, calls)
    for bn_path, bn in bns:
        _fold_into(folded.get_submodule(pairs[bn_path]), bn)
        _replace(folded, bn)
    if graph is None and shape is not None:
        _verify_same_function(model, folded, shape)
    return folded.eval()


_PIECEWISE_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Sequential,
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Hardtanh,
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
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
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
_SMOOTH_FUNCTIONS = {
    torch.tanh,
    torch.sigmoid,
    torch.exp,
    torch.log,
    torch.erf,
    torch.sqrt,
    torch.rsqrt,
    torch.pow,
    torch.softmax,
    torch.log_softmax,
    F.tanh,
    F.sigmoid,
    F.gelu,
    F.silu,
    F.mish,
    F.softplus,
    F.elu,
    F.selu,
    F.celu,
    F.logsigmoid,
    F.hardswish,
    F.softmax,
    F.log_softmax,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
    F.normalize,
    operator.pow,
}
_SMOOTH_METHODS = {
    "tanh",
    "sigmoid",
    "exp",
    "log",
    "erf",
    "sqrt",
    "rsqrt",
    "pow",
    "softmax",
    "log_softmax",
}


def uses_piecewise_linear_activations(model: nn.Module) -> bool:
    """Return whether the eval-mode forward of ``model`` is piecewise linear in its input.

    True when every leaf module (one without children) is an affine or piecewise-linear layer
    (Linear, Conv, eval-mode BatchNorm, ReLU, LeakyReLU, PReLU, Hardtanh, max/avg pooling, flatten,
    dropout, identity, constant padding) or a class with ``piecewise_linear = True`` (such as
    :class:`~genmeasures.models.builders.AddChannelDim`). Any other leaf module (Tanh, Sigmoid,
    GELU, Softplus, SiLU, ELU, LayerNorm, unknown custom modules) gives False. When the model can
    be traced with ``torch.fx``, functional calls in custom ``forward`` methods are also checked
    against a list of smooth functions (``torch.tanh``, ``F.gelu``, ``x.exp()``...); an untraceable
    model is judged by its modules only.

    Args:
        model: The network.

    Returns:
        Whether the network is piecewise linear (for example, the GGN diagonal then equals the
        Hessian diagonal, NORMALIZED_SHARPNESS.md).
    """
    _check_model(model)
    for module in model.modules():
        leaf = next(module.children(), None) is None
        allowed = isinstance(module, _PIECEWISE_LINEAR_MODULES) or getattr(
            type(module), "piecewise_linear", False
        )
        if leaf and not allowed:
            return False
    try:
        graph = fx.Tracer().trace(model)
    except Exception:
        return True
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _SMOOTH_FUNCTIONS:
            return False
        if node.op == "call_method" and str(node.target).rstrip("_") in _SMOOTH_METHODS:
            return False
    return True
