"""Relative flatness (Petzka, Kamp, Adilova, Sminchisescu & Boley, NeurIPS 2021).

For a network whose logits are ``f(x) = W φ(x) + b``, ``φ`` the penultimate features and ``W``
(``d × m``, rows ``w_s``) the weights of its classification head, relative flatness is the trace
of the training loss's Hessian with respect to ``W``, weighted by ``W``::

    κ = Σ_{s,s'} ⟨w_s, w_s'⟩ · Tr H_{s,s'},    H_{s,s'} = ∂²L / ∂w_s ∂w_s'  (an m × m block)

with ``L`` the mean training cross-entropy. For the cross-entropy the Hessian has a closed form,
``H_{(s,k),(s',k')} = mean_n φ_nk φ_nk' (diag p_n − p_n p_nᵀ)_{ss'}`` with ``p_n`` the softmax of
example n, which turns κ into

    κ = mean_n ‖φ_n‖² · Var_{s∼p_n}(w_s),    Var_{s∼p}(w_s) = Σ_s p_s ‖w_s‖² − ‖Σ_s p_s w_s‖²,

one forward pass over the training set. ``tests/reference.py`` checks it against the full
Hessian.

**Normalized features.** Rescaling penultimate node i by c (its incoming weights and bias times c,
column i of ``W`` over c) leaves a ReLU network's function unchanged but multiplies the terms of
κ pairing node i with another by c² or 1/c², so raw κ is not invariant to it. The authors' code
first scales every feature to unit standard deviation over the training set (and ``W``'s columns
by the inverse), which undoes any such rescaling; that is the default (``normalize=True``). A
feature constant over the training set (its σ zero or rounding error,
:func:`~genmeasures.measures.layer_flatness.varying`) acts as a bias, has no scale to normalize,
and is left out (a dead ReLU unit contributes nothing either way). Every other rescaling of a
ReLU network, layer-wise or node-wise in earlier layers, leaves φ's normalized values and ``W φ``
unchanged.

**The head.** The classification head is found by the penultimate-layer rule of
:mod:`genmeasures.measures.features`. A Linear head reads ``φ`` as its input; a 1×1 convolution
followed by global average pooling (a NiN head) reads the spatial mean of its input. The logits
must be the head's affine map of ``φ`` (checked on a probe batch); otherwise the measure is
``unsupported``, naming the head and the mismatch. The ``layer`` option names another layer,
whose κ comes from Hessian-vector products (:mod:`genmeasures.measures.layer_flatness`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.errors import MeasureError, UnsupportedLayerError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.features import FeatureLayer, feature_layer, first_argument
from genmeasures.measures.layer_flatness import hidden_layer_flatness, varying
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure
from genmeasures.validation import Custom, Flag, Integer, Rejected, Settings, setting

__all__ = ["HeadFeatures", "RelativeFlatnessOptions", "head_features", "relative_flatness"]

FAMILY = "flatness-relative"
PROBES_PURPOSE = "relative-flatness/probes"

#: The logits recomputed from the head's features must match the network's to this relative
#: tolerance (of the largest logit) for the head to count as affine in them.
AFFINE_TOLERANCE = 1e-4


def _layer_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Rejected
    return value


@dataclass(frozen=True)
class RelativeFlatnessOptions(Settings):
    """Options of ``relative-flatness``."""

    WHERE = "relative-flatness options"
    ERROR = MeasureError

    normalize: bool = setting(
        True,
        Flag(),
        "scale each input feature (channel) of the layer to unit standard deviation over the "
        "training set, the weights reading it by the inverse, as the authors' code does: "
        "invariant to rescaling the single units feeding the layer; false: the raw features",
    )
    layer: str = setting(
        "head",
        Custom("'head' or the name of a module (a non-empty string)", _layer_name),
        "head: the classification head, in closed form; or the name of a Linear or convolution "
        "module (as in model.named_modules()), estimated from Hessian-vector products",
    )
    probes: int = setting(
        100,
        Integer(2),
        "Hessian-vector products over the training set for a layer other than the head: exact "
        "(p² products) when its rows' length p has p² <= probes, else an estimate from this many "
        "random probes",
    )


@dataclass(frozen=True)
class HeadFeatures:
    """The classification head as an affine map of the features: logits = φ Wᵀ + b.

    Attributes:
        layer: The head (its penultimate-layer record).
        weight: ``W``, shape ``(classes, features)``, float64.
        features: ``φ`` of every training example, shape ``(examples, features)``, float64.
        logits: The network's logits of the same examples, float64.
    """

    layer: FeatureLayer
    weight: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor


def _head_weight(layer: FeatureLayer) -> torch.Tensor:
    if isinstance(layer.module, nn.Linear):
        return layer.module.weight.detach().to(torch.float64)
    convolution = layer.module  # the penultimate-layer rule admits only Linear and Conv heads
    pointwise = all(size == 1 for size in convolution.kernel_size)
    plain = all(side == 1 for side in convolution.stride) and convolution.groups == 1
    if not (pointwise and plain and not any(convolution.padding)):
        raise UnsupportedLayerError(
            f"the classification head `{layer.name}` is a convolution with kernel "
            f"{convolution.kernel_size}, stride {convolution.stride}, padding "
            f"{convolution.padding} and {convolution.groups} group(s): relative flatness needs a "
            "Linear head or a 1×1 convolution (stride 1, no padding, one group) before global "
            "average pooling"
        )
    return convolution.weight.detach().to(torch.float64).flatten(1)


def _pooled_input(layer: FeatureLayer, value: torch.Tensor) -> torch.Tensor:
    if isinstance(layer.module, nn.Linear):
        if value.ndim != 2:
            raise UnsupportedLayerError(
                f"the input of the classification head `{layer.name}` has shape "
                f"{tuple(value.shape)}: the head maps one feature vector per example only when "
                "its input is (batch, features)"
            )
        return value
    return value.flatten(2).mean(dim=2)


def head_features(ctx: MeasureContext) -> HeadFeatures:
    """The head's weights, and the features and logits of the training set (cached per model).

    Raises:
        UnsupportedLayerError: when the network has no classification head by the
            penultimate-layer rule, when the head is a convolution other than 1×1, or when the
            logits are not ``φ Wᵀ + b`` (something other than global average pooling runs after
            the head).
    """
    return ctx.cached("relative-flatness/head", lambda: _read_head(ctx))


def _read_head(ctx: MeasureContext) -> HeadFeatures:
    inputs, _ = ctx.require_data()
    layer = feature_layer(ctx, "penultimate")
    weight = _head_weight(layer)
    bias = getattr(layer.module, "bias", None)
    offset = 0.0 if bias is None else bias.detach().to(torch.float64)
    store: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        store.append(
            _pooled_input(layer, first_argument(args, kwargs).detach()).to(torch.float64, copy=True)
        )

    handle = layer.module.register_forward_pre_hook(keep, with_kwargs=True)
    features, logits = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), ctx.batch_size):
                store.clear()
                logits.append(ctx.model(inputs[start : start + ctx.batch_size]).double())
                features.append(store[-1])
    finally:
        handle.remove()
    head = HeadFeatures(layer, weight, torch.cat(features), torch.cat(logits))
    _require_affine(head, offset)
    return head


def _require_affine(head: HeadFeatures, offset: torch.Tensor | float) -> None:
    probe = slice(0, min(64, len(head.logits)))
    recomputed = head.features[probe] @ head.weight.T + offset
    actual = head.logits[probe]
    if recomputed.shape != actual.shape:
        raise UnsupportedLayerError(
            f"the classification head `{head.layer.name}` gives logits of shape "
            f"{tuple(recomputed.shape)} from its features, the network {tuple(actual.shape)}"
        )
    error = (recomputed - actual).abs().max().item()
    scale = max(actual.abs().max().item(), 1.0)
    if error > AFFINE_TOLERANCE * scale:
        raise UnsupportedLayerError(
            f"the network's logits differ from the affine map of the features by the "
            f"classification head `{head.layer.name}` (largest difference {error:.3g}): "
            "something other than global average pooling runs after the head, so the loss is "
            "not a function of the head's weights through φ Wᵀ + b"
        )


def relative_flatness(
    weight: torch.Tensor, features: torch.Tensor, logits: torch.Tensor, *, normalize: bool
) -> tuple[float, int]:
    """κ = mean_n ‖φ_n‖² · Var_{s∼p_n}(w_s) (module docstring), and the features it kept.

    Args:
        weight: ``W``, shape ``(classes, features)``.
        features: ``φ``, shape ``(examples, features)``.
        logits: The logits of the same examples (their softmax is ``p_n``).
        normalize: Scale each feature to unit standard deviation (and W's column by the
            inverse) and leave constant features out.

    Returns:
        The value, and the number of features that count.
    """
    if normalize:
        scale = features.std(dim=0, correction=0)
        kept = varying(scale, features.pow(2).mean(dim=0).sqrt())
        features = features[:, kept] / scale[kept]
        weight = weight[:, kept] * scale[kept]
    probabilities = F.softmax(logits, dim=1)
    mean_row = probabilities @ weight
    variance = probabilities @ (weight**2).sum(dim=1) - (mean_row**2).sum(dim=1)
    return (features.pow(2).sum(dim=1) * variance).mean().item(), features.shape[1]


@register_measure(
    "relative-flatness",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="opt",
    aliases=("kappa-tr", "relative flatness", "petzka-relative-flatness"),
    options=RelativeFlatnessOptions,
    description="Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'}: the head's loss Hessian weighted by its "
    "weights, on normalized penultimate features (Petzka et al., NeurIPS 2021)",
    domain="differentiable",
)
def relative_flatness_measure(
    ctx: MeasureContext, *, options: RelativeFlatnessOptions
) -> MeasureOutput:
    """Relative flatness of the classification head (module docstring), or of a chosen layer."""
    if options.layer != "head":
        estimate = hidden_layer_flatness(
            ctx,
            options.layer,
            normalize=options.normalize,
            probes=options.probes,
            generator=ctx.generator(PROBES_PURPOSE),
        )
        return MeasureOutput(
            value=estimate.value,
            extra={
                "layer": options.layer,
                "products": estimate.products,
                "exact": estimate.exact,
                "standard_error": estimate.standard_error,
                "channels": estimate.channels,
                "constant_channels": estimate.constant_channels,
            },
        )
    head = head_features(ctx)
    value, kept = relative_flatness(
        head.weight, head.features, head.logits, normalize=options.normalize
    )
    if kept == 0:
        raise UndefinedMeasure(
            f"every feature at the {head.layer.describe()} is constant over the training set: "
            "there is no feature to normalize"
        )
    return MeasureOutput(
        value=value,
        extra={
            "layer": head.layer.describe(),
            "features": head.features.shape[1],
            "constant_features": head.features.shape[1] - kept,
        },
    )
