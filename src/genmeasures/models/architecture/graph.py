"""Reading a ``torch.fx`` trace of the network into an :class:`Architecture`."""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import torch
from torch import fx, nn

from genmeasures.models.architecture.description import (
    OUTPUT_NOTE,
    Activation,
    Architecture,
    Connection,
    LayerInfo,
    Normalization,
)
from genmeasures.models.architecture.operations import (
    ATTENTION_FUNCTIONS,
    ATTENTION_TYPES,
    BN_FOR,
    COMBINATIONS,
    CONCATENATIONS,
    EMBEDDING_TYPES,
    HOMOGENEOUS_FUNCTIONS,
    HOMOGENEOUS_METHODS,
    HOMOGENEOUS_MODULES,
    LEAF_TYPES,
    NON_TENSOR_METHODS,
    NORM_FUNCTIONS,
    NORM_TYPES,
)
from genmeasures.models.probe import (
    BN_TYPES,
    WEIGHT_TYPES,
    eval_mode,
    probe_input,
)


class Tracer(fx.Tracer):
    """Keeps weight layers, normalizations, attention and embeddings as ``call_module`` nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Whether fx keeps ``m`` as one node instead of tracing into it."""
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, module_qualified_name)


def own_matrices(module: nn.Module) -> list[str]:
    """Names of a module's own (not its children's) parameters with two or more dimensions."""
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]


def module_layers(path: str, module: nn.Module) -> list[LayerInfo]:
    """The weight layers a module holds (none for a module without weight matrices)."""
    kind = type(module).__name__
    if isinstance(module, WEIGHT_TYPES):
        return [LayerInfo(path, _layer_kind(module), kind)]
    if isinstance(module, EMBEDDING_TYPES):
        return [LayerInfo(path, "embedding", kind)]
    if isinstance(module, ATTENTION_TYPES):
        names = [f"{path}.{n}" for n in own_matrices(module)] + [f"{path}.out_proj"]
        return [LayerInfo(name, "attention-projection", kind) for name in names]
    return [LayerInfo(f"{path}.{n}", "matrix", kind) for n in own_matrices(module)]


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


class GraphReader:
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
                and not (node.op == "call_method" and node.target in NON_TENSOR_METHODS)
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
        if self.calls[path] > 1 and (own_matrices(module) or isinstance(module, BN_TYPES)):
            self._connect(
                "weight sharing", node, f"{type(module).__name__} called {self.calls[path]} times"
            )
        if isinstance(module, BN_TYPES):
            self._batchnorm(node, module)
            return []
        if isinstance(module, tuple(NORM_TYPES)):
            kind = NORM_TYPES.get(type(module), "normalization")
            self.normalizations.append(Normalization(path, kind, False, type(module).__name__))
            return []
        if isinstance(module, ATTENTION_TYPES):
            self._connect("attention", node, type(module).__name__)
        layers = module_layers(path, module)
        if layers and not isinstance(module, WEIGHT_TYPES + ATTENTION_TYPES):
            self._connect(
                "non-chain weight layer", node, f"{type(module).__name__} is not Linear/Conv"
            )
        if not layers and not isinstance(module, ATTENTION_TYPES):
            homogeneous = isinstance(module, HOMOGENEOUS_MODULES)
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
        expected = next(bn_type for cls, bn_type in BN_FOR.items() if isinstance(layer, cls))
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
        for functions, methods, kind in COMBINATIONS:
            if target in methods if node.op == "call_method" else target in functions:
                if len(inputs) > 1:
                    self._connect(kind, node, f"{name} of {len(inputs)} activations")
                return
        if target in ATTENTION_FUNCTIONS:
            self._connect("attention", node, name)
        elif target in NORM_FUNCTIONS:
            self.normalizations.append(
                Normalization(self._where(node), NORM_FUNCTIONS[target], False, f"F.{name}")
            )
        else:
            self._unary(node, name, inputs)

    def _unary(self, node: fx.Node, name: str, inputs: list[fx.Node]) -> None:
        if len(inputs) > 1:
            self._connect("untraced operation", node, f"{name} combines {len(inputs)} activations")
            return
        if self._reshape_like(node):
            return
        homogeneous = node.target in HOMOGENEOUS_FUNCTIONS or (
            node.op == "call_method" and node.target in HOMOGENEOUS_METHODS
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
            return node in self.foldable or isinstance(module, HOMOGENEOUS_MODULES)
        if node.target in CONCATENATIONS or self._reshape_like(node):
            return True
        if len(self._dynamic_inputs(node)) > 1:
            return False
        return node.target in HOMOGENEOUS_FUNCTIONS or (
            node.op == "call_method" and node.target in HOMOGENEOUS_METHODS
        )
