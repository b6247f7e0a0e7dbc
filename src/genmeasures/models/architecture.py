"""What kind of network a model is: the analysis the measures' domains are checked against.

:func:`describe` reads a network once and returns an :class:`Architecture`: its weight layers
(Linear, Conv1d/2d/3d, the projections of ``nn.MultiheadAttention``, embeddings, and any other
module's own weight matrices), the connections that make it more than a chain of layers (residual
additions, concatenations, multiplicative gates, attention, weight sharing), its normalization
layers (foldable BatchNorm or not, LayerNorm, GroupNorm, RMSNorm...) and its activations (positively
homogeneous or not). Each measure declares the networks where its definition holds
(:data:`REQUIREMENTS`); :meth:`Architecture.violation` says why a network is outside one.

The network is read from a ``torch.fx`` trace (weight layers, normalizations and attention kept as
leaves). When the model cannot be traced (data-dependent control flow), forward hooks on its leaf
modules are the fallback: one eval-mode float64 forward pass of a random input, and the network is
a chain only if each module's input equals (up to a reshape, or a ReLU) the previous module's
output, the first module's the network's input and the network's output the last module's.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from genmeasures.errors import ModelError
from genmeasures.models.probe import (
    BN_TYPES,
    WEIGHT_TYPES,
    check_model,
    eval_mode,
    probe_input,
    resolve_shape,
)

__all__ = [
    "REQUIREMENTS",
    "Activation",
    "Architecture",
    "Connection",
    "LayerInfo",
    "Normalization",
    "describe",
]

#: The domains a measure can declare, from the widest: any differentiable network; a network with
#: weight matrices; a chain of layers; a network of positively homogeneous units.
REQUIREMENTS = ("differentiable", "weights", "chain", "homogeneous")

#: What each requirement asks, as messages say it.
REQUIREMENT_TEXT = {
    "differentiable": "any differentiable network",
    "weights": "a network with weight matrices",
    "chain": (
        "a chain of layers (weight layers connected only through elementwise activations, "
        "pooling, reshapes, dropout and foldable BatchNorm)"
    ),
    "homogeneous": (
        "a network of positively homogeneous units (ReLU, leaky ReLU, max-pool, identity, "
        "linear maps; no normalization layer, gate or attention)"
    ),
}

_ATTENTION_TYPES = (nn.MultiheadAttention,)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_NORM_TYPES: dict[type[nn.Module], str] = {
    nn.LayerNorm: "layernorm",
    nn.GroupNorm: "groupnorm",
    nn.RMSNorm: "rmsnorm",
    nn.InstanceNorm1d: "instancenorm",
    nn.InstanceNorm2d: "instancenorm",
    nn.InstanceNorm3d: "instancenorm",
    nn.LocalResponseNorm: "local-response-norm",
}
_LEAF_TYPES = WEIGHT_TYPES + BN_TYPES + _ATTENTION_TYPES + _EMBEDDING_TYPES + tuple(_NORM_TYPES)
_HOMOGENEOUS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
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
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
_HOMOGENEOUS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu_,
    F.leaky_relu,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.mean,
    torch.sum,
    torch.amax,
    operator.getitem,
    operator.neg,
    operator.pos,
}
_HOMOGENEOUS_METHODS = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "movedim",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "relu",
    "relu_",
    "mean",
    "sum",
    "amax",
    "clone",
    "detach",
    "to",
    "float",
    "double",
    "half",
    "type",
    "chunk",
    "split",
    "neg",
}
_NON_TENSOR_METHODS = {"size", "dim", "ndimension", "numel", "item", "tolist", "type_as"}
_ADDITIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADDITION_METHODS = {"add", "add_", "sub", "sub_"}
_PRODUCTS = {
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.mul,
    torch.div,
}
_PRODUCT_METHODS = {"mul", "mul_", "div", "div_"}
_MATRIX_PRODUCTS = {operator.matmul, torch.matmul, torch.bmm, torch.mm, torch.einsum, F.linear}
_MATRIX_PRODUCT_METHODS = {"matmul", "bmm", "mm"}
_CONCATENATIONS = {torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack}
#: Operations that make a network more than a chain when they combine two activations.
_COMBINATIONS = (
    (_ADDITIONS, _ADDITION_METHODS, "residual addition"),
    (_PRODUCTS, _PRODUCT_METHODS, "multiplicative gate"),
    (_MATRIX_PRODUCTS, _MATRIX_PRODUCT_METHODS, "attention"),
    (_CONCATENATIONS, set(), "concatenation"),
)
_ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
_NORM_FUNCTIONS = {
    F.layer_norm: "layernorm",
    F.group_norm: "groupnorm",
    F.rms_norm: "rmsnorm",
    F.instance_norm: "instancenorm",
    F.batch_norm: "batchnorm-functional",
    F.normalize: "normalize",
    F.local_response_norm: "local-response-norm",
}
_BN_FOR = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}

#: The note of a layer whose outputs are the network's outputs.
OUTPUT_NOTE = "its outputs are the network's outputs"


@dataclass(frozen=True)
class LayerInfo:
    """One weight layer (or weight matrix) of the network, in forward order.

    Attributes:
        name: Module path; ``path.param`` for a projection of attention or a module's own matrix.
        kind: ``linear``, ``conv1d``, ``conv2d``, ``conv3d``, ``embedding``,
            ``attention-projection`` or ``matrix`` (any other module's own weight matrix).
        module_type: Class name of the module holding it.
        rescaling_symmetry: Whether rescaling this layer's output units (and inversely the next
            layer's inputs) leaves the network's function unchanged: the outputs go through
            positively homogeneous units only to the next weight layers (no normalization, no
            residual mixing, not the network's output).
        note: Why node rescaling is not a symmetry here; empty when it is.
    """

    name: str
    kind: str
    module_type: str
    rescaling_symmetry: bool = False
    note: str = ""

    @property
    def feeds_output(self) -> bool:
        """Whether this layer's outputs are the network's outputs (a last layer)."""
        return self.note == OUTPUT_NOTE


@dataclass(frozen=True)
class Connection:
    """Something that makes the network more than a chain of layers.

    Attributes:
        kind: ``residual addition``, ``concatenation``, ``multiplicative gate``, ``attention``,
            ``weight sharing``, ``non-chain weight layer`` or ``untraced operation``.
        where: The module path where it happens (the innermost module whose forward does it);
            empty for the top-level forward.
        detail: What exactly, for a message.
    """

    kind: str
    where: str
    detail: str = ""

    def message(self) -> str:
        """``residual addition at `layer1.0` (detail)``."""
        where = f"`{self.where}`" if self.where else "the model's top-level forward"
        return f"{self.kind} at {where}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Normalization:
    """One normalization layer.

    Attributes:
        name: Module path (or where the functional call happens).
        kind: ``batchnorm``, ``layernorm``, ``groupnorm``, ``rmsnorm``, ``instancenorm``...
        foldable: Whether it is a BatchNorm that folds into the Linear/Conv layer before it
            (Jiang et al. 2020, appendix C.1), so that the measures see an affine network.
        module_type: The module class (``LayerNorm``), or the function (``F.layer_norm``).
        note: Why a BatchNorm cannot be folded; empty otherwise.
    """

    name: str
    kind: str
    foldable: bool
    module_type: str = ""
    note: str = ""

    def message(self) -> str:
        """``normalization layer `norm1` (LayerNorm)``, with why a BatchNorm does not fold."""
        where = f"`{self.name}`" if self.name else "the model's top-level forward"
        text = f"normalization layer {where} ({self.module_type or self.kind})"
        return text + (f": not foldable, {self.note}" if self.note else "")


@dataclass(frozen=True)
class Activation:
    """One activation, pooling or other pointwise unit between weight layers.

    Attributes:
        name: Module path, or where a functional call happens.
        kind: The module class or function name (``ReLU``, ``tanh``, ``max_pool2d``...).
        homogeneous: Whether it is positively homogeneous, ``σ(αx) = α σ(x)`` for ``α > 0``.
    """

    name: str
    kind: str
    homogeneous: bool


@dataclass(frozen=True)
class Architecture:
    """The analysis of one network (:func:`describe`).

    Attributes:
        weight_layers: The weight layers, in forward order.
        connections: What makes it more than a chain (empty for a chain of Linear/Conv layers).
        normalizations: Its normalization layers.
        activations: Its activations, poolings and other units between weight layers (reshapes
            and dropout excluded).
        method: ``"fx"`` (read from a ``torch.fx`` trace) or ``"hooks"`` (the fallback).
        trace_error: Why tracing failed, for ``"hooks"``.
    """

    weight_layers: tuple[LayerInfo, ...]
    connections: tuple[Connection, ...]
    normalizations: tuple[Normalization, ...]
    activations: tuple[Activation, ...]
    method: str
    trace_error: str = ""

    @property
    def chain_breaks(self) -> list[str]:
        """Why the network is not a chain, one message per reason; empty for a chain."""
        return [c.message() for c in self.connections] + [
            n.message() for n in self.normalizations if not n.foldable
        ]

    @property
    def homogeneity_breaks(self) -> list[str]:
        """Why the network is not made of positively homogeneous units; empty if it is."""
        units = {"multiplicative gate", "attention", "untraced operation", "non-chain weight layer"}
        return (
            [c.message() for c in self.connections if c.kind in units]
            + [n.message() for n in self.normalizations if not n.foldable]
            + [
                f"activation {a.kind} at `{a.name}` is not positively homogeneous"
                for a in self.activations
                if not a.homogeneous
            ]
        )

    @property
    def is_chain(self) -> bool:
        """Weight layers connected only through pointwise units and foldable BatchNorm."""
        return not self.chain_breaks

    @property
    def is_homogeneous(self) -> bool:
        """Made only of positively homogeneous units and linear maps (path-norm's domain)."""
        return not self.homogeneity_breaks

    @property
    def rescaling_invariant(self) -> bool:
        """Whether node rescaling is a symmetry at every hidden weight layer.

        Then normalized sharpness's invariance to node rescaling (Tsuzuku et al. 2020) is an
        invariance of the network's function; a last layer's outputs are never rescaled.
        """
        return self.is_homogeneous and all(
            layer.rescaling_symmetry or layer.feeds_output for layer in self.weight_layers
        )

    def violation(self, requirement: str) -> str | None:
        """Why the network is outside a measure's domain, or None if it is inside.

        Args:
            requirement: One of :data:`REQUIREMENTS`.
        """
        if requirement not in REQUIREMENTS:
            raise ValueError(f"unknown requirement {requirement!r}; one of {REQUIREMENTS}")
        if requirement == "differentiable":
            return None
        if not self.weight_layers:
            return "the network has no weight layer"
        if requirement == "weights":
            return None
        breaks = self.chain_breaks if requirement == "chain" else self.homogeneity_breaks
        return breaks[0] if breaks else None

    def summary(self) -> str:
        """A few lines saying what the network is."""
        kinds = Counter(layer.kind for layer in self.weight_layers)
        lines = [
            f"weight layers: {len(self.weight_layers)} ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items())
            + ")",
            "chain: yes" if self.is_chain else f"chain: no ({'; '.join(self.chain_breaks)})",
            "positively homogeneous: yes"
            if self.is_homogeneous
            else f"positively homogeneous: no ({'; '.join(self.homogeneity_breaks)})",
            f"read from: {self.method}" + (f" ({self.trace_error})" if self.trace_error else ""),
        ]
        return "\n".join(lines)


def describe(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example: torch.Tensor | None = None,
) -> Architecture:
    """Describe a network: weight layers, chain or not, normalizations, activations.

    Args:
        model: The network (never modified).
        input_shape: Shape of one input example without the batch dimension; defaults to
            ``model.input_shape``. Needed only when ``torch.fx`` cannot trace the model; with it,
            a traced graph is also run once on zeros to tell tensors from shapes.
        example: A batch of real inputs for the forward-hook fallback, instead of random float
            inputs of ``input_shape``: needed where the inputs are not real numbers (token ids).

    Returns:
        The :class:`Architecture`.

    Raises:
        ModelError: If ``model`` is not a module, the forward pass fails, or the model cannot be
            traced and no input shape is known for the forward-hook fallback.
    """
    check_model(model)
    shape = resolve_shape(model, input_shape)
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # any tracing failure falls back to hooks
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if shape is None:
            raise ModelError(
                f"the model cannot be traced with torch.fx ({error}) and no input shape is known "
                "for the forward-hook fallback; pass input_shape."
            ) from exc
        return _from_hooks(model, shape, error, example)
    return _GraphReader(model, graph, shape).read()


class _Tracer(fx.Tracer):
    """Keeps weight layers, normalizations, attention and embeddings as ``call_module`` nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAF_TYPES) or super().is_leaf_module(m, module_qualified_name)


def _own_matrices(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]


def _module_layers(path: str, module: nn.Module) -> list[LayerInfo]:
    """The weight layers a module holds (none for a module without weight matrices)."""
    kind = type(module).__name__
    if isinstance(module, WEIGHT_TYPES):
        return [LayerInfo(path, _layer_kind(module), kind)]
    if isinstance(module, _EMBEDDING_TYPES):
        return [LayerInfo(path, "embedding", kind)]
    if isinstance(module, _ATTENTION_TYPES):
        names = [f"{path}.{n}" for n in _own_matrices(module)] + [f"{path}.out_proj"]
        return [LayerInfo(name, "attention-projection", kind) for name in names]
    return [LayerInfo(f"{path}.{n}", "matrix", kind) for n in _own_matrices(module)]


def _layer_kind(module: nn.Module) -> str:
    for cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, cls):
            return cls.__name__.lower()
    raise AssertionError(type(module).__name__)


def _flat_nodes(args: Any) -> list[fx.Node]:
    """The nodes inside a node's arguments (nested lists, tuples and dicts included)."""
    nodes: list[fx.Node] = []
    fx.node.map_arg(args, lambda node: nodes.append(node) or node)
    return nodes


def _function_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "op")


class _GraphReader:
    """Reads an :class:`Architecture` from a ``torch.fx`` graph of the model."""

    def __init__(self, model: nn.Module, graph: fx.Graph, shape: tuple[int, ...] | None) -> None:
        self.model = model
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.tensor = self._tensor_nodes(shape)
        self.dynamic = self._dynamic_nodes()
        self.calls = Counter(n.target for n in self.nodes if n.op == "call_module")
        self.connections: list[Connection] = []
        self.normalizations: list[Normalization] = []
        self.activations: list[Activation] = []
        self.foldable: set[fx.Node] = set()

    # ---------------------------------------------------------------- node properties

    def _tensor_nodes(self, shape: tuple[int, ...] | None) -> set[fx.Node]:
        """The nodes whose value is a tensor: run the graph on zeros, else a heuristic."""
        if shape is not None:
            values: dict[fx.Node, bool] = {}

            class Recorder(fx.Interpreter):
                def run_node(self, n: fx.Node) -> Any:
                    result = super().run_node(n)
                    values[n] = isinstance(result, torch.Tensor)
                    return result

            try:
                with eval_mode(self.model), torch.no_grad():
                    module = fx.GraphModule(self.model, self.graph)
                    Recorder(module).run(probe_input(self.model, shape, batch=1))
                return {n for n, is_tensor in values.items() if is_tensor}
            except Exception:  # a graph that does not run: judge by the heuristic
                pass
        tensors: set[fx.Node] = set()
        for node in self.nodes:
            inputs = _flat_nodes((node.args, node.kwargs))
            if node.op in ("placeholder", "call_module", "get_attr") or (
                node.op != "output"
                and not (node.op == "call_method" and node.target in _NON_TENSOR_METHODS)
                and node.target is not getattr
                and any(i in tensors for i in inputs)
            ):
                tensors.add(node)
        return tensors

    def _dynamic_nodes(self) -> set[fx.Node]:
        """The tensor nodes that depend on the network's input."""
        dynamic: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or (
                node.op != "output"
                and node in self.tensor
                and any(i in dynamic for i in _flat_nodes((node.args, node.kwargs)))
            ):
                dynamic.add(node)
        return dynamic

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        return str(next(reversed(stack))) if stack else ""

    def _dynamic_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [i for i in _flat_nodes((node.args, node.kwargs)) if i in self.dynamic]

    # ---------------------------------------------------------------- reading

    def read(self) -> Architecture:
        """Classify every node, then find each weight layer's rescaling symmetry."""
        layers: list[tuple[fx.Node | None, LayerInfo]] = []
        for node in self.nodes:
            if node.op == "call_module":
                layers += [(node, layer) for layer in self._module(node)]
            elif node.op == "get_attr":
                layers += self._parameter(node)
            elif node.op in ("call_function", "call_method") and node in self.dynamic:
                self._function(node)
        unique = list({layer.name: (n, layer) for n, layer in reversed(layers)}.values())[::-1]
        infos = tuple(self._with_rescaling(node, layer) for node, layer in unique)
        return Architecture(
            weight_layers=infos,
            connections=tuple(self.connections),
            normalizations=tuple(self.normalizations),
            activations=tuple(self.activations),
            method="fx",
        )

    def _module(self, node: fx.Node) -> list[LayerInfo]:
        path = str(node.target)
        module = self.model.get_submodule(path)
        if self.calls[path] > 1 and (_own_matrices(module) or isinstance(module, BN_TYPES)):
            self._connect(
                "weight sharing", node, f"{type(module).__name__} called {self.calls[path]} times"
            )
        if isinstance(module, BN_TYPES):
            self._batchnorm(node, module)
            return []
        if isinstance(module, tuple(_NORM_TYPES)):
            kind = _NORM_TYPES.get(type(module), "normalization")
            self.normalizations.append(Normalization(path, kind, False, type(module).__name__))
            return []
        if isinstance(module, _ATTENTION_TYPES):
            self._connect("attention", node, type(module).__name__)
        layers = _module_layers(path, module)
        if layers and not isinstance(module, WEIGHT_TYPES + _ATTENTION_TYPES):
            self._connect(
                "non-chain weight layer", node, f"{type(module).__name__} is not Linear/Conv"
            )
        if not layers and not isinstance(module, _ATTENTION_TYPES):
            homogeneous = isinstance(module, _HOMOGENEOUS_MODULES)
            self.activations.append(Activation(path, type(module).__name__, homogeneous))
        return layers

    def _batchnorm(self, node: fx.Node, bn: nn.Module) -> None:
        path = str(node.target)
        why = self._unfoldable(node, bn)
        if not why:
            self.foldable.add(node)
        self.normalizations.append(
            Normalization(path, "batchnorm", not why, type(bn).__name__, why)
        )

    def _unfoldable(self, node: fx.Node, bn: nn.Module) -> str:
        """Why a BatchNorm cannot be folded (as :func:`fold_batchnorm` decides), or ''."""
        if not bn.track_running_stats or bn.running_mean is None:
            return "it has no running statistics and normalizes with batch statistics"
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module"):
            return "its input is not directly the output of a Linear/Conv layer"
        layer = self.model.get_submodule(str(source.target))
        if not isinstance(layer, WEIGHT_TYPES):
            return "its input is not directly the output of a Linear/Conv layer"
        if len(source.users) > 1 or self.calls[source.target] > 1 or self.calls[node.target] > 1:
            return f"`{source.target}`'s output is used elsewhere or called twice"
        expected = next(bn_type for cls, bn_type in _BN_FOR.items() if isinstance(layer, cls))
        if not isinstance(bn, expected) or bn.num_features != layer.weight.shape[0]:
            return f"it does not match `{source.target}`'s output channels"
        return ""

    def _parameter(self, node: fx.Node) -> list[tuple[fx.Node | None, LayerInfo]]:
        path = str(node.target)
        owner_path, _, _ = path.rpartition(".")
        value = self.model.get_parameter(path) if self._is_parameter(path) else None
        if value is None or value.dim() < 2:
            return []
        owner = self.model.get_submodule(owner_path)
        self._connect("non-chain weight layer", node, f"`{path}` is a module's own weight matrix")
        return [(None, LayerInfo(path, "matrix", type(owner).__name__))]

    def _is_parameter(self, path: str) -> bool:
        try:
            self.model.get_parameter(path)
        except AttributeError:
            return False
        return True

    def _function(self, node: fx.Node) -> None:
        """Classify a functional operation that depends on the input."""
        target, name = node.target, _function_name(node)
        inputs = self._dynamic_inputs(node)
        for functions, methods, kind in _COMBINATIONS:
            if target in methods if node.op == "call_method" else target in functions:
                if len(inputs) > 1:
                    self._connect(kind, node, f"{name} of {len(inputs)} activations")
                return
        if target in _ATTENTION_FUNCTIONS:
            self._connect("attention", node, name)
        elif target in _NORM_FUNCTIONS:
            self.normalizations.append(
                Normalization(self._where(node), _NORM_FUNCTIONS[target], False, f"F.{name}")
            )
        else:
            self._unary(node, name, inputs)

    def _unary(self, node: fx.Node, name: str, inputs: list[fx.Node]) -> None:
        if len(inputs) > 1:
            self._connect("untraced operation", node, f"{name} combines {len(inputs)} activations")
            return
        if self._reshape_like(node):
            return
        homogeneous = node.target in _HOMOGENEOUS_FUNCTIONS or (
            node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS
        )
        self.activations.append(Activation(self._where(node) or name, name, homogeneous))

    def _reshape_like(self, node: fx.Node) -> bool:
        shaping = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "contiguous"}
        shaping |= {"squeeze", "unsqueeze", "permute", "transpose", "t", "movedim", "clone"}
        shaping |= {"detach", "to", "float", "double", "half", "type"}
        functions = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute}
        functions |= {torch.transpose, operator.getitem}
        if node.op == "call_method":
            return str(node.target) in shaping
        return node.target in functions

    def _connect(self, kind: str, node: fx.Node, detail: str) -> None:
        self.connections.append(Connection(kind, self._where(node), detail))

    # ---------------------------------------------------------------- rescaling

    def _with_rescaling(self, node: fx.Node | None, layer: LayerInfo) -> LayerInfo:
        if node is None or not isinstance(self.model.get_submodule(str(node.target)), WEIGHT_TYPES):
            note = "not a Linear/Conv layer"
        elif self.calls[node.target] > 1:
            note = "the layer is called more than once"
        else:
            note = self._rescaling_note(node)
        return LayerInfo(layer.name, layer.kind, layer.module_type, not note, note)

    def _rescaling_note(self, start: fx.Node) -> str:
        """'' if every path from ``start`` reaches weight layers through homogeneous units only."""
        pending, seen = list(start.users), set()
        while pending:
            node = pending.pop()
            if node in seen or (node not in self.tensor and node.op != "output"):
                continue
            seen.add(node)
            if node.op == "output":
                return OUTPUT_NOTE
            passes = self._passes_rescaling(node)
            if passes is None:
                continue
            if not passes:
                return f"its outputs reach {self._unit(node)}"
            pending += list(node.users)
        return ""

    def _unit(self, node: fx.Node) -> str:
        """How a note names a node: ``Tanh `1```, ``add at `layer1.0```."""
        if node.op == "call_module":
            return f"{type(self.model.get_submodule(str(node.target))).__name__} `{node.target}`"
        where = self._where(node)
        place = f"at `{where}`" if where else "in the top-level forward"
        return f"{_function_name(node)} {place}"

    def _passes_rescaling(self, node: fx.Node) -> bool | None:
        """None: a weight layer absorbs the rescaling; True: it passes through; False: breaks."""
        if node.op == "call_module":
            module = self.model.get_submodule(str(node.target))
            if isinstance(module, WEIGHT_TYPES) and self.calls[node.target] == 1:
                return None
            return node in self.foldable or isinstance(module, _HOMOGENEOUS_MODULES)
        if node.target in _CONCATENATIONS or self._reshape_like(node):
            return True
        if len(self._dynamic_inputs(node)) > 1:
            return False
        return node.target in _HOMOGENEOUS_FUNCTIONS or (
            node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS
        )


# -------------------------------------------------------------------- forward-hook fallback


@dataclass
class _HookCall:
    path: str
    module: nn.Module
    input: Any
    output: Any


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules the hooks watch: the leaf types and childless modules, none inside another."""
    chosen: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(f"{p}.") for p, _ in chosen):
            continue
        if isinstance(module, _LEAF_TYPES) or next(module.children(), None) is None:
            chosen.append((path, module))
    return chosen


def _hook_calls(
    model: nn.Module, shape: tuple[int, ...], example: torch.Tensor | None
) -> tuple[list[_HookCall], torch.Tensor, Any]:
    calls: list[_HookCall] = []
    leaves = _leaf_modules(model)

    def watcher(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls.append(_HookCall(path, module, args[0] if args else None, output))

        return hook

    handles = [m.register_forward_hook(watcher(p)) for p, m in leaves]
    if example is None:
        x = torch.randn(
            (2, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
    else:  # real inputs: token ids stay integers, real inputs follow the float64 copy
        x = example[:2].double() if example.is_floating_point() else example[:2]
    try:
        with eval_mode(model), torch.no_grad():
            output = model(x.to(probe_input(model, shape, batch=1).device))
    except Exception as exc:
        raise ModelError(
            f"the forward pass of an input of shape {tuple(x.shape)} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return calls, x, output


def _follows(received: Any, produced: Any) -> bool:
    """Whether ``received`` is ``produced`` up to a reshape, or its ReLU."""
    if not (isinstance(received, torch.Tensor) and isinstance(produced, torch.Tensor)):
        return False
    if received.numel() != produced.numel():
        return False
    a, b = received.flatten(), produced.flatten()
    return bool(torch.allclose(a, b) or torch.allclose(a, b.clamp(min=0)))


def _from_hooks(
    model: nn.Module, shape: tuple[int, ...], error: str, example: torch.Tensor | None
) -> Architecture:
    """The fallback: classify the leaf modules, and check a chain by values."""
    copied = copy.deepcopy(model).double()
    calls, x, output = _hook_calls(copied, shape, example)
    counts = Counter(id(call.module) for call in calls)
    connections: list[Connection] = []
    previous, broken = x, ""
    for call in calls:
        if counts[id(call.module)] > 1 and _own_matrices(call.module):
            connections.append(Connection("weight sharing", call.path))
        if not broken and not _follows(call.input, previous):
            broken = call.path
        previous = call.output
    if not broken and not _follows(output, previous):
        broken = "output"
    if broken:
        detail = (
            "the model cannot be traced with torch.fx, and the forward hooks show an input that "
            "is not the previous module's output"
        )
        connections.append(
            Connection("untraced operation", "" if broken == "output" else broken, detail)
        )
    return _hook_architecture(calls, connections, error)


def _hook_architecture(
    calls: list[_HookCall], connections: list[Connection], error: str
) -> Architecture:
    layers: list[LayerInfo] = []
    normalizations: list[Normalization] = []
    activations: list[Activation] = []
    produced = {id(c.output) for c in calls if isinstance(c.module, WEIGHT_TYPES)}
    for call in _first_calls(calls):
        module, path = call.module, call.path
        if isinstance(module, BN_TYPES):
            foldable = module.track_running_stats and id(call.input) in produced
            note = "" if foldable else "its input is not a Linear/Conv output"
            normalizations.append(
                Normalization(path, "batchnorm", foldable, type(module).__name__, note)
            )
        elif type(module) in _NORM_TYPES:
            kind = _NORM_TYPES[type(module)]
            normalizations.append(Normalization(path, kind, False, type(module).__name__))
        elif _module_layers(path, module):
            layers += _module_layers(path, module)
            if isinstance(module, _ATTENTION_TYPES):
                connections.append(Connection("attention", path, type(module).__name__))
            elif not isinstance(module, WEIGHT_TYPES):
                connections.append(Connection("non-chain weight layer", path))
        else:
            homogeneous = isinstance(module, _HOMOGENEOUS_MODULES)
            activations.append(Activation(path, type(module).__name__, homogeneous))
    chain = not connections and all(n.foldable for n in normalizations)
    return Architecture(
        weight_layers=_hook_rescaling(layers, calls, chain),
        connections=tuple(connections),
        normalizations=tuple(normalizations),
        activations=tuple(activations),
        method="hooks",
        trace_error=error,
    )


def _first_calls(calls: Iterable[_HookCall]) -> list[_HookCall]:
    seen: set[int] = set()
    return [c for c in calls if not (id(c.module) in seen or seen.add(id(c.module)))]


def _hook_rescaling(
    layers: list[LayerInfo], calls: list[_HookCall], chain: bool
) -> tuple[LayerInfo, ...]:
    """In a verified chain, a layer's rescaling is a symmetry up to the next weight layer."""
    if not chain:
        note = "the model cannot be traced with torch.fx and is not a chain"
        return tuple(LayerInfo(x.name, x.kind, x.module_type, False, note) for x in layers)
    result, order = [], list(calls)
    positions = [i for i, c in enumerate(order) if isinstance(c.module, WEIGHT_TYPES)]
    for layer, start, end in zip(layers, positions, [*positions[1:], None], strict=True):
        between = order[start + 1 : end]
        if end is None:
            note = OUTPUT_NOTE
        elif all(isinstance(c.module, _HOMOGENEOUS_MODULES + BN_TYPES) for c in between):
            note = ""
        else:
            note = "a unit that is not positively homogeneous follows it"
        result.append(LayerInfo(layer.name, layer.kind, layer.module_type, not note, note))
    return tuple(result)
