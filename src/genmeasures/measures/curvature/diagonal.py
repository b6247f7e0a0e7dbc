"""The diagonal of the Hessian w.r.t. each weight matrix: four estimators, one table (spec §4).

:data:`DIAGONAL_ESTIMATORS` maps each estimator's name to a :class:`DiagonalEstimator`: the
function that computes it, the options it reads (which also key the context's cache) and whether
it draws random probes (from ``ctx.generator("curvature/diagonal/<name>")``).
:func:`hessian_diagonal` validates, looks the estimator up and caches the result. The GGN estimator
lives in :mod:`~genmeasures.measures.curvature.ggn`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genmeasures.errors import MeasureError
from genmeasures.measures import matrices
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.curvature.ggn import _ggn_diagonal
from genmeasures.measures.curvature.loss import (
    Params,
    _chunks,
    _like,
    _Loss,
    _weight_names,
)
from genmeasures.measures.functional import FunctionalNetwork
from genmeasures.validation import Integer, Real, check

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_PROBES",
    "DEFAULT_R",
    "DIAGONAL_ESTIMATORS",
    "DIAGONAL_PURPOSE",
    "ESTIMATORS",
    "DiagonalEstimator",
    "hessian_diagonal",
]

#: Defaults of :func:`hessian_diagonal`: number of probes, relative perturbation r, and ε.
DEFAULT_PROBES, DEFAULT_R, DEFAULT_EPS = 100, 1e-3, 0.0

#: Random-stream purpose (:meth:`MeasureContext.generator`, index 0), suffixed by the
#: estimator: ``"curvature/diagonal/hutchinson"``, ``".../scale-invariant"``.
DIAGONAL_PURPOSE = "curvature/diagonal"


# ---------------------------------------------------------------------------------- estimators


def _exact_diagonal(loss: _Loss) -> Params:
    """Diagonal of the Hessian by one HVP per differentiated scalar (unit vectors)."""
    size = loss.size
    diagonal = torch.empty(size, dtype=torch.float64, device=loss.ctx.device)
    offsets, start = {}, 0
    for n in loss.names:
        offsets[n] = start
        start += loss.params[n].numel()
    for lo, hi in _chunks(size, loss.chunk_size()):
        vectors = {
            n: torch.zeros((hi - lo, *loss.params[n].shape), **_like(loss.params[n]))
            for n in loss.names
        }
        for k, index in enumerate(range(lo, hi)):
            name = max((n for n in loss.names if offsets[n] <= index), key=offsets.__getitem__)
            vectors[name][k].view(-1)[index - offsets[name]] = 1
        products = loss.network.flatten(loss.hvps(vectors), leading=1)
        diagonal[lo:hi] = products[torch.arange(hi - lo), torch.arange(lo, hi)]
    return loss.network.unflatten(diagonal)


def _hutchinson_diagonal(loss: _Loss, generator: torch.Generator, *, probes: int) -> Params:
    total = loss.zeros()
    for lo, hi in _chunks(probes, loss.chunk_size()):
        z = loss.rademacher(generator, hi - lo)
        hz = loss.hvps(z)
        for n in loss.names:
            total[n] += (z[n].double() * hz[n]).sum(0)
    return {n: t / probes for n, t in total.items()}


def _scale_invariant_diagonal(
    loss: _Loss, generator: torch.Generator, *, probes: int, r: float, eps: float
) -> Params:
    selected = loss.selected
    step = {n: r * (w.abs() + eps) for n, w in selected.items()}
    total = loss.zeros()
    for lo, hi in _chunks(probes, max(1, loss.chunk_size() // 2)):
        s = loss.rademacher(generator, hi - lo)
        points = {
            n: torch.cat([selected[n] + step[n] * s[n], selected[n] - step[n] * s[n]])
            for n in loss.names
        }
        gradients = loss.gradients(points)
        for n in loss.names:
            plus, minus = gradients[n][: hi - lo], gradients[n][hi - lo :]
            total[n] += (s[n].double() * (plus - minus)).sum(0)
    out = {}
    for n in loss.names:
        denominator = 2 * probes * step[n].double()
        nonzero = denominator > 0
        out[n] = torch.where(nonzero, total[n] / torch.where(nonzero, denominator, 1.0), 0.0)
    return out


@dataclass(frozen=True)
class DiagonalEstimator:
    """One Hessian-diagonal estimator of ``NORMALIZED_SHARPNESS.md`` §4.

    Attributes:
        compute: ``compute(loss, generator, **options)`` → the diagonal, one float64 tensor per
            differentiated parameter; ``generator`` is None unless ``random``.
        options: The options of :func:`hessian_diagonal` it reads, in the order they key the
            cache (``probes``, ``r``, ``eps``).
        random: Whether it draws probes, from ``ctx.generator(f"{DIAGONAL_PURPOSE}/{name}")``.
    """

    compute: Callable[..., Params]
    options: tuple[str, ...] = ()
    random: bool = False


#: Estimator name → :class:`DiagonalEstimator`, in the order of :data:`ESTIMATORS`.
DIAGONAL_ESTIMATORS: dict[str, DiagonalEstimator] = {
    "exact": DiagonalEstimator(lambda loss, generator: _exact_diagonal(loss)),
    "ggn": DiagonalEstimator(lambda loss, generator: _ggn_diagonal(loss)),
    "hutchinson": DiagonalEstimator(_hutchinson_diagonal, options=("probes",), random=True),
    "scale-invariant": DiagonalEstimator(
        _scale_invariant_diagonal, options=("probes", "r", "eps"), random=True
    ),
}

#: The Hessian-diagonal estimators of ``NORMALIZED_SHARPNESS.md`` §4, by name.
ESTIMATORS = tuple(DIAGONAL_ESTIMATORS)


# ---------------------------------------------------------------------------------- public API


def hessian_diagonal(
    ctx: MeasureContext,
    estimator: str,
    *,
    probes: int = DEFAULT_PROBES,
    r: float = DEFAULT_R,
    eps: float = DEFAULT_EPS,
) -> list[torch.Tensor]:
    """Diagonal of the Hessian of the training loss w.r.t. each weight matrix (spec §4).

    For every layer of :attr:`MeasureContext.layers`, the diagonal entries of ``∇²L`` for that
    layer's weights, as a float64 tensor shaped like :attr:`WeightLayer.matrix` (``out × in``;
    conv: ``c_out × (c_in/groups · k_h · k_w)``). Biases are held fixed. On a network that cannot
    be folded, the same for every weight matrix of :attr:`MeasureContext.weight_matrices`
    (:mod:`~genmeasures.measures.matrices`: attention projections, embedding tables as
    ``dim × vocabulary``) of the unfolded eval-mode network, every other parameter (biases,
    normalization, position embeddings) held fixed. Estimators (P_w the
    number of weights, C of classes, K of probes; costs in gradient-equivalents):

    - ``"exact"``: one HVP per weight with unit vectors; ≈ 2 P_w. Tiny networks only.
    - ``"ggn"``: exact diagonal of the generalized Gauss-Newton matrix ``(1/N) Σ_n J_nᵀ H_n J_n``,
      ``H_n = diag(p_n) − p_n p_nᵀ`` the softmax cross-entropy Hessian in the logits, through
      its symmetric factorization ``H_n = Q_n Q_nᵀ`` with columns ``q_c = √p_c (e_c − p)``: the
      diagonal is ``(1/N) Σ_n Σ_c (J_nᵀ q_{n,c})²``, one per-example vector-Jacobian product
      per class; ≈ C per-example gradients, i.e. C gradient-equivalents (vectorized with
      ``vmap`` over examples, so C forward and C per-example backward passes per batch). It
      equals the Hessian diagonal for piecewise-linear networks (ReLU, max-pool, after BN
      folding).
    - ``"hutchinson"``: ``(1/K) Σ_k z_k ⊙ H z_k``, z Rademacher over all weights jointly,
      from ``ctx.generator("curvature/diagonal/hutchinson")``; K HVPs ≈ 2K. Unbiased.
    - ``"scale-invariant"``: paper eqs 29-30, ``(1/K) Σ_k s_k ⊙ (g(s_k) − g(−s_k)) / (2d)``
      with ``d = r(|θ| + ε)``, ``g(s) = ∇L(θ + d ⊙ s)`` (all weights perturbed jointly, biases
      not), s Rademacher from ``ctx.generator("curvature/diagonal/scale-invariant")``; 2K
      gradients. Defined for non-smooth networks; for ε = 0 exactly invariant under node-wise
      positive rescalings, with the same draws. A weight with ``|θ| + ε = 0`` (an exact zero
      when ε = 0) is not perturbed and its estimate is set to 0.

    The result is cached in ``ctx`` under ``("hessian-diagonal", estimator, *parameters)``
    (only the parameters the estimator uses), so measures that share an estimate compute it once;
    the returned list and tensors are shared: do not modify them.

    Args:
        ctx: The measure context (needs the training set).
        estimator: One of :data:`ESTIMATORS`.
        probes: K ≥ 1, for ``"hutchinson"`` and ``"scale-invariant"``.
        r: Relative perturbation size > 0, for ``"scale-invariant"``.
        eps: ε ≥ 0, for ``"scale-invariant"``.

    Returns:
        One float64 ``out × in`` tensor per weight layer, in forward order.

    Raises:
        MeasureError: for an unknown estimator or an invalid parameter.
        ModelError: if a layer's weight is not a parameter of the folded model.
    """
    if not isinstance(estimator, str) or estimator not in DIAGONAL_ESTIMATORS:
        raise MeasureError(
            f"hessian_diagonal: estimator must be one of {', '.join(map(repr, ESTIMATORS))}, "
            f"got {estimator!r}"
        )
    where = "hessian_diagonal"
    probes = check(probes, Integer(1), where=where, parameter="probes", error=MeasureError)
    r = check(r, Real(0.0, open_minimum=True), where=where, parameter="r", error=MeasureError)
    eps = check(eps, Real(0.0), where=where, parameter="eps", error=MeasureError)
    options = {"probes": probes, "r": r, "eps": eps}
    used = tuple(options[name] for name in DIAGONAL_ESTIMATORS[estimator].options)
    key: tuple[object, ...] = ("hessian-diagonal", estimator, *used)
    return ctx.cached(key, lambda: _diagonal(ctx, estimator, probes, r, eps))


def _diagonal(
    ctx: MeasureContext, estimator: str, probes: int, r: float, eps: float
) -> list[torch.Tensor]:
    """The estimate of :func:`hessian_diagonal`, uncached: one ``out × in`` tensor per layer."""
    entry = DIAGONAL_ESTIMATORS[estimator]
    generator = ctx.generator(f"{DIAGONAL_PURPOSE}/{estimator}") if entry.random else None
    options = {"probes": probes, "r": r, "eps": eps}
    if not ctx.foldable:
        loss = _matrix_loss(ctx)
        diagonal = entry.compute(loss, generator, **{name: options[name] for name in entry.options})
        return [
            matrix.of(diagonal[matrix.parameter]).reshape(matrix.matrix.shape)
            for matrix in ctx.weight_matrices
        ]
    names = _weight_names(ctx)
    loss = _Loss(ctx, list(dict.fromkeys(names)))  # a shared weight is differentiated once
    diagonal = entry.compute(loss, generator, **{name: options[name] for name in entry.options})
    return [
        diagonal[n].reshape(layer.matrix.shape) for n, layer in zip(names, ctx.layers, strict=True)
    ]


def _matrix_loss(ctx: MeasureContext) -> _Loss:
    """The training loss of the unfolded network as a function of its weight matrices' parameters.

    :class:`_Loss` without names is the loss of every parameter of the unfolded network (θ of
    :mod:`~genmeasures.measures.parameters`); it is restricted here to the parameters holding the
    weight matrices (:mod:`~genmeasures.measures.matrices`), every other one held fixed. A packed
    attention projection is one parameter, differentiated once, and split into its matrices after.
    """
    loss = _Loss(ctx)
    loss.network = FunctionalNetwork(loss.model, matrices.parameter_names(ctx))
    loss.params, loss.names = loss.network.params, loss.network.names
    loss.description = matrices.UNFOLDED
    return loss
