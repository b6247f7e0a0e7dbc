"""Frobenius, distance, path-norm and Fisher-Rao measures (Jiang et al. 2020, eqs 36-45).

``MEASURES.md`` §3.4-3.6. All are computed on the BN-folded network, biases excluded except in
the path norm, where a bias is a path from a constant input. On a network that cannot be folded,
the measures of the domain ``weights`` and Fisher-Rao read the weight matrices of
:mod:`genmeasures.measures.matrices` (which says which tensors count and why).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from genmeasures.errors import GenMeasuresWarning, ModelError
from genmeasures.measures import matrices
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure, from_log
from genmeasures.models import uses_piecewise_linear_activations


def _weights(ctx: MeasureContext) -> dict[str, str]:
    """``extra["weights"]``: which weight matrices the value is computed on."""
    return {"weights": matrices.matrices_description(ctx)}


def _log_fro_product(ctx: MeasureContext) -> float:
    """Log Π_i ‖W_i‖_F² = 2 Σ_i log ‖W_i‖_F."""
    with np.errstate(divide="ignore"):
        return 2 * float(np.sum(np.log(ctx.frobenius_norms())))


@register_measure(
    "prod-of-fro-over-margin",
    eq=36,
    family="norm",
    needs=("data",),
    aliases=("prod-of-fro/margin", "frob product om"),
    domain="chain",
)
def prod_of_fro_over_margin(ctx: MeasureContext) -> MeasureOutput:
    """Π_i ‖W_i‖_F² / γ² (eq 36)."""
    log_product = _log_fro_product(ctx)
    gamma = ctx.positive_margin
    return from_log(log_product - 2 * math.log(gamma), extra={"margin": gamma})


@register_measure("prod-of-fro", eq=37, family="norm", aliases=("frob product",), domain="weights")
def prod_of_fro(ctx: MeasureContext) -> MeasureOutput:
    """Π_i ‖W_i‖_F² (eq 37)."""
    return from_log(_log_fro_product(ctx), extra=_weights(ctx))


@register_measure(
    "sum-of-fro-over-margin",
    eq=38,
    family="norm",
    needs=("data",),
    aliases=("sum-of-fro/margin", "frob product dd/2 om"),
    domain="chain",
)
def sum_of_fro_over_margin(ctx: MeasureContext) -> MeasureOutput:
    """Depth times the geometric mean: d (Π_i ‖W_i‖_F² / γ²)^{1/d} (eq 38; γ² inside)."""
    log_product, d = _log_fro_product(ctx), ctx.num_layers
    gamma = ctx.positive_margin
    log_value = math.log(d) + (log_product - 2 * math.log(gamma)) / d
    return from_log(log_value, extra={"margin": gamma})


@register_measure(
    "sum-of-fro", eq=39, family="norm", aliases=("frob product dd/2",), domain="weights"
)
def sum_of_fro(ctx: MeasureContext) -> MeasureOutput:
    """Depth times the geometric mean: d (Π_i ‖W_i‖_F²)^{1/d} (eq 39)."""
    d = len(ctx.weight_matrices)
    return from_log(math.log(d) + _log_fro_product(ctx) / d, extra=_weights(ctx))


@register_measure(
    "frob-distance",
    eq=40,
    family="norm",
    needs=("init",),
    aliases=("frob distance", "displacement"),
    domain="weights",
)
def frob_distance(ctx: MeasureContext) -> MeasureOutput:
    """Σ_i ‖W_i − W_i⁰‖_F² over the folded weights, biases excluded (eq 40)."""
    return MeasureOutput(
        value=float(np.sum(ctx.distance_frobenius_norms() ** 2)), extra=_weights(ctx)
    )


@register_measure(
    "param-norm",
    eq=42,
    family="norm",
    aliases=("parameter norm", "parameter-norm"),
    domain="weights",
)
def param_norm(ctx: MeasureContext) -> MeasureOutput:
    """Σ_i ‖W_i‖_F² over the folded weights, biases excluded (eq 42)."""
    return MeasureOutput(value=float(np.sum(ctx.frobenius_norms() ** 2)), extra=_weights(ctx))


def path_norm_sum(ctx: MeasureContext) -> float:
    """S = Σ_c f_{θ∘θ}(1)[c]: the folded network with every parameter squared, on an all-ones input.

    The procedure is literal (``MEASURES.md`` §3.5): biases are squared too, and pooling or
    non-ReLU activations are not corrected for.
    """

    def compute() -> float:
        squared = copy.deepcopy(ctx.folded_model).double().eval()
        if not uses_piecewise_linear_activations(squared):
            warnings.warn(
                "the network has activations that are not piecewise linear; the path norm is "
                "computed literally and is not a sum over paths",
                GenMeasuresWarning,
                stacklevel=4,
            )
        with torch.no_grad():
            for parameter in squared.parameters():
                parameter.mul_(parameter)
            ones = torch.ones((1, *ctx.require_shape()), dtype=torch.float64, device=ctx.device)
            return float(squared(ones).sum())

    return ctx.cached("path-norm-sum", compute)


def _checked_path_sum(ctx: MeasureContext) -> float:
    total = path_norm_sum(ctx)
    if total < 0:
        raise UndefinedMeasure(
            f"path-norm sum S = {total:.4g} < 0, which only non-parameter operations can cause"
        )
    if not math.isfinite(total):
        warnings.warn(
            "path-norm sum S is not finite; reported as +inf", GenMeasuresWarning, stacklevel=3
        )
        return math.inf
    return total


@register_measure(
    "path-norm-over-margin",
    eq=43,
    family="path",
    needs=("data", "shape"),
    aliases=("path-norm/margin", "path norm/margin"),
    domain="homogeneous",
)
def path_norm_over_margin(ctx: MeasureContext) -> MeasureOutput:
    """S / γ², i.e. path-norm² / γ² (eq 43)."""
    total = _checked_path_sum(ctx)
    gamma = ctx.positive_margin
    return MeasureOutput(value=total / gamma**2, extra={"margin": gamma})


@register_measure(
    "path-norm",
    eq=44,
    family="path",
    needs=("shape",),
    aliases=("path norm",),
    domain="homogeneous",
)
def path_norm(ctx: MeasureContext) -> MeasureOutput:
    """sqrt(S), the square root of the squared network's output sum on an all-ones input (eq 44)."""
    return MeasureOutput(value=math.sqrt(_checked_path_sum(ctx)))


#: ``extra["definition"]`` of fisher-rao on a chain of folded weight layers: eq 45 as printed.
FISHER_RAO_CHAIN = "(d+1)^2/m sum_j <w, grad_w l_j>^2 (Jiang et al. 2020, eq 45)"
#: ``extra["definition"]`` elsewhere: Liang et al. (2019)'s Fisher-Rao norm, empirical.
FISHER_RAO_GENERAL = "1/m sum_j <w, grad_w l_j>^2 (Liang et al. 2019, Fisher-Rao norm)"


def _is_chain(ctx: MeasureContext) -> bool:
    """Whether eq 45's (d+1)² applies: a foldable network that is a chain of layers."""
    if not ctx.foldable:
        return False
    try:
        return ctx.architecture.is_chain
    except ModelError:  # not analysable: keep the catalog's formula, as before the analysis
        return True


@register_measure(
    "fisher-rao",
    eq=45,
    family="norm",
    needs=("data",),
    aliases=("fr norm cross-entropy",),
    domain="differentiable",
)
def fisher_rao(ctx: MeasureContext) -> MeasureOutput:
    """(d+1)²/m Σ_j ⟨w, ∇_w ℓ_j⟩² over the folded weights w, biases held fixed (eq 45).

    Each ``⟨w, ∇_w ℓ_j⟩`` is the directional derivative of example j's loss along w, so one
    forward-mode JVP of the per-example losses gives a whole batch. On a chain of layers this is
    eq 45 as printed. Its depth factor comes from Liang et al. (2019)'s structural lemma,
    ``⟨θ, ∇_θ f⟩ = (L+1) f`` for a bias-free chain of L+1 positively homogeneous layers, and has
    no meaning on any other network. There the value is Liang et al.'s Fisher-Rao norm itself,
    ``‖w‖²_fr = E⟨w, ∇_w ℓ⟩²``, over the training set: ``(1/m) Σ_j ⟨w, ∇_w ℓ_j⟩²``, w the
    weight matrices of :attr:`MeasureContext.weight_matrices` (every other parameter held
    fixed). ``extra["definition"]`` says which.
    """
    if ctx.foldable:
        model = ctx.folded_model
        names = {f"{layer.name}.weight" if layer.name else "weight" for layer in ctx.layers}
    else:
        model, names = ctx.model, set(matrices.parameter_names(ctx))
    total = _squared_directional_derivatives(ctx, model, names, unfused=not ctx.foldable)
    extra = {"weights": matrices.matrices_description(ctx)}
    if _is_chain(ctx):
        d = ctx.num_layers
        extra["definition"] = FISHER_RAO_CHAIN
        return MeasureOutput(value=(d + 1) ** 2 * total / ctx.num_train, extra=extra)
    extra["definition"] = FISHER_RAO_GENERAL
    return MeasureOutput(value=total / ctx.num_train, extra=extra)


def _squared_directional_derivatives(
    ctx: MeasureContext, model: nn.Module, names: set[str], *, unfused: bool = False
) -> float:
    """Σ_j ⟨w, ∇_w ℓ_j⟩² over the training set, w the parameters ``names`` of ``model``, float64.

    Scaled dot-product attention runs on its math kernel: the fused kernels have no forward-mode
    derivative. With ``unfused``, ``nn.MultiheadAttention``'s fused eval-mode path (no
    forward-mode derivative either) is switched off during the call (and restored after); it
    computes the same function.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    tangents = {name: p if name in names else torch.zeros_like(p) for name, p in params.items()}
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    for inputs, labels in ctx.batches():

        def losses(
            parameters: dict[str, torch.Tensor], x: torch.Tensor = inputs, y: torch.Tensor = labels
        ) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, parameters, (x,)), y, reduction="none")

        try:
            torch.backends.mha.set_fastpath_enabled(fastpath and not unfused)
            with sdpa_kernel(SDPBackend.MATH):
                _, directional = jvp(losses, (params,), (tangents,))
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        total += directional.double().pow(2).sum()
    return float(total)
