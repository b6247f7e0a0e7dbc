"""The fallback when ``torch.fx`` cannot trace a model: forward hooks on its leaf modules."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.models.architecture.description import (
    OUTPUT_NOTE,
    Activation,
    Architecture,
    Connection,
    LayerInfo,
    Normalization,
)
from genmeasures.models.architecture.graph import module_layers, own_matrices
from genmeasures.models.architecture.operations import (
    ATTENTION_TYPES,
    HOMOGENEOUS_MODULES,
    LEAF_TYPES,
    NORM_TYPES,
)
from genmeasures.models.probe import (
    BN_TYPES,
    WEIGHT_TYPES,
    eval_mode,
    probe_input,
)


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
        if isinstance(module, LEAF_TYPES) or next(module.children(), None) is None:
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


def from_hooks(
    model: nn.Module, shape: tuple[int, ...], error: str, example: torch.Tensor | None
) -> Architecture:
    """The fallback: classify the leaf modules, and check a chain by values."""
    copied = copy.deepcopy(model).double()
    calls, x, output = _hook_calls(copied, shape, example)
    counts = Counter(id(call.module) for call in calls)
    connections: list[Connection] = []
    previous, broken = x, ""
    for call in calls:
        if counts[id(call.module)] > 1 and own_matrices(call.module):
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
        elif type(module) in NORM_TYPES:
            kind = NORM_TYPES[type(module)]
            normalizations.append(Normalization(path, kind, False, type(module).__name__))
        elif module_layers(path, module):
            layers += module_layers(path, module)
            if isinstance(module, ATTENTION_TYPES):
                connections.append(Connection("attention", path, type(module).__name__))
            elif not isinstance(module, WEIGHT_TYPES):
                connections.append(Connection("non-chain weight layer", path))
        else:
            homogeneous = isinstance(module, HOMOGENEOUS_MODULES)
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
        elif all(isinstance(c.module, HOMOGENEOUS_MODULES + BN_TYPES) for c in between):
            note = ""
        else:
            note = "a unit that is not positively homogeneous follows it"
        result.append(LayerInfo(layer.name, layer.kind, layer.module_type, not note, note))
    return tuple(result)
