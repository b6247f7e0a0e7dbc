"""Conditional mutual information Î and K (Jiang et al. 2020, appendix B), and the PGDL mode."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from genmeasures.errors import EvaluationError
from genmeasures.evaluate import conditional_mi


def sign(x: float) -> int:
    return int(x > 0) - int(x < 0)


def mi_and_entropy(counts: dict, log=math.log) -> tuple[float, float]:
    """MI of (V_μ, V_g) and entropy of V_g from a dict {(v_mu, v_g): count} of one cell."""
    total = sum(counts.values())
    p_mu, p_g = defaultdict(float), defaultdict(float)
    for (v_mu, v_g), count in counts.items():
        p_mu[v_mu] += count / total
        p_g[v_g] += count / total
    information = sum(
        count / total * log(count / total / (p_mu[v_mu] * p_g[v_g]))
        for (v_mu, v_g), count in counts.items()
        if count
    )
    entropy = -sum(p * log(p) for p in p_g.values() if p > 0)
    return information, entropy


def tuple_key(table, a, b, subset):
    return tuple((table[h][a], table[h][b]) for h in subset)


def string_key(table, a, b, subset):
    # The PGDL program's key: value strings concatenated (collides for values 1 and 11).
    return "".join(str(table[h][a]) + str(table[h][b]) for h in subset)


def slow_cmi(table: dict, subset: tuple[str, ...], key=tuple_key) -> float:
    """Î(μ, S) of EVALUATION.md, default mode: ordered pairs of distinct models, ties dropped.

    ``table`` maps column names to plain lists ("mu", "gap" and the hyperparameters).
    """
    mu, g = table["mu"], table["gap"]
    cells: dict = defaultdict(lambda: defaultdict(int))
    for a in range(len(mu)):
        for b in range(len(mu)):
            if a == b or mu[a] == mu[b] or g[a] == g[b]:
                continue
            cells[key(table, a, b, subset)][(sign(mu[a] - mu[b]), sign(g[a] - g[b]))] += 1
    pairs = sum(sum(cell.values()) for cell in cells.values())
    information = entropy = 0.0
    for cell in cells.values():
        weight = sum(cell.values()) / pairs
        i_u, h_u = mi_and_entropy(cell)
        information += weight * i_u
        entropy += weight * h_u
    return information / entropy if entropy > 0 else math.nan


def slow_summary(table: dict, names: list[str], max_size: int = 2, key=tuple_key) -> dict:
    scores = {
        subset: slow_cmi(table, subset, key)
        for size in range(max_size + 1)
        for subset in itertools.combinations(names, size)
    }
    minima = {
        size: min(
            (v for s, v in scores.items() if len(s) == size and not math.isnan(v)),
            default=math.nan,
        )
        for size in range(max_size + 1)
    }
    finite = [v for v in minima.values() if not math.isnan(v)]
    return {"scores": scores, "minima": minima, "K": min(finite, default=math.nan)}


def slow_pgdl(table: dict, names: list[str], cells: str = "all", tie: str = "-") -> float:
    """The PGDL competition's score, written from EVALUATION.md and conditional_mi's docstring.

    Every ordered pair of models, self-pairs included; "+" only for a strict increase, a tie is
    "−"; for each ordered pair of distinct types (h1, h2) a 2x2 table per combination of both
    models' values of h1 and h2; log base 2; score = mean MI / mean gap entropy over the cells;
    K = min over (h1, h2), times 100. ``cells="all"`` enumerates every value combination and
    requires it non-empty (a complete grid); ``"present"`` uses the non-empty cells only.
    ``tie="+"`` counts ties of μ as "+" instead (to show that the rule matters).
    """

    def outcome(x: float, y: float) -> str:
        return "+" if x > y or (tie == "+" and x == y) else "-"

    mu, g = table["mu"], table["gap"]
    n = len(mu)
    scores = []
    for h1, h2 in itertools.permutations(names, 2):
        tables: dict = defaultdict(lambda: defaultdict(int))
        for a in range(n):
            for b in range(n):
                v_g = "+" if g[a] > g[b] else "-"
                v_mu = outcome(mu[a], mu[b])
                cell = (table[h1][a], table[h1][b], table[h2][a], table[h2][b])
                tables[cell][(v_mu, v_g)] += 1
        if cells == "all":
            values1, values2 = sorted(set(table[h1])), sorted(set(table[h2]))
            keys = list(itertools.product(values1, values1, values2, values2))
            assert all(k in tables for k in keys), "not a complete grid"
            assert len(keys) == len(tables)
        else:
            keys = list(tables)
        pairs = [mi_and_entropy(tables[k], log=math.log2) for k in keys]
        mean_mi = sum(p[0] for p in pairs) / len(pairs)
        mean_entropy = sum(p[1] for p in pairs) / len(pairs)
        if mean_entropy > 0:
            scores.append(mean_mi / mean_entropy)
    return 100 * min(scores) if scores else math.nan


def as_lists(frame: pd.DataFrame) -> dict:
    return {c: frame[c].tolist() for c in frame.columns}


def random_grid(rng, sizes=(3, 3, 2), ties=True, drop=0) -> pd.DataFrame:
    names = ["A", "B", "C", "D"][: len(sizes)]
    values = [
        [round(0.1 * (k + 1) * (j + 1), 3) for k in range(size)] for j, size in enumerate(sizes)
    ]
    frame = pd.DataFrame(list(itertools.product(*values)), columns=names)
    n = len(frame)
    effect = sum(frame[name].rank(method="dense") * rng.normal() for name in names)
    if ties:
        frame["gap"] = (np.round(effect + rng.normal(0, 1, n))).astype(float)
        frame["mu"] = rng.integers(0, 4, n).astype(float) + np.round(effect).clip(-2, 2)
    else:
        frame["gap"] = effect + rng.normal(0, 1, n)
        frame["mu"] = frame["gap"] + rng.normal(0, 1.5, n)
    if drop:
        frame = frame.drop(index=rng.choice(n, drop, replace=False)).reset_index(drop=True)
    return frame


# ---------------------------------------------------------------------------------------------
# hand-built tables


def test_measure_equal_to_gap_gives_one():
    table = pd.DataFrame(
        {
            "A": [0, 0, 1, 1, 2, 2],
            "B": [0, 1, 0, 1, 0, 1],
            "gap": [0.1, 0.5, 0.2, 0.4, 0.3, 0.6],
        }
    )
    table["mu"] = table["gap"]
    result = conditional_mi(table, "mu", hparams=["A", "B"])
    # Every untied pair has V_μ = V_g, so I = H in each cell: Î = 1 for every S with H > 0.
    assert result.minima[0] == pytest.approx(1.0, abs=1e-12)
    assert result.single == pytest.approx({"A": 1.0, "B": 1.0}, abs=1e-12)
    assert result.minima[1] == pytest.approx(1.0, abs=1e-12)
    # S = {A, B} names both models of a pair entirely: one pair per cell, H(V_g | U_S) = 0 and
    # Î is undefined (the paper's remark on conditioning on every type); K ignores it.
    assert math.isnan(result.minima[2])
    assert result.minimizers[2] == ()
    assert pytest.approx(1.0, abs=1e-12) == result.K
    assert len(result.K_set) < 2
    assert not result.pgdl
    assert (result.models, result.excluded, result.dropped) == (6, 0, 0)


def test_measure_independent_of_gap_gives_zero():
    # g = [0, 1, 2, 3], μ = [1, 3, 0, 2]: the unordered pairs (0,1) (0,3) (2,3) are concordant,
    # (0,2) (1,2) (1,3) discordant.  Over the 12 ordered pairs the counts (V_μ, V_g) are
    # (+,+) 3, (−,−) 3, (+,−) 3, (−,+) 3: the joint is the product of its uniform marginals,
    # so I(V_μ; V_g) = 0 while H(V_g) = log 2.
    table = pd.DataFrame(
        {"A": [0, 0, 1, 1], "B": [0, 1, 0, 1], "gap": [0.0, 1.0, 2.0, 3.0], "mu": [1, 3, 0, 2]}
    )
    result = conditional_mi(table, "mu", hparams=["A", "B"])
    assert result.minima[0] == pytest.approx(0.0, abs=1e-12)
    assert pytest.approx(0.0, abs=1e-12) == result.K
    assert result.K_set == ()
    assert result.minimizers[0] == ()


def test_tied_pairs_are_dropped():
    # g = [0, 0, 1, 2, 3], μ = [0, 3, 3, 1, 4].  Unordered pairs:
    #   (0,1) g tie → dropped;  (1,2) μ tie → dropped;
    #   concordant: (0,2) (0,3) (0,4) (1,4) (2,4) (3,4) → 6;  discordant: (1,3) (2,3) → 2.
    # Ordered: (+,+) 6, (−,−) 6, (+,−) 2, (−,+) 2 over 16 pairs.
    table = pd.DataFrame({"A": [0, 0, 0, 0, 0], "gap": [0, 0, 1, 2, 3], "mu": [0, 3, 3, 1, 4]})
    information, entropy = mi_and_entropy({(1, 1): 6, (-1, -1): 6, (1, -1): 2, (-1, 1): 2})
    assert entropy == pytest.approx(math.log(2))
    expected = information / entropy
    # Closed form: (3/4) log(3/2) + (1/4) log(1/2), over log 2.
    assert expected == pytest.approx((0.75 * math.log(1.5) - 0.25 * math.log(2)) / math.log(2))
    result = conditional_mi(table, "mu", hparams="A", max_set_size=0)
    assert result.minima == {0: pytest.approx(expected, abs=1e-12)}
    assert pytest.approx(expected, abs=1e-12) == result.K
    # Counting the 4 tied pairs in any cell of the table would change the value.
    for cell in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
        counts = {(1, 1): 6, (-1, -1): 6, (1, -1): 2, (-1, 1): 2}
        counts[cell] += 4
        i, h = mi_and_entropy(counts)
        assert abs(i / h - expected) > 1e-3


def test_ties_in_pgdl_mode_count_as_minus():
    # 2 x 2 x 2 grid with ties in μ and in g; C varies within each PGDL cell of (A, B).
    table = pd.DataFrame(list(itertools.product([0, 1], [0, 1], [0, 1])), columns=list("ABC"))
    table["gap"] = [0.0, 0.2, 1.0, 2.0, 1.0, 3.0, 3.0, 0.5]
    table["mu"] = [0.0, 1.0, 1.0, 3.0, 2.0, 2.0, 0.0, 1.0]
    names = list("ABC")
    lists = as_lists(table)
    result = conditional_mi(table, "mu", hparams=names, pgdl=True)
    assert result.pgdl
    assert result.single == {}
    assert set(result.minima) == {2}
    assert len(result.K_set) == 2
    expected = slow_pgdl(lists, names)
    assert pytest.approx(expected, abs=1e-9) == result.K
    # The tie rule matters on this table, and the default mode is another number.
    assert abs(slow_pgdl(lists, names, tie="+") - expected) > 1e-3
    assert abs(100 * conditional_mi(table, "mu", hparams=names).minima[2] - expected) > 1e-3


def test_pgdl_with_two_types_and_no_replicates_is_nan():
    # Each PGDL cell of (A, B) then holds a single ordered pair: the gap's entropy is 0.
    frame = random_grid(np.random.default_rng(1), sizes=(3, 2))
    result = conditional_mi(frame, "mu", hparams=["A", "B"], pgdl=True)
    assert math.isnan(result.K)
    assert math.isnan(slow_pgdl(as_lists(frame), ["A", "B"]))


# ---------------------------------------------------------------------------------------------
# against the slow implementations


@pytest.mark.parametrize("ties", [True, False])
def test_default_mode_equals_slow_implementation(ties):
    rng = np.random.default_rng(100 + ties)
    names = ["A", "B", "C"]
    for trial in range(8):
        frame = random_grid(rng, ties=ties, drop=3 * (trial % 2))
        slow = slow_summary(as_lists(frame), names)
        result = conditional_mi(frame, "mu", hparams=names)
        for name in names:
            expected = slow["scores"][(name,)]
            assert result.single[name] == pytest.approx(expected, abs=1e-12, nan_ok=True)
        assert result.minima == pytest.approx(slow["minima"], abs=1e-12)
        assert pytest.approx(slow["K"], abs=1e-12) == result.K
        assert slow["scores"][result.K_set] == pytest.approx(result.K, abs=1e-12)
        for size, subset in result.minimizers.items():
            assert len(subset) == size
            assert slow["scores"][subset] == pytest.approx(result.minima[size], abs=1e-12)


def test_default_mode_max_set_size():
    rng = np.random.default_rng(7)
    frame = random_grid(rng, sizes=(2, 3, 2))
    names = ["A", "B", "C"]
    for size in range(4):
        result = conditional_mi(frame, "mu", hparams=names, max_set_size=size)
        slow = slow_summary(as_lists(frame), names, max_size=size)
        assert set(result.minima) == set(range(size + 1))
        assert result.minima == pytest.approx(slow["minima"], abs=1e-12, nan_ok=True)
        assert pytest.approx(slow["K"], abs=1e-12) == result.K
        assert set(result.single) == (set(names) if size >= 1 else set())


def test_pgdl_mode_equals_slow_implementation():
    rng = np.random.default_rng(200)
    for trial in range(6):
        sizes = [(3, 3, 2), (2, 2, 2), (2, 3, 2, 2)][trial % 3]
        names = ["A", "B", "C", "D"][: len(sizes)]
        frame = random_grid(rng, sizes=sizes, ties=trial % 2 == 0)
        result = conditional_mi(frame, "mu", hparams=names, pgdl=True)
        assert pytest.approx(slow_pgdl(as_lists(frame), names), abs=1e-9) == result.K
        assert result.minima[2] == result.K


def test_pgdl_mode_incomplete_grid_uses_the_non_empty_cells():
    rng = np.random.default_rng(300)
    frame = random_grid(rng, sizes=(3, 2, 2), drop=2)
    names = ["A", "B", "C"]
    expected = slow_pgdl(as_lists(frame), names, cells="present")
    result = conditional_mi(frame, "mu", hparams=names, pgdl=True)
    assert pytest.approx(expected, abs=1e-9) == result.K


def test_conditioning_keys_are_tuples_not_concatenated_strings():
    # Values 1 and 11 in two types: the strings "1" + "11" and "11" + "1" are both "111", so a
    # concatenated key merges the cells (1, 11) and (11, 1) (and more for S = {A, B}).
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(list(itertools.product([1, 11], [1, 11], [0, 1, 2])), columns=list("ABC"))
    n = len(frame)
    frame["gap"] = 2.0 * (frame["A"] == 11) + (frame["B"] == 11) + rng.normal(0, 0.5, n)
    frame["mu"] = frame["gap"] + rng.normal(0, 1.0, n)
    names = ["A", "B", "C"]
    lists = as_lists(frame)
    tuples = slow_summary(lists, names)
    strings = slow_summary(lists, names, key=string_key)
    differs = [
        s for s in tuples["scores"] if abs(tuples["scores"][s] - strings["scores"][s]) > 1e-3
    ]
    assert ("A",) in differs and ("A", "B") in differs  # the collision matters here
    result = conditional_mi(frame, "mu", hparams=names)
    assert result.single["A"] == pytest.approx(tuples["scores"][("A",)], abs=1e-12)
    assert result.single["B"] == pytest.approx(tuples["scores"][("B",)], abs=1e-12)
    assert result.minima == pytest.approx(tuples["minima"], abs=1e-12)
    # PGDL mode keys its cells by tuples as well.
    assert (
        pytest.approx(slow_pgdl(lists, names), abs=1e-9)
        == conditional_mi(frame, "mu", hparams=names, pgdl=True).K
    )


def test_same_value_in_different_types_is_not_confused():
    # Types sharing values (both 0/1) must still be told apart by position in the tuple.
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(list(itertools.product([0, 1], [0, 1], [0, 1])), columns=list("ABC"))
    frame["gap"] = rng.normal(size=len(frame))
    frame["mu"] = rng.normal(size=len(frame))
    slow = slow_summary(as_lists(frame), list("ABC"))
    result = conditional_mi(frame, "mu", hparams=list("ABC"))
    assert result.minima == pytest.approx(slow["minima"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# bookkeeping and bad input


def test_status_exclusion_and_nan_drops_are_counted():
    rng = np.random.default_rng(8)
    frame = random_grid(rng, sizes=(3, 2, 2))
    frame["status"] = "done"
    frame.loc[[0, 5], "status"] = "failed"
    frame.loc[3, "mu"] = np.nan
    result = conditional_mi(frame, "mu", hparams=["A", "B", "C"])
    assert (result.models, result.excluded, result.dropped) == (9, 2, 1)
    kept = frame[(frame["status"] == "done") & frame["mu"].notna()]
    expected = slow_summary(as_lists(kept.drop(columns="status")), ["A", "B", "C"])
    assert pytest.approx(expected["K"], abs=1e-12) == result.K


def test_hparams_from_attrs():
    rng = np.random.default_rng(9)
    frame = random_grid(rng, sizes=(2, 2))
    frame.attrs["hparams"] = ["A", "B"]
    np.testing.assert_equal(
        conditional_mi(frame, "mu").minima, conditional_mi(frame, "mu", hparams=["A", "B"]).minima
    )


@pytest.mark.parametrize("size", [-1, 2.0, "2", True])
def test_max_set_size_out_of_range(size):
    frame = random_grid(np.random.default_rng(0))
    with pytest.raises(EvaluationError, match="max_set_size"):
        conditional_mi(frame, "mu", hparams=["A", "B", "C"], max_set_size=size)


def test_sets_larger_than_the_types_do_not_exist():
    frame = random_grid(np.random.default_rng(0), sizes=(3,))
    result = conditional_mi(frame, "mu", hparams=["A"])  # the default max_set_size is 2
    assert set(result.minima) == {0, 1}
    assert min(result.minima.values()) == result.K


def test_pgdl_needs_two_types():
    frame = random_grid(np.random.default_rng(0), sizes=(3,))
    with pytest.raises(EvaluationError, match="PGDL mode conditions on pairs"):
        conditional_mi(frame, "mu", hparams=["A"], pgdl=True)


def test_constant_gap_gives_nan():
    frame = pd.DataFrame({"A": [0, 1, 0, 1], "gap": [1.0] * 4, "mu": [1.0, 2.0, 3.0, 4.0]})
    result = conditional_mi(frame, "mu", hparams="A", max_set_size=1)
    assert all(math.isnan(v) for v in result.minima.values())
    assert math.isnan(result.K)
    assert result.K_set == ()


def test_bad_tables():
    frame = random_grid(np.random.default_rng(0))
    with pytest.raises(EvaluationError, match="measure column 'x'"):
        conditional_mi(frame, "x", hparams=["A", "B"])
    with pytest.raises(EvaluationError, match="hyperparameter column 'Z'"):
        conditional_mi(frame, "mu", hparams=["A", "Z"])
    with pytest.raises(EvaluationError, match=r"attrs\['hparams'\]"):
        conditional_mi(frame, "mu")
    single = random_grid(np.random.default_rng(0)).iloc[:1]
    with pytest.raises(EvaluationError, match="at least 2"):
        conditional_mi(single, "mu", hparams=["A", "B"])
    frame["mu"] = np.nan
    with pytest.raises(EvaluationError, match="no finite value"):
        conditional_mi(frame, "mu", hparams=["A", "B"])
