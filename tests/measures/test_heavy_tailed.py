"""Heavy-tailed spectral metrics (issue 19): the power-law fit, the Marchenko-Pastur outliers,
the stable rank, their invariances, any network, and weightwatcher as an optional oracle."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures import heavy_tailed_layers as exported
from genmeasures.measures.heavy_tailed import (
    MIN_EIGENVALUES,
    esd,
    fit_power_law,
    heavy_tailed_layers,
    marchenko_pastur_edge,
    marchenko_pastur_median,
)
from networks import NETWORKS, ResidualCNN, TransformerBlock
from reference import (
    marchenko_pastur_median_by_quadrature,
    mp_outliers_by_formula,
    power_law_fit_by_loop,
)

NAMES = ["ht-alpha", "ht-alpha-weighted", "ht-log-alpha-norm", "ht-stable-rank", "ht-mp-outliers"]


def linear_model(*weights: torch.Tensor) -> nn.Sequential:
    """Linear layers (no activations needed: the metrics read weights only) holding ``weights``."""
    layers = []
    for weight in weights:
        layer = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            layer.weight.copy_(weight)
        layers.append(layer)
    return nn.Sequential(*layers)


def heavy_tailed_matrix(rows: int, columns: int, seed: int, dof: float = 3.0) -> torch.Tensor:
    """Student-t entries: an ESD with a power-law tail."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    chi2 = 2 * torch._standard_gamma(torch.full((rows, columns), dof / 2, dtype=torch.float64))
    return gaussian / torch.sqrt(chi2 / dof)


# ----------------------------------------------------------------------------- the fit


@pytest.mark.parametrize(
    ("rows", "columns", "kind"),
    [(60, 40, "gaussian"), (90, 50, "student"), (70, 70, "student"), (30, 120, "gaussian")],
)
def test_alpha_equals_the_maximum_likelihood_fit_by_loop(rows, columns, kind):
    generator = torch.Generator().manual_seed(rows + columns)
    weight = (
        heavy_tailed_matrix(rows, columns, seed=rows)
        if kind == "student"
        else torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    )
    eigenvalues = np.linalg.svd(weight.numpy(), compute_uv=False) ** 2
    alpha, xmin, distance, tail = power_law_fit_by_loop(eigenvalues)
    row = heavy_tailed_layers(linear_model(weight)).iloc[0]
    assert row["alpha"] == pytest.approx(alpha, rel=1e-10)
    assert row["xmin"] == pytest.approx(xmin, rel=1e-10)
    assert row["ks_distance"] == pytest.approx(distance, rel=1e-10, abs=1e-12)
    assert row["tail"] == tail
    assert row["lambda_max"] == pytest.approx(eigenvalues.max(), rel=1e-10)
    assert row["alpha_weighted"] == pytest.approx(alpha * math.log10(eigenvalues.max()), rel=1e-9)
    assert row["log_alpha_norm"] == pytest.approx(
        math.log10(float(np.sum(eigenvalues**alpha))), rel=1e-9, abs=1e-10
    )
    fit = fit_power_law(eigenvalues)
    assert (fit.alpha, fit.xmin, fit.tail) == pytest.approx((alpha, xmin, tail), rel=1e-10)


def test_ties_and_blocks_of_the_vectorized_search_match_the_loop():
    generator = np.random.default_rng(7)
    values = np.round(generator.pareto(1.5, 300) + 1, 1)  # many ties
    fit = fit_power_law(values)
    alpha, xmin, distance, tail = power_law_fit_by_loop(values)
    assert (fit.alpha, fit.xmin, fit.ks_distance, fit.tail) == pytest.approx(
        (alpha, xmin, distance, tail), rel=1e-10
    )


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5])
def test_alpha_of_samples_from_a_known_power_law(alpha):
    generator = np.random.default_rng(int(alpha * 10))
    samples = (1 - generator.random(5000)) ** (-1 / (alpha - 1))  # p(x) ∝ x^{-α} on [1, ∞)
    fit = fit_power_law(samples)
    assert fit.alpha == pytest.approx(alpha, abs=0.1)


def test_x_min_finds_where_the_power_law_starts():
    generator = np.random.default_rng(3)
    bulk = generator.uniform(0.05, 1.0, 2000)
    tail = (1 - generator.random(3000)) ** (-1 / 1.5)  # α = 2.5 from x = 1
    fit = fit_power_law(np.concatenate([bulk, tail]))
    assert fit.alpha == pytest.approx(2.5, abs=0.1)
    assert 0.9 <= fit.xmin <= 1.3


def test_a_fit_needs_positive_values_and_a_tail():
    with pytest.raises(ValueError, match="positive finite"):
        fit_power_law(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="no tail"):
        fit_power_law(np.ones(20))


# ----------------------------------------------------------------------------- MP, stable rank


@pytest.mark.parametrize("ratio", [1.0, 0.99, 0.5, 0.1, 0.01])
def test_marchenko_pastur_median_matches_quadrature(ratio):
    assert marchenko_pastur_median(ratio) == pytest.approx(
        marchenko_pastur_median_by_quadrature(ratio), rel=1e-10
    )


def test_marchenko_pastur_median_is_the_median_of_a_large_gaussian_spectrum():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(800, 400, generator=generator, dtype=torch.float64)
    eigenvalues, n, m = esd(weight)
    assert np.median(eigenvalues) / n == pytest.approx(marchenko_pastur_median(m / n), rel=1e-2)


def planted(n: int, m: int, spikes: tuple[float, ...], seed: int) -> tuple[torch.Tensor, int]:
    """U diag(s) Vᵀ: s a Gaussian matrix's singular values, the top ones replaced by spikes
    (multiples of the reference bulk edge). Returns the matrix and how many spikes it has."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n, m, generator=generator, dtype=torch.float64)
    s = torch.linalg.svdvals(gaussian).flip(0)  # ascending
    _, edge = mp_outliers_by_formula(gaussian.numpy())
    for i, factor in enumerate(spikes):
        s[m - 1 - i] = math.sqrt(factor * edge)
    u, _ = torch.linalg.qr(torch.randn(n, m, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
    return u @ torch.diag(s) @ v.T, len(spikes)


@pytest.mark.parametrize(("n", "m", "spikes"), [(400, 100, (3.0, 1.5)), (200, 200, (2.0,))])
def test_stable_rank_and_mp_outliers_on_planted_singular_values(n, m, spikes):
    weight, planted_count = planted(n, m, spikes, seed=n + m)
    row = heavy_tailed_layers(linear_model(weight.T)).iloc[0]  # stored out × in: M × N
    dense = weight.numpy()
    stable_rank = np.linalg.norm(dense, "fro") ** 2 / np.linalg.norm(dense, 2) ** 2
    assert row["stable_rank"] == pytest.approx(stable_rank, rel=1e-10)
    count, edge = mp_outliers_by_formula(dense)
    assert row["mp_edge"] == pytest.approx(edge, rel=1e-9)
    assert row["mp_outliers"] == count == planted_count
    assert (row["N"], row["M"]) == (n, m)


@pytest.mark.parametrize(("n", "m"), [(400, 200), (300, 300), (500, 50)])
def test_a_gaussian_matrix_has_no_or_one_outlier(n, m):
    generator = torch.Generator().manual_seed(11)
    for _ in range(3):
        weight = torch.randn(n, m, generator=generator, dtype=torch.float64)
        eigenvalues, rows, columns = esd(weight)
        edge = marchenko_pastur_edge(eigenvalues, rows, columns)
        assert np.count_nonzero(eigenvalues > edge) <= 1  # Tracy-Widom: the top one may cross


# ----------------------------------------------------------------------------- invariances


def two_layer_model(seed: int = 0) -> nn.Sequential:
    return linear_model(heavy_tailed_matrix(48, 64, seed), heavy_tailed_matrix(40, 48, seed + 1))


@pytest.mark.parametrize("c", [4.0, 0.3])
def test_scaling_a_layer_keeps_alpha_and_stable_rank_and_shifts_the_logs(c):
    model = two_layer_model()
    before = heavy_tailed_layers(model)
    with torch.no_grad():
        model[0].weight.mul_(c)
    after = heavy_tailed_layers(model)
    same = ["alpha", "ks_distance", "tail", "stable_rank", "mp_outliers", "eigenvalues"]
    for column in same:
        assert after[column].to_list() == pytest.approx(before[column].to_list(), rel=1e-9)
    shift = 2 * before["alpha"][0] * math.log10(c)
    for column in ("alpha_weighted", "log_alpha_norm"):
        assert after[column][0] == pytest.approx(before[column][0] + shift, rel=1e-9)
        assert after[column][1] == before[column][1]
    assert after["xmin"][0] == pytest.approx(c**2 * before["xmin"][0], rel=1e-9)
    values = gm.compute(model, None, measures=NAMES).values
    with torch.no_grad():
        model[1].weight.mul_(c)
    scaled = gm.compute(model, None, measures=NAMES).values
    assert scaled["ht-alpha"] == pytest.approx(values["ht-alpha"], rel=1e-9)
    assert scaled["ht-stable-rank"] == pytest.approx(values["ht-stable-rank"], rel=1e-9)
    mean_shift = after["alpha"][1] * math.log10(c)  # the mean over 2 layers of 2α log10 c
    assert scaled["ht-alpha-weighted"] == pytest.approx(values["ht-alpha-weighted"] + mean_shift)


def test_rescaling_single_nodes_changes_alpha():
    """Scaling a hidden unit's row by 10 and its column in the next layer by 1/10 leaves a ReLU
    network's function unchanged, and α and the stable rank change: no node-wise invariance."""
    model = two_layer_model()
    before = heavy_tailed_layers(model)
    with torch.no_grad():
        model[0].weight[3].mul_(10.0)
        model[0].bias[3].mul_(10.0)
        model[1].weight[:, 3].div_(10.0)
    after = heavy_tailed_layers(model)
    assert after["alpha"][0] != pytest.approx(before["alpha"][0], rel=1e-3)
    assert after["stable_rank"][0] != pytest.approx(before["stable_rank"][0], rel=1e-3)


# ----------------------------------------------------------------------------- matrices


def test_a_conv_kernel_pools_the_spectra_of_its_positions():
    generator = torch.Generator().manual_seed(4)
    kernel = torch.randn(16, 8, 3, 3, generator=generator, dtype=torch.float64)
    eigenvalues, n, m = esd(kernel)
    slices = [
        np.linalg.svd(kernel[:, :, i, j].numpy(), compute_uv=False) ** 2
        for i in range(3)
        for j in range(3)
    ]
    assert (n, m) == (16, 8)
    assert eigenvalues == pytest.approx(np.sort(np.concatenate(slices)), rel=1e-10)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 12)).double()
    with torch.no_grad():
        model[0].weight.copy_(kernel)
    model.input_shape = (8, 3, 3)
    row = heavy_tailed_layers(model).iloc[0]
    assert (row["matrices"], row["N"], row["M"], row["eigenvalues"]) == (9, 16, 8, 72)
    total = sum(float(s.sum()) for s in slices)
    assert row["stable_rank"] == pytest.approx(total / eigenvalues.max(), rel=1e-10)


def test_small_and_degenerate_matrices_are_skipped_with_a_reason():
    wide = heavy_tailed_matrix(30, 20, seed=1)
    small = heavy_tailed_matrix(6, 30, seed=2)  # 6 eigenvalues
    generator = torch.Generator().manual_seed(3)
    orthogonal, _ = torch.linalg.qr(torch.randn(20, 20, generator=generator, dtype=torch.float64))
    model = linear_model(wide, small.T @ small[:, :20] / 10, orthogonal)
    table = heavy_tailed_layers(model)
    assert table["eigenvalues"].to_list()[0] == 20
    assert "6 nonzero eigenvalues, fewer than 10" in table["note"][1]
    assert "all equal" in table["note"][2]
    assert math.isnan(table["alpha"][1]) and math.isnan(table["mp_outliers"][1])
    assert math.isnan(table["alpha"][2]) and table["stable_rank"][2] == pytest.approx(20)
    results = gm.compute(model, None, measures=NAMES)
    alpha = results["ht-alpha"]
    assert alpha.status == "ok"
    assert alpha.value == pytest.approx(table["alpha"][0])
    assert alpha.extra["averaged"] == 1
    assert set(alpha.extra["skipped"]) == {"1", "2"}
    assert alpha.extra["note"].startswith("mean over 1 of 3 weight matrices; skipped 2")
    assert results["ht-stable-rank"].extra["averaged"] == 3
    assert results["ht-mp-outliers"].extra["averaged"] == 2  # the orthogonal one has a bulk
    stored = nn.Linear(20, 20)  # float32: its eigenvalues are equal to float32's precision
    nn.init.orthogonal_(stored.weight, generator=torch.Generator().manual_seed(4))
    assert "all equal" in heavy_tailed_layers(stored)["note"][0]


def test_a_network_of_small_matrices_has_an_undefined_alpha_that_says_why():
    model = gm.build_model("mlp", (5,), 3, depth=2, width=4, seed=0)
    with pytest.warns(gm.GenMeasuresWarning, match="fewer than 10"):
        results = gm.compute(model, None, measures=NAMES)
    for name in NAMES:
        result = results[name]
        if name == "ht-stable-rank":
            assert result.status == "ok" and math.isfinite(result.value)
        else:
            assert result.status == "undefined" and math.isnan(result.value)
            assert f"fewer than {MIN_EIGENVALUES}" in result.message


def test_the_per_layer_table_is_every_measures_and_is_exported():
    model = two_layer_model()
    results = gm.compute(model, None, measures=NAMES)
    table = heavy_tailed_layers(model)
    assert exported is heavy_tailed_layers
    assert list(table.columns[:3]) == ["layer", "shape", "matrices"]
    for name in NAMES:
        assert results[name].per_layer.equals(table)
        assert results[name].extra["weights"] == "folded weight layers"
        assert gm.get_measure(name).domain == "weights"
        assert gm.get_measure(name).needs == frozenset()
    assert results["ht-alpha"].value == pytest.approx(table["alpha"].mean())
    assert gm.get_measure("alpha-hat").name == "ht-alpha-weighted"
    assert gm.get_measure("Stable Rank").name == "ht-stable-rank"


# ----------------------------------------------------------------------------- any network


def test_the_measures_run_on_residual_normalized_and_attention_networks():
    from test_any_network import MixerBlock, TokenClassifier

    torch.manual_seed(0)
    wide = {
        "transformer": TransformerBlock(dim=32, heads=4).double(),
        "residual_cnn": ResidualCNN(channels=16).double(),
        "mixer": MixerBlock(tokens=16, channels=24, hidden=32).double(),
        "tokens": TokenClassifier(vocabulary=40, dim=24).double(),
    }
    wide["residual_cnn"].input_shape = (2, 6, 6)
    tiny = {name: build(0) for name, build in NETWORKS.items()}
    for name, model in {**wide, **tiny}.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gm.GenMeasuresWarning)
            results = gm.compute(model, None, measures="ht-*")
        for measure in NAMES:
            result = results[measure]
            if result.status == "ok":
                assert math.isfinite(result.value), (name, measure)
            else:  # only the tiny networks: too few eigenvalues to fit a tail
                assert name in tiny and result.status == "undefined", (name, measure)
                assert "fewer than 10" in result.message, (name, measure)
        if name in wide:
            assert results["ht-alpha"].status == "ok", name
    table = heavy_tailed_layers(wide["transformer"])
    assert {"attn.in_proj_weight[q]", "attn.out_proj", "head"} <= set(table["layer"])
    assert np.isfinite(table.set_index("layer").loc["attn.in_proj_weight[k]", "alpha"])


# ----------------------------------------------------------------------------- weightwatcher


@pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")
def test_alpha_agrees_with_weightwatcher():
    """weightwatcher 0.7 (defaults: pooled conv positions, its own power-law fit) as an oracle.

    On matrices of 20 eigenvalues or more both run the same fit in float64 on the same
    eigenvalues, so α, x_min, D and the tail agree to 1e-9. weightwatcher scales a Conv2d
    kernel by √(1/2) by default (``conv2d_norm=True``): α and D are unchanged, its λ_max and
    x_min are halved, and its α̂ and log α-norm are lower by α·log10 2.
    """
    weightwatcher = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(128, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
    )
    with torch.no_grad():
        for i, seed in ((0, 1), (4, 3), (6, 5)):
            model[i].weight.copy_(
                0.05
                * heavy_tailed_matrix(
                    model[i].weight.shape[0], model[i].weight[0].numel(), seed, dof=2.5 + i / 2
                ).reshape(model[i].weight.shape)
            )
    details = weightwatcher.WeightWatcher(model=model).analyze().set_index("name")
    ours = heavy_tailed_layers(model).set_index("layer")
    assert set(details.index) == set(ours.index) == {"0", "2", "4", "6"}
    for layer in ours.index:
        row, oracle = ours.loc[layer], details.loc[layer]
        assert row["alpha"] == pytest.approx(oracle["alpha"], abs=1e-9), layer
        assert row["ks_distance"] == pytest.approx(oracle["D"], abs=1e-9), layer
        assert row["tail"] == oracle["num_pl_spikes"], layer
        assert row["stable_rank"] == pytest.approx(oracle["stable_rank"], rel=1e-9), layer
        scale = 0.5 if layer == "6" else 1.0
        lowered = row["alpha"] * math.log10(scale)
        assert scale * row["xmin"] == pytest.approx(oracle["xmin"], rel=1e-9), layer
        assert scale * row["lambda_max"] == pytest.approx(oracle["lambda_max"], rel=1e-9), layer
        for ours_column, their_column in (
            ("alpha_weighted", "alpha_weighted"),
            ("log_alpha_norm", "log_alpha_norm"),
        ):
            assert row[ours_column] + lowered == pytest.approx(
                oracle[their_column], rel=1e-9, abs=1e-9
            ), (layer, ours_column)
