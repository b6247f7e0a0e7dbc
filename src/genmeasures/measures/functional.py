"""A network as a function of its parameters: a chosen subset, as a dict or as one flat vector.

``torch.func`` differentiates and vectorizes functions of tensors, not modules. This module holds
the one wrapper that the measures use to turn a model into such a function:
:class:`FunctionalNetwork` evaluates the model with some of its parameters replaced
(``torch.func.functional_call``), every other parameter held at its detached value, and converts
between a dict of the chosen parameters and one flat vector (with optional leading dimensions,
e.g. a stack of probes or of perturbed copies).

The caller's model is never modified: its parameters are read once, detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from genmeasures.errors import ModelError
from genmeasures.models import WeightLayer

__all__ = ["FunctionalNetwork", "Params"]

#: Parameter name (as in ``named_parameters()``) → tensor.
Params = dict[str, torch.Tensor]


class FunctionalNetwork:
    """``model`` as a function of the parameters ``names`` (default: all, in order).

    Attributes:
        model: The module evaluated (not modified).
        params: Every parameter of ``model``, detached, in ``named_parameters()`` order.
        names: The chosen parameters, in the order of the flat vector.
        shapes: Their shapes, in that order.
        sizes: Their numbers of entries, in that order.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        self.model = model
        self.params: Params = {n: p.detach() for n, p in model.named_parameters()}
        self.names = list(self.params) if names is None else list(names)
        self.shapes = [tuple(self.params[n].shape) for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]

    @classmethod
    def of_layers(
        cls, model: nn.Module, layers: Sequence[WeightLayer], *, biases: bool
    ) -> FunctionalNetwork:
        """The parameters of ``layers`` in forward order: each weight, then its bias if asked.

        A parameter shared by several layers is taken once, at its first use.

        Raises:
            ModelError: if a layer's weight (or bias) is not a parameter of ``model``.
        """
        return cls(model, list(dict.fromkeys(layer_parameter_names(model, layers, biases=biases))))

    @property
    def selected(self) -> Params:
        """The chosen parameters, detached."""
        return {n: self.params[n] for n in self.names}

    @property
    def size(self) -> int:
        """Number of scalars in the chosen parameters (the length of the flat vector)."""
        return sum(self.sizes)

    def __call__(self, selected: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` with ``selected`` substituted for those parameters."""
        return functional_call(self.model, {**self.params, **selected}, (x,))

    def call_flat(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` at the flat vector ``theta`` of the chosen parameters."""
        return self(self.unflatten(theta), x)

    def flatten(self, values: Params, leading: int = 0) -> torch.Tensor:
        """``values`` of the chosen parameters, flattened after ``leading`` dims, concatenated."""
        return torch.cat([values[n].flatten(leading) for n in self.names], dim=leading)

    def unflatten(self, flat: torch.Tensor, leading: int = 0) -> Params:
        """The inverse of :meth:`flatten`: views of ``flat`` shaped like the chosen parameters."""
        outer = tuple(flat.shape[:leading])
        chunks = flat.split(self.sizes, dim=leading)
        return {
            n: chunk.reshape(*outer, *shape)
            for n, chunk, shape in zip(self.names, chunks, self.shapes, strict=True)
        }


def layer_parameter_names(
    model: nn.Module, layers: Sequence[WeightLayer], *, biases: bool
) -> list[str]:
    """Names in ``model`` of each layer's weight (then bias, if ``biases``), in forward order.

    Found by identity, so a parameter shared by two layers is named twice.

    Raises:
        ModelError: if a layer's weight (or bias) is not a parameter of ``model``.
    """
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = []
    for layer in layers:
        tensors = [("weight", layer.weight)]
        if biases and layer.bias is not None:
            tensors.append(("bias", layer.bias))
        for kind, tensor in tensors:
            if id(tensor) not in by_id:
                raise ModelError(
                    f"weight layer {layer.name!r}: its {kind} is not a parameter of the folded "
                    "model"
                )
            names.append(by_id[id(tensor)])
    return names
