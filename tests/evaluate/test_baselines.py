"""Baselines of the scores (Jiang et al. 2020, section 4.1): ε-oracle, canonical order, random."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import granulated_tau, kendall_tau, score_table
from genmeasures.evaluate.baselines import (
    canonical_measure,
    canonical_rank,
    oracle_draws,
    random_measure,
)


def tie_free_gap(n: int, seed: int = 0) -> np.ndarray:
    # Distinct gaps 0.0025 apart, shuffled.
    return np.random.default_rng(seed).permutation(np.linspace(0.0, 0.5, n))


# ---------------------------------------------------------------------------------------------
# ε-oracle


def test_oracle_draws_shape_and_seeding():
    gap = tie_free_gap(50)
    draws = oracle_draws(gap, 0.05, 4, seed=3)
    assert draws.shape == (50, 4)
    np.testing.assert_array_equal(draws, oracle_draws(gap, 0.05, 4, seed=3))
    assert not np.allclose(draws, oracle_draws(gap, 0.05, 4, seed=4))
    # Each draw is its own stream: the columns differ, and a longer run extends a shorter one.
    assert not np.allclose(draws[:, 0], draws[:, 1])
    np.testing.assert_array_equal(draws[:, :2], oracle_draws(gap, 0.05, 2, seed=3))
    # The noise is N(0, ε²): over 50 x 4 values its sample std is within ~10% of ε.
    noise = draws - gap[:, None]
    assert abs(noise.mean()) < 0.02
    assert noise.std() == pytest.approx(0.05, rel=0.2)


def test_oracle_with_zero_noise_is_the_gap():
    gap = tie_free_gap(10)
    np.testing.assert_array_equal(oracle_draws(gap, 0.0, 2), np.stack([gap, gap], axis=1))


def test_oracle_tau_increases_as_epsilon_decreases():
    gap = tie_free_gap(200)
    taus = [
        np.mean([kendall_tau(column, gap) for column in oracle_draws(gap, epsilon, 10).T])
        for epsilon in (0.2, 0.1, 0.05, 0.02, 0.01, 1e-9)
    ]
    assert all(a < b for a, b in itertools.pairwise(taus)), taus
    assert taus[0] > 0.3  # even a noisy oracle predicts the gap
    # ε = 1e-9 is far below the gap's spacing (0.0025): every pair keeps its order.
    assert taus[-1] == 1.0


def test_oracle_rows_of_score_table_tend_to_one():
    table = pd.DataFrame(list(itertools.product([1, 2, 3], [4, 5, 6])), columns=["a", "b"])
    table["gap"] = tie_free_gap(len(table), seed=1)
    table["mu"] = np.arange(len(table), dtype=float)
    ev = score_table(table, hparams=["a", "b"], epsilons=(0.5, 0.1, 1e-9), draws=5)
    tau = ev.ranks["tau"]
    assert tau["oracle 0.5"] < tau["oracle 0.1"] < tau["oracle 1e-09"] == 1.0
    assert ev.ranks.loc["oracle 1e-09", "Psi"] == 1.0
    assert ev.cmi.loc["oracle 1e-09", "|S|=0"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("epsilon", "draws"), [(-0.1, 3), (float("nan"), 3), (0.1, 0), (0.1, 2.0)])
def test_oracle_bad_arguments(epsilon, draws):
    with pytest.raises(EvaluationError, match=r"epsilon|draws"):
        oracle_draws(np.zeros(3), epsilon, draws)


# ---------------------------------------------------------------------------------------------
# canonical ordering


def test_canonical_rank_directions():
    assert canonical_rank("increasing", 32) == 32.0
    assert canonical_rank("decreasing", 32) == -32.0
    assert canonical_rank("decreasing", "0.5") == -0.5  # numeric strings are numbers
    assert canonical_rank(("sgd", "adam", "rmsprop"), "sgd") == 0.0
    assert canonical_rank(("sgd", "adam", "rmsprop"), "rmsprop") == 2.0


def test_canonical_measure_maps_a_column():
    values = pd.Series([0.1, 0.01, 0.001], index=["x", "y", "z"])
    ranks = canonical_measure(values, "decreasing")
    pd.testing.assert_series_equal(ranks, pd.Series([-0.1, -0.01, -0.001], index=["x", "y", "z"]))
    names = canonical_measure(pd.Series(["adam", "sgd"]), ("sgd", "adam"))
    assert names.tolist() == [1.0, 0.0]
    assert names.dtype == np.float64


@pytest.mark.parametrize(
    ("order", "value", "fragment"),
    [
        ("upward", 1, "'upward'"),
        ("none", 1, "'increasing', 'decreasing'"),
        (("sgd", "adam"), "rmsprop", "'rmsprop' is not in the canonical order"),
        ("increasing", "wide", "needs numeric values; got 'wide'"),
        ("decreasing", None, "needs numeric values"),
    ],
)
def test_canonical_rank_errors(order, value, fragment):
    with pytest.raises(EvaluationError, match=fragment):
        canonical_rank(order, value)


# ---------------------------------------------------------------------------------------------
# random measure


def test_random_measure_is_seeded():
    np.testing.assert_array_equal(random_measure(20, seed=1), random_measure(20, seed=1))
    assert not np.allclose(random_measure(20, seed=1), random_measure(20, seed=2))
    assert random_measure(20).shape == (20,)


def test_random_measure_scores_near_zero():
    # A 10 x 10 x 10 grid of 1000 models, the gap depending on every type.
    grid = list(itertools.product(range(10), repeat=3))
    table = pd.DataFrame(grid, columns=["a", "b", "c"])
    rng = np.random.default_rng(0)
    table["gap"] = table["a"] + 2 * table["b"] - table["c"] + rng.normal(0, 1, len(table))
    table["mu"] = random_measure(len(table), seed=0)
    # Under independence, without ties, τ has mean 0 and variance 2 (2n + 5) / (9 n (n − 1)):
    # sd ≈ 0.021 for n = 1000, so |τ| < 0.1 is a 4.7 sd bound.
    assert abs(kendall_tau(table["mu"], table["gap"])) < 0.1
    # Each ψ_i averages 100 groups of 10 models, whose τ has sd sqrt(2·25 / (9·90)) ≈ 0.25:
    # sd(ψ_i) ≈ 0.025, so |ψ_i| < 0.1 is a 4 sd bound, and Ψ's sd is smaller still.
    result = granulated_tau(table, "mu", hparams=["a", "b", "c"])
    assert all(abs(value) < 0.1 for value in result.psi.values())
    assert abs(result.Psi) < 0.06
    assert result.groups_used == {"a": 100, "b": 100, "c": 100}


def test_random_row_of_score_table_is_near_zero():
    table = pd.DataFrame(list(itertools.product(range(8), range(8), range(4))), columns=list("abc"))
    rng = np.random.default_rng(1)
    table["gap"] = table["a"] - table["b"] + rng.normal(0, 1, len(table))
    table["mu"] = table["gap"]
    ev = score_table(table, hparams=list("abc"), epsilons=(), draws=1)
    # n = 256: sd(τ) ≈ 0.042; 0.2 is more than 4 sd.  Î of an independent measure is close to 0
    # (its estimate is biased upwards by the finite cells, but far below the measure's 1).
    assert abs(ev.ranks.loc["random", "tau"]) < 0.2
    assert abs(ev.ranks.loc["random", "Psi"]) < 0.2
    assert ev.cmi.loc["random", "K"] < 0.05
    assert ev.cmi.loc["mu", "K"] == pytest.approx(1.0)
    assert not math.isnan(ev.cmi.loc["random", "|S|=0"])


def test_canonical_rank_takes_a_list_as_a_tuple():
    order = ["sgd", "adam", "rmsprop"]
    assert [canonical_rank(order, v) for v in order] == [0.0, 1.0, 2.0]
    assert canonical_rank(order, "adam") == canonical_rank(tuple(order), "adam")
