"""robust_scores (Dziugaite et al. 2020: sign-error over environments) and gap_prediction."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import sklearn.model_selection

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import RobustEvaluation, gap_prediction, robust_scores
from genmeasures.evaluate.baselines import oracle_draws, random_measure
from genmeasures.evaluate.environments import pair_weights
from genmeasures.evaluate.robust import ALL_TYPES, MIN_ESS, STATISTICS, default_min_ess
from reference import robust_environments_by_loop

# The hand-worked population: types a and b, two values each, two seeds.
#   (a, b, seed): (gap, mu)
HAND = {
    (0, 0, 0): (0.10, 1.0),
    (0, 0, 1): (0.12, 2.0),
    (1, 0, 0): (0.20, 3.0),
    (1, 0, 1): (0.10, 2.0),  # ties (0, 0, 0) in the gap and (0, 0, 1) in mu
    (0, 1, 0): (0.30, 5.0),
    (0, 1, 1): (0.25, 4.0),
    (1, 1, 0): (0.40, 1.0),
    (1, 1, 1): (0.35, 6.0),
}


def hand_table() -> pd.DataFrame:
    rows = [
        {"a": a, "b": b, "seed": seed, "gap": gap, "mu": mu}
        for (a, b, seed), (gap, mu) in HAND.items()
    ]
    table = pd.DataFrame(rows)
    table.attrs["hparams"] = ["a", "b", "seed"]
    return table


def losses(result: RobustEvaluation, row: str) -> dict[tuple[str, str], tuple[float, float]]:
    frame = result.environments[result.environments["row"] == row]
    return {
        (t, env): (loss, ess)
        for t, env, loss, ess in zip(
            frame["type"], frame["environment"], frame["loss"], frame["ess"], strict=True
        )
    }


def weight(delta: float, n: float) -> float:
    p = max(0.0, 1 - 2 * math.exp(-n * delta**2 / 2)) ** 2
    return max(0.0, 2 * p - 1)


# ---------------------------------------------------------------------------------------------
# The hand-worked population


def test_hand_worked_environments_without_test_noise() -> None:
    result = robust_scores(hand_table(), ["mu"], test_size=math.inf, min_ess=3, epsilons=())
    # Along a with b = 0: (000, 100) agree; (000, 101) tie in the gap, weight 0; (001, 100)
    # agree; (001, 101) tie in mu, ½. Loss (0 + 0 + ½) / 3, ESS 3² / 3.
    # Along a with b = 1: (010, 110) and (011, 110) disagree, the two pairs with 111 agree.
    # Along b with a = 0: every pair agrees. Along b with a = 1: the pairs with 110 disagree.
    assert losses(result, "mu") == pytest.approx(
        {
            ("a", "b=0"): (1 / 6, 3.0),
            ("a", "b=1"): (1 / 2, 4.0),
            ("b", "a=0"): (0.0, 4.0),
            ("b", "a=1"): (1 / 2, 4.0),
        },
        abs=1e-15,
    )
    row = result.summary.loc["mu"]
    assert row[("a", "mean")] == pytest.approx(1 / 3)
    assert row[("a", "p90")] == pytest.approx(1 / 6 + 0.9 * (1 / 2 - 1 / 6))
    assert row[("b", "p90")] == pytest.approx(0.45)
    assert row[(ALL_TYPES, "mean")] == pytest.approx((1 / 6 + 1 / 2 + 0 + 1 / 2) / 4)
    assert row[(ALL_TYPES, "p90")] == pytest.approx(1 / 2)
    assert row[(ALL_TYPES, "max")] == 0.5
    assert row[(ALL_TYPES, "environments")] == 4
    assert row[(ALL_TYPES, "dropped")] == 0
    assert result.hparams == ("a", "b")  # the seed replicates
    assert result.pairs == {"a": 8, "b": 8}
    assert result.environment_counts == {"a": (2, 0), "b": (2, 0)}
    assert result.baselines == ("random",)
    assert list(result.summary.columns) == [
        (t, statistic) for t in ("a", "b", ALL_TYPES) for statistic in STATISTICS
    ]


def test_hand_worked_environment_dropped_below_min_ess() -> None:
    result = robust_scores(hand_table(), "mu", test_size=math.inf, min_ess=3.5, epsilons=())
    assert set(losses(result, "mu")) == {("a", "b=1"), ("b", "a=0"), ("b", "a=1")}
    row = result.summary.loc["mu"]
    assert (row[("a", "environments")], row[("a", "dropped")]) == (1, 1)
    assert row[("a", "mean")] == row[("a", "max")] == 0.5
    assert result.environment_counts["a"] == (1, 1)
    assert result.environment_notes == [
        "Sign-error: 3 of 4 environments kept (a 1 of 2, b 2 of 2); the others have an effective "
        "sample size below 3.5."
    ]
    assert result.notes[-1] == result.environment_notes[-1]


def test_hand_worked_environments_with_a_finite_test_set() -> None:
    n = 1000  # a pair weighs > 0 when |Δg| > 1.96 / sqrt(1000) = 0.062
    result = robust_scores(hand_table(), ["mu"], test_size=n, min_ess=1, epsilons=())
    # Along a with b = 0: |Δg| = 0.10 and 0.08 (sign-error 0), 0.10 - 0.10 = 0, 0.02 (weight 0).
    w1, w2 = weight(0.10, n), weight(0.20 - 0.12, n)
    assert weight(0.12 - 0.10, n) == 0
    # Along a with b = 1: |Δg| 0.10 (010, 110: error 1), 0.05 (010, 111: weight 0),
    # 0.15 (011, 110: error 1), 0.10 (011, 111: error 0).
    u1, u2, u3 = weight(0.10, n), weight(0.40 - 0.25, n), weight(0.35 - 0.25, n)
    assert weight(0.35 - 0.30, n) == 0
    got = losses(result, "mu")
    assert got[("a", "b=0")] == pytest.approx((0.0, (w1 + w2) ** 2 / (w1**2 + w2**2)), abs=1e-12)
    expected = ((u1 + u2) / (u1 + u2 + u3), (u1 + u2 + u3) ** 2 / (u1**2 + u2**2 + u3**2))
    assert got[("a", "b=1")] == pytest.approx(expected, abs=1e-12)


def test_pair_weights() -> None:
    n = 10_000
    threshold = math.sqrt(-2 * math.log((1 - 1 / math.sqrt(2)) / 2) / n)
    assert threshold == pytest.approx(1.960 / math.sqrt(n), rel=1e-3)
    weights = pair_weights(np.array([0.0, 0.05, -0.05, threshold * 0.999, threshold * 1.01]), n)
    phi = 2 * math.exp(-n * 0.05**2 / 2)
    assert weights[0] == 0 and weights[3] == 0 and weights[4] > 0
    assert weights[1] == weights[2] == pytest.approx(2 * (1 - phi) ** 2 - 1, abs=1e-15)
    assert list(pair_weights(np.array([0.0, 1e-9, -0.3]), math.inf)) == [0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Against the reference loop


def random_population(rng: np.random.Generator) -> tuple[pd.DataFrame, list[str]]:
    """A grid with missing configurations, 1-3 seeds, ties in the gap and mu, NaN values."""
    sizes = rng.integers(2, 4, size=int(rng.integers(1, 4)))
    names = [f"t{i}" for i in range(len(sizes))]
    seeds = int(rng.integers(1, 4))
    rows = list(itertools.product(*(range(s) for s in sizes), range(seeds)))
    table = pd.DataFrame(rows, columns=[*names, "seed"])
    keep = rng.choice(len(table), max(min(len(table), 6), int(0.8 * len(table))), replace=False)
    table = table.iloc[np.sort(keep)].reset_index(drop=True)
    n = len(table)
    table["gap"] = rng.integers(0, 8, n) / 10  # ties
    table["tied"] = rng.integers(0, 3, n).astype(float)  # many ties
    table["smooth"] = table["gap"] + rng.normal(0, 0.2, n)
    table["holes"] = np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))
    table["status"] = np.where(rng.random(n) < 0.1, "failed", "done")
    return table, names


def environment_key(names: list[str], i: int, rest: tuple) -> tuple[str, str]:
    """The (type, environment) label of the reference's key (i, values of the other types)."""
    others = names[:i] + names[i + 1 :]
    return names[i], ", ".join(
        f"{t}={v}" for t, v in zip(others, rest, strict=True)
    ) or "(no other type)"


def test_fast_and_loop_agree_on_random_populations() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        table, names = random_population(rng)
        test_size = [math.inf, 200, 1000][int(rng.integers(3))]
        min_ess = [0, 1, 1.5, 2.5][int(rng.integers(4))]
        done = table[table["status"] == "done"]
        configs = [tuple(row) for row in done[names].itertuples(index=False)]
        gap = done["gap"].tolist()
        measures = ["gap", "tied", "smooth", "holes"][: 3 + (done["holes"].notna().sum() > 1)]
        reference = {
            name: robust_environments_by_loop(configs, done[name].tolist(), gap, test_size, min_ess)
            for name in measures
        }
        if any(done[t].nunique() < 2 for t in names):
            with pytest.raises(EvaluationError, match="takes a single value"):
                robust_scores(table, measures, hparams=[*names, "seed"], test_size=test_size,
                              min_ess=min_ess, epsilons=())  # fmt: skip
            continue
        try:
            result = robust_scores(
                table, measures, hparams=[*names, "seed"], test_size=test_size, min_ess=min_ess,
                epsilons=(),
            )  # fmt: skip
        except EvaluationError as error:
            assert "no coupled pair" in str(error) and not reference["gap"]
            continue
        for name in measures:
            expected = {
                environment_key(names, i, rest): value
                for (i, rest), value in reference[name].items()
            }
            got = losses(result, name)
            assert got.keys() == expected.keys()
            for key, (loss, ess) in expected.items():
                assert got[key][0] == pytest.approx(loss, abs=1e-12)
                assert got[key][1] == pytest.approx(ess, abs=1e-12)
            kept = [value[0] for value in expected.values()]
            row = result.summary.loc[name]
            if kept:
                assert row[(ALL_TYPES, "mean")] == pytest.approx(np.mean(kept), abs=1e-12)
                assert row[(ALL_TYPES, "p90")] == pytest.approx(np.percentile(kept, 90), abs=1e-12)
                assert row[(ALL_TYPES, "max")] == pytest.approx(max(kept), abs=1e-12)
            assert row[(ALL_TYPES, "environments")] == len(kept)
        assert result.excluded == int((table["status"] != "done").sum())
        holes = int(done["holes"].isna().sum()) if "holes" in measures else 0
        assert result.dropped == ({"holes": holes} if holes else {})
        checked += 1
    assert checked >= 30


# ---------------------------------------------------------------------------------------------
# Properties


def grid(seeds: int = 2, seed: int = 0) -> pd.DataFrame:
    """A 3 x 3 x 2 grid with seeds: the gap grows along each type, with ties; a noisy measure."""
    rng = np.random.default_rng(seed)
    rows = list(itertools.product([0.1, 0.01, 0.001], [16, 32, 64], [2, 4], range(seeds)))
    table = pd.DataFrame(rows, columns=["lr", "width", "depth", "seed"])
    n = len(table)
    steps = -15 * np.log10(table["lr"]) + table["width"] / 16 * 5 + table["depth"] * 3
    # Whole hundredths: two gaps that tie are the same float.
    table["gap"] = (np.round(steps) + rng.integers(0, 4, n)) / 100
    table["mu"] = table["gap"] + rng.normal(0, 0.15, n)
    table.attrs["hparams"] = ["lr", "width", "depth", "seed"]
    return table


def environment_losses(result: RobustEvaluation, row: str) -> pd.Series:
    frame = result.environments[result.environments["row"] == row]
    return frame.set_index(["type", "environment"])["loss"]


@pytest.mark.parametrize("test_size", [math.inf, 300])
def test_loss_is_invariant_to_increasing_transforms(test_size: float) -> None:
    table = grid()
    table["exp"] = np.exp(table["mu"] * 5)
    table["cube"] = table["mu"] ** 3
    table["affine"] = 3 * table["mu"] + 2
    table["decreasing"] = -2 * table["mu"]
    result = robust_scores(
        table, ["mu", "exp", "cube", "affine", "decreasing"], test_size=test_size, min_ess=2,
        epsilons=(),
    )  # fmt: skip
    base = environment_losses(result, "mu")
    assert 0 < base.mean() < 1
    for name in ("exp", "cube", "affine"):
        pd.testing.assert_series_equal(environment_losses(result, name), base)
    # Same weights, every sign of Δμ reversed: every loss becomes 1 − loss.
    np.testing.assert_allclose(environment_losses(result, "decreasing"), 1 - base, atol=1e-15)


def test_the_gap_itself_has_no_loss_without_test_noise() -> None:
    result = robust_scores(grid(), ["gap", "mu"], test_size=math.inf, min_ess=2, epsilons=(1e-12,))
    assert (environment_losses(result, "gap") == 0).all()
    assert result.summary.loc["gap", (ALL_TYPES, "max")] == 0
    assert result.summary.loc["oracle 1e-12", (ALL_TYPES, "max")] == 0
    assert result.summary.loc["mu", (ALL_TYPES, "max")] > 0


def test_oracle_and_random_rows_are_those_of_their_draws() -> None:
    table = grid(seeds=3)
    g = table["gap"].to_numpy()
    draws = oracle_draws(g, 0.02, 3, seed=5)
    for k in range(3):
        table[f"draw{k}"] = draws[:, k]
    table["random_draw"] = random_measure(len(table), 5)
    columns = ["draw0", "draw1", "draw2", "random_draw"]
    result = robust_scores(table, columns, test_size=500, epsilons=(0.02,), draws=3, seed=5)
    mean = sum(environment_losses(result, f"draw{k}") for k in range(3)) / 3
    np.testing.assert_allclose(environment_losses(result, "oracle 0.02"), mean, atol=1e-15)
    pd.testing.assert_series_equal(
        environment_losses(result, "random"), environment_losses(result, "random_draw")
    )
    assert result.baselines == ("oracle 0.02", "random")
    assert list(result.summary.index) == [*columns, "oracle 0.02", "random"]
    assert result.min_ess == MIN_ESS and result.test_size == 500


def test_nan_values_drop_models_for_their_measure_only() -> None:
    table = grid()
    table["holes"] = table["mu"]
    table.loc[[0, 5, 9], "holes"] = np.nan
    table.loc[3, "status"] = "failed"
    table["status"] = table["status"].fillna("done")
    result = robust_scores(table, ["mu", "holes"], test_size=math.inf, min_ess=2, epsilons=())
    assert result.dropped == {"holes": 3}
    assert result.excluded == 1 and result.models == len(table) - 1
    ess = result.environments.groupby("row")["ess"].sum()
    assert ess["holes"] < ess["mu"]


# ---------------------------------------------------------------------------------------------
# Named errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_size": None}, "math.inf for gaps without test noise"),
        ({"test_size": 0}, "test_size must be positive"),
        ({"test_size": -5}, "test_size must be positive"),
        ({"test_size": math.nan}, "test_size must be positive"),
        ({"test_size": "1000"}, "test_size must be a number"),
        ({"test_size": 100, "min_ess": -1}, "min_ess must be a finite number"),
        ({"test_size": 100, "hparams": ["a", "c"]}, "hyperparameter column 'c' not in"),
        ({"test_size": 100, "gap": "g"}, "gap column 'g' not in"),
        ({"test_size": 100, "measures": ["nu"]}, "measure column 'nu' not in"),
    ],
)
def test_named_errors(kwargs: dict, message: str) -> None:
    kwargs = {"measures": ["mu"], **kwargs}
    with pytest.raises(EvaluationError, match=message):
        robust_scores(hand_table(), **kwargs)


def test_named_errors_of_the_design() -> None:
    table = hand_table()
    table["c"] = 1
    with pytest.raises(EvaluationError, match="type 'c' takes a single value"):
        robust_scores(table, ["mu"], hparams=["a", "b", "c"], test_size=math.inf)
    diagonal = table[table["a"] == table["b"]]  # every two models differ in both types or none
    with pytest.raises(EvaluationError, match="no coupled pair among the 4 scored models"):
        robust_scores(diagonal, ["mu"], test_size=math.inf, min_ess=1)
    with pytest.raises(EvaluationError, match="named like the baseline rows"):
        robust_scores(table.rename(columns={"mu": "random"}), test_size=math.inf, min_ess=1)


# ---------------------------------------------------------------------------------------------
# gap_prediction


def test_gap_prediction_of_functions_of_the_gap_and_of_noise() -> None:
    table = grid(seeds=3)
    rng = np.random.default_rng(1)
    table["affine"] = 3 * table["gap"] - 1  # negative values: linear scale
    table["power"] = np.exp(5 * table["gap"])  # positive: log scale, where it is affine
    table["noise"] = rng.normal(size=len(table))
    table["positive_noise"] = rng.uniform(1, 2, len(table))
    scores = gap_prediction(table, ["affine", "power", "noise", "positive_noise"])
    assert list(scores.columns) == ["r2", "scale", "models"]
    assert scores.loc["affine", "r2"] == pytest.approx(1, abs=1e-9)
    assert scores.loc["power", "r2"] == pytest.approx(1, abs=1e-9)
    assert scores.loc["noise", "r2"] < 0.05 and scores.loc["positive_noise", "r2"] < 0.05
    assert scores["scale"].to_dict() == {
        "affine": "linear",
        "power": "log",
        "noise": "linear",
        "positive_noise": "log",
    }
    pd.testing.assert_frame_equal(
        gap_prediction(table, ["noise", "power"]), scores.loc[["noise", "power"]]
    )


def test_gap_prediction_keeps_the_seeds_of_a_configuration_in_one_fold(monkeypatch) -> None:
    seen = []
    original = sklearn.model_selection.cross_val_predict

    def recording(estimator, x, y, *, groups, cv):
        seen.append([test for _, test in cv.split(x, y, groups)])
        seen.append(groups)
        return original(estimator, x, y, groups=groups, cv=cv)

    monkeypatch.setattr(sklearn.model_selection, "cross_val_predict", recording)
    table = grid(seeds=3)
    gap_prediction(table, ["mu"], folds=4)
    folds, groups = seen
    assert len(folds) == 4
    configuration = table[["lr", "width", "depth"]].apply(tuple, axis=1).to_numpy()
    fold_of = np.empty(len(table), dtype=int)
    for k, test in enumerate(folds):
        fold_of[test] = k
    for config in set(configuration):
        members = np.array([c == config for c in configuration])
        assert members.sum() == 3  # its three seeds
        assert len(set(fold_of[members])) == 1
        assert len(set(groups[members])) == 1


def test_gap_prediction_errors() -> None:
    table = grid(seeds=2)
    with pytest.raises(EvaluationError, match="18 configurations"):
        gap_prediction(table, ["mu"], folds=19)
    with pytest.raises(EvaluationError, match="folds must be an int >= 2"):
        gap_prediction(table, ["mu"], folds=1)
    # By default 5 folds, or one per configuration when there are fewer.
    assert gap_prediction(table, ["mu"]).attrs["folds"] == 5
    few = table[(table["lr"] > 0.005) & (table["width"] < 60) & (table["depth"] == 2)]
    assert gap_prediction(few, ["mu"]).attrs["folds"] == 4
    with pytest.raises(EvaluationError, match="at least 5 scored models"):
        gap_prediction(table.iloc[:3], ["mu"], folds=5)
    with pytest.raises(EvaluationError, match="got 2 models in 1 configurations"):
        gap_prediction(table.iloc[:2], ["mu"])  # the two seeds of one configuration


def test_the_default_threshold_is_the_papers_or_half_the_largest_environment() -> None:
    small = robust_scores(hand_table(), ["mu"], test_size=math.inf, epsilons=())
    # Each environment of the hand-worked table holds 2 values x 2 seeds x 2 seeds = 4 pairs.
    assert small.min_ess == default_min_ess(4) == 2 < MIN_ESS
    assert any(
        "half the" in note and "coupled pairs of the largest" in note for note in small.notes
    )
    assert default_min_ess(100) == MIN_ESS
    chosen = robust_scores(hand_table(), ["mu"], test_size=math.inf, min_ess=1, epsilons=())
    assert chosen.min_ess == 1 and not any("half the" in note for note in chosen.notes)


def test_a_population_without_a_clear_environment_says_why_instead_of_failing() -> None:
    # 20 test examples: no gap difference of the hand-worked table clears the noise (0.44).
    result = robust_scores(hand_table(), ["mu"], test_size=20, epsilons=())
    assert (
        result.summary.loc["mu", (ALL_TYPES, "max")] != result.summary.loc["mu", (ALL_TYPES, "max")]
    )
    assert result.environments.empty
    assert all(kept == 0 for kept, _ in result.environment_counts.values())
    note = result.notes[-1]
    assert note.startswith("No sign-error over environments: none of the 4 environments")
    assert "differ by more than 0.438" in note
