"""Spectral measures (Jiang et al. 2020, eqs 25-35 and 41; ``MEASURES.md`` §1.4, §2.3, §3.3).

Two spectral norms of a weight layer (``MEASURES.md`` §1.4):

* ``operator`` (default): the operator norm of the layer's linear map. For a Linear layer this
  is the largest singular value; for a conv it is the norm of ``x ↦ conv(x; W)`` at the layer's
  recorded input size, with its stride, padding, dilation and groups, found by power iteration
  on the conv and its exact adjoint (§2.3). Never the FFT formula, which is exact only for
  circular padding and stride 1.
* ``reshaped``: the largest singular value of the kernel viewed as ``c_out × (c_in·k_h·k_w)``.

Every measure here exists under both: ``<name>`` and ``<name>-reshaped``.

fro-over-spec and spec-dist need weight matrices only: on a network that cannot be folded they
read the weight matrices of :mod:`genmeasures.measures.matrices` (an attention projection, an
embedding table or a module's own matrix is a matrix: its operator norm is its largest singular
value). The chain measures read the same list, which is the folded weight layers there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, svds

from genmeasures.errors import MissingInputError, NumericalError
from genmeasures.measures.capacity import input_side
from genmeasures.measures.context import DELTA, MeasureContext
from genmeasures.measures.matrices import matrices_description
from genmeasures.measures.registry import MeasureFn, register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure, from_log
from genmeasures.models import ConvGeometry, WeightLayer

#: Power-iteration defaults of ``MEASURES.md`` §2.3 (the fallback of :func:`operator_norm`).
POWER_TOL = 1e-7
POWER_MAX_ITER = 1000

#: A conv map with at most this many matrix entries is materialized and its SVD taken.
DENSE_LIMIT = 4_000_000

#: Most Lanczos restarts of ARPACK before the power iteration takes over.
ARPACK_MAX_ITER = 1000

#: Recorded with every value: how conv operator norms were computed.
OPERATOR_NORM_METHOD = (
    f"exact SVD for linear/1x1 layers and dense maps up to {DENSE_LIMIT} entries; ARPACK svds "
    f"otherwise; power iteration (tol {POWER_TOL}, {POWER_MAX_ITER} steps) if ARPACK fails"
)


def _is_pointwise(geometry: ConvGeometry) -> bool:
    return (
        all(k == 1 for k in geometry.kernel_size)
        and all(p == (0, 0) for p in geometry.padding)
        and geometry.groups == 1
    )


def operator_norm(
    layer: WeightLayer, kernel: torch.Tensor, generator: torch.Generator
) -> tuple[float, bool]:
    """Operator norm of a weight layer's linear map with the given kernel (``MEASURES.md`` §2.3).

    Exact for a Linear layer and for a 1×1, unpadded, ungrouped conv (the SVD of the kernel
    matrix). For any other conv the map ``x ↦ conv(x; kernel)`` at the layer's recorded input
    shape is either materialized as a dense matrix (small layers) or handed, with its exact
    adjoint, to ARPACK's Lanczos bidiagonalization (``scipy.sparse.linalg.svds``) to machine
    precision. The catalog's plain power iteration (:func:`power_iteration`) stops at a small
    relative *step*, which on layers with close top singular values leaves an error of order
    1e-6; it is used only if ARPACK fails to converge.

    Args:
        layer: The layer whose geometry and recorded input shape define the map.
        kernel: ``layer.weight`` or a difference such as ``W − W^0``, same shape.
        generator: Source of the random start vector.

    Returns:
        The norm (float64) and whether it converged.
    """
    kernel = kernel.detach().double()
    if layer.geometry is None or _is_pointwise(layer.geometry):
        # A 1×1, unpadded, ungrouped conv is the same matrix at every output position.
        return float(torch.linalg.matrix_norm(kernel.reshape(kernel.shape[0], -1), ord=2)), True
    if layer.input_shape is None:
        raise MissingInputError(
            f"conv layer {layer.name!r} has no recorded input shape; its operator norm needs it"
        )
    geometry, input_shape = layer.geometry, layer.input_shape

    def apply(x: torch.Tensor) -> torch.Tensor:
        return geometry.conv(x, kernel)

    in_size = math.prod(input_shape)
    zeros = torch.zeros((1, *input_shape), dtype=torch.float64, device=kernel.device)
    output_shape = apply(zeros).shape
    out_size = math.prod(output_shape)
    if in_size * out_size <= DENSE_LIMIT or min(in_size, out_size) < 3:
        return float(
            torch.linalg.matrix_norm(_dense_matrix(apply, zeros, output_shape), ord=2)
        ), True
    start = torch.randn(zeros.shape, generator=generator, dtype=torch.float64, device=kernel.device)
    _, adjoint = torch.func.vjp(apply, zeros)

    def matvec(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(kernel.device)
        return apply(tensor.reshape(zeros.shape)).reshape(-1).cpu().numpy()

    def rmatvec(u: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64)).to(kernel.device)
        return adjoint(tensor.reshape(output_shape))[0].reshape(-1).cpu().numpy()

    # ARPACK iterates on the smaller side of the map; start from the random input or its image.
    v0 = start if in_size <= out_size else apply(start)
    operator = LinearOperator((out_size, in_size), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    try:
        (value,) = svds(
            operator,
            k=1,
            v0=v0.reshape(-1).cpu().numpy(),
            maxiter=ARPACK_MAX_ITER,
            return_singular_vectors=False,
        )
    except ArpackNoConvergence:
        return power_iteration(apply, adjoint, start)
    return float(value), True


def _dense_matrix(
    apply: Callable[[torch.Tensor], torch.Tensor], zeros: torch.Tensor, output_shape: torch.Size
) -> torch.Tensor:
    """The matrix of a per-example linear map, built from the basis of its smaller side."""
    in_size, out_size = zeros[0].numel(), math.prod(output_shape)
    if in_size <= out_size:
        basis = torch.eye(in_size, dtype=zeros.dtype, device=zeros.device)
        return apply(basis.reshape(in_size, *zeros.shape[1:])).reshape(in_size, out_size).T
    batch = zeros.expand(out_size, *zeros.shape[1:])
    _, adjoint = torch.func.vjp(apply, batch)
    basis = torch.eye(out_size, dtype=zeros.dtype, device=zeros.device)
    return adjoint(basis.reshape(out_size, *output_shape[1:]))[0].reshape(out_size, in_size)


def power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], tuple[torch.Tensor]],
    start: torch.Tensor,
    *,
    tol: float = POWER_TOL,
    max_iter: int = POWER_MAX_ITER,
) -> tuple[float, bool]:
    """The catalog's power iteration on a linear map and its adjoint (``MEASURES.md`` §2.3).

    Returns:
        The estimate (which increases towards the norm from below) and whether the relative
        change of the estimate fell to ``tol`` within ``max_iter`` iterations.
    """
    v = start / start.norm()
    previous = estimate = math.nan
    for _ in range(max_iter):
        u = apply(v)
        estimate = float(u.norm())
        if estimate == 0.0:
            return 0.0, True
        if abs(estimate - previous) <= tol * estimate:
            return estimate, True
        previous = estimate
        (v,) = adjoint(u)
        v = v / v.norm()
    return estimate, False


def reshaped_norm(kernel: torch.Tensor) -> float:
    """Largest singular value of the kernel viewed as ``c_out × (c_in/groups · k_h · k_w)``."""
    kernel = kernel.detach().double()
    return float(torch.linalg.matrix_norm(kernel.reshape(kernel.shape[0], -1), ord=2))


def spectral_norms(ctx: MeasureContext, variant: str, reference: str) -> tuple[np.ndarray, bool]:
    """Per-layer spectral norms of ``W_i`` (``reference="origin"``) or ``W_i − W_i^0`` (``"init"``).

    Cached in the context, so every measure of a model shares one computation.

    Returns:
        The norms (float64 array in forward order) and whether all of them converged.
    """

    def compute() -> tuple[np.ndarray, bool]:
        norms, all_converged = [], True
        layers = ctx.weight_matrices  # the folded weight layers whenever the network folds
        init_layers = ctx.init_weight_matrices if reference == "init" else [None] * len(layers)
        for layer, init in zip(layers, init_layers, strict=True):
            kernel = layer.weight if init is None else layer.weight.double() - init.weight.double()
            if variant == "reshaped":
                norm, converged = reshaped_norm(kernel), True
            else:
                purpose = f"power-iteration/{layer.name}/{reference}"
                norm, converged = operator_norm(layer, kernel, ctx.generator(purpose))
            if not math.isfinite(norm):
                raise NumericalError(f"layer {layer.name!r}: spectral norm is {norm}")
            norms.append(norm)
            all_converged &= converged
        return np.array(norms), all_converged

    return ctx.cached(("spectral", variant, reference), compute)


def _per_layer(ctx: MeasureContext, spectral: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [layer.name for layer in ctx.weight_matrices],
            "shape": [tuple(layer.weight.shape) for layer in ctx.weight_matrices],
            "spectral": spectral,
            "frobenius": ctx.frobenius_norms(),
        }
    )


def _log(values: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore"):
        return np.log(values)


class _Spectral:
    """The per-layer quantities of ``MEASURES.md`` §3.3 for one model and variant."""

    def __init__(self, ctx: MeasureContext, variant: str) -> None:
        self.ctx = ctx
        self.s, self.converged = spectral_norms(ctx, variant, "origin")
        self.log_product = 2 * float(np.sum(_log(self.s)))  # log P = log Π s_i²
        self.extra = {"operator_norm": OPERATOR_NORM_METHOD}

    def ratio_sum(self, numerators: np.ndarray) -> float:
        """Σ_j numerator_j² / s_j²; undefined if some s_j = 0."""
        if np.any(self.s == 0):
            zero = [self.ctx.weight_matrices[i].name for i in np.flatnonzero(self.s == 0)]
            raise UndefinedMeasure(
                f"spectral norm is 0 for layer(s) {zero}; the measure divides by it"
            )
        return float(np.sum(numerators**2 / self.s**2))

    def output(self, log_value: float) -> MeasureOutput:
        return from_log(
            log_value,
            converged=self.converged,
            per_layer=_per_layer(self.ctx, self.s),
            extra=self.extra,
        )

    def bound_constant(self) -> float:
        """C_B = 84·B·Σ_i k_i·sqrt(c_i) + sqrt(log(4·n²·d)) of eq 25."""
        layers = self.ctx.layers
        width_sum = sum(math.sqrt(layer.kernel_area * layer.weight.shape[0]) for layer in layers)
        n = input_side(self.ctx)
        return 84 * self.ctx.input_norm_max * width_sum + math.sqrt(
            math.log(4 * n**2 * len(layers))
        )

    def bound(self, numerators: np.ndarray) -> MeasureOutput:
        """Eqs 25-26: (C_B² P Σ_j num_j²/s_j² + log(m/δ)) / γ², in log space."""
        gamma = self.ctx.positive_margin
        c_b = self.bound_constant()
        t = 2 * math.log(c_b) + self.log_product + float(_log(self.ratio_sum(numerators)))
        log_value = float(np.logaddexp(t, math.log(math.log(self.ctx.num_train / DELTA))))
        self.extra.update(margin=gamma, C_B=c_b, B=self.ctx.input_norm_max)
        return self.output(log_value - 2 * math.log(gamma))


def _register_both(
    name: str,
    *,
    eq: str | int,
    needs: tuple[str, ...],
    aliases: tuple[str, ...] = (),
    domain: str = "chain",
) -> Callable[[MeasureFn], MeasureFn]:
    """Register a spectral measure as ``name`` (operator norm) and ``name-reshaped``.

    The bounds and products of eqs 25-35 are defined for a chain of layers (``domain="chain"``);
    fro-over-spec (a sum of stable ranks) and spec-dist need weight matrices only.
    """

    def decorator(fn: MeasureFn) -> MeasureFn:
        register_measure(
            name,
            eq=eq,
            family="spectral",
            needs=needs,
            stochastic="no*",
            aliases=aliases,
            fixed={"variant": "operator"},
            domain=domain,
        )(fn)
        register_measure(
            f"{name}-reshaped",
            eq=eq,
            family="spectral",
            needs=tuple(n for n in needs if n != "shape"),
            fixed={"variant": "reshaped"},
            domain=domain,
        )(fn)
        return fn

    return decorator


@_register_both(
    "spec-init",
    eq=25,
    needs=("data", "shape", "init"),
    aliases=("spectral-init", "spectral complexity"),
)
def spec_init(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Pitas et al.'s spectral bound with the initialization as reference (eq 25)."""
    return _Spectral(ctx, variant).bound(ctx.distance_frobenius_norms())


@_register_both(
    "spec-orig",
    eq=26,
    needs=("data", "shape"),
    aliases=("spectral-orig", "spectral orig", "spectral complexity 0ref"),
)
def spec_orig(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Pitas et al.'s spectral bound with the origin as reference (eq 26)."""
    return _Spectral(ctx, variant).bound(ctx.frobenius_norms())


def _main_terms(ctx: MeasureContext, variant: str, numerators: np.ndarray) -> MeasureOutput:
    """Π_i ‖W_i‖₂² Σ_j num_j²/‖W_j‖₂² / γ², the main terms of eqs 25-26, in log space."""
    spectral = _Spectral(ctx, variant)
    ratio = spectral.ratio_sum(numerators)
    gamma = ctx.positive_margin
    return spectral.output(spectral.log_product + float(_log(ratio)) - 2 * math.log(gamma))


@_register_both("spec-init-main", eq="27 (=29)", needs=("data", "shape", "init"))
def spec_init_main(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Main terms of eq 25: Π‖W_i‖₂² Σ_j ‖W_j−W_j⁰‖_F²/‖W_j‖₂² / γ² (eq 27)."""
    return _main_terms(ctx, variant, ctx.distance_frobenius_norms())


@_register_both(
    "spec-orig-main", eq="28 (=30)", needs=("data", "shape"), aliases=("spectral-orig-main",)
)
def spec_orig_main(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Main terms of eq 26: Π‖W_i‖₂² Σ_j ‖W_j‖_F²/‖W_j‖₂² / γ² (eq 28)."""
    return _main_terms(ctx, variant, ctx.frobenius_norms())


@_register_both(
    "prod-of-spec-over-margin",
    eq=31,
    needs=("data", "shape"),
    aliases=("prod-of-spec/margin", "spectral product om"),
)
def prod_of_spec_over_margin(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Π_i ‖W_i‖₂² / γ² (eq 31)."""
    spectral = _Spectral(ctx, variant)
    return spectral.output(spectral.log_product - 2 * math.log(ctx.positive_margin))


@_register_both("prod-of-spec", eq=32, needs=("shape",), aliases=("spectral product",))
def prod_of_spec(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Π_i ‖W_i‖₂² (eq 32)."""
    spectral = _Spectral(ctx, variant)
    return spectral.output(spectral.log_product)


@_register_both("fro-over-spec", eq=33, needs=("shape",), aliases=("fro/spec",), domain="weights")
def fro_over_spec(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Σ_i ‖W_i‖_F² / ‖W_i‖₂² (eq 33); a sum of stable ranks under ``reshaped``."""
    spectral = _Spectral(ctx, variant)
    return MeasureOutput(
        value=spectral.ratio_sum(ctx.frobenius_norms()),
        converged=spectral.converged,
        per_layer=_per_layer(ctx, spectral.s),
        extra={**spectral.extra, "weights": matrices_description(ctx)},
    )


@_register_both(
    "sum-of-spec-over-margin",
    eq=34,
    needs=("data", "shape"),
    aliases=("sum-of-spec/margin", "spectral produce dd/2 om"),
)
def sum_of_spec_over_margin(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Depth times the geometric mean: d (Π_i ‖W_i‖₂² / γ²)^{1/d} (eq 34; γ² inside)."""
    spectral = _Spectral(ctx, variant)
    d = ctx.num_layers
    gamma = ctx.positive_margin
    return spectral.output(math.log(d) + (spectral.log_product - 2 * math.log(gamma)) / d)


@_register_both("sum-of-spec", eq=35, needs=("shape",), aliases=("spectral product dd/2",))
def sum_of_spec(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Depth times the geometric mean: d (Π_i ‖W_i‖₂²)^{1/d} (eq 35)."""
    spectral = _Spectral(ctx, variant)
    d = ctx.num_layers
    return spectral.output(math.log(d) + spectral.log_product / d)


@_register_both(
    "spec-dist", eq=41, needs=("shape", "init"), aliases=("dist-spec-init",), domain="weights"
)
def spec_dist(ctx: MeasureContext, *, variant: str) -> MeasureOutput:
    """Σ_i ‖W_i − W_i⁰‖₂² (eq 41), the operator norm of the difference kernel."""
    distances, converged = spectral_norms(ctx, variant, "init")
    table = pd.DataFrame(
        {
            "layer": [layer.name for layer in ctx.weight_matrices],
            "shape": [tuple(layer.weight.shape) for layer in ctx.weight_matrices],
            "spectral_distance": distances,
        }
    )
    return MeasureOutput(
        value=float(np.sum(distances**2)),
        converged=converged,
        per_layer=table,
        extra={"operator_norm": OPERATOR_NORM_METHOD, "weights": matrices_description(ctx)},
    )
