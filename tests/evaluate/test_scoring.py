"""score_table: every measure and baseline of a table at once (Jiang et al. 2020, tables 5-6)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import (
    ORACLE_EPSILONS,
    conditional_mi,
    granulated_tau,
    kendall_tau,
    measure_columns,
    score_table,
)
from genmeasures.evaluate.scoring import CANONICAL_ROW, CMI_COLUMNS, RANDOM_ROW, RANK_COLUMNS

HPARAMS = ["lr", "width", "depth", "dropout"]
#: The canonical orders of these types (the zoo declares the same defaults, appendix C.4).
ORDERS = {
    "lr": "decreasing",
    "width": "decreasing",
    "depth": "decreasing",
    "dropout": "decreasing",
    "optimizer": ("sgd", "adam", "rmsprop"),
}


def grid_table(seed: int = 0) -> pd.DataFrame:
    """A 3 x 3 x 3 x 3 study table: the gap shrinks with lr, width, depth and dropout."""
    values = {
        "lr": [0.1, 0.01, 0.001],
        "width": [16, 32, 64],
        "depth": [2, 3, 4],
        "dropout": [0.0, 0.25, 0.5],
    }
    table = pd.DataFrame(list(itertools.product(*values.values())), columns=list(values))
    n = len(table)
    rng = np.random.default_rng(seed)
    table["gap"] = (
        -np.log10(table["lr"]) * 0.03
        - table["width"] / 640
        - table["depth"] * 0.01
        - table["dropout"] * 0.05
        + rng.normal(0, 0.01, n)
        + 0.3
    )
    table["sharpness"] = table["gap"] + rng.normal(0, 0.02, n)
    table["norm"] = rng.normal(size=n)
    table["width_rank"] = -table["width"].astype(float)  # the canonical rank of width
    table.index = [f"h{i:03d}" for i in range(n)]
    return table


@pytest.fixture(scope="module")
def evaluation():
    return score_table(
        grid_table(),
        ["sharpness", "norm", "width_rank"],
        hparams=HPARAMS,
        canonical=ORDERS,
        draws=3,
    )


def test_rows_and_columns(evaluation):
    ev = evaluation
    oracles = tuple(f"oracle {e:g}" for e in ORACLE_EPSILONS)
    assert ev.measures == ("sharpness", "norm", "width_rank")
    assert ev.baselines == (*oracles, CANONICAL_ROW, RANDOM_ROW)
    assert oracles == ("oracle 0.01", "oracle 0.02", "oracle 0.05", "oracle 0.1")
    assert list(ev.ranks.index) == [*ev.measures, *ev.baselines]
    assert list(ev.ranks.columns) == [*HPARAMS, *RANK_COLUMNS]
    assert list(ev.ranks.columns[-2:]) == ["tau", "Psi"]
    # The canonical ordering predicts only its own column: it has no row in the CMI table.
    assert list(ev.cmi.index) == [*ev.measures, *oracles, RANDOM_ROW]
    assert list(ev.cmi.columns) == [*HPARAMS, *CMI_COLUMNS]
    assert list(ev.pearson.index) == list(ev.measures)
    assert list(ev.pearson.columns) == ["all"]
    assert ev.ranks.index.name == ev.cmi.index.name == "measure"
    assert (ev.models, ev.excluded, ev.dropped) == (81, 0, {})
    assert ev.coverage == (81, 81)
    assert ev.groups == dict.fromkeys(HPARAMS, (27, 0))
    assert ev.hparams == tuple(HPARAMS)
    assert (ev.gap, ev.architecture, ev.draws, ev.seed) == ("gap", None, 3, 0)
    assert ev.epsilons == ORACLE_EPSILONS


def test_measure_rows_match_the_single_scores(evaluation):
    table = grid_table()
    for name in evaluation.measures:
        ranks = evaluation.ranks.loc[name]
        psi = granulated_tau(table, name, hparams=HPARAMS)
        for hparam in HPARAMS:
            assert ranks[hparam] == pytest.approx(psi.psi[hparam], abs=1e-12)
        assert ranks["Psi"] == pytest.approx(psi.Psi, abs=1e-12)
        assert ranks["tau"] == pytest.approx(kendall_tau(table[name], table["gap"]), abs=1e-12)
        cmi = evaluation.cmi.loc[name]
        expected = conditional_mi(table, name, hparams=HPARAMS)
        for hparam in HPARAMS:
            assert cmi[hparam] == pytest.approx(expected.single[hparam], abs=1e-12)
        for size in range(3):
            assert cmi[f"|S|={size}"] == pytest.approx(expected.minima[size], abs=1e-12)
        assert cmi["K"] == pytest.approx(expected.K, abs=1e-12)
        assert cmi["K set"] == (", ".join(expected.K_set) or "∅")


def test_canonical_row(evaluation):
    row = evaluation.ranks.loc[CANONICAL_ROW]
    # lr, width, depth and dropout are all "decreasing", like the table's gap.
    for hparam in HPARAMS:
        assert row[hparam] > 0.5
    assert math.isnan(row["tau"]) and math.isnan(row["Psi"])
    # A measure equal to width's canonical rank reproduces its ψ_width.
    assert row["width"] == pytest.approx(evaluation.ranks.loc["width_rank", "width"], abs=1e-15)
    # ... and is constant within the groups of every other type.
    assert evaluation.ranks.loc["width_rank", ["lr", "depth", "dropout"]].tolist() == [0, 0, 0]


def test_canonical_only_in_its_own_columns():
    table = grid_table()
    ev = score_table(
        table, ["sharpness"], hparams=HPARAMS, canonical={"depth": "increasing"}, epsilons=()
    )
    row = ev.ranks.loc[CANONICAL_ROW]
    assert row.drop("depth").isna().all()
    # "increasing" depth is the opposite of the table's trend: ψ_depth = −(default's ψ_depth).
    default = score_table(table, ["sharpness"], hparams=HPARAMS, canonical=ORDERS, epsilons=())
    assert row["depth"] == pytest.approx(-default.ranks.loc[CANONICAL_ROW, "depth"], abs=1e-15)


def test_canonical_series_is_used():
    table = grid_table()
    gap_series = table["gap"].copy()
    ev = score_table(
        table, ["sharpness"], hparams=HPARAMS, canonical={"lr": gap_series}, epsilons=()
    )
    row = ev.ranks.loc[CANONICAL_ROW]
    assert row["lr"] == 1.0  # the gap itself, tie-free: τ = 1 in every group
    assert row.drop("lr").isna().all()
    # The Series is aligned on the table's index, not on position.
    shuffled = gap_series.sample(frac=1.0, random_state=0)
    ev = score_table(table, ["sharpness"], hparams=HPARAMS, canonical={"lr": shuffled}, epsilons=())
    assert ev.ranks.loc[CANONICAL_ROW, "lr"] == 1.0
    with pytest.raises(EvaluationError, match="canonical ranks of 'lr'"):
        score_table(table, ["sharpness"], hparams=HPARAMS, canonical={"lr": gap_series.iloc[:5]})


def test_canonical_tuple_and_bad_order():
    table = grid_table()
    # The optimizer takes dropout's place: sgd, adam, rmsprop for dropout 0, 0.25, 0.5.
    table["optimizer"] = table["dropout"].map({0.0: "sgd", 0.25: "adam", 0.5: "rmsprop"})
    names = ["lr", "width", "depth", "optimizer"]
    ev = score_table(table, ["sharpness"], hparams=names, canonical=ORDERS, epsilons=())
    default = score_table(table, ["sharpness"], hparams=HPARAMS, canonical=ORDERS, epsilons=())
    # SGD < Adam < RMSProp ranks the models in the opposite order of "more dropout, less gap".
    assert ev.ranks.loc[CANONICAL_ROW, "optimizer"] == pytest.approx(
        -default.ranks.loc[CANONICAL_ROW, "dropout"], abs=1e-15
    )
    assert ev.ranks.loc[CANONICAL_ROW, "optimizer"] < -0.5
    with pytest.raises(EvaluationError, match="'adam' is not in the canonical order"):
        score_table(
            table, ["sharpness"], hparams=names, canonical={"optimizer": ("sgd", "rmsprop")}
        )
    with pytest.raises(EvaluationError, match="needs numeric values"):
        score_table(table, ["sharpness"], hparams=names, canonical={"optimizer": "increasing"})


def test_no_canonical_orders_no_canonical_row():
    ev = score_table(grid_table(), ["sharpness"], hparams=HPARAMS, epsilons=())
    assert ev.ranks.loc[CANONICAL_ROW].isna().all()


def test_seed_reproducibility():
    table = grid_table()
    first = score_table(table, ["sharpness", "norm"], hparams=HPARAMS, draws=2, seed=5)
    again = score_table(table, ["sharpness", "norm"], hparams=HPARAMS, draws=2, seed=5)
    for frame in ("ranks", "cmi", "pearson"):
        pd.testing.assert_frame_equal(getattr(first, frame), getattr(again, frame))
    other = score_table(table, ["sharpness", "norm"], hparams=HPARAMS, draws=2, seed=6)
    fixed = ["sharpness", "norm", CANONICAL_ROW]
    pd.testing.assert_frame_equal(first.ranks.loc[fixed], other.ranks.loc[fixed])
    pd.testing.assert_frame_equal(
        first.cmi.loc[["sharpness", "norm"]], other.cmi.loc[["sharpness", "norm"]]
    )
    pd.testing.assert_frame_equal(first.pearson, other.pearson)
    for row in [*(f"oracle {e:g}" for e in ORACLE_EPSILONS), RANDOM_ROW]:
        assert first.ranks.loc[row, "tau"] != other.ranks.loc[row, "tau"]
        assert first.cmi.loc[row, "|S|=0"] != other.cmi.loc[row, "|S|=0"]


def test_measures_none_skips_bookkeeping_and_non_numeric():
    table = grid_table()
    table["status"] = "done"
    table["train_error"] = 0.01
    table["test_error"] = table["gap"] + 0.01
    table["steps"] = 1000
    table["seconds"] = 2.5
    table["index"] = range(len(table))
    table["label"] = "run"
    expected = ("sharpness", "norm", "width_rank")
    assert measure_columns(table, "gap", HPARAMS) == expected
    ev = score_table(table, hparams=HPARAMS, epsilons=(), draws=1)
    assert ev.measures == expected
    # A table that names its measures is taken at its word.
    table.attrs["measures"] = ["norm"]
    table.attrs["hparams"] = HPARAMS
    ev = score_table(table, epsilons=(), draws=1)
    assert ev.measures == ("norm",)
    assert ev.hparams == tuple(HPARAMS)


def test_notes_and_counts_for_exclusions_drops_and_incomplete_grid():
    table = grid_table()
    table["status"] = "done"
    table.loc[["h000", "h001"], "status"] = "failed"
    table.loc[["h010", "h011", "h012"], "norm"] = np.nan
    ev = score_table(table, ["sharpness", "norm"], hparams=HPARAMS, epsilons=(), draws=1)
    assert (ev.models, ev.excluded) == (79, 2)
    assert ev.dropped == {"norm": 3}
    assert ev.coverage == (79, 81)
    notes = " ".join(ev.notes)
    assert "79 models scored of 81" in notes
    assert "2 models did not reach their stopping criterion" in notes
    assert "norm: 3 models with a NaN value dropped" in notes
    assert "Incomplete grid: 79 of the 81" in notes
    # h000 and h001 share every type but dropout: that group of dropout is incomplete, and each
    # lacks a group mate for the other types.
    assert ev.groups["dropout"] == (26, 1)
    assert ev.groups["lr"] == (25, 2)
    # The excluded and dropped rows are left out of the measure's scores.
    kept = table[(table["status"] == "done")]
    expected = granulated_tau(kept, "norm", hparams=HPARAMS)
    assert ev.ranks.loc["norm", "Psi"] == pytest.approx(expected.Psi, abs=1e-12)
    assert expected.dropped == 3


def test_single_valued_type_is_noted():
    table = grid_table()
    table = table[table["lr"] == 0.1]
    ev = score_table(table, ["sharpness"], hparams=HPARAMS, epsilons=(), draws=1)
    assert math.isnan(ev.ranks.loc["sharpness", "lr"])
    assert "lr takes a single value" in " ".join(ev.notes)
    assert math.isfinite(ev.ranks.loc["sharpness", "Psi"])
    # Also with replicate models (a type left out of hparams): the note and the table agree.
    ev = score_table(table, ["sharpness"], hparams=["lr", "width"], epsilons=(), draws=1)
    assert "lr takes a single value" in " ".join(ev.notes)
    assert ev.ranks.loc[["sharpness", "random", CANONICAL_ROW], "lr"].isna().all()
    assert ev.groups["lr"] == (0, 3)


def test_errors():
    table = grid_table()
    with pytest.raises(EvaluationError, match="gap column 'gap'"):
        score_table(table.drop(columns="gap"), ["sharpness"], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match="measure column 'nope'"):
        score_table(table, ["sharpness", "nope"], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match="hyperparameter column 'batch'"):
        score_table(table, ["sharpness"], hparams=[*HPARAMS, "batch"])
    with pytest.raises(EvaluationError, match="architecture column 'arch'"):
        score_table(table, ["sharpness"], hparams=HPARAMS, architecture="arch")
    with pytest.raises(EvaluationError, match="no measure column"):
        score_table(table[[*HPARAMS, "gap"]], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match="no measure column"):
        score_table(table, [], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match=r"attrs\['hparams'\]"):
        score_table(table, ["sharpness"])
    nan_measure = table.assign(norm=np.nan)
    with pytest.raises(EvaluationError, match="'norm' has 0 finite values"):
        score_table(nan_measure, ["sharpness", "norm"], hparams=HPARAMS)
    one_left = table.assign(status="failed")
    one_left.loc["h000", "status"] = "done"
    with pytest.raises(EvaluationError, match="at least 2 finished models"):
        score_table(one_left, ["sharpness"], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match="at least 2 finished models"):
        score_table(table.assign(gap=np.nan), ["sharpness"], hparams=HPARAMS)
    with pytest.raises(EvaluationError, match="must hold numbers"):
        score_table(table.assign(label="x"), ["label"], hparams=HPARAMS)


def test_pearson():
    table = grid_table()
    table["affine"] = 2 * table["gap"] + 1
    table["negative"] = -table["gap"]
    ev = score_table(table, ["affine", "negative", "norm"], hparams=HPARAMS, epsilons=())
    assert ev.pearson.loc["affine", "all"] == pytest.approx(1.0, abs=1e-12)
    assert ev.pearson.loc["negative", "all"] == pytest.approx(-1.0, abs=1e-12)
    expected = np.corrcoef(table["norm"], table["gap"])[0, 1]
    assert ev.pearson.loc["norm", "all"] == pytest.approx(expected, abs=1e-12)


def test_pearson_per_architecture():
    table = grid_table()
    table["arch"] = np.where(table["depth"] == 2, "mlp", "cnn")
    # Exact within the MLPs, an independent measure within the CNNs.
    rng = np.random.default_rng(3)
    table["mixed"] = np.where(table["arch"] == "mlp", 3 * table["gap"], rng.normal(size=81))
    ev = score_table(table, ["mixed"], hparams=HPARAMS, architecture="arch", epsilons=())
    assert ev.architecture == "arch"
    assert list(ev.pearson.columns) == ["cnn", "mlp"]
    assert ev.pearson.loc["mixed", "mlp"] == pytest.approx(1.0, abs=1e-12)
    cnn = table[table["arch"] == "cnn"]
    expected = np.corrcoef(cnn["mixed"], cnn["gap"])[0, 1]
    assert ev.pearson.loc["mixed", "cnn"] == pytest.approx(expected, abs=1e-12)


def test_pearson_of_a_constant_measure_is_nan_and_nan_rows_are_skipped():
    table = grid_table()
    table["constant"] = 1.0
    table["holes"] = table["gap"]
    table.loc[["h003", "h004"], "holes"] = np.nan
    ev = score_table(table, ["constant", "holes"], hparams=HPARAMS, epsilons=())
    assert math.isnan(ev.pearson.loc["constant", "all"])
    assert ev.pearson.loc["holes", "all"] == pytest.approx(1.0, abs=1e-12)
    assert ev.dropped == {"holes": 2}
    assert ev.ranks.loc["constant", "tau"] == 0.0


def test_one_measure_named_by_a_string_is_one_measure():
    table = pd.DataFrame(
        {"a": [1, 1, 2, 2], "b": [1, 2, 1, 2], "gap": [0.1, 0.2, 0.3, 0.5], "mu": [1, 2, 3, 4]}
    )
    evaluation = score_table(table, "mu", hparams=["a", "b"])
    assert evaluation.measures == ("mu",)
    assert evaluation.ranks.at["mu", "tau"] == 1.0
