"""θ: the parameters that the perturbation and Hessian measures move, chosen by one rule.

The twelve PAC-Bayes and sharpness measures (``MEASURES.md`` §2.4, §3.7) perturb θ, and the
Hessian trace and top eigenvalue differentiate the training loss twice with respect to θ. Their
definitions need nothing but a differentiable network, so θ is chosen as follows:

- **The network can be folded** (:attr:`MeasureContext.folded_model` and
  :attr:`MeasureContext.layers` succeed: every BatchNorm folds and every parametrized module is a
  Linear or Conv layer). θ is what the papers' networks use (``MEASURES.md`` §1.1): for the
  perturbations, every weight and bias of the folded network's weight layers, in forward order,
  weight before bias (:func:`perturbed_parameters`); for the Hessian, every parameter of the
  folded network in ``named_parameters()`` order (:func:`differentiated_parameters`).
- **It cannot** (they raise :class:`~genmeasures.errors.UnsupportedLayerError`: a LayerNorm,
  GroupNorm, an unfoldable BatchNorm, an embedding, attention, a custom parameter). θ is every
  parameter of the unfolded eval-mode network :attr:`MeasureContext.model`, in
  ``named_parameters()`` order, normalization parameters included. There is no weight-layer
  structure to restrict θ to, and leaving a parameter out would measure the flatness of a
  different function class. A parameter shared by several modules (weight tying) appears once.
  Buffers (running statistics, masks) are not parameters and are never moved.

The reference θ⁰ of the ``-init`` measures is the same vector of the initial network
(:func:`initial_parameters`): matched by position among the folded weight layers, or by name
among the unfolded parameters.

Each choice is computed once per model and cached in the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genmeasures.errors import ModelError, NumericalError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.functional import layer_parameter_names

__all__ = [
    "FOLDED_ALL",
    "FOLDED_LAYERS",
    "UNFOLDED",
    "Theta",
    "differentiated_parameters",
    "initial_parameters",
    "perturbed_parameters",
]

#: ``extra["parameters"]`` of a measure whose θ is the folded weight layers' weights and biases.
FOLDED_LAYERS = "folded weight layers"
#: ``extra["parameters"]`` of a measure whose θ is every parameter of the folded network.
FOLDED_ALL = "all parameters of the folded network"
#: ``extra["parameters"]`` of a measure whose θ is every parameter of the unfolded network.
UNFOLDED = "all trainable parameters (unfolded)"


@dataclass(frozen=True)
class Theta:
    """θ: a network and which of its parameters, in order, make the vector.

    Attributes:
        model: The network evaluated at θ: the folded network, or the unfolded
            :attr:`MeasureContext.model`. Never modified.
        names: The parameters' names in ``model`` (``named_parameters()``), in the order of θ.
        description: Which θ this is: :data:`FOLDED_LAYERS`, :data:`FOLDED_ALL` or
            :data:`UNFOLDED`, as recorded in a result's ``extra["parameters"]``.
    """

    model: nn.Module
    names: tuple[str, ...]
    description: str

    @property
    def folded(self) -> bool:
        """Whether θ belongs to the BN-folded network (the papers' networks)."""
        return self.description != UNFOLDED

    def tensors(self) -> list[torch.Tensor]:
        """The parameters of θ, detached, in order."""
        params = dict(self.model.named_parameters())
        return [params[name].detach() for name in self.names]

    def flat(self) -> torch.Tensor:
        """θ as one float64 vector."""
        return torch.cat([tensor.double().reshape(-1) for tensor in self.tensors()])

    @property
    def omega(self) -> int:
        """ω = dim θ."""
        return sum(tensor.numel() for tensor in self.tensors())


def _unfolded(ctx: MeasureContext) -> Theta:
    names = []
    for name, parameter in ctx.model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise NumericalError(f"model: parameter {name!r} is not finite")
        names.append(name)
    if not names:
        raise ModelError("the model has no parameters")
    return Theta(ctx.model, tuple(names), UNFOLDED)


def perturbed_parameters(ctx: MeasureContext) -> Theta:
    """θ of the PAC-Bayes and sharpness searches (``MEASURES.md`` §2.4), by the module's rule.

    Folded: the weight layers' weights and biases, in forward order, weight before bias (a
    weight shared by two layers appears at each). Otherwise every parameter of the unfolded
    network.
    """

    def compute() -> Theta:
        if not ctx.foldable:
            return _unfolded(ctx)
        model = ctx.folded_model
        names = layer_parameter_names(model, ctx.layers, biases=True)
        return Theta(model, tuple(names), FOLDED_LAYERS)

    return ctx.cached("parameters/perturbed", compute)


def differentiated_parameters(ctx: MeasureContext) -> Theta:
    """θ of the Hessian trace and top eigenvalue, by the module's rule.

    Folded: every parameter of the folded network, in ``named_parameters()`` order. Otherwise
    every parameter of the unfolded network.
    """

    def compute() -> Theta:
        if not ctx.foldable:
            return _unfolded(ctx)
        model = ctx.folded_model
        return Theta(model, tuple(name for name, _ in model.named_parameters()), FOLDED_ALL)

    return ctx.cached("parameters/differentiated", compute)


def initial_parameters(ctx: MeasureContext, theta: Theta) -> torch.Tensor:
    """θ⁰, float64: the vector ``theta`` of the initial network (``MEASURES.md`` §1.3).

    For folded weight layers, the folded initial network's layers matched by position (each
    weight then its bias); for the unfolded network, ``init_model``'s parameters of the same
    names.

    Raises:
        MissingInputError: without an initial model.
        ModelError: if a layer has a bias in only one of the two networks, or a parameter is
            missing from ``init_model`` or has another shape there (names the parameter).
    """
    if theta.folded:
        return _initial_layers(ctx)
    tensors = [
        ctx.initial_parameter(name, tensor.shape).detach().double().reshape(-1)
        for name, tensor in zip(theta.names, theta.tensors(), strict=True)
    ]
    extra = sorted(set(dict(ctx.require_init_model().named_parameters())) - set(theta.names))
    if extra:
        raise ModelError(f"parameter {extra[0]!r} of init_model is not in the trained model")
    return torch.cat(tensors)


def _initial_layers(ctx: MeasureContext) -> torch.Tensor:
    """The folded initial network's weight layers, each weight then its bias, float64."""
    for layer, initial in zip(ctx.layers, ctx.init_layers, strict=True):
        if (layer.bias is None) != (initial.bias is None):
            raise ModelError(
                f"weight layer {layer.name!r} has a bias in only one of the trained model and "
                "init_model (after BatchNorm folding)"
            )
    tensors = []
    for layer in ctx.init_layers:
        tensors.append(layer.weight.detach().double().reshape(-1))
        if layer.bias is not None:
            tensors.append(layer.bias.detach().double().reshape(-1))
    return torch.cat(tensors)
