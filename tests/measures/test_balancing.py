"""Matrix balancing (normalized sharpness, Tsuzuku et al. 2020 eq 35) against brute force.

References: ``scipy.optimize.minimize`` on φ with its analytic gradient, the 2×2 closed form, the
block structure of reducible matrices, and φ evaluated along the limiting direction.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from genmeasures.errors import MeasureError, NumericalError
from genmeasures.measures.balancing import (
    Balance,
    balance,
    balance_objective,
    balance_two_sided,
)
from genmeasures.measures.balancing.components import _strong_components

pytestmark = pytest.mark.filterwarnings("error")

TIGHT = 1e-14


# ----------------------------------------------------------------------------------------------
# Brute-force references
# ----------------------------------------------------------------------------------------------


def phi(M: np.ndarray, gamma: np.ndarray) -> float:
    """φ(γ) written out directly (moderate γ only)."""
    return float(np.sum(M * np.exp(gamma[:, None] - gamma[None, :])))


def scipy_balance(M: np.ndarray) -> float:
    """inf φ by BFGS with the analytic gradient, γ_n fixed to 0."""
    n = M.shape[0]

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        gamma = np.append(x, 0.0)
        S = M * np.exp(gamma[:, None] - gamma[None, :])
        return float(S.sum()), (S.sum(axis=1) - S.sum(axis=0))[:-1]

    result = minimize(objective, np.zeros(n - 1), jac=True, method="BFGS", options={"gtol": 1e-13})
    return float(result.fun)


def scipy_two_sided(F: np.ndarray, U: np.ndarray) -> float:
    """inf over (γ, γ') of Σ F e^{γ_i+γ'_j} + Σ U e^{−γ_i−γ'_j} by BFGS, γ'_last fixed to 0."""
    n_out, n_in = F.shape

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        gamma, gamma_in = x[:n_out], np.append(x[n_out:], 0.0)
        E = np.exp(gamma[:, None] + gamma_in[None, :])
        diff = F * E - U / E
        value = float(np.sum(F * E) + np.sum(U / E))
        return value, np.concatenate([diff.sum(axis=1), diff.sum(axis=0)[:-1]])

    result = minimize(
        objective, np.zeros(n_out + n_in - 1), jac=True, method="BFGS", options={"gtol": 1e-13}
    )
    return float(result.fun)


def scaled(M: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    S = M * np.exp(gamma[:, None] - gamma[None, :])
    np.fill_diagonal(S, 0.0)
    return S


def components(M: np.ndarray) -> np.ndarray:
    pattern = M > 0
    np.fill_diagonal(pattern, False)
    _, labels = connected_components(csr_matrix(pattern), directed=True, connection="strong")
    return labels


def topological_offsets(M: np.ndarray) -> np.ndarray:
    """Position of each node's component in a topological order of the condensation.

    Edges ``i → k`` between components go from a smaller to a larger position, so adding
    ``t · offsets`` to γ multiplies every cross entry by ``e^{−t·(gap in positions)}``.
    """
    labels = components(M)
    count = labels.max() + 1
    pattern = M > 0
    np.fill_diagonal(pattern, False)
    rows, cols = np.nonzero(pattern)
    edges = {(a, b) for a, b in zip(labels[rows], labels[cols], strict=True) if a != b}
    indegree = np.zeros(count, dtype=int)
    for _, b in edges:
        indegree[b] += 1
    order, ready = [], [c for c in range(count) if indegree[c] == 0]
    while ready:
        c = ready.pop()
        order.append(c)
        for a, b in edges:
            if a == c:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    position = np.empty(count)
    position[order] = np.arange(count)
    return position[labels]


def random_positive(rng: np.random.Generator, n: int) -> np.ndarray:
    """Positive matrix with row and column scales spread over a few orders of magnitude."""
    return (
        rng.random((n, n))
        * np.exp(rng.normal(size=(n, 1)) * 1.5)
        * np.exp(rng.normal(size=(1, n)) * 1.5)
    )


# ----------------------------------------------------------------------------------------------
# Against scipy.optimize on small positive matrices
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(2, 9))
def test_matches_scipy_minimize(n):
    rng = np.random.default_rng(100 + n)
    for _ in range(4):
        M = random_positive(rng, n)
        result = balance(M, tol=TIGHT)
        reference = scipy_balance(M)
        assert result.converged and result.attained
        assert result.value == pytest.approx(reference, rel=1e-8)
        assert result.value <= reference * (1 + 1e-10)  # never worse than BFGS
        S = scaled(M, result.gamma)
        rows, cols = S.sum(axis=1), S.sum(axis=0)
        np.testing.assert_allclose(rows, cols, rtol=1e-6, atol=1e-6 * rows.max())
        assert balance_objective(M, result.gamma) == pytest.approx(result.value, rel=1e-12)
        assert result.gamma.mean() == pytest.approx(0.0, abs=1e-12)


def test_default_tolerance_is_met():
    rng = np.random.default_rng(7)
    for n in (3, 10, 40):
        M = random_positive(rng, n)
        result = balance(M)
        assert result.converged and result.gap <= 1e-8
        assert result.value == pytest.approx(balance(M, tol=TIGHT).value, rel=1e-8)


def test_gap_bounds_the_true_suboptimality():
    """Stopped early, the reported gap is still an upper bound on (value − inf)/inf."""
    rng = np.random.default_rng(11)
    finite = 0
    for trial in range(40):
        n = int(rng.integers(2, 25))
        if trial % 2:
            M = np.exp(rng.normal(size=(n, n)) * 3)
        else:
            M = (rng.random((n, n)) < 0.4) * rng.random((n, n)) + np.roll(np.eye(n), 1, 1) * 0.01
        best = balance(M, tol=TIGHT).value
        for max_iter in range(5):
            result = balance(M, tol=0.0, max_iter=max_iter)
            true_gap = (result.value - best) / best
            assert result.gap >= true_gap * (1 - 1e-9) - 1e-13
            assert result.converged == (result.gap <= 0.0)
            finite += math.isfinite(result.gap)
    assert finite > 100  # the certificate is informative, not just inf


# ----------------------------------------------------------------------------------------------
# Closed forms, bounds and invariances
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m11", "m12", "m21", "m22"),
    [(1.0, 2.0, 3.0, 4.0), (0.0, 5.0, 0.2, 0.0), (2.5, 1e-6, 3e4, 0.0), (0.0, 7.0, 7.0, 0.0)],
)
def test_two_by_two_closed_form(m11, m12, m21, m22):
    M = np.array([[m11, m12], [m21, m22]])
    result = balance(M)
    assert result.value == pytest.approx(m11 + m22 + 2 * math.sqrt(m12 * m21), rel=1e-8)
    assert result.attained and result.converged
    # S12 = S21 = sqrt(M12 M21): γ1 − γ2 = ½ log(M21 / M12)
    assert result.gamma[0] - result.gamma[1] == pytest.approx(0.5 * math.log(m21 / m12), abs=1e-4)


@pytest.mark.parametrize(("m12", "m21"), [(0.0, 3.0), (2.0, 0.0)])
def test_two_by_two_one_sided_is_the_trace_not_attained(m12, m21):
    M = np.array([[1.5, m12], [m21, 0.25]])
    result = balance(M)
    assert result.value == 1.75
    assert not result.attained
    assert result.converged and result.gap == 0.0
    assert np.all(np.isfinite(result.gamma))
    offsets = topological_offsets(M)
    values = [phi(M, result.gamma + t * offsets) for t in (0.0, 5.0, 20.0, 40.0)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(1.75, rel=1e-15)


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_zero_matrix(n):
    result = balance(np.zeros((n, n)))
    assert result.value == 0.0
    assert result.attained and result.converged and result.gap == 0.0
    np.testing.assert_array_equal(result.gamma, np.zeros(n))


def test_one_by_one():
    result = balance([[3.5]])
    assert result.value == 3.5 and result.attained and result.converged
    assert result.iterations == 0
    np.testing.assert_array_equal(result.gamma, [0.0])


def test_bounds_and_diagonal_is_a_constant():
    rng = np.random.default_rng(3)
    for n in (2, 4, 9, 30):
        M = random_positive(rng, n)
        value = balance(M).value
        assert np.trace(M) <= value <= M.sum() * (1 + 1e-12)
        off = M.copy()
        np.fill_diagonal(off, 0.0)
        assert value == pytest.approx(balance(off).value + np.trace(M), rel=1e-8)


def test_objective_is_convex_and_shift_invariant():
    rng = np.random.default_rng(4)
    M = random_positive(rng, 6)
    for _ in range(50):
        g1, g2 = rng.normal(size=6) * 2, rng.normal(size=6) * 2
        t = rng.random()
        mix = balance_objective(M, t * g1 + (1 - t) * g2)
        assert mix <= t * balance_objective(M, g1) + (1 - t) * balance_objective(M, g2) + 1e-12
        assert balance_objective(M, g1 + 3.7) == pytest.approx(balance_objective(M, g1), rel=1e-13)
        assert balance_objective(M, g1) == pytest.approx(phi(M, g1), rel=1e-13)
    optimum = balance(M, tol=TIGHT)
    for _ in range(50):
        nudged = optimum.gamma + rng.normal(size=6) * 1e-3
        assert balance_objective(M, nudged) >= optimum.value * (1 - 1e-13)


def test_permutation_invariance():
    rng = np.random.default_rng(5)
    M = random_positive(rng, 12)
    perm = rng.permutation(12)
    base, permuted = balance(M, tol=TIGHT), balance(M[np.ix_(perm, perm)], tol=TIGHT)
    assert permuted.value == pytest.approx(base.value, rel=1e-10)
    np.testing.assert_allclose(permuted.gamma, base.gamma[perm], atol=1e-6)


@pytest.mark.parametrize("spread", [1.0, 30.0, 250.0])
def test_diagonal_similarity_shifts_gamma(spread):
    """M → D M D⁻¹ with D = diag(e^δ) keeps the value; the optimal γ moves by −δ."""
    rng = np.random.default_rng(6)
    M = random_positive(rng, 10)
    delta = rng.uniform(-spread, spread, size=10)
    similar = np.exp(delta)[:, None] * M * np.exp(-delta)[None, :]
    base, moved = balance(M, tol=TIGHT), balance(similar, tol=TIGHT)
    assert moved.converged
    assert moved.value == pytest.approx(base.value, rel=1e-10)
    expected = base.gamma - (delta - delta.mean())
    np.testing.assert_allclose(moved.gamma, expected, atol=1e-6)


def test_scaling():
    rng = np.random.default_rng(8)
    M = random_positive(rng, 7)
    base = balance(M, tol=TIGHT)
    for c in (1e-30, 0.5, 3.0, 1e40):
        result = balance(c * M, tol=TIGHT)
        assert result.value == pytest.approx(c * base.value, rel=1e-10)
        np.testing.assert_allclose(result.gamma, base.gamma, atol=1e-6)


def test_extreme_dynamic_range():
    result = balance(np.array([[0.0, 1e300], [1e-300, 0.0]]))
    assert result.value == pytest.approx(2.0, rel=1e-12)
    assert result.converged and np.all(np.isfinite(result.gamma))
    rng = np.random.default_rng(9)
    M = np.exp(rng.normal(size=(30, 30)) * 40)
    result = balance(M)
    assert result.converged and math.isfinite(result.value)
    assert np.trace(M) <= result.value <= M.sum()


def test_accepts_torch_tensors_and_lists():
    M = np.array([[0.0, 2.0, 1.0], [0.5, 1.0, 3.0], [4.0, 0.0, 0.0]])
    expected = balance(M).value
    assert balance(torch.tensor(M)).value == expected
    assert balance(M.tolist()).value == expected
    assert isinstance(balance(M), Balance)


# ----------------------------------------------------------------------------------------------
# Reducible matrices
# ----------------------------------------------------------------------------------------------


def test_zero_row_and_zero_column():
    rng = np.random.default_rng(12)
    M = random_positive(rng, 6)
    for axis in (0, 1):
        dead = M.copy()
        if axis == 0:
            dead[2, :] = 0.0
        else:
            dead[:, 2] = 0.0
        dead[2, 2] = 0.7  # the diagonal still counts
        keep = [0, 1, 3, 4, 5]
        result = balance(dead, tol=TIGHT)
        assert not result.attained and result.converged
        assert np.all(np.isfinite(result.gamma)) and result.gamma[2] == 0.0
        expected = balance(dead[np.ix_(keep, keep)], tol=TIGHT).value + 0.7
        assert result.value == pytest.approx(expected, rel=1e-10)


def test_block_upper_triangular():
    rng = np.random.default_rng(13)
    A, B = random_positive(rng, 3), random_positive(rng, 4)
    M = np.zeros((7, 7))
    M[:3, :3], M[3:, 3:] = A, B
    M[:3, 3:] = rng.random((3, 4)) * 5  # positive cross entries, block 1 → block 2
    result = balance(M, tol=TIGHT)
    expected = balance(A, tol=TIGHT).value + balance(B, tol=TIGHT).value
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert not result.attained and result.converged
    assert np.all(np.isfinite(result.gamma))
    assert result.gamma[:3].mean() == pytest.approx(0.0, abs=1e-12)
    assert result.gamma[3:].mean() == pytest.approx(0.0, abs=1e-12)
    # φ approaches the value from above along the topological offsets
    offsets = topological_offsets(M)
    np.testing.assert_array_equal(offsets, [0, 0, 0, 1, 1, 1, 1])
    values = [phi(M, result.gamma + t * offsets) for t in (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[0] > result.value * 1.01
    assert values[-1] == pytest.approx(result.value, rel=1e-12)
    assert min(values) >= result.value * (1 - 1e-12)


def test_block_diagonal_is_attained():
    rng = np.random.default_rng(14)
    A, B = random_positive(rng, 4), random_positive(rng, 3)
    M = np.zeros((7, 7))
    M[:4, :4], M[4:, 4:] = A, B
    result = balance(M, tol=TIGHT)
    assert result.attained and result.converged
    expected = balance(A, tol=TIGHT).value + balance(B, tol=TIGHT).value
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert phi(M, result.gamma) == pytest.approx(result.value, rel=1e-12)


def test_random_reducible_limit():
    """Random condensations: the value is approached along the topological offsets."""
    rng = np.random.default_rng(15)
    for _ in range(10):
        n = int(rng.integers(5, 12))
        M = (rng.random((n, n)) < 0.3) * rng.random((n, n))
        M = M[np.ix_(*[rng.permutation(n)] * 2)]
        result = balance(M, tol=TIGHT)
        assert result.converged and np.all(np.isfinite(result.gamma))
        labels = components(M)
        cross = (M > 0) & (labels[:, None] != labels[None, :])
        np.fill_diagonal(cross, False)
        assert result.attained == (not cross.any())
        within = M * ~cross
        assert result.value == pytest.approx(phi(within, result.gamma), rel=1e-12)
        offsets = topological_offsets(M)
        limit = phi(M, result.gamma + 40.0 * offsets)
        assert limit == pytest.approx(result.value, rel=1e-12)
        for c in range(labels.max() + 1):
            assert result.gamma[labels == c].mean() == pytest.approx(0.0, abs=1e-9)


def test_larger_matrix_with_dead_units_converges():
    rng = np.random.default_rng(16)
    n = 300
    M = random_positive(rng, n)
    M[[5, 77, 140], :] = 0.0  # dead units: zero rows
    M[:, [9, 200]] = 0.0  # and zero columns
    result = balance(M, layer="fc2")
    assert result.converged and result.gap <= 1e-8
    assert not result.attained
    assert np.all(np.isfinite(result.gamma))
    dead = [5, 77, 140, 9, 200]
    M[dead, dead] = 0.25  # the diagonal of a dead unit is still a constant term
    result = balance(M, layer="fc2")
    assert result.converged and not result.attained
    alive = np.setdiff1d(np.arange(n), dead)
    reference = balance(M[np.ix_(alive, alive)], tol=TIGHT).value + 0.25 * len(dead)
    assert result.value == pytest.approx(reference, rel=1e-8)
    assert result.value >= reference * (1 - 1e-12)


def test_strong_components_match_scipy():
    rng = np.random.default_rng(17)
    for density in (0.01, 0.05, 0.5, 1.0):
        for n in (70, 150):
            pattern = rng.random((n, n)) < density
            pattern[rng.random(n) < 0.1] = False
            np.fill_diagonal(pattern, False)
            ours = _strong_components(pattern)
            _, theirs = connected_components(
                csr_matrix(pattern), directed=True, connection="strong"
            )
            same_ours = ours[:, None] == ours[None, :]
            same_theirs = theirs[:, None] == theirs[None, :]
            np.testing.assert_array_equal(same_ours, same_theirs)


# ----------------------------------------------------------------------------------------------
# The preprint's two-sided form
# ----------------------------------------------------------------------------------------------


def test_two_sided_matches_scipy_and_the_square_root_identity():
    rng = np.random.default_rng(20)
    for _ in range(12):
        n_out, n_in = (int(v) for v in rng.integers(1, 6, size=2))
        F = rng.random((n_out, n_in)) ** 2 * np.exp(rng.normal(size=(n_out, 1)))
        U = rng.random((n_out, n_in))
        result = balance_two_sided(F, U, tol=TIGHT)
        assert result.converged and result.attained
        assert result.value == pytest.approx(scipy_two_sided(F, U), rel=1e-8)
        a = F.T @ np.exp(result.gamma)
        b = U.T @ np.exp(-result.gamma)
        assert result.value == pytest.approx(2 * np.sqrt(a * b).sum(), rel=1e-10)


def test_two_sided_is_the_bipartite_balancing():
    rng = np.random.default_rng(21)
    F, U = rng.random((4, 6)), rng.random((4, 6)) ** 3
    F[1, :3] = 0.0
    N = np.zeros((10, 10))
    N[:4, 4:], N[4:, :4] = F, U.T
    two, square = balance_two_sided(F, U, tol=TIGHT), balance(N, tol=TIGHT)
    assert two.value == pytest.approx(square.value, rel=1e-10)
    np.testing.assert_allclose(two.gamma, square.gamma[:4], atol=1e-6)


def test_two_sided_one_by_one():
    result = balance_two_sided([[2.0]], [[8.0]])
    assert result.value == pytest.approx(2 * math.sqrt(2.0 * 8.0), rel=1e-14)
    assert result.attained and result.converged
    assert balance_two_sided([[0.0]], [[8.0]]).value == 0.0
    assert not balance_two_sided([[0.0]], [[8.0]]).attained
    assert balance_two_sided([[0.0]], [[0.0]]).attained


def test_two_sided_zero_columns_and_rows():
    rng = np.random.default_rng(22)
    F, U = rng.random((5, 6)) + 0.1, rng.random((5, 6)) + 0.1
    keep_cols = [0, 2, 4]
    dead = F.copy(), U.copy()
    dead[0][:, 1] = 0.0  # column 1: F identically 0 → term 0, approached as γ'_1 → +∞
    dead[1][:, 3] = 0.0  # column 3: U identically 0 (γ'_3 → −∞)
    dead[0][:, 5] = dead[1][:, 5] = 0.0  # column 5: both 0, an isolated input
    result = balance_two_sided(*dead, tol=TIGHT)
    expected = balance_two_sided(F[:, keep_cols], U[:, keep_cols], tol=TIGHT)
    assert result.value == pytest.approx(expected.value, rel=1e-10)
    assert not result.attained and result.converged
    np.testing.assert_allclose(result.gamma, expected.gamma, atol=1e-6)
    a = dead[0].T @ np.exp(result.gamma)
    b = dead[1].T @ np.exp(-result.gamma)
    assert 2 * np.sqrt(a * b).sum() == pytest.approx(result.value, rel=1e-10)
    # only the isolated column: attained
    isolated = F.copy(), U.copy()
    isolated[0][:, 5] = isolated[1][:, 5] = 0.0
    assert balance_two_sided(*isolated).attained
    # an output whose rows of F and U are both 0 is isolated too
    rows = F.copy(), U.copy()
    rows[0][2] = rows[1][2] = 0.0
    result = balance_two_sided(*rows, tol=TIGHT)
    assert result.attained and result.gamma[2] == 0.0
    others = [0, 1, 3, 4]
    assert result.value == pytest.approx(
        balance_two_sided(F[others], U[others], tol=TIGHT).value, rel=1e-10
    )


def test_two_sided_node_rescaling_invariance():
    rng = np.random.default_rng(23)
    F, U = rng.random((4, 5)), rng.random((4, 5))
    base = balance_two_sided(F, U, tol=TIGHT).value
    c = np.exp(rng.normal(size=5) * 3)  # input column scales
    r = np.exp(rng.normal(size=(4, 1)) * 3)  # output row scales
    moved = balance_two_sided(F / c**2 / r**2, U * c**2 * r**2, tol=TIGHT).value
    assert moved == pytest.approx(base, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entries_name_the_layer(bad):
    M = np.ones((3, 3))
    M[1, 2] = bad
    with pytest.raises(NumericalError, match=r"layer 'conv3'.*finite.*M\[1, 2\]"):
        balance(M, layer="conv3")
    with pytest.raises(NumericalError, match=r"layer 'fc'.*U"):
        balance_two_sided(np.ones((2, 3)), M[:2], layer="fc")


def test_negative_entries_name_the_layer():
    M = np.ones((3, 3))
    M[0, 1] = -1e-3
    with pytest.raises(MeasureError, match=r"layer 'fc1'.*nonnegative.*-0.001"):
        balance(M, layer="fc1")
    with pytest.raises(MeasureError, match=r"layer 'fc1'.*nonnegative.*F"):
        balance_two_sided(M, np.ones((3, 3)), layer="fc1")


@pytest.mark.parametrize(
    "M", [np.ones((2, 3)), np.ones(4), np.ones((2, 2, 2)), np.zeros((0, 0)), 3.0]
)
def test_bad_shapes(M):
    with pytest.raises(MeasureError, match="got shape"):
        balance(M, layer="l")


def test_two_sided_bad_shapes_and_types():
    with pytest.raises(MeasureError, match=r"same shape.*\(2, 3\).*\(3, 2\)"):
        balance_two_sided(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(MeasureError, match="got shape"):
        balance_two_sided(np.ones(3), np.ones(3))
    with pytest.raises(MeasureError, match="real matrix"):
        balance(np.ones((2, 2), dtype=complex))
    with pytest.raises(MeasureError, match="real matrix"):
        balance([["a", "b"], ["c", "d"]])


@pytest.mark.parametrize(("tol", "max_iter"), [(-1.0, 10), (math.nan, 10), (1e-8, -1), (1e-8, 2.5)])
def test_bad_options(tol, max_iter):
    with pytest.raises(MeasureError, match="expected"):
        balance(np.ones((2, 2)), tol=tol, max_iter=max_iter)


def test_errors_are_value_errors():
    assert issubclass(NumericalError, ValueError) and issubclass(MeasureError, ValueError)
