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
    null_psi_sd,
    oracle_draws,
    random_measure,
)
from genmeasures.evaluate.rank import psi_groups
from genmeasures.evaluate.report import tau_null_sd
from genmeasures.evaluate.table import level_codes


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


# ---------------------------------------------------------------------------------------------
# Ψ's spread under chance


def exact_null_psi_sd(codes: np.ndarray, gap: np.ndarray) -> float:
    """Ψ of every ranking of the models, by brute force: the exact standard deviation."""
    n, types = codes.shape
    psis = []
    for ranking in itertools.permutations(range(n)):
        psi_by_type = []
        for i in range(types):
            others = np.delete(codes, i, axis=1)
            taus = []
            for key in {tuple(row) for row in others}:
                members = [a for a in range(n) if tuple(others[a]) == key]
                pairs = list(itertools.combinations(members, 2))
                taus.append(
                    sum(
                        np.sign(ranking[a] - ranking[b]) * np.sign(gap[a] - gap[b])
                        for a, b in pairs
                    )
                    / len(pairs)
                )
            psi_by_type.append(np.mean(taus))
        psis.append(np.mean(psi_by_type))
    return float(np.std(psis))


def test_null_psi_sd_matches_every_ranking_of_a_small_grid() -> None:
    # A 2 x 3 grid with a tie in the gap: 720 rankings. The types' ψ share models, so their
    # spread is not that of independent τ's; the estimate must still find the exact one.
    codes = np.array(list(itertools.product(range(2), range(3))))
    gap = np.array([0.1, 0.3, 0.3, 0.2, 0.5, 0.0])
    exact = exact_null_psi_sd(codes, gap)
    groups = [psi_groups(codes, i) for i in range(2)]
    assert null_psi_sd(gap, groups, draws=20_000) == pytest.approx(exact, rel=0.02)
    # Seeded: the same seed gives the same figure, another seed another draw.
    assert null_psi_sd(gap, groups, seed=1) == null_psi_sd(gap, groups, seed=1)
    assert null_psi_sd(gap, groups, seed=1) != null_psi_sd(gap, groups, seed=2)


def test_null_psi_sd_of_one_type_is_taus() -> None:
    # With one type every model is in one group: Ψ is Kendall's τ, whose spread is known.
    gap = tie_free_gap(12)
    groups = [psi_groups(np.arange(12)[:, None], 0)]
    assert null_psi_sd(gap, groups, draws=20_000) == pytest.approx(tau_null_sd(12), rel=0.02)


def test_every_scored_row_has_its_null_psi_sd() -> None:
    codes = np.array(list(itertools.product(range(3), range(3), range(2))))
    table = pd.DataFrame(codes, columns=["a", "b", "c"])
    table["gap"] = tie_free_gap(len(table))
    table["m"] = table["gap"] + np.random.default_rng(0).normal(0, 0.1, len(table))
    table["holes"] = table["m"].where(table.index % 5 != 0)
    ev = score_table(table, ["m", "holes"], hparams=["a", "b", "c"])
    groups = [psi_groups(level_codes(table[["a", "b", "c"]]), i) for i in range(3)]
    assert ev.null_psi_sd["m"] == null_psi_sd(table["gap"].to_numpy(), groups)
    assert ev.null_psi_sd["random"] == ev.null_psi_sd["m"]
    # A measure with missing values is compared with chance on its own models.
    assert ev.null_psi_sd["holes"] != ev.null_psi_sd["m"]
    assert "canonical ordering" not in ev.null_psi_sd
