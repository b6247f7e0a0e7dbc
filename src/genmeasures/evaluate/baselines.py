"""Reference points for the scores (Jiang et al. 2020, section 4.1 and appendix C.4).

- The ε-oracle observes the gap through Gaussian noise: ``g + N(0, ε²)``; its scores are averaged
  over seeded draws. As ε → 0 its τ tends to 1.
- The canonical ordering of a hyperparameter type is the order that the community believes
  predicts the gap (smaller batch, deeper, wider, more dropout, more weight decay, higher learning
  rate → smaller gap; SGD < Adam < RMSProp). It predicts only its own type's column. The orders
  are facts about hyperparameter types, declared with them in the zoo
  (:data:`genmeasures.zoo.space.CANONICAL_ORDERS`); the evaluation receives them as an argument.
- The random measure has no relation to the gap: its scores show how far from 0 chance alone
  reaches at the population's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.rank import Groups, psi_matrix
from genmeasures.seeding import derive_seed

#: The noise levels of the paper's oracle rows (Jiang et al. 2020, table 5).
ORACLE_EPSILONS = (0.01, 0.02, 0.05, 0.1)

#: Seed purposes of the baselines' draws (:func:`genmeasures.seeding.derive_seed`).
ORACLE_STREAM, RANDOM_STREAM = "evaluate/oracle", "evaluate/random"
NULL_PSI_STREAM = "evaluate/null-psi"

#: Random rankings drawn to estimate the spread of Ψ under chance (:func:`null_psi_sd`): the
#: estimate's relative standard error is about ``1/sqrt(2 * draws)``, 2 %.
NULL_PSI_DRAWS = 1000

#: Random rankings scored at once (bounds the memory of :func:`null_psi_sd`).
_NULL_CHUNK = 100


def canonical_rank(order: str | Sequence[Any], value: Any) -> float:
    """A number whose order is the canonical prediction of the gap's order.

    Args:
        order: ``"increasing"``, ``"decreasing"`` or a tuple (or list) of values from the
            smallest to the largest expected gap.
        value: A value of the hyperparameter.

    Returns:
        ``value``, ``-value`` or the value's position in the tuple: a larger rank predicts a
        larger gap.

    Raises:
        EvaluationError: For another order, a value missing from the tuple, or a non-numeric
            value with a direction.
    """
    if isinstance(order, list):
        order = tuple(order)
    if isinstance(order, tuple):
        if value not in order:
            raise EvaluationError(f"value {value!r} is not in the canonical order {list(order)}")
        return float(order.index(value))
    if order not in ("increasing", "decreasing"):
        raise EvaluationError(
            f"a canonical order is 'increasing', 'decreasing' or a list of values; got {order!r}"
        )
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise EvaluationError(
            f"an {order!r} canonical order needs numeric values; got {value!r}"
        ) from error
    return number if order == "increasing" else -number


def canonical_measure(values: pd.Series, order: str | tuple[Any, ...]) -> pd.Series:
    """The canonical-ordering measure of one hyperparameter column (appendix C.4)."""
    return values.map(lambda value: canonical_rank(order, value)).astype(float)


def oracle_draws(gap: np.ndarray, epsilon: float, draws: int, seed: int = 0) -> np.ndarray:
    """``draws`` columns of the ε-oracle ``g + N(0, ε²)`` (section 4.1), seeded per draw.

    Raises:
        EvaluationError: For a negative ε or fewer than one draw.
    """
    if not epsilon >= 0:
        raise EvaluationError(f"the oracle's noise epsilon must be >= 0; got {epsilon!r}")
    if not isinstance(draws, int) or draws < 1:
        raise EvaluationError(f"oracle draws must be a positive int; got {draws!r}")
    columns = [
        np.random.default_rng(derive_seed(seed, f"{ORACLE_STREAM}/{epsilon!r}", k)).normal(
            0.0, epsilon, len(gap)
        )
        for k in range(draws)
    ]
    return np.asarray(gap, dtype=np.float64)[:, None] + np.stack(columns, axis=1)


def random_measure(models: int, seed: int = 0) -> np.ndarray:
    """A measure drawn independently of everything: standard normal values, seeded."""
    return np.random.default_rng(derive_seed(seed, RANDOM_STREAM)).standard_normal(models)


def null_psi_sd(
    gap: np.ndarray, groups: Sequence[Groups], draws: int = NULL_PSI_DRAWS, seed: int = 0
) -> float:
    """The standard deviation of Ψ between a uniformly random ranking and these models' gaps.

    A measure's Ψ divided by it is its margin over chance at this population's size and design.
    Unlike τ's (:func:`genmeasures.evaluate.report.tau_null_sd`), Ψ's spread has no closed form:
    the ψ_i of different types share models (a group of type i and one of type j meet in at most
    one model, and that is enough to correlate them), and ties of the gap shrink it. It is
    estimated from ``draws`` seeded random rankings, scored exactly as measures are
    (:func:`~genmeasures.evaluate.rank.psi_matrix`, Ψ the mean of the finite ψ_i).

    Args:
        gap: The gap of each model.
        groups: The groups of ψ_i of each type (:func:`~genmeasures.evaluate.rank.psi_groups`).
        draws: Random rankings drawn.
        seed: Seed of the draws.

    Returns:
        The standard deviation (``ddof=1``); NaN when no type has a usable group.
    """
    rng = np.random.default_rng(derive_seed(seed, NULL_PSI_STREAM))
    usable = [g for g in groups if g.used]
    if not usable or draws < 2:
        return float("nan")
    psi = []
    for start in range(0, draws, _NULL_CHUNK):
        mu = rng.random((len(gap), min(_NULL_CHUNK, draws - start)))
        psi.append(np.mean([psi_matrix(mu, gap, g) for g in usable], axis=0))
    return float(np.std(np.concatenate(psi), ddof=1))
