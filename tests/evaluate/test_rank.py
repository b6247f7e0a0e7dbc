"""Kendall's τ-a (eq 2), ψ_i and Ψ (eqs 3-5) of Jiang et al. 2020, against references."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import granulated_tau, kendall_tau


def sign(x: float) -> int:
    return int(x > 0) - int(x < 0)


def brute_tau(mu, g) -> float:
    """Eq 2 literally: Σ over ordered pairs of distinct models, divided by n (n − 1)."""
    mu, g = [float(v) for v in mu], [float(v) for v in g]
    n = len(mu)
    total = sum(
        sign(mu[a] - mu[b]) * sign(g[a] - g[b]) for a in range(n) for b in range(n) if a != b
    )
    return total / (n * (n - 1))


def brute_psi(table: pd.DataFrame, measure: str, gap: str, names: list[str]) -> dict:
    """ψ_i with plain Python: group rows on every other type, keep complete groups of ≥ 2."""
    rows = [row for _, row in table.iterrows() if np.isfinite(row[measure])]
    psi = {}
    for name in names:
        others = [other for other in names if other != name]
        present = {row[name] for row in rows}
        groups = defaultdict(list)
        for row in rows:
            groups[tuple(row[other] for other in others)].append(row)
        taus = []
        for members in groups.values():
            if len(members) < 2 or {row[name] for row in members} != present:
                continue
            taus.append(brute_tau([r[measure] for r in members], [r[gap] for r in members]))
        psi[name] = sum(taus) / len(taus) if taus else math.nan
    return psi


# ---------------------------------------------------------------------------------------------
# kendall_tau


@pytest.mark.parametrize("n", [2, 3, 7, 50, 5000])
def test_kendall_tau_is_tau_b_without_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(3):
        x = rng.standard_normal(n)
        y = 0.5 * x + rng.standard_normal(n)  # correlated, so τ is far from 0 for large n
        expected = scipy.stats.kendalltau(x, y, variant="b").statistic
        assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_differs_from_tau_b_with_ties():
    # τ-a keeps tied pairs in the denominator: x = [0, 0, 1], y = [0, 1, 2] has 2 concordant
    # pairs of 3, so τ-a = 2/3, while τ-b = 2 / sqrt(2 · 3) ≈ 0.816.
    x, y = [0, 0, 1], [0, 1, 2]
    assert kendall_tau(x, y) == pytest.approx(2 / 3, abs=1e-15)
    assert scipy.stats.kendalltau(x, y, variant="b").statistic == pytest.approx(2 / math.sqrt(6))


def test_kendall_tau_equals_brute_force_with_heavy_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 25))
        x = rng.integers(0, int(rng.integers(1, 5)), n)
        y = rng.integers(0, int(rng.integers(1, 5)), n)
        assert kendall_tau(x, y) == pytest.approx(brute_tau(x, y), abs=1e-12)


def test_kendall_tau_brute_force_medium_sizes():
    # Larger than one merge level of blocks, with ties in both arguments.
    rng = np.random.default_rng(1)
    for n in (31, 64, 65, 129, 300):
        x = rng.integers(0, 10, n).astype(float)
        y = rng.integers(0, 7, n) + 0.1 * x
        assert kendall_tau(x, y) == pytest.approx(brute_tau(x, y), abs=1e-12)


def test_kendall_tau_large_with_ties_equals_dense_sum():
    # The merge-sort count against the dense n x n sign matrices, at sizes that are not powers
    # of 2, with ties in both arguments and in both at once.
    rng = np.random.default_rng(4)
    for n in (1000, 2049):
        x = rng.integers(0, 50, n).astype(float)
        y = np.where(rng.random(n) < 0.5, x, rng.integers(0, 30, n))
        dense = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
        assert kendall_tau(x, y) == pytest.approx(dense.sum() / (n * (n - 1)), abs=1e-12)


def test_kendall_tau_all_tied_is_zero():
    assert kendall_tau([1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]) == 0.0
    assert kendall_tau([0.0, 1.0, 2.0], [5.0, 5.0, 5.0]) == 0.0
    assert kendall_tau([3, 3], [3, 3]) == 0.0


def test_kendall_tau_extremes():
    x = np.arange(10.0)
    assert kendall_tau(x, 2 * x) == 1.0
    assert kendall_tau(x, -x) == -1.0
    assert kendall_tau([0, 1], [1, 0]) == -1.0


def test_kendall_tau_is_symmetric():
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        x, y = rng.integers(0, 4, n), rng.standard_normal(n)
        assert kendall_tau(x, y) == kendall_tau(y, x)


def test_kendall_tau_invariant_to_increasing_transforms():
    rng = np.random.default_rng(3)
    x = rng.integers(1, 6, 40).astype(float)
    y = rng.standard_normal(40)
    tau = kendall_tau(x, y)
    assert kendall_tau(np.log(x), y) == tau
    assert kendall_tau(x**3 + 7, np.exp(y)) == tau
    assert kendall_tau(x, 100 * y - 3) == tau
    # A decreasing transform flips the sign.
    assert kendall_tau(-x, y) == -tau


def test_kendall_tau_accepts_lists_and_series():
    assert kendall_tau(pd.Series([1, 2, 3]), [0.1, 0.3, 0.2]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("mu", "g", "fragment"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "got 3 and 2"),
        ([1.0], [2.0], "at least 2"),
        ([], [], "at least 2"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN or infinite"),
        ([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], "NaN or infinite"),
        ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], "one-dimensional"),
        (["a", "b"], [1.0, 2.0], "must be numbers"),
    ],
)
def test_kendall_tau_bad_input(mu, g, fragment):
    with pytest.raises(EvaluationError, match=fragment):
        kendall_tau(mu, g)


def test_kendall_tau_nan_message_names_the_argument():
    with pytest.raises(EvaluationError, match=r"^g has 1 NaN"):
        kendall_tau([1.0, 2.0], [np.nan, 1.0])


# ---------------------------------------------------------------------------------------------
# granulated_tau on hand-built tables


def two_by_two() -> pd.DataFrame:
    # A ∈ {0, 1}, B ∈ {0, 1}, one model each.
    #   ψ_A: groups by B.  B=0: m0 (g .1, μ 1), m2 (g .3, μ 2): concordant → τ = 1.
    #                      B=1: m1 (g .2, μ 3), m3 (g .4, μ 2.5): discordant → τ = −1.  ψ_A = 0.
    #   ψ_B: groups by A.  A=0: m0, m1: g .1 < .2, μ 1 < 3 → τ = 1.
    #                      A=1: m2, m3: g .3 < .4, μ 2 < 2.5 → τ = 1.             ψ_B = 1.
    #   Ψ = (0 + 1) / 2 = 0.5.
    return pd.DataFrame(
        {
            "A": [0, 0, 1, 1],
            "B": [0, 1, 0, 1],
            "gap": [0.1, 0.2, 0.3, 0.4],
            "mu": [1.0, 3.0, 2.0, 2.5],
        }
    )


def two_by_three() -> pd.DataFrame:
    # A ∈ {0, 1}, B ∈ {0, 1, 2}; m0 and m1 tie in μ.
    #   ψ_A: groups by B, each {A=0, A=1}: B=0 g 1<4 μ 1<5; B=1 g 2<6 μ 1<6; B=2 g 3<5 μ 0<7:
    #        all concordant → ψ_A = 1.
    #   ψ_B: A=0: (B0,B1) μ tie → 0; (B0,B2) g 1<3, μ 1>0 → −1; (B1,B2) g 2<3, μ 1>0 → −1:
    #        τ = −2/3.   A=1: (B0,B1) g 4<6, μ 5<6 → +1; (B0,B2) g 4<5, μ 5<7 → +1;
    #        (B1,B2) g 6>5, μ 6<7 → −1: τ = 1/3.   ψ_B = (−2/3 + 1/3) / 2 = −1/6.
    #   Ψ = (1 − 1/6) / 2 = 5/12.
    #   Overall τ: μ in gap order is [1, 1, 0, 5, 7, 6]; Σ_{i<j} sign = 2 + 2 + 3 + 2 − 1 = 8
    #   of 15 pairs → τ = 8/15.
    return pd.DataFrame(
        {
            "A": [0, 0, 0, 1, 1, 1],
            "B": [0, 1, 2, 0, 1, 2],
            "gap": [1.0, 2.0, 3.0, 4.0, 6.0, 5.0],
            "mu": [1.0, 1.0, 0.0, 5.0, 6.0, 7.0],
        }
    )


def test_granulated_tau_two_by_two():
    result = granulated_tau(two_by_two(), "mu", hparams=["A", "B"])
    assert result.measure == "mu"
    assert result.psi == pytest.approx({"A": 0.0, "B": 1.0}, abs=1e-15)
    assert result.Psi == pytest.approx(0.5, abs=1e-15)
    assert result.groups_used == {"A": 2, "B": 2}
    assert result.groups_skipped == {"A": 0, "B": 0}
    assert (result.models, result.excluded, result.dropped) == (4, 0, 0)


def test_granulated_tau_two_by_three_with_a_tie():
    table = two_by_three()
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert result.psi["A"] == pytest.approx(1.0, abs=1e-15)
    assert result.psi["B"] == pytest.approx(-1 / 6, abs=1e-15)
    assert result.Psi == pytest.approx(5 / 12, abs=1e-15)
    assert result.Psi == pytest.approx(np.mean(list(result.psi.values())), abs=1e-15)
    assert result.groups_used == {"A": 3, "B": 2}
    assert result.groups_skipped == {"A": 0, "B": 0}
    assert kendall_tau(table["mu"], table["gap"]) == pytest.approx(8 / 15, abs=1e-15)


def test_granulated_tau_hparams_as_a_string_and_from_attrs():
    table = two_by_three()
    # One type only: a single group holding all 6 models, so ψ_B is the overall τ.
    single = granulated_tau(table, "mu", hparams="B")
    assert single.psi == {"B": pytest.approx(8 / 15)}
    table.attrs["hparams"] = ["A", "B"]
    from_attrs = granulated_tau(table, "mu")
    assert from_attrs.psi == granulated_tau(table, "mu", hparams=["A", "B"]).psi


def test_granulated_tau_without_hparams_or_attrs_is_an_error():
    with pytest.raises(EvaluationError, match=r"attrs\['hparams'\]"):
        granulated_tau(two_by_three(), "mu")


def test_granulated_tau_incomplete_grid_missing_model():
    # Drop (A=1, B=2).  ψ_A: the B=2 group holds one model → skipped; B=0 and B=1 give τ = 1.
    # ψ_B: A=0 holds B ∈ {0, 1, 2}: τ = −2/3; A=1 lacks B=2 → skipped.  Ψ = (1 − 2/3) / 2.
    table = two_by_three().drop(index=5)
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert result.psi["A"] == pytest.approx(1.0)
    assert result.psi["B"] == pytest.approx(-2 / 3)
    assert result.Psi == pytest.approx(1 / 6)
    assert result.groups_used == {"A": 2, "B": 1}
    assert result.groups_skipped == {"A": 1, "B": 1}
    assert (result.models, result.excluded, result.dropped) == (5, 0, 0)


def test_granulated_tau_status_not_done_is_excluded():
    table = two_by_three()
    table["status"] = ["done"] * 5 + ["failed"]
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert result.psi == pytest.approx({"A": 1.0, "B": -2 / 3})
    assert result.groups_used == {"A": 2, "B": 1}
    assert result.groups_skipped == {"A": 1, "B": 1}
    assert (result.models, result.excluded, result.dropped) == (5, 1, 0)


def test_granulated_tau_missing_status_is_excluded_and_counted():
    # A nullable string column compares a missing status as <NA>: excluded, and counted.
    table = two_by_three()
    table["status"] = pd.array(["done"] * 5 + [None], dtype="string")
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert (result.models, result.excluded, result.dropped) == (5, 1, 0)
    table["status"] = ["done"] * 5 + [None]
    assert granulated_tau(table, "mu", hparams=["A", "B"]).excluded == 1


def test_granulated_tau_nan_rows_are_dropped_and_counted():
    table = two_by_three()
    table.loc[5, "mu"] = np.nan
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert result.psi == pytest.approx({"A": 1.0, "B": -2 / 3})
    assert (result.models, result.excluded, result.dropped) == (5, 0, 1)
    table = two_by_three()
    table.loc[0, "gap"] = np.nan  # a NaN gap drops the row too
    assert granulated_tau(table, "mu", hparams=["A", "B"]).dropped == 1


def test_granulated_tau_single_valued_type_is_nan():
    table = two_by_two()
    table["C"] = 7
    result = granulated_tau(table, "mu", hparams=["A", "B", "C"])
    # Grouping on (A, B) leaves one model per group: every group of C is skipped.
    assert math.isnan(result.psi["C"])
    assert result.groups_used["C"] == 0
    assert result.groups_skipped["C"] == 4
    assert result.psi["A"] == pytest.approx(0.0)
    assert result.psi["B"] == pytest.approx(1.0)
    assert result.Psi == pytest.approx(0.5)


def test_granulated_tau_single_valued_type_with_replicates_is_nan():
    # Two models per value of A (replicates, e.g. seeds not listed as a type) and B constant:
    # grouping on A gives groups of 2 in which B does not vary, so ψ_B is undefined, not the
    # τ of the replicates.  ψ_A: one group of 6 (B is constant), τ over all models.
    table = pd.DataFrame(
        {
            "A": [0, 0, 1, 1, 0, 1],
            "B": [5] * 6,
            "gap": [0.1, 0.2, 0.3, 0.4, 0.15, 0.35],
            "mu": [1.0, 0.0, 3.0, 2.0, 5.0, 4.0],
        }
    )
    result = granulated_tau(table, "mu", hparams=["A", "B"])
    assert math.isnan(result.psi["B"])
    assert result.groups_used["B"] == 0
    assert result.psi["A"] == pytest.approx(brute_tau(table["mu"], table["gap"]))
    assert result.Psi == result.psi["A"]


def test_granulated_tau_missing_columns_are_named():
    table = two_by_three()
    with pytest.raises(EvaluationError, match="measure column 'nope'"):
        granulated_tau(table, "nope", hparams=["A", "B"])
    with pytest.raises(EvaluationError, match="gap column 'g2'"):
        granulated_tau(table, "mu", gap="g2", hparams=["A", "B"])
    with pytest.raises(EvaluationError, match="hyperparameter column 'lr'"):
        granulated_tau(table, "mu", hparams=["A", "lr"])


def test_granulated_tau_all_nan_measure_is_an_error():
    table = two_by_three()
    table["mu"] = np.nan
    with pytest.raises(EvaluationError, match="'mu' has no finite value"):
        granulated_tau(table, "mu", hparams=["A", "B"])


def test_granulated_tau_single_model_is_an_error():
    table = two_by_three().iloc[:1]
    with pytest.raises(EvaluationError, match="at least 2"):
        granulated_tau(table, "mu", hparams=["A", "B"])
    table = two_by_three()
    table["status"] = ["done"] + ["failed"] * 5
    with pytest.raises(EvaluationError, match="at least 2"):
        granulated_tau(table, "mu", hparams=["A", "B"])


def test_granulated_tau_non_numeric_measure_is_an_error():
    table = two_by_three()
    table["mu"] = ["x"] * 6
    with pytest.raises(EvaluationError, match="must hold numbers"):
        granulated_tau(table, "mu", hparams=["A", "B"])


# ---------------------------------------------------------------------------------------------
# granulated_tau against a brute-force ψ


def random_grid(rng: np.random.Generator, drop: int = 0, nan: int = 0) -> pd.DataFrame:
    values = {"lr": [0.1, 0.01, 0.001], "width": [8, 16, 32], "opt": ["sgd", "adam"]}
    rows = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    table = pd.DataFrame(rows)
    n = len(table)
    table["gap"] = rng.integers(0, 4, n) / 10  # heavy ties
    table["mu"] = rng.integers(0, 5, n).astype(float)
    if nan:
        table.loc[rng.choice(n, nan, replace=False), "mu"] = np.nan
    if drop:
        table = table.drop(index=rng.choice(n, drop, replace=False))
    return table.sample(frac=1.0, random_state=int(rng.integers(1000))).reset_index(drop=True)


@pytest.mark.parametrize(("drop", "nan"), [(0, 0), (0, 3), (2, 0), (4, 2)])
def test_granulated_tau_equals_brute_force(drop, nan):
    rng = np.random.default_rng(10 + drop + 7 * nan)
    names = ["lr", "width", "opt"]
    for _ in range(15):
        table = random_grid(rng, drop=drop, nan=nan)
        result = granulated_tau(table, "mu", hparams=names)
        expected = brute_psi(table, "mu", "gap", names)
        for name in names:
            if math.isnan(expected[name]):
                assert math.isnan(result.psi[name])
            else:
                assert result.psi[name] == pytest.approx(expected[name], abs=1e-12)
        finite = [v for v in expected.values() if not math.isnan(v)]
        if finite:
            assert result.Psi == pytest.approx(sum(finite) / len(finite), abs=1e-12)
        assert result.dropped == int(table["mu"].isna().sum())
