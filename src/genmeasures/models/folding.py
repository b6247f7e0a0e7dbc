"""BatchNorm folding (Jiang et al. 2020, appendix C.1; MEASURES.md §1.2).

Jiang et al. remove batch normalization before computing any measure by fusing its scale, shift and
running statistics into the Linear/Conv layer that precedes it; :func:`fold_batchnorm` does this on
a copy of the model and replaces each BatchNorm by ``nn.Identity``. The pair "layer → BatchNorm" is
read from the ``torch.fx`` graph, or from the probe forward pass's hooks
(:mod:`genmeasures.models.probe`) when the model cannot be traced.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from genmeasures.errors import ModelError, UnsupportedLayerError
from genmeasures.models.probe import (
    BN_TYPES,
    WEIGHT_TYPES,
    Call,
    check_model,
    describe,
    probe_input,
    record_calls,
    resolve_shape,
)

__all__ = ["fold_batchnorm"]

_BN_FOR = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps every weight layer and BatchNorm as one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, WEIGHT_TYPES + BN_TYPES) or super().is_leaf_module(
            m, module_qualified_name
        )


def _describe_node(model: nn.Module, node: object) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return "the network's input"
    if node.op == "call_module":
        return f"the output of module {describe(node.target, model.get_submodule(node.target))}"
    if node.op == "call_method":
        return f"the result of Tensor.{node.target}"
    return f"the result of {getattr(node.target, '__name__', node.target)}"


def _unfoldable(path: str, bn: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"BatchNorm {describe(path, bn)} cannot be folded: {why}.")


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
                f"BatchNorm {describe(path, bn)} is not used by the forward pass; remove it."
            )
        if len(bn_nodes) > 1:
            raise _unfoldable(path, bn, f"it is called {len(bn_nodes)} times in one forward pass")
        node = bn_nodes[0]
        src = node.args[0] if node.args else node.kwargs.get("input")
        if not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(model.get_submodule(src.target), WEIGHT_TYPES)
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
                f"the output of its input layer {describe(src.target, layer)} is also used by "
                f"{others}",
            )
        if counts[src.target] > 1:
            raise _unfoldable(
                path,
                bn,
                f"its input layer {describe(src.target, layer)} is called {counts[src.target]} "
                "times in one forward pass (weight sharing)",
            )
        pairs[path] = src.target
    return pairs


def _pairs_from_calls(
    calls: Sequence[Call], bns: Sequence[tuple[str, nn.Module]], path_of: dict[int, str]
) -> dict[str, str]:
    """Map each BatchNorm path to its weight layer's path, from tensor identity in forward hooks."""
    produced = {id(call.output): call for call in calls if isinstance(call.module, WEIGHT_TYPES)}
    counts = Counter(id(call.module) for call in calls)
    pairs: dict[str, str] = {}
    for path, bn in bns:
        bn_calls = [call for call in calls if call.module is bn]
        if not bn_calls:
            raise ModelError(
                f"BatchNorm {describe(path, bn)} is not used by the forward pass; remove it."
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
                f"the output of {describe(layer_path, src.module)} is modified in place before "
                "it reaches the BatchNorm",
            )
        if layer_path in pairs.values():
            raise _unfoldable(
                path,
                bn,
                f"the output of {describe(layer_path, src.module)} also feeds another BatchNorm",
            )
        if counts[id(src.module)] > 1:
            raise _unfoldable(
                path,
                bn,
                f"its input layer {describe(layer_path, src.module)} is called "
                f"{counts[id(src.module)]} times in one forward pass (weight sharing)",
            )
        pairs[path] = layer_path
    return pairs


def _check_pair(
    bn_path: str, bn: nn.Module, layer_path: str, layer: nn.Module, calls: Sequence[Call] | None
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
            f"num_features={bn.num_features} but {describe(layer_path, layer)} has {channels} "
            "output channels",
        )
    if isinstance(layer, nn.Linear) and calls is not None:
        output = next(call.output for call in calls if call.module is layer)
        if output.dim() != 2:
            raise _unfoldable(
                bn_path,
                bn,
                f"the output of {describe(layer_path, layer)} has shape {tuple(output.shape)}; "
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
    device = probe_input(ref, shape, batch=1).device
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
    check_model(model)
    folded = copy.deepcopy(model).eval()
    bns = [(path, m) for path, m in folded.named_modules() if isinstance(m, BN_TYPES)]
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
    shape = resolve_shape(folded, input_shape)
    weights = [(p, m) for p, m in folded.named_modules() if isinstance(m, WEIGHT_TYPES)]
    path_of = {id(m): p for p, m in weights}
    watched = [m for _, m in weights] + [bn for _, bn in bns]
    calls = None if shape is None else record_calls(folded, shape, watched)
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
