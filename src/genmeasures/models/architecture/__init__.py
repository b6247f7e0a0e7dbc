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

Modules: ``description`` (the :class:`Architecture` and the domains), ``operations`` (what the
analysis knows about modules and functions), ``graph`` (reading an fx trace), ``hooks`` (the
fallback).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.models.architecture.description import (
    OUTPUT_NOTE,
    REQUIREMENT_TEXT,
    REQUIREMENTS,
    Activation,
    Architecture,
    Connection,
    LayerInfo,
    Normalization,
)
from genmeasures.models.architecture.graph import GraphReader, Tracer
from genmeasures.models.architecture.hooks import from_hooks
from genmeasures.models.probe import check_model, resolve_shape

__all__ = [
    "OUTPUT_NOTE",
    "REQUIREMENTS",
    "REQUIREMENT_TEXT",
    "Activation",
    "Architecture",
    "Connection",
    "LayerInfo",
    "Normalization",
    "Tracer",
    "describe",
]


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
        graph = Tracer().trace(model)
    except Exception as exc:  # any tracing failure falls back to hooks
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if shape is None:
            raise ModelError(
                f"the model cannot be traced with torch.fx ({error}) and no input shape is known "
                "for the forward-hook fallback; pass input_shape."
            ) from exc
        return from_hooks(model, shape, error, example)
    return GraphReader(model, graph, shape).read()
