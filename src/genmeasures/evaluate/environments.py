"""Coupled pairs and environments of a population, and their sign-error (Dziugaite et al. 2020).

The mechanics of :mod:`genmeasures.evaluate.robust`: which pairs of models are coupled, how much
each weighs (:func:`pair_weights`), how they group into environments (:func:`find_couplings`),
and an environment's loss and effective sample size for any number of measures at once
(:func:`environment_losses`). The definitions are those of the robust module's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.rank import within_group_pairs

#: Relative tolerance of the ESS threshold: an environment whose ESS is within it below
#: ``min_ess`` is kept, so that k equal weights reach ``min_ess = k`` whatever the rounding.
ESS_TOLERANCE = 1e-9

#: A pair weighs more than 0 when its gap difference exceeds this many times 1/√n (n test
#: examples): the root of ``(1 − 2 exp(−n Δ²/2))² = ½`` (:func:`pair_weights`).
HOEFFDING_Z = math.sqrt(-2 * math.log((1 - math.sqrt(0.5)) / 2))


def pair_weights(gap_difference: np.ndarray, test_size: float) -> np.ndarray:
    """The weight of each coupled pair: how sure the sign of its gap difference is.

    The gap is ``test error − train error``; the training errors are known exactly, so the noise
    of Δg is the noise of the two test errors, each a mean of ``n = test_size`` 0-1 losses.
    Hoeffding's inequality bounds each: ``P(|ê − e| ≥ t) ≤ 2 exp(−2 n t²)``. If both test errors
    lie within ``|Δĝ|/2`` of their expectations, the expected gaps differ with the observed sign;
    with ``t = |Δĝ|/2`` each fails with probability at most ``φ = 2 exp(−n Δĝ²/2)``, and, the two
    taken as independent, the sign is right with confidence ``p = max(0, 1 − φ)²``. The weight
    is ``w = max(0, 2p − 1)``: a pair no surer of its sign than a coin toss (p ≤ ½) weighs 0,
    and w > 0 exactly when ``|Δĝ| > 1.960/√n`` (0.062 for n = 1000, 0.0196 for n = 10,000).

    This is the weight of Dziugaite et al.'s code (``hoeffding_weight`` in
    ``experiments/coupled_networks/common.py``, then ``(p − 0.5)₊`` in
    ``create_environments.py``) times 2, so that w ∈ [0, 1] and a noiseless test set gives 1. The
    factor cancels from the environment loss and from the ESS (both invariant to scaling every
    weight), so losses and dropped environments are the paper's. Models tested on the same n
    examples would allow a tighter, paired bound (the per-example difference of 0-1 losses lies
    in [−1, 1], so the sign is right with confidence ``1 − φ``, not ``(1 − φ)²``); the paper's
    more conservative weight is kept so that its threshold, ``min_ess = 12``, means what it meant
    there.

    Args:
        gap_difference: Δg of each pair, as a fraction (a difference of 0-1 errors).
        test_size: The number of test examples each test error was measured on;
            ``math.inf``: no test noise (every pair with Δg ≠ 0 weighs 1).

    Returns:
        The weight of each pair, in [0, 1]; exactly 0 where Δg = 0.
    """
    gap_difference = np.asarray(gap_difference, dtype=np.float64)
    weights = np.zeros(gap_difference.shape)
    moved = gap_difference != 0
    if math.isinf(test_size):
        weights[moved] = 1.0
        return weights
    phi = 2.0 * np.exp(-test_size * gap_difference[moved] ** 2 / 2.0)
    confidence = np.maximum(1.0 - phi, 0.0) ** 2
    weights[moved] = np.maximum(2.0 * confidence - 1.0, 0.0)
    return weights


@dataclass(frozen=True)
class Couplings:
    """The coupled pairs of a population, ordered by environment, and what the gap gives them.

    Attributes:
        first: First model of each pair.
        second: Second model of each pair.
        pair_type: The type along which each pair differs.
        weights: The weight of each pair (:func:`pair_weights`).
        gap_sign: sgn(g_first − g_second).
        starts: Index of each environment's first pair.
        env_type: The type of each environment.
        env_model: A model of each environment (its other types' values label it).
        total: Σw of each environment.
        square: Σw² of each environment.
    """

    first: np.ndarray
    second: np.ndarray
    pair_type: np.ndarray
    weights: np.ndarray
    gap_sign: np.ndarray
    starts: np.ndarray
    env_type: np.ndarray
    env_model: np.ndarray
    total: np.ndarray
    square: np.ndarray


def find_couplings(
    codes: np.ndarray, g: np.ndarray, test_size: float, types: Sequence[str]
) -> Couplings:
    """Every coupled pair of the models with level ``codes`` (models x types), by environment.

    Raises:
        EvaluationError: If no two models differ in exactly one type.
    """
    first, second, pair_type, environment, env_type = [], [], [], [], []
    environments = 0
    for i in range(codes.shape[1]):
        others = np.delete(codes, i, axis=1)
        if others.shape[1]:
            context = np.unique(others, axis=0, return_inverse=True)[1].reshape(-1)
        else:
            context = np.zeros(len(codes), dtype=np.int64)
        a, b, pair_context = within_group_pairs(context)
        coupled = codes[a, i] != codes[b, i]
        present, env = np.unique(pair_context[coupled], return_inverse=True)
        order = np.argsort(env, kind="stable")
        first.append(a[coupled][order])
        second.append(b[coupled][order])
        environment.append(env[order] + environments)
        pair_type.append(np.full(len(order), i))
        env_type.append(np.full(len(present), i))
        environments += len(present)
    if not environments:
        raise EvaluationError(
            f"no coupled pair among the {len(g)} scored models: no two of them differ in exactly "
            f"one of the hyperparameter types {list(types)} (robust scoring compares such pairs)"
        )
    first_, second_ = np.concatenate(first), np.concatenate(second)
    env_ = np.concatenate(environment)
    starts = np.flatnonzero(np.r_[True, env_[1:] != env_[:-1]])
    difference = g[first_] - g[second_]
    weights = pair_weights(difference, test_size)
    return Couplings(
        first=first_,
        second=second_,
        pair_type=np.concatenate(pair_type),
        weights=weights,
        gap_sign=np.sign(difference),
        starts=starts,
        env_type=np.concatenate(env_type),
        env_model=first_[starts],
        total=np.add.reduceat(weights, starts),
        square=np.add.reduceat(weights**2, starts),
    )


def effective_sample_size(total: np.ndarray, square: np.ndarray) -> np.ndarray:
    """The effective sample size (Σw)² / Σw² of each environment; 0 where Σw = 0."""
    return np.divide(total**2, square, out=np.zeros(np.shape(total)), where=total > 0)


def kept_environments(ess: np.ndarray, min_ess: float) -> np.ndarray:
    """Environments with some weight and an ESS of at least ``min_ess`` (up to rounding)."""
    return (ess > 0) & (ess >= min_ess * (1.0 - ESS_TOLERANCE))


def environment_losses(mu: np.ndarray, couplings: Couplings) -> tuple[np.ndarray, np.ndarray]:
    """The loss and ESS of every environment for each column of ``mu`` (models x columns).

    A pair with a NaN value of a column leaves that column's sums. Where an environment has no
    weight left, its loss is NaN and its ESS 0.
    """
    difference = mu[couplings.first] - mu[couplings.second]
    errors = 0.5 - 0.5 * np.sign(difference) * couplings.gap_sign[:, None]
    missing = np.isnan(difference)
    if missing.any():
        weights = np.where(missing, 0.0, couplings.weights[:, None])
        errors[missing] = 0.0
        total = np.add.reduceat(weights, couplings.starts, axis=0)
        square = np.add.reduceat(weights**2, couplings.starts, axis=0)
    else:
        weights = couplings.weights[:, None]
        total = np.repeat(couplings.total[:, None], mu.shape[1], axis=1)
        square = np.repeat(couplings.square[:, None], mu.shape[1], axis=1)
    weighted = np.add.reduceat(errors * weights, couplings.starts, axis=0)
    loss = np.divide(weighted, total, out=np.full(total.shape, np.nan), where=total > 0)
    return loss, effective_sample_size(total, square)
