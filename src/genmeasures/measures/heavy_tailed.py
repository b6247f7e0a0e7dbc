"""Heavy-tailed spectral metrics (Martin & Mahoney 2021; Martin, Peng & Mahoney 2021).

Heavy-Tailed Self-Regularization (HT-SR) reads each weight matrix through the empirical spectral
density (ESD) of its correlation matrix and finds that the better trained a layer, the heavier
the tail of that density. Per weight matrix ``W`` (``N × M`` with ``N ≥ M`` after transposing),
with ``λ_1 ≤ … ≤ λ_M`` the eigenvalues of ``X = WᵀW`` (the squared singular values of ``W``; no
``1/N``, as in weightwatcher and the Nature Communications paper, so that ``Σ λ_i = ‖W‖_F²`` and
``λ_max = ‖W‖₂²``):

* ``α``: the exponent of the power law ``p(λ) ∝ λ^{-α}`` fitted to the tail ``λ ≥ x_min`` by
  maximum likelihood, ``α = 1 + n / Σ_{λ_i ≥ x_min} ln(λ_i / x_min)``, with ``x_min`` the
  candidate that minimizes the Kolmogorov-Smirnov distance between the tail's empirical CDF and
  the fitted one (Clauset, Shalizi & Newman 2009, §3.1 and §3.3), as ``powerlaw`` and
  weightwatcher do (:func:`fit_power_law`);
* ``α̂ = α · log10 λ_max`` (weighted alpha);
* ``log10 ‖X‖_α^α = log10 Σ_i λ_i^α`` (the log α-norm: weightwatcher's ``log_alpha_norm``, the
  Schatten α-norm of ``X`` raised to the power α, without a ``1/α``);
* the stable rank ``‖W‖_F² / ‖W‖₂² = Σ_i λ_i / λ_max``;
* the number of Marchenko-Pastur outliers: eigenvalues above the bulk edge
  ``λ₊ = N σ² (1 + √(M/N))²``, with ``σ²`` matched to the median of the ESD
  (:func:`marchenko_pastur_edge`).

A conv kernel ``c_out × c_in/groups × k_1 × …`` is read as weightwatcher reads it by default
(``pool=True``): each kernel position ``W[:, :, i, j]`` is a ``c_out × c_in/groups`` matrix, and
the eigenvalues of all ``k_1·k_2·…`` of them are pooled into one ESD. The network-level measures
are means over the weight matrices (weightwatcher's summary), on the matrices of
:mod:`genmeasures.measures.matrices`: the folded weight layers of the papers' networks, and on any
other network its linear maps (attention projections and embedding tables included).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from genmeasures.measures.context import MeasureContext
from genmeasures.measures.inputs import computation_dtype, resolve_device
from genmeasures.measures.matrices import matrices_description
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure

__all__ = [
    "MIN_EIGENVALUES",
    "PowerLawFit",
    "esd",
    "fit_power_law",
    "heavy_tailed_layers",
    "marchenko_pastur_edge",
    "marchenko_pastur_median",
]

#: A matrix whose ESD has fewer nonzero eigenvalues has no tail to fit: its α, α̂, log α-norm and
#: Marchenko-Pastur count are undefined (NaN, with the reason in the table's ``note``).
MIN_EIGENVALUES = 10

#: Most entries of one block of the vectorized x_min search (candidates × eigenvalues).
_BLOCK_ENTRIES = 1 << 20

#: The per-layer table's columns, in order.
COLUMNS = (
    "layer",
    "shape",
    "matrices",
    "N",
    "M",
    "eigenvalues",
    "alpha",
    "alpha_weighted",
    "log_alpha_norm",
    "stable_rank",
    "mp_outliers",
    "mp_edge",
    "lambda_max",
    "xmin",
    "tail",
    "ks_distance",
    "note",
)


# ---------------------------------------------------------------------------------- the ESD


def esd(weight: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """The eigenvalues of ``WᵀW`` of a weight matrix, or pooled over a conv's kernel positions.

    Args:
        weight: A matrix ``out × in`` or a conv kernel ``out × in/groups × k_1 × …`` (each kernel
            position is one ``out × in/groups`` matrix).

    Returns:
        The eigenvalues in ascending order (float64, clipped at 0: ``M`` per matrix, the squared
        singular values), ``N`` and ``M``: the larger and smaller side of each matrix.
    """
    tensor = weight.detach().to(torch.float64)
    if tensor.dim() < 2:
        raise ValueError(f"a weight matrix has 2 dimensions or more, got {tuple(weight.shape)}")
    slices = tensor.reshape(tensor.shape[0], tensor.shape[1], -1).permute(2, 0, 1)
    rows, columns = slices.shape[1], slices.shape[2]
    # The Gram matrix of the smaller side: its M eigenvalues are the squared singular values.
    gram = slices.mT @ slices if rows >= columns else slices @ slices.mT
    eigenvalues = torch.linalg.eigvalsh(gram).reshape(-1).cpu().numpy()
    return np.sort(np.clip(eigenvalues, 0.0, None)), max(rows, columns), min(rows, columns)


def _tolerance(eigenvalues: np.ndarray, m: int) -> float:
    """The rounding error of the eigenvalues: ``λ_max · M · ε`` (numpy's rank tolerance)."""
    return float(eigenvalues[-1]) * m * float(np.finfo(np.float64).eps)


def _nonzero(eigenvalues: np.ndarray, m: int) -> np.ndarray:
    """The numerically nonzero eigenvalues: those above :func:`_tolerance`."""
    if eigenvalues.size == 0 or eigenvalues[-1] <= 0:
        return eigenvalues[:0]
    return eigenvalues[eigenvalues > _tolerance(eigenvalues, m)]


# ---------------------------------------------------------------------------------- power law


@dataclass(frozen=True)
class PowerLawFit:
    """A power law ``p(x) ∝ x^{-α}`` for ``x ≥ x_min`` fitted to positive values.

    Attributes:
        alpha: The maximum-likelihood exponent on the tail.
        xmin: The lower bound of the tail, the KS-optimal candidate.
        ks_distance: The Kolmogorov-Smirnov distance of the fit at ``xmin``.
        tail: The number of values ``≥ xmin``.
    """

    alpha: float
    xmin: float
    ks_distance: float
    tail: int


def fit_power_law(values: np.ndarray) -> PowerLawFit:
    """Fit a continuous power law to the tail of positive values (Clauset et al. 2009, §3).

    Every distinct value but the largest is a candidate ``x_min``. For each, the tail is the
    ``n`` values ``x_i ≥ x_min``, its maximum-likelihood exponent
    ``α = 1 + n / Σ_i ln(x_i / x_min)`` (their §3.1), and its Kolmogorov-Smirnov distance
    ``D = max_k |1 − (x_(k) / x_min)^{1−α} − k/n|`` over the sorted tail ``x_(0) ≤ … ≤ x_(n−1)``,
    with the empirical CDF taken just below each value (``k/n``), as the ``powerlaw`` package and
    weightwatcher compute it. The fit is the candidate with the smallest ``D`` (the smallest
    ``x_min`` among ties). All candidates are evaluated at once, in blocks of a
    candidates × values array: ``O(n²)`` time, ``O(n)`` memory per candidate.

    Args:
        values: Positive finite numbers (e.g. the nonzero eigenvalues of an ESD).

    Returns:
        The fit at the KS-optimal ``x_min``.

    Raises:
        ValueError: if a value is not positive and finite, or fewer than two values are distinct
            (no tail to fit).
    """
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if x.size == 0 or not (np.all(np.isfinite(x)) and x[0] > 0):
        raise ValueError("a power law is fitted to positive finite values")
    logs = np.log(x)
    n = x.size
    first = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    candidates = first[x[first] < x[-1]]
    if candidates.size == 0:
        raise ValueError("all values are equal: there is no tail to fit")
    alphas = np.empty(candidates.size)
    distances = np.empty(candidates.size)
    rows = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, candidates.size, rows):
        block = candidates[start : start + rows]
        low = int(block[0])  # the columns below the block's first candidate are never in a tail
        span = logs[None, low:] - logs[block, None]  # ln(x_i / x_min) ≥ 0 exactly on the tail
        in_tail = span >= 0
        span = np.where(in_tail, span, 0.0)
        size = (n - block).astype(np.float64)
        alpha = 1.0 + size / span.sum(axis=1)
        fitted = -np.expm1((1.0 - alpha)[:, None] * span)  # 1 − (x_i / x_min)^{1−α}
        empirical = (np.arange(low, n)[None, :] - block[:, None]) / size[:, None]
        gap = np.where(in_tail, np.abs(fitted - empirical), 0.0)
        alphas[start : start + rows] = alpha
        distances[start : start + rows] = gap.max(axis=1)
    best = int(np.argmin(distances))
    return PowerLawFit(
        alpha=float(alphas[best]),
        xmin=float(x[candidates[best]]),
        ks_distance=float(distances[best]),
        tail=int(n - candidates[best]),
    )


# ---------------------------------------------------------------------------------- MP law


@functools.lru_cache(maxsize=512)
def marchenko_pastur_median(ratio: float) -> float:
    """The median of the Marchenko-Pastur law of ratio ``γ = M/N ∈ (0, 1]`` and variance 1.

    The law of the eigenvalues of ``WᵀW / N`` for an ``N × M`` matrix of i.i.d. entries of
    variance 1: density ``√((b−x)(x−a)) / (2πγx)`` on ``[a, b] = [(1−√γ)², (1+√γ)²]``. Its CDF
    has the closed form ``(G(x) − G(a)) / (2πγ)`` with
    ``G(x) = r(x) + (a+b)/2 · asin((2x−a−b)/(b−a)) − √(ab) · asin(((a+b)x − 2ab)/((b−a)x))``,
    ``r(x) = √((b−x)(x−a))`` (an antiderivative of the density's numerator over ``x``), and the
    median is found by bisection to the last bit.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"the Marchenko-Pastur ratio M/N must be in (0, 1], got {ratio}")
    root = math.sqrt(ratio)
    a, b = (1 - root) ** 2, (1 + root) ** 2
    geometric = 1 - ratio  # √(ab)
    middle = (a + b) / 2

    def clipped_asin(value: float) -> float:
        return math.asin(min(1.0, max(-1.0, value)))

    def cdf(x: float) -> float:
        r = math.sqrt(max((b - x) * (x - a), 0.0))
        g = r + middle * clipped_asin((2 * x - a - b) / (b - a))
        if geometric > 0:
            g -= geometric * clipped_asin(((a + b) * x - 2 * a * b) / ((b - a) * x))
        g_a = math.pi / 2 * (geometric - middle)  # G(a), exactly
        return (g - g_a) / (2 * math.pi * ratio)

    low, high = a, b
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if cdf(mid) < 0.5:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def marchenko_pastur_edge(eigenvalues: np.ndarray, n: int, m: int) -> float:
    """The bulk edge ``λ₊ = N σ² (1 + √(M/N))²`` of an ESD of ``WᵀW``, σ² fitted by the median.

    ``σ²`` is the entry variance whose Marchenko-Pastur law has the ESD's median:
    ``N σ² = median(λ) / median_MP(M/N)``. The median ignores the outliers it serves to count
    (weightwatcher instead fits σ to a kernel density estimate of the ESD, and only with
    ``mp_fit=True``), and ``N`` cancels: ``λ₊ = median(λ) (1 + √(M/N))² / median_MP(M/N)``.

    Args:
        eigenvalues: Every eigenvalue of ``WᵀW`` (``M`` per matrix, zeros included).
        n: The larger side ``N`` of the matrix.
        m: The smaller side ``M``.
    """
    ratio = m / n
    return (
        float(np.median(eigenvalues)) * (1 + math.sqrt(ratio)) ** 2 / marchenko_pastur_median(ratio)
    )


# ---------------------------------------------------------------------------------- per matrix


def _matrix_row(name: str, weight: torch.Tensor) -> dict[str, object]:
    """The heavy-tailed metrics of one weight matrix (one row of the per-layer table)."""
    eigenvalues, n, m = esd(weight)
    nonzero = _nonzero(eigenvalues, m)
    count = weight.dim() - 2
    row: dict[str, object] = {
        "layer": name,
        "shape": tuple(weight.shape),
        "matrices": int(math.prod(weight.shape[2:])) if count > 0 else 1,
        "N": n,
        "M": m,
        "eigenvalues": int(nonzero.size),
        **dict.fromkeys(
            (
                "alpha",
                "alpha_weighted",
                "log_alpha_norm",
                "stable_rank",
                "mp_outliers",
                "mp_edge",
                "lambda_max",
                "xmin",
                "ks_distance",
            ),
            math.nan,
        ),
        "tail": 0,
        "note": "",
    }
    if nonzero.size == 0:
        row["note"] = "all eigenvalues are zero (a zero matrix)"
        return row
    lambda_max = float(nonzero[-1])
    row["lambda_max"] = lambda_max
    row["stable_rank"] = float(eigenvalues.sum() / lambda_max)
    if nonzero.size < MIN_EIGENVALUES:
        row["note"] = (
            f"{nonzero.size} nonzero eigenvalues, fewer than {MIN_EIGENVALUES}: no tail to fit"
        )
        return row
    notes = []
    # Equal to the precision the weights are stored in (an orthogonal matrix: one point mass,
    # whose rounding a power law would fit).
    stored = torch.finfo(weight.dtype).eps if weight.is_floating_point() else 0.0
    if nonzero[-1] - nonzero[0] <= lambda_max * m * max(stored, np.finfo(np.float64).eps):
        notes.append("power-law fit: the nonzero eigenvalues are all equal, there is no tail")
    else:
        fit = fit_power_law(nonzero)
        log_max = math.log10(lambda_max)
        row.update(
            alpha=fit.alpha,
            alpha_weighted=fit.alpha * log_max,
            # log10 Σ λ^α = α log10 λ_max + log10 Σ (λ/λ_max)^α, which cannot overflow
            log_alpha_norm=fit.alpha * log_max
            + math.log10(float(np.sum((nonzero / lambda_max) ** fit.alpha))),
            xmin=fit.xmin,
            tail=fit.tail,
            ks_distance=fit.ks_distance,
        )
    if np.median(eigenvalues) <= _tolerance(eigenvalues, m):
        notes.append("Marchenko-Pastur: half of the eigenvalues or more are zero, there is no bulk")
    else:
        edge = marchenko_pastur_edge(eigenvalues, n, m)
        row.update(mp_edge=edge, mp_outliers=float(np.count_nonzero(eigenvalues > edge)))
    row["note"] = "; ".join(notes)
    return row


def _table(ctx: MeasureContext) -> pd.DataFrame:
    def compute() -> pd.DataFrame:
        rows = [_matrix_row(matrix.name, matrix.weight) for matrix in ctx.weight_matrices]
        return pd.DataFrame(rows, columns=list(COLUMNS))

    return ctx.cached("heavy-tailed/table", compute)


def heavy_tailed_layers(model: nn.Module) -> pd.DataFrame:
    """The heavy-tailed metrics of every weight matrix of a network, one row each.

    The matrices are those the measures read (:mod:`genmeasures.measures.matrices`): the
    BatchNorm-folded weight layers of a network that folds, the linear maps of any other one.
    The table is also every ``ht-*`` measure's ``per_layer``.

    Args:
        model: The network; it is copied, never modified.

    Returns:
        One row per weight matrix, in forward order: ``layer``, ``shape`` (the weight's),
        ``matrices`` (kernel positions pooled; 1 for a matrix), ``N ≥ M`` (the sides of each),
        ``eigenvalues`` (the nonzero ones), ``alpha``, ``alpha_weighted`` (α·log10 λ_max),
        ``log_alpha_norm`` (log10 Σλ^α), ``stable_rank``, ``mp_outliers`` and ``mp_edge``
        (the Marchenko-Pastur bulk edge λ₊), ``lambda_max``, ``xmin``, ``tail`` (eigenvalues
        ≥ x_min), ``ks_distance``, and ``note``: why a value is NaN, if one is.

    Raises:
        ModelError: for a network without weight matrices.
        NumericalError: for a weight matrix with a non-finite entry.
    """
    ctx = MeasureContext(
        model,
        None,
        None,
        init_model=None,
        records=None,
        seed=0,
        device=resolve_device(None, model),
        batch_size=1,
        input_shape=getattr(model, "input_shape", None),
        dtype=computation_dtype(model),
    )
    return _table(ctx).copy()


# ---------------------------------------------------------------------------------- measures


def _mean(ctx: MeasureContext, column: str, what: str) -> MeasureOutput:
    """The mean of one column over the matrices where it is defined; undefined if none is."""
    table = _table(ctx)
    values = table[column].to_numpy(dtype=np.float64)
    defined = np.isfinite(values)
    skipped = {
        str(layer): str(note)
        for layer, note, ok in zip(table["layer"], table["note"], defined, strict=True)
        if not ok
    }
    reasons = "; ".join(f"{layer}: {note}" for layer, note in skipped.items())
    if not defined.any():
        raise UndefinedMeasure(f"{what} is undefined for every weight matrix ({reasons})")
    note = f"mean over {int(defined.sum())} of {len(values)} weight matrices"
    if skipped:
        note += f"; skipped {len(skipped)} ({reasons})"
    return MeasureOutput(
        value=float(values[defined].mean()),
        per_layer=table.copy(),
        extra={
            "weights": matrices_description(ctx),
            "averaged": int(defined.sum()),
            "skipped": skipped,
            "note": note,
        },
    )


_PAPERS = "Martin & Mahoney, JMLR 2021; Martin, Peng & Mahoney, Nat. Commun. 2021"


@register_measure(
    "ht-alpha",
    eq="-",
    family="heavy-tailed",
    aliases=("alpha", "ww-alpha"),
    domain="weights",
    description=(
        "Mean power-law exponent α of the tail of each weight matrix's ESD of WᵀW, fitted by "
        f"maximum likelihood with the KS-optimal x_min (Clauset et al. 2009 §3; {_PAPERS})."
    ),
)
def ht_alpha(ctx: MeasureContext) -> MeasureOutput:
    """Mean over the weight matrices of the ESD's power-law exponent α."""
    return _mean(ctx, "alpha", "α")


@register_measure(
    "ht-alpha-weighted",
    eq="-",
    family="heavy-tailed",
    aliases=("alpha-hat", "weighted alpha", "alpha-weighted", "alpha_weighted"),
    domain="weights",
    description=(
        "Mean weighted alpha α̂ = α·log10 λ_max over the weight matrices, λ_max = ‖W‖₂² "
        "(Martin, Peng & Mahoney, Nat. Commun. 2021; weightwatcher's alpha_weighted)."
    ),
)
def ht_alpha_weighted(ctx: MeasureContext) -> MeasureOutput:
    """Mean over the weight matrices of α·log10 λ_max."""
    return _mean(ctx, "alpha_weighted", "α̂")


@register_measure(
    "ht-log-alpha-norm",
    eq="-",
    family="heavy-tailed",
    aliases=("log alpha-norm", "log-alpha-norm", "log_alpha_norm"),
    domain="weights",
    description=(
        "Mean log α-norm log10 ‖WᵀW‖_α^α = log10 Σ λ_i^α over the weight matrices "
        "(Martin, Peng & Mahoney, Nat. Commun. 2021; weightwatcher's log_alpha_norm)."
    ),
)
def ht_log_alpha_norm(ctx: MeasureContext) -> MeasureOutput:
    """Mean over the weight matrices of log10 Σ_i λ_i^α."""
    return _mean(ctx, "log_alpha_norm", "the log α-norm")


@register_measure(
    "ht-stable-rank",
    eq="-",
    family="heavy-tailed",
    aliases=("stable rank", "stable-rank", "stable_rank"),
    domain="weights",
    description=(
        "Mean stable rank ‖W‖_F²/‖W‖₂² = Σλ_i/λ_max over the weight matrices, conv kernel "
        f"positions pooled ({_PAPERS})."
    ),
)
def ht_stable_rank(ctx: MeasureContext) -> MeasureOutput:
    """Mean over the weight matrices of Σ_i λ_i / λ_max."""
    return _mean(ctx, "stable_rank", "the stable rank")


@register_measure(
    "ht-mp-outliers",
    eq="-",
    family="heavy-tailed",
    aliases=("mp-outliers", "num-spikes", "num_spikes"),
    domain="weights",
    description=(
        "Mean number of eigenvalues of WᵀW above the Marchenko-Pastur bulk edge "
        f"λ₊ = Nσ²(1+√(M/N))², σ² matched to the ESD's median ({_PAPERS})."
    ),
)
def ht_mp_outliers(ctx: MeasureContext) -> MeasureOutput:
    """Mean over the weight matrices of the number of eigenvalues above the MP bulk edge."""
    return _mean(ctx, "mp_outliers", "the Marchenko-Pastur outlier count")
