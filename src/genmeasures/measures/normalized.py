"""Normalized sharpness and the Hessian-based measures of Tsuzuku, Sato and Sugiyama (2020).

``NORMALIZED_SHARPNESS.md``. On the BN-folded network, with ``F̂_l = max(F_l, 0)`` an estimate of
the diagonal of the training loss's Hessian w.r.t. the weight matrix ``W_l`` (``out × in``; conv:
one row per output channel) and ``U_l = W_l ⊙ W_l``:

- ``normalized-sharpness`` (paper eq 35): ``sqrt(Σ_l NS_l²)``,
  ``NS_l² = inf_γ Σ_{i,k} M_l[i,k] e^{γ_i − γ_k}`` with ``M_l = F̂_l U_lᵀ``, solved by
  :func:`~genmeasures.measures.balancing.balance`;
- ``normalized-sharpness-arxiv`` (the preprint's two-sided form, §5): ``Σ_l`` of
  ``inf_{γ,γ'} Σ_ij F̂_ij e^{γ_i+γ'_j} + U_ij e^{−γ_i−γ'_j}``;
- ``normalized-sharpness-param`` (paper eq 19): ``Σ_i sqrt(F̂_i) |θ_i|`` over all weights;
- ``hessian-weighted-norm`` (paper eq 16): ``Σ_i F̂_i θ_i²`` over all weights;
- ``hessian-trace`` (paper eq 6): ``Tr ∇²L`` over all parameters, by Hutchinson's estimator;
- ``hessian-max-eig``: the largest eigenvalue of ``∇²L`` over all parameters, by Lanczos.

The four diagonal-based measures share one estimate per (estimator, probes, r, ε) through the
context's cache. A grouped convolution's weight matrix stands for a block-diagonal one (each
output channel sees only its group's inputs), so its ``M_l`` is block-diagonal and each group is
balanced on its own; multiplying the compressed ``out × (in/groups · k)`` matrices instead would
pair unrelated inputs across groups and break the invariance to input-channel rescaling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genmeasures.errors import MeasureError, NumericalError
from genmeasures.measures import matrices
from genmeasures.measures.balancing import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Balance,
    balance,
    balance_two_sided,
)
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.curvature import (
    DEFAULT_EPS,
    DEFAULT_PROBES,
    DEFAULT_R,
    ESTIMATORS,
    hessian_diagonal,
    hessian_top_eigenpair,
    hessian_trace_samples,
    mean_and_standard_error,
)
from genmeasures.measures.matrices import WeightMatrix
from genmeasures.measures.parameters import differentiated_parameters
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput
from genmeasures.models import WeightLayer, uses_piecewise_linear_activations
from genmeasures.validation import Flag, Integer, OneOf, Real, Settings, setting

__all__ = [
    "DiagonalOptions",
    "EigenvalueOptions",
    "SharpnessOptions",
    "TraceOptions",
    "default_estimator",
    "normalized_sharpness_layers",
    "resolve_estimator",
]

FAMILY = "flatness-hessian"

#: Default number of Hutchinson probes of ``hessian-trace`` (its standard error is reported).
TRACE_PROBES = 30

#: Defaults of ``hessian-max-eig``: Lanczos steps and relative residual.
EIG_ITERATIONS, EIG_TOL = 60, 1e-6


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DiagonalOptions(Settings):
    """Options of the Hessian-diagonal estimate ``F`` (``NORMALIZED_SHARPNESS.md`` §4)."""

    WHERE = "Hessian-diagonal options"
    ERROR = MeasureError

    estimator: str = setting(
        "auto",
        OneOf(("auto", *ESTIMATORS)),
        "estimator of the Hessian diagonal; auto: ggn for piecewise-linear networks, else "
        "scale-invariant",
    )
    probes: int = setting(DEFAULT_PROBES, Integer(1), "probes of hutchinson and scale-invariant")
    r: float = setting(
        DEFAULT_R, Real(0.0, open_minimum=True), "relative perturbation of scale-invariant"
    )
    eps: float = setting(DEFAULT_EPS, Real(0.0), "absolute perturbation floor ε of scale-invariant")


@dataclass(frozen=True)
class SharpnessOptions(DiagonalOptions):
    """Options of normalized sharpness: the diagonal estimate's, then the balancing solver's."""

    WHERE = "normalized-sharpness options"

    tol: float = setting(DEFAULT_TOL, Real(0.0), "the solver's certified relative gap")
    max_iter: int = setting(
        DEFAULT_MAX_ITER, Integer(0), "the solver's step limit per strongly connected component"
    )


@dataclass(frozen=True)
class TraceOptions(Settings):
    """Options of ``hessian-trace``."""

    WHERE = "hessian-trace options"
    ERROR = MeasureError

    probes: int = setting(TRACE_PROBES, Integer(1), "Hutchinson probes (Rademacher vectors)")
    exact: bool = setting(
        False, Flag(), "the exact trace, one Hessian-vector product per parameter"
    )


@dataclass(frozen=True)
class EigenvalueOptions(Settings):
    """Options of ``hessian-max-eig``."""

    WHERE = "hessian-max-eig options"
    ERROR = MeasureError

    iterations: int = setting(EIG_ITERATIONS, Integer(1), "most Lanczos steps")
    tol: float = setting(
        EIG_TOL, Real(0.0, open_minimum=True), "relative residual at which Lanczos stops"
    )


# ---------------------------------------------------------------------------------- estimates


def default_estimator(ctx: MeasureContext) -> str:
    """``"ggn"`` for piecewise-linear networks (exact there), else ``"scale-invariant"`` (§4).

    A network that cannot be folded is piecewise linear in each weight only if it is also made of
    positively homogeneous units (no normalization, attention or gate: :func:`describe`).
    """
    if ctx.foldable:
        piecewise = uses_piecewise_linear_activations(ctx.folded_model)
    else:
        piecewise = ctx.architecture.is_homogeneous and uses_piecewise_linear_activations(ctx.model)
    return "ggn" if piecewise else "scale-invariant"


def resolve_estimator(ctx: MeasureContext, estimator: str) -> str:
    """The estimator to use: ``estimator`` itself, or :func:`default_estimator` for ``"auto"``.

    Raises:
        MeasureError: for a name that is neither ``"auto"`` nor one of :data:`ESTIMATORS`.
    """
    if estimator == "auto":
        return default_estimator(ctx)
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        choices = ", ".join(map(repr, ("auto", *ESTIMATORS)))
        raise MeasureError(f"estimator must be one of {choices}, got {estimator!r}")
    return estimator


@dataclass(frozen=True)
class _Diagonal:
    """The clipped diagonal estimate ``F̂_l`` and ``W_l`` of every layer, float64 numpy."""

    estimator: str
    layers: list[WeightLayer] | list[WeightMatrix]
    curvature: list[np.ndarray]
    weights: list[np.ndarray]


def _clipped_diagonal(ctx: MeasureContext, options: DiagonalOptions) -> _Diagonal:
    name = resolve_estimator(ctx, options.estimator)
    estimates = hessian_diagonal(ctx, name, probes=options.probes, r=options.r, eps=options.eps)
    curvature, weights = [], []
    for layer, estimate in zip(ctx.weight_matrices, estimates, strict=True):
        diagonal = estimate.cpu().numpy()
        # Non-finite weights are rejected with the layer's name when the context folds the model.
        if not np.isfinite(diagonal).all():
            raise NumericalError(
                f"layer {layer.name!r}: the Hessian-diagonal estimate F has "
                f"{int((~np.isfinite(diagonal)).sum())} non-finite entries (estimator {name!r})"
            )
        curvature.append(np.maximum(diagonal, 0.0))
        weights.append(layer.matrix.detach().double().cpu().numpy())
    return _Diagonal(name, list(ctx.weight_matrices), curvature, weights)


# ---------------------------------------------------------------------------------- NS per layer


@dataclass(frozen=True)
class LayerSharpness:
    """Normalized sharpness of one weight layer.

    Attributes:
        layer: The layer's module path.
        shape: Shape of its ``out × in`` weight matrix.
        value: ``NS_l²`` (eq 35), or the two-sided layer value (§5).
        trace: ``trace(M_l)``, the lower bound of ``NS_l²`` (ICML form; NaN for two-sided).
        upper: ``1ᵀ M_l 1``, the value at γ = 0 (ICML form; NaN for two-sided).
        solution: The solver's result; ``gamma`` holds one log-scale per output.
    """

    layer: str
    shape: tuple[int, int]
    value: float
    trace: float
    upper: float
    solution: Balance


def _groups(layer: WeightLayer) -> int:
    return 1 if layer.geometry is None else layer.geometry.groups


def _combine(parts: list[Balance]) -> Balance:
    """One layer's result from its groups' (block-diagonal ``M``) results."""
    if len(parts) == 1:
        return parts[0]
    value = sum(part.value for part in parts)
    if any(math.isinf(part.gap) for part in parts):
        gap = math.inf
    else:  # a part's certified excess φ − D is gap · value / (1 + gap)
        excess = sum(part.gap / (1 + part.gap) * part.value for part in parts)
        gap = excess / (value - excess) if value > excess else (0.0 if excess == 0 else math.inf)
    return Balance(
        value=value,
        gamma=np.concatenate([part.gamma for part in parts]),
        attained=all(part.attained for part in parts),
        gap=gap,
        iterations=sum(part.iterations for part in parts),
        converged=all(part.converged for part in parts),
    )


def normalized_sharpness_layers(
    ctx: MeasureContext,
    options: SharpnessOptions | None = None,
    *,
    two_sided: bool = False,
) -> tuple[str, list[LayerSharpness]]:
    """Per-layer normalized sharpness (eq 35, or the preprint's two-sided form).

    Args:
        ctx: The measure context (needs the training set).
        options: The diagonal estimate's and the solver's options (default: their defaults).
        two_sided: Solve the preprint's two-sided problem instead of eq 35.

    Returns:
        The estimator used, and one :class:`LayerSharpness` per weight layer in forward order.

    Raises:
        NumericalError: if a layer's diagonal estimate or weight has a non-finite entry.
    """
    options = SharpnessOptions() if options is None else options
    tol, max_iter = options.tol, options.max_iter
    diagonal = _clipped_diagonal(ctx, options)
    results = []
    for layer, curvature, weight in zip(
        diagonal.layers, diagonal.curvature, diagonal.weights, strict=True
    ):
        squares = weight * weight
        groups = _groups(layer)
        rows = np.split(np.arange(len(weight)), groups)
        parts, trace, upper = [], 0.0, 0.0
        for block in rows:
            f, u = curvature[block], squares[block]
            if two_sided:
                parts.append(balance_two_sided(f, u, tol=tol, max_iter=max_iter, layer=layer.name))
                continue
            m = f @ u.T
            trace += float(np.trace(m))
            upper += float(m.sum())
            parts.append(balance(m, tol=tol, max_iter=max_iter, layer=layer.name))
        nan = math.nan
        results.append(
            LayerSharpness(
                layer=layer.name,
                shape=(int(weight.shape[0]), int(weight.shape[1])),
                value=sum(part.value for part in parts),
                trace=nan if two_sided else trace,
                upper=nan if two_sided else upper,
                solution=_combine(parts),
            )
        )
    return diagonal.estimator, results


def _sharpness_table(layers: list[LayerSharpness], symmetry: dict[str, bool]) -> pd.DataFrame:
    rows = []
    for result in layers:
        gamma = result.solution.gamma
        rows.append(
            {
                "layer": result.layer,
                "shape": "×".join(map(str, result.shape)),
                "ns_squared": result.value,
                "trace_bound": result.trace,
                "gamma0_bound": result.upper,
                "gamma_min": float(gamma.min()),
                "gamma_max": float(gamma.max()),
                "gamma_std": float(gamma.std()),
                "attained": result.solution.attained,
                "gap": result.solution.gap,
                "iterations": result.solution.iterations,
                "converged": result.solution.converged,
                "rescaling_symmetry": symmetry.get(result.layer, False),
            }
        )
    return pd.DataFrame(rows)


def _sharpness_output(
    ctx: MeasureContext,
    estimator: str,
    layers: list[LayerSharpness],
    seconds: float,
    combine: Callable[[float], float],
) -> MeasureOutput:
    """The value, its per-layer table and whether node rescaling is a symmetry at each layer.

    Normalized sharpness is computed at every weight layer; its invariance to node rescaling is
    an invariance of the network only where rescaling is a symmetry (``rescaling_symmetry``: the
    layer's outputs reach the next weight layers through positively homogeneous units only), and
    ``extra["rescaling_invariant"]`` says whether it is one at every hidden layer.
    """
    architecture = ctx.architecture
    symmetry = {layer.name: layer.rescaling_symmetry for layer in architecture.weight_layers}
    for matrix in ctx.weight_matrices:  # a packed attention projection's q, k, v: its layer's
        symmetry.setdefault(matrix.name, symmetry.get(getattr(matrix, "layer", ""), False))
    total = sum(result.value for result in layers)
    return MeasureOutput(
        value=combine(total),
        converged=all(result.solution.converged for result in layers),
        per_layer=_sharpness_table(layers, symmetry),
        extra={
            "estimator": estimator,
            "sum_of_layers": total,
            "max_gap": max(result.solution.gap for result in layers),
            "attained": all(result.solution.attained for result in layers),
            "seconds_total": seconds,
            "rescaling_invariant": architecture.rescaling_invariant,
            "weights": matrices.matrices_description(ctx),
        },
    )


# ---------------------------------------------------------------------------------- measures

_NS_ALIASES = ("NS", "normalized sharpness", "normalized-sharpness-icml")


@register_measure(
    "normalized-sharpness",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=_NS_ALIASES,
    options=SharpnessOptions,
    domain="weights",
)
def normalized_sharpness(ctx: MeasureContext, *, options: SharpnessOptions) -> MeasureOutput:
    """Normalized sharpness sqrt(Σ_l NS_l²), NS_l² = inf_γ Σ M_ik e^{γi−γk} (Tsuzuku eq 35)."""
    start = time.perf_counter()
    name, layers = normalized_sharpness_layers(ctx, options)
    return _sharpness_output(ctx, name, layers, time.perf_counter() - start, math.sqrt)


@register_measure(
    "normalized-sharpness-arxiv",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("normalized sharpness arxiv", "normalized-sharpness-two-sided"),
    options=SharpnessOptions,
    domain="weights",
)
def normalized_sharpness_arxiv(ctx: MeasureContext, *, options: SharpnessOptions) -> MeasureOutput:
    """Preprint's two-sided normalized sharpness, summed over layers (Tsuzuku §5 of the spec)."""
    start = time.perf_counter()
    name, layers = normalized_sharpness_layers(ctx, options, two_sided=True)
    return _sharpness_output(ctx, name, layers, time.perf_counter() - start, float)


def _elementwise_measure(
    ctx: MeasureContext,
    options: DiagonalOptions,
    term: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> MeasureOutput:
    diagonal = _clipped_diagonal(ctx, options)
    rows = [
        {
            "layer": layer.name,
            "shape": "×".join(map(str, weight.shape)),
            "value": float(term(curvature, weight).sum()),
        }
        for layer, curvature, weight in zip(
            diagonal.layers, diagonal.curvature, diagonal.weights, strict=True
        )
    ]
    table = pd.DataFrame(rows)
    return MeasureOutput(
        value=float(table["value"].sum()),
        per_layer=table,
        extra={
            "estimator": diagonal.estimator,
            "weights": matrices.matrices_description(ctx),
        },
    )


@register_measure(
    "normalized-sharpness-param",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("NS1", "parameter-normalized sharpness"),
    options=DiagonalOptions,
    domain="differentiable",
)
def normalized_sharpness_param(ctx: MeasureContext, *, options: DiagonalOptions) -> MeasureOutput:
    """Σ_i sqrt(F̂_i) |θ_i| over all weights: per-parameter normalization (Tsuzuku eq 19)."""
    return _elementwise_measure(ctx, options, lambda f, w: np.sqrt(f) * np.abs(w))


@register_measure(
    "hessian-weighted-norm",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("hessian weighted norm", "fr-term"),
    options=DiagonalOptions,
    domain="differentiable",
)
def hessian_weighted_norm(ctx: MeasureContext, *, options: DiagonalOptions) -> MeasureOutput:
    """Σ_i F̂_i θ_i² over all weights, the Hessian-weighted squared norm (Tsuzuku eq 16)."""
    return _elementwise_measure(ctx, options, lambda f, w: f * w * w)


def _theta_extra(ctx: MeasureContext) -> dict[str, object]:
    theta = differentiated_parameters(ctx)
    return {"parameters": theta.description, "omega": theta.omega}


def _parameter_shapes(ctx: MeasureContext) -> dict[str, str]:
    theta = differentiated_parameters(ctx)
    return {
        n: "×".join(map(str, p.shape)) for n, p in zip(theta.names, theta.tensors(), strict=True)
    }


@register_measure(
    "hessian-trace",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("trace of hessian", "hessian trace", "Tr H"),
    options=TraceOptions,
    domain="differentiable",
)
def trace_of_hessian(ctx: MeasureContext, *, options: TraceOptions) -> MeasureOutput:
    """Trace of the training loss's Hessian over all parameters, Hutchinson (Tsuzuku eq 6)."""
    probes, exact = options.probes, options.exact
    samples = hessian_trace_samples(ctx, probes=probes, exact=exact)
    shapes = _parameter_shapes(ctx)
    rows = []
    for name, values in samples.items():
        mean, error = (float(values[0]), 0.0) if exact else mean_and_standard_error(values)
        rows.append({"parameter": name, "shape": shapes[name], "trace": mean, "stderr": error})
    total = torch.stack(list(samples.values())).sum(0)
    value, error = (float(total[0]), 0.0) if exact else mean_and_standard_error(total)
    return MeasureOutput(
        value=value,
        per_layer=pd.DataFrame(rows),
        extra={"stderr": error, "probes": len(total)} | _theta_extra(ctx),
    )


@register_measure(
    "hessian-max-eig",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",  # Lanczos from a random start; float32 HVPs differ across starts at 1e-7
    aliases=("hessian max eigenvalue", "lambda max"),
    options=EigenvalueOptions,
    domain="differentiable",
)
def max_eigenvalue_of_hessian(ctx: MeasureContext, *, options: EigenvalueOptions) -> MeasureOutput:
    """Largest eigenvalue of the training loss's Hessian over all parameters, by Lanczos."""
    pair = hessian_top_eigenpair(ctx, iterations=options.iterations, tol=options.tol)
    shapes = _parameter_shapes(ctx)
    rows = [
        {
            "parameter": name,
            "shape": shapes[name],
            "eigenvector_mass": float(part.pow(2).sum()),
        }
        for name, part in pair.vector.items()
    ]
    return MeasureOutput(
        value=pair.value,
        converged=pair.converged,
        per_layer=pd.DataFrame(rows),
        extra={"residual": pair.residual, "iterations": pair.iterations} | _theta_extra(ctx),
    )
