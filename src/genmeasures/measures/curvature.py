"""Curvature of the training loss: Hessian-vector products, trace, top eigenvalue and diagonal.

Implements the curvature primitives of ``NORMALIZED_SHARPNESS.md`` §4-5 (Tsuzuku, Sato and
Sugiyama 2020): the Hessian trace of paper eq 6, and four estimators of the Hessian diagonal of
every weight matrix, the ``F_l`` of normalized sharpness (paper eqs 29-31, 35).

Every quantity is taken of the **training loss** ``L(θ) = (1/N) Σ_n CE(f_θ(x_n), y_n)`` of the
BN-folded model (:attr:`MeasureContext.folded_model`) in eval mode, over the whole training set:
each mini-batch of :meth:`MeasureContext.batches` contributes its *summed* cross-entropy divided by
N, so the result does not depend on the batch size (up to rounding). The parameters θ are

- for :func:`hvp`, :func:`hessian_trace` and :func:`hessian_max_eigenvalue`: **all** parameters of
  the folded model (weights and biases), in ``named_parameters()`` order;
- for :func:`hessian_diagonal`: the weight of every layer of :attr:`MeasureContext.layers` (biases
  are held fixed; they are no part of normalized sharpness, spec §1). The diagonal of the Hessian
  of L restricted to the weights equals the weights' entries of the full Hessian diagonal.

Derivatives are taken with ``torch.func`` on detached copies of the parameters, so neither the
caller's model nor the context's copy is modified. Results are float64 whatever the model's dtype.
Randomness comes only from generators of :meth:`MeasureContext.generator` (purposes below) or an
explicit ``generator`` argument. Probes are drawn one at a time, each probe as one Rademacher
tensor per differentiated parameter in order, with ``torch.randint(0, 2, shape)`` mapped to ±1; so
results do not depend on how probes are chunked.

Costs are counted in *gradient-equivalents*: one forward and backward pass over the training set.
A Hessian-vector product (forward-over-reverse) costs about two.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from genmeasures.errors import GenMeasuresWarning, MeasureError, ModelError
from genmeasures.measures.context import MeasureContext
from genmeasures.models import WeightLayer

__all__ = [
    "DIAGONAL_PURPOSE",
    "ESTIMATORS",
    "LANCZOS_PURPOSE",
    "TRACE_PURPOSE",
    "TopEigenpair",
    "hessian_diagonal",
    "hessian_max_eigenvalue",
    "hessian_top_eigenpair",
    "hessian_trace",
    "hessian_trace_samples",
    "hvp",
    "mean_and_standard_error",
]

#: The Hessian-diagonal estimators of ``NORMALIZED_SHARPNESS.md`` §4.
ESTIMATORS = ("exact", "ggn", "hutchinson", "scale-invariant")

#: Defaults of :func:`hessian_diagonal`: number of probes, relative perturbation r, and ε.
DEFAULT_PROBES, DEFAULT_R, DEFAULT_EPS = 100, 1e-3, 0.0

#: Random-stream purposes (:meth:`MeasureContext.generator`, index 0). The diagonal purpose is
#: suffixed by the estimator: ``"curvature/diagonal/hutchinson"``, ``".../scale-invariant"``.
DIAGONAL_PURPOSE = "curvature/diagonal"
TRACE_PURPOSE = "curvature/hessian-trace"
LANCZOS_PURPOSE = "curvature/lanczos"

#: Upper bound on the memory of one chunk of vectors (probes, per-example gradients), in bytes
#: counted in float64.
CHUNK_BYTES = 64 * 2**20

#: At most this many vectors go through one vectorized (``vmap``) pass, which also bounds the
#: activation memory to this many copies of one mini-batch's.
MAX_VECTORS_PER_PASS = 32

Params = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------- validation


def _check_int(function: str, name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise MeasureError(f"{function}: {name} must be an int ≥ {minimum}, got {value!r}")
    return int(value)


def _check_real(function: str, name: str, value: object, *, positive: bool) -> float:
    valid = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not valid:
        bound = "> 0" if positive else "≥ 0"
        raise MeasureError(f"{function}: {name} must be a finite real {bound}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------- the loss


class _Loss:
    """The training loss of the folded model as a function of a subset of its parameters."""

    def __init__(self, ctx: MeasureContext, names: Sequence[str] | None = None) -> None:
        ctx.logits  # noqa: B018  (validates the output shape, finiteness and the labels' range)
        self.ctx = ctx
        self.model = ctx.folded_model
        self.params: Params = {n: p.detach() for n, p in self.model.named_parameters()}
        self.names = list(self.params) if names is None else list(names)
        self.num_train = ctx.num_train

    @property
    def selected(self) -> Params:
        """The differentiated parameters, detached."""
        return {n: self.params[n] for n in self.names}

    @property
    def size(self) -> int:
        """Number of differentiated scalars."""
        return sum(self.params[n].numel() for n in self.names)

    def batch_loss(self, selected: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ_batch CE / N with ``selected`` substituted for those parameters."""
        logits = functional_call(self.model, {**self.params, **selected}, (x,))
        return F.cross_entropy(logits, y, reduction="sum") / self.num_train

    def batch_grad(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[Params], Params]:
        """``selected ↦ ∇ batch_loss`` as a function (for ``jvp``/``vmap``)."""

        def loss(selected: Params) -> torch.Tensor:
            return self.batch_loss(selected, x, y)

        return grad(loss)

    def zeros(self, leading: tuple[int, ...] = ()) -> Params:
        """float64 zeros shaped like the differentiated parameters, with leading dimensions."""
        return {
            n: torch.zeros(
                (*leading, *self.params[n].shape), dtype=torch.float64, device=self.ctx.device
            )
            for n in self.names
        }

    def chunk_size(self) -> int:
        """How many vectors of the differentiated parameters' size go through one pass."""
        return max(1, min(MAX_VECTORS_PER_PASS, CHUNK_BYTES // (8 * max(1, self.size))))

    def rademacher(self, generator: torch.Generator, count: int) -> Params:
        """``count`` Rademacher probes, drawn one at a time, stacked along a leading dimension."""
        probes: list[Params] = []
        for _ in range(count):
            probe = {}
            for n in self.names:
                p = self.params[n]
                bits = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
                probe[n] = (2 * bits - 1).to(p.dtype)
            probes.append(probe)
        return {n: torch.stack([probe[n] for probe in probes]) for n in self.names}

    def hvps(self, vectors: Params) -> Params:
        """H·v of L for a stack of vectors (leading dimension K), summed over the batches.

        One forward-over-reverse product per batch and vector (``vmap`` over the K vectors).
        """
        count = next(iter(vectors.values())).shape[0]
        total = self.zeros((count,))
        selected = self.selected
        for x, y in self.ctx.batches():
            gradient = self.batch_grad(x, y)

            def product(vector: Params, g: Callable[[Params], Params] = gradient) -> Params:
                return jvp(g, (selected,), (vector,))[1]

            products = vmap(product)(vectors)
            for n in self.names:
                total[n] += products[n].double()
        return total

    def gradients(self, points: Params) -> Params:
        """∇L at a stack of parameter points (leading dimension K), summed over the batches."""
        count = next(iter(points.values())).shape[0]
        total = self.zeros((count,))
        for x, y in self.ctx.batches():
            gradients = vmap(self.batch_grad(x, y))(points)
            for n in self.names:
                total[n] += gradients[n].double()
        return total


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _flat(values: Params, names: Sequence[str], leading: int = 0) -> torch.Tensor:
    """Concatenate tensors flattened after ``leading`` dimensions."""
    return torch.cat([values[n].flatten(leading) for n in names], dim=leading)


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
        products = _flat(loss.hvps(vectors), loss.names, leading=1)
        diagonal[lo:hi] = products[torch.arange(hi - lo), torch.arange(lo, hi)]
    return _unflat(diagonal, loss)


def _like(tensor: torch.Tensor) -> dict[str, object]:
    return {"dtype": tensor.dtype, "device": tensor.device}


def _unflat(flat: torch.Tensor, loss: _Loss) -> Params:
    out, start = {}, 0
    for n in loss.names:
        p = loss.params[n]
        out[n] = flat[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


# ---------------------------------------------------------------------------------- public API


def hvp(ctx: MeasureContext, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Hessian-vector product of the training loss w.r.t. all parameters of the folded model.

    ``L(θ) = (1/N) Σ_n CE(f_θ(x_n), y_n)`` over the whole training set, eval mode, θ every
    parameter of :attr:`MeasureContext.folded_model` in ``named_parameters()`` order (weights and
    biases). Computed forward-over-reverse (``torch.func.jvp`` of ``grad``), accumulated over the
    mini-batches. Cost: about 2 gradient-equivalents.

    Args:
        ctx: The measure context (needs the training set).
        vectors: One tensor per parameter, in ``named_parameters()`` order, each of that
            parameter's shape.

    Returns:
        ``H·v`` as one float64 tensor per parameter, in the same order.

    Raises:
        MeasureError: if the number or shapes of ``vectors`` do not match the parameters.
    """
    loss = _Loss(ctx)
    shapes = [tuple(loss.params[n].shape) for n in loss.names]
    received = [
        tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in vectors
    ]
    if received != shapes:
        raise MeasureError(
            f"hvp: vectors must be one tensor per parameter of the folded model "
            f"({', '.join(loss.names)}) with shapes {shapes}, got {received}"
        )
    stacked = {
        n: v.detach().to(**_like(loss.params[n]))[None]
        for n, v in zip(loss.names, vectors, strict=True)
    }
    products = loss.hvps(stacked)
    return [products[n][0] for n in loss.names]


def hessian_trace_samples(
    ctx: MeasureContext,
    *,
    probes: int,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Hutchinson samples of the Hessian trace (paper eq 6), split by parameter tensor.

    For K Rademacher probes ``z_k`` over all parameters of the folded model, sample k of
    parameter p is ``Σ_{i ∈ p} z_{k,i} (H z_k)_i``: summed over the parameters it is
    ``z_kᵀ H z_k``, whose mean over k estimates ``Tr H`` without bias; the mean of one
    parameter's samples estimates the trace of its diagonal block. Cost: K HVPs
    (≈ 2K gradient-equivalents). With ``exact=True`` there is one "sample", the exact diagonal
    summed over each parameter (P HVPs: tiny networks only).

    Args:
        ctx: The measure context (needs the training set).
        probes: K ≥ 1 (validated, and unused when ``exact``).
        exact: Sum the exact diagonal instead.
        generator: Source of the probes; defaults to ``ctx.generator(TRACE_PURPOSE)``.

    Returns:
        Parameter name (``named_parameters()`` of the folded model, in order) → float64 tensor of
        shape ``(K,)`` (``(1,)`` when ``exact``).

    Raises:
        MeasureError: for ``probes`` that is not an int ≥ 1.
    """
    probes = _check_int("hessian_trace", "probes", probes, 1)
    loss = _Loss(ctx)
    if exact:
        return {n: d.sum().reshape(1) for n, d in _exact_diagonal(loss).items()}
    generator = ctx.generator(TRACE_PURPOSE) if generator is None else generator
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in loss.names}
    for lo, hi in _chunks(probes, loss.chunk_size()):
        z = loss.rademacher(generator, hi - lo)
        hz = loss.hvps(z)
        for n in loss.names:
            samples[n].append((z[n].double() * hz[n]).flatten(1).sum(1))
    return {n: torch.cat(values) for n, values in samples.items()}


def mean_and_standard_error(samples: torch.Tensor) -> tuple[float, float]:
    """Mean of K samples and its standard error ``std(correction=1) / sqrt(K)`` (NaN for K = 1)."""
    count = len(samples)
    error = float(samples.std(correction=1)) / math.sqrt(count) if count > 1 else math.nan
    return float(samples.mean()), error


def hessian_trace(
    ctx: MeasureContext,
    *,
    probes: int,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Trace of the Hessian of the training loss w.r.t. all parameters (paper eq 6).

    Hutchinson's estimator ``(1/K) Σ_k z_kᵀ H z_k`` with K Rademacher probes over all parameters
    of the folded model (:func:`hessian_trace_samples` summed over the parameters); cost K HVPs
    (≈ 2K gradient-equivalents). With ``exact=True`` the trace is the sum of the exact diagonal,
    one HVP per parameter (P HVPs: tiny networks only).

    Args:
        ctx: The measure context (needs the training set).
        probes: K ≥ 1 (validated, and unused when ``exact``).
        exact: Sum the exact diagonal instead.
        generator: Source of the probes; defaults to ``ctx.generator(TRACE_PURPOSE)``.

    Returns:
        ``(estimate, standard_error)``: the standard error is ``std_k(z_kᵀHz_k) / sqrt(K)``
        (sample standard deviation), NaN for K = 1, and 0.0 when ``exact``.

    Raises:
        MeasureError: for ``probes`` that is not an int ≥ 1.
    """
    samples = hessian_trace_samples(ctx, probes=probes, exact=exact, generator=generator)
    total = torch.stack(list(samples.values())).sum(0)
    if exact:
        return float(total[0]), 0.0
    return mean_and_standard_error(total)


@dataclass(frozen=True)
class TopEigenpair:
    """Result of :func:`hessian_top_eigenpair`.

    Attributes:
        value: The largest Ritz value, an estimate of ``λ_max`` (never above it in exact
            arithmetic).
        vector: The unit Ritz vector, one float64 tensor per parameter of the folded model, in
            ``named_parameters()`` order, keyed by name.
        residual: ``‖H v − λ v‖``, estimated by Lanczos as ``β_j |y_j|``.
        iterations: Lanczos steps taken (HVPs).
        converged: Whether the residual reached ``tol · |λ|`` (or an invariant subspace).
    """

    value: float
    vector: dict[str, torch.Tensor] = field(repr=False)
    residual: float
    iterations: int
    converged: bool


def hessian_top_eigenpair(
    ctx: MeasureContext,
    *,
    iterations: int = 100,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> TopEigenpair:
    """Largest (algebraic) eigenvalue of the Hessian of the training loss, and its eigenvector.

    Lanczos iteration with full reorthogonalization on the HVP w.r.t. all parameters of the
    folded model, from a Rademacher start vector. It stops when the residual ``β_j |y_j|`` of
    the top Ritz pair is at most ``tol · |λ|``, on an invariant subspace, or after
    ``iterations`` steps (then ``converged`` is False). Cost: one HVP (≈ 2 gradient-equivalents)
    per iteration, and ``iterations × P`` float64 numbers of memory for the basis.

    Args:
        ctx: The measure context (needs the training set).
        iterations: Maximum number of Lanczos steps (≥ 1); capped at P.
        tol: Relative residual tolerance (> 0).
        generator: Source of the start vector; defaults to ``ctx.generator(LANCZOS_PURPOSE)``.

    Returns:
        The :class:`TopEigenpair`.

    Raises:
        MeasureError: for an invalid ``iterations`` or ``tol``.
    """
    iterations = _check_int("hessian_max_eigenvalue", "iterations", iterations, 1)
    tol = _check_real("hessian_max_eigenvalue", "tol", tol, positive=True)
    loss = _Loss(ctx)
    generator = ctx.generator(LANCZOS_PURPOSE) if generator is None else generator
    steps = min(iterations, loss.size)
    start = _flat(loss.rademacher(generator, 1), loss.names, leading=1)[0].double()
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        vector = {
            n: v[None].to(**_like(loss.params[n])) for n, v in _unflat(basis[j], loss).items()
        }
        w = _flat(loss.hvps(vector), loss.names, leading=1)[0]
        alphas.append(float(w @ basis[j]))
        stacked = torch.stack(basis)
        for _ in range(2):  # full reorthogonalization, twice for stability
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        top = float(values[-1])
        residual = beta * abs(float(vectors[-1, -1]))
        scale = max(abs(top), float(values.abs().max()), 1e-300)
        converged = (
            residual <= tol * max(abs(top), 1e-300) or beta <= 1e-14 * scale or j + 1 == loss.size
        )
        if converged or j + 1 == steps:
            ritz = stacked.T @ vectors[:, -1]
            return TopEigenpair(
                value=top,
                vector=_unflat(ritz / ritz.norm(), loss),
                residual=residual,
                iterations=j + 1,
                converged=converged,
            )
        betas.append(beta)
        basis.append(w / beta)
    raise AssertionError("unreachable: the loop returns at its last step")


def hessian_max_eigenvalue(
    ctx: MeasureContext,
    *,
    iterations: int = 100,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> float:
    """Largest (algebraic) eigenvalue of the Hessian of the training loss w.r.t. all parameters.

    The value of :func:`hessian_top_eigenpair`, with a :class:`GenMeasuresWarning` when
    Lanczos stopped before reaching the relative residual ``tol``.

    Args:
        ctx: The measure context (needs the training set).
        iterations: Maximum number of Lanczos steps (≥ 1); capped at P.
        tol: Relative residual tolerance (> 0).
        generator: Source of the start vector; defaults to ``ctx.generator(LANCZOS_PURPOSE)``.

    Returns:
        The largest Ritz value, an estimate of ``λ_max`` (never above it in exact arithmetic).

    Raises:
        MeasureError: for an invalid ``iterations`` or ``tol``.
    """
    pair = hessian_top_eigenpair(ctx, iterations=iterations, tol=tol, generator=generator)
    if not pair.converged:
        warnings.warn(
            f"hessian_max_eigenvalue: Lanczos did not reach the relative residual {tol:g} in "
            f"{pair.iterations} iterations; returning the top Ritz value {pair.value:.6g}",
            GenMeasuresWarning,
            stacklevel=2,
        )
    return pair.value


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
    conv: ``c_out × (c_in/groups · k_h · k_w)``). Biases are held fixed. Estimators (P_w the
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
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise MeasureError(
            f"hessian_diagonal: estimator must be one of {', '.join(map(repr, ESTIMATORS))}, "
            f"got {estimator!r}"
        )
    probes = _check_int("hessian_diagonal", "probes", probes, 1)
    r = _check_real("hessian_diagonal", "r", r, positive=True)
    eps = _check_real("hessian_diagonal", "eps", eps, positive=False)
    key: tuple[object, ...] = ("hessian-diagonal", estimator)
    if estimator == "hutchinson":
        key += (probes,)
    elif estimator == "scale-invariant":
        key += (probes, r, eps)
    return ctx.cached(key, lambda: _diagonal(ctx, estimator, probes, r, eps))


def _weight_names(ctx: MeasureContext) -> list[str]:
    """Parameter names of the layers' weights in the folded model, in forward order."""
    by_id = {id(p): n for n, p in ctx.folded_model.named_parameters()}
    names = []
    for layer in ctx.layers:
        if id(layer.weight) not in by_id:
            raise ModelError(
                f"weight layer {layer.name!r}: its weight is not a parameter of the folded model"
            )
        names.append(by_id[id(layer.weight)])
    return names


def _diagonal(
    ctx: MeasureContext, estimator: str, probes: int, r: float, eps: float
) -> list[torch.Tensor]:
    names = _weight_names(ctx)
    loss = _Loss(ctx, list(dict.fromkeys(names)))  # a shared weight is differentiated once
    if estimator == "exact":
        diagonal = _exact_diagonal(loss)
    elif estimator == "ggn":
        diagonal = _ggn_diagonal(loss)
    elif estimator == "hutchinson":
        diagonal = _hutchinson_diagonal(
            loss, ctx.generator(f"{DIAGONAL_PURPOSE}/{estimator}"), probes
        )
    else:
        generator = ctx.generator(f"{DIAGONAL_PURPOSE}/{estimator}")
        diagonal = _scale_invariant_diagonal(loss, generator, probes, r, eps)
    return [
        diagonal[n].reshape(layer.matrix.shape) for n, layer in zip(names, ctx.layers, strict=True)
    ]


def _hutchinson_diagonal(loss: _Loss, generator: torch.Generator, probes: int) -> Params:
    total = loss.zeros()
    for lo, hi in _chunks(probes, loss.chunk_size()):
        z = loss.rademacher(generator, hi - lo)
        hz = loss.hvps(z)
        for n in loss.names:
            total[n] += (z[n].double() * hz[n]).sum(0)
    return {n: t / probes for n, t in total.items()}


def _scale_invariant_diagonal(
    loss: _Loss, generator: torch.Generator, probes: int, r: float, eps: float
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


def _ggn_diagonal(loss: _Loss) -> Params:
    """The GGN diagonal: by layer-wise factorization where possible, else per example."""
    by_layer = _ggn_diagonal_by_layer(loss)
    return by_layer if by_layer is not None else _ggn_diagonal_per_example(loss)


def _ggn_diagonal_per_example(loss: _Loss) -> Params:
    """Any architecture: per-example gradients of ``logits · q_c`` by ``vmap``, squared."""
    selected = loss.selected
    total = loss.zeros()
    chunk = max(1, CHUNK_BYTES // (8 * max(1, loss.size)))

    def contracted(weights: Params, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        logits = functional_call(loss.model, {**loss.params, **weights}, (x[None],))[0]
        return (logits * q).sum()

    per_example = vmap(grad(contracted), in_dims=(None, 0, 0))
    for x, _ in loss.ctx.batches():
        with torch.no_grad():
            logits = functional_call(loss.model, loss.params, (x,))
        for q in _gauss_newton_factors(logits):
            for lo, hi in _chunks(len(x), chunk):
                gradients = per_example(selected, x[lo:hi], q[lo:hi])
                for n in loss.names:
                    total[n] += gradients[n].double().pow(2).sum(0)
    return {n: t / loss.num_train for n, t in total.items()}


def _gauss_newton_factors(logits: torch.Tensor) -> Iterator[torch.Tensor]:
    """Columns ``q_c = √p_c (e_c − p)`` of ``H = diag(p) − ppᵀ = Σ_c q_c q_cᵀ``, one per class.

    Each is an ``(n, C)`` tensor in the logits' dtype: row n is example n's ``q_c``.
    """
    p = torch.softmax(logits.detach().double(), dim=1)
    classes = p.shape[1]
    for c in range(classes):
        q = p[:, c : c + 1].sqrt() * (F.one_hot(torch.tensor(c), classes).to(p) - p)
        yield q.to(logits.dtype)


def _factorable(layer: WeightLayer) -> bool:
    """Whether a layer's per-example weight gradient is ``δᵀa`` of its input and output grads."""
    return layer.kind in ("linear", "conv1d", "conv2d")


def _ggn_diagonal_by_layer(loss: _Loss) -> Params | None:
    """The GGN diagonal from each layer's inputs ``a`` and output gradients ``δ``.

    Example n's gradient of ``logits_n · q`` w.r.t. a Linear weight is ``δ_nᵀ a_n`` (positions
    of extra dimensions summed) and w.r.t. a convolution's ``δ_nᵀ unfold(a_n)``, so one batched
    backward pass per class gives every example's gradient. For a Linear layer on ``(n, in)``
    inputs the squares even factor, ``Σ_n Σ_c (δ_{n,c} a_nᵀ)² = (Σ_c δ_c²)ᵀ a²``: one matrix
    product per batch. Cost: C backward passes without weight gradients, ≈ C/1.5
    gradient-equivalents, plus the products.

    Returns:
        The diagonal, or None when a layer is not Linear/Conv1d/Conv2d, or a layer module runs
        other than once per forward pass (its gradient is then not one ``δᵀa``).
    """
    ctx = loss.ctx
    layers = ctx.layers
    names = _weight_names(ctx)
    if len(set(names)) != len(names) or not all(_factorable(layer) for layer in layers):
        return None
    total = loss.zeros()
    for x, _ in ctx.batches():
        recorded = _record_layers(loss.model, layers, x)
        if recorded is None:
            return None
        logits, inputs, offsets = recorded
        factors = list(_gauss_newton_factors(logits))
        # Σ_c δ_c² per Linear layer on (n, in) inputs, multiplied by a² once after the classes.
        summed_squares: dict[int, torch.Tensor] = {}
        for c, q in enumerate(factors):
            deltas = torch.autograd.grad(
                logits, offsets, grad_outputs=q, retain_graph=c + 1 < len(factors)
            )
            for i, (layer, a, delta) in enumerate(zip(layers, inputs, deltas, strict=True)):
                if layer.kind == "linear" and a.ndim == 2:
                    square = delta.double().pow(2)
                    summed_squares[i] = summed_squares.get(i, 0) + square
                else:
                    squares = _squared_example_gradients(layer, a, delta)
                    total[names[i]] += squares.reshape(total[names[i]].shape)
        for i, square in summed_squares.items():
            product = square.T @ inputs[i].double().pow(2)
            total[names[i]] += product.reshape(total[names[i]].shape)
    return {n: t / loss.num_train for n, t in total.items()}


def _record_layers(
    model: nn.Module, layers: Sequence[WeightLayer], x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
    """Forward ``x`` recording each layer's input and a zero offset added to its output.

    The gradient of anything w.r.t. a layer's offset is the gradient w.r.t. its output.

    Returns:
        ``(logits, inputs, offsets)``, or None if a layer module ran other than once.
    """
    calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layers]

    def record(
        module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor, index: int
    ) -> torch.Tensor:
        offset = torch.zeros_like(output, requires_grad=True)
        calls[index].append((args[0].detach(), offset))
        return output + offset

    handles = [
        layer.module.register_forward_hook(functools.partial(record, index=i))
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if any(len(call) != 1 for call in calls):
        return None
    return logits, [call[0][0] for call in calls], [call[0][1] for call in calls]


def _squared_example_gradients(
    layer: WeightLayer, a: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """``Σ_n G_n ⊙ G_n`` for the per-example weight gradients ``G_n`` (``out × in`` matrix).

    ``a``: the layer's inputs, ``delta``: the gradients w.r.t. its outputs, batch first.
    """
    n = len(a)
    if layer.kind == "linear":
        columns = a.reshape(n, -1, a.shape[-1]).double()  # (n, positions, in)
        rows = delta.reshape(n, -1, delta.shape[-1]).double()  # (n, positions, out)
        groups = 1
    else:
        geometry = layer.geometry
        if layer.kind == "conv1d":  # as a conv2d of height 1
            a, delta = a.unsqueeze(2), delta.unsqueeze(2)
            kernel, stride, dilation = (
                (1, *geometry.kernel_size),
                (1, *geometry.stride),
                (1, *geometry.dilation),
            )
            padding = ((0, 0), *geometry.padding)
        else:
            kernel, stride, dilation = geometry.kernel_size, geometry.stride, geometry.dilation
            padding = geometry.padding
        pads = [side for before_after in reversed(padding) for side in before_after]
        if any(pads):
            mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
            a = F.pad(a, pads, mode=mode)
        groups = geometry.groups
        patches = F.unfold(a, kernel, dilation=dilation, stride=stride)  # (n, c_in·k, P)
        columns = patches.double().transpose(1, 2)  # (n, P, c_in·k)
        rows = delta.flatten(2).double().transpose(1, 2)  # (n, P, c_out)
    out_features, in_features = rows.shape[-1], columns.shape[-1] // groups
    columns = columns.reshape(n, columns.shape[1], groups, in_features)
    rows = rows.reshape(n, rows.shape[1], groups, out_features // groups)
    chunk = max(1, CHUNK_BYTES // (8 * out_features * in_features))
    total = torch.zeros(groups, out_features // groups, in_features, dtype=torch.float64)
    for lo, hi in _chunks(n, chunk):
        gradients = torch.einsum("npgo,npgi->ngoi", rows[lo:hi], columns[lo:hi])
        total += gradients.pow(2).sum(0)
    return total.reshape(out_features, in_features)
