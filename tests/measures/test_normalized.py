"""Normalized sharpness and the Hessian measures of Tsuzuku, Sato and Sugiyama (2020).

``NORMALIZED_SHARPNESS.md``: invariance to the rescalings that leave the network function
unchanged (§2), the bounds and closed form of eq 35, the per-layer tables, the estimator choice
(§4), the sharing of one diagonal estimate, and the per-parameter tables of ``hessian-trace`` and
``hessian-max-eig``. Values of every measure against brute-force references are checked in
``test_formulas.py``; the solver itself in ``test_balancing.py``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_curvature import context, randomized
from torch import nn

import genmeasures as gm
from genmeasures.measures import curvature, normalized
from genmeasures.measures.balancing import balance_objective
from genmeasures.measures.normalized import normalized_sharpness_layers
from reference import dense_weight_matrix, hessian_diagonal_matrices, loss_hessian

NS = ("normalized-sharpness", "normalized-sharpness-arxiv")
DIAGONAL_MEASURES = (*NS, "normalized-sharpness-param", "hessian-weighted-norm")

#: Estimators that transform exactly like the Hessian diagonal under node rescaling. The
#: scale-invariant one does so per draw only with ε = 0 and the same draws (the same seed).
INVARIANT_ESTIMATORS = {
    "exact": {"estimator": "exact"},
    "ggn": {"estimator": "ggn"},
    "scale-invariant": {"estimator": "scale-invariant", "eps": 0.0, "probes": 16, "r": 0.01},
}

# ----------------------------------------------------------------------------- tiny networks


def relu_mlp(seed: int = 0) -> nn.Module:
    """A float64 ReLU MLP 4 → 5 → 4 → 3 with Gaussian weights."""
    model = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
    ).double()
    return randomized(model, seed)


def grouped_cnn(seed: int = 0) -> nn.Module:
    """A float64 ReLU conv net on (1, 4, 4): conv, grouped conv (2 groups), strided 1×1, Linear."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 2),  # 4 × 3 × 3
        nn.ReLU(),
        nn.Conv2d(4, 4, 2, padding=1, groups=2),  # 4 × 4 × 4
        nn.ReLU(),
        nn.Conv2d(4, 2, 1, stride=2),  # 2 × 2 × 2
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    return randomized(model, seed, scale=0.7)


def batchnorm_net(seed: int = 0) -> nn.Module:
    """A float64 ReLU net on (1, 3, 3) with a BatchNorm2d after its conv and a BatchNorm1d.

    The BatchNorms have ε = 0, so that scaling a pre-BN layer with the running statistics
    leaves the folded network exactly the same (with ε > 0 it would change it by about ε/var).
    """
    model = nn.Sequential(
        nn.Conv2d(1, 2, 2),  # 2 × 2 × 2
        nn.BatchNorm2d(2, eps=0.0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.BatchNorm1d(4, eps=0.0),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).double()
    return randomized(model, seed).eval()


def tanh_mlp(seed: int = 0) -> nn.Module:
    """A float64 MLP 4 → 5 → 3 with a smooth activation."""
    return randomized(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double(), seed)


def random_data(input_shape: tuple[int, ...], m: int = 24, seed: int = 7):
    """``m`` Gaussian float64 inputs with random labels among 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(m, *input_shape, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (m,), generator=generator)


# ----------------------------------------------------------------------------- rescalings


def positive_scales(count: int, seed: int) -> torch.Tensor:
    """``count`` log-uniform factors in [0.2, 5]."""
    generator = torch.Generator().manual_seed(seed)
    return 0.2 * 25 ** torch.rand(count, generator=generator, dtype=torch.float64)


def scale_outputs(module: nn.Module, scales: torch.Tensor) -> None:
    """Multiply output unit (or channel) i's weights and bias by ``scales[i]``."""
    module.weight.mul_(scales.reshape(-1, *[1] * (module.weight.ndim - 1)))
    module.bias.mul_(scales)


def divide_inputs(module: nn.Module, scales: torch.Tensor) -> None:
    """Divide the weights from input unit (or channel) j by ``scales[j]``.

    A Linear after a flatten sees each channel at several positions: ``scales`` is repeated over
    them. A grouped convolution's output channel sees only its group's input channels.
    """
    weight = module.weight
    if isinstance(module, nn.Linear):
        weight.div_(scales.repeat_interleave(weight.shape[1] // len(scales)))
        return
    in_per_group = weight.shape[1]
    out_per_group = weight.shape[0] // module.groups
    for output in range(weight.shape[0]):
        group = output // out_per_group
        seen = scales[group * in_per_group : (group + 1) * in_per_group]
        weight[output].div_(seen.reshape(-1, *[1] * (weight.ndim - 2)))


def rescale_units(model: nn.Module, pairs: list[tuple[int, int]], seed: int) -> nn.Module:
    """A copy with every output unit of ``model[i]`` × c and its input to ``model[j]`` ÷ c.

    For ReLU networks (and through BatchNorm's affine part) the function is unchanged.
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        for k, (layer, following) in enumerate(pairs):
            scales = positive_scales(model[layer].weight.shape[0], seed + k)
            scale_outputs(model[layer], scales)
            divide_inputs(model[following], scales)
    return model


def node_rescaled_mlp(model: nn.Module) -> nn.Module:
    """Both hidden layers' units rescaled by random factors."""
    return rescale_units(model, [(0, 2), (2, 4)], seed=1)


def channel_rescaled_cnn(model: nn.Module) -> nn.Module:
    """Every conv's output channels rescaled, hence the grouped conv's input channels too."""
    return rescale_units(model, [(0, 2), (2, 4), (4, 7)], seed=2)


def layer_rescaled_mlp(model: nn.Module, alpha: float = 4.0) -> nn.Module:
    """Layer 1 (weight and bias) × α, layer 2's weight ÷ α."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        scale_outputs(model[0], torch.full((5,), alpha, dtype=torch.float64))
        model[2].weight.div_(alpha)
    return model


def batchnorm_affine_rescaled(model: nn.Module) -> nn.Module:
    """Each BatchNorm's weight and bias × c per channel, the next layer's inputs ÷ c.

    After folding this is a node rescaling of the conv's channels and the Linear's units.
    """
    return rescale_units(model, [(1, 4), (5, 7)], seed=3)


def pre_batchnorm_rescaled(model: nn.Module) -> nn.Module:
    """Each pre-BN layer's weight and bias × c, its BN's running mean × c and variance × c².

    The BatchNorm undoes the scaling, so the folded network is the same.
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        for k, (layer, norm) in enumerate([(0, 1), (4, 5)]):
            scales = positive_scales(model[layer].weight.shape[0], seed=10 + k)
            scale_outputs(model[layer], scales)
            model[norm].running_mean.mul_(scales)
            model[norm].running_var.mul_(scales**2)
    return model


#: Rescalings that leave the network function unchanged: name → (network, input shape, map).
RESCALINGS = {
    "relu-node": (relu_mlp, (4,), node_rescaled_mlp),
    "conv-channel-and-grouped-input-channel": (grouped_cnn, (1, 4, 4), channel_rescaled_cnn),
    "layer-wise": (relu_mlp, (4,), layer_rescaled_mlp),
    "batchnorm-affine": (batchnorm_net, (1, 3, 3), batchnorm_affine_rescaled),
    "pre-batchnorm": (batchnorm_net, (1, 3, 3), pre_batchnorm_rescaled),
}

#: Those that change the folded network's weights (the pre-BN one does not).
WEIGHT_CHANGING = [name for name in RESCALINGS if name != "pre-batchnorm"]


def rescaled_pair(name: str):
    """(original, rescaled, data) for one of :data:`RESCALINGS`, checked to compute the same."""
    build, input_shape, rescale = RESCALINGS[name]
    original = build()
    transformed = rescale(original)
    data = random_data(input_shape)
    with torch.no_grad():
        torch.testing.assert_close(
            transformed.eval()(data[0]), original.eval()(data[0]), rtol=1e-10, atol=1e-12
        )
    return original, transformed, data


def sharpness_values(model: nn.Module, data, options: dict) -> dict[str, float]:
    """Both normalized sharpnesses with the same estimator options and seed."""
    results = gm.compute(model, data, measures=list(NS), options={name: options for name in NS})
    return {name: results[name].value for name in NS}


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("estimator", list(INVARIANT_ESTIMATORS))
@pytest.mark.parametrize("rescaling", list(RESCALINGS))
def test_normalized_sharpness_is_invariant_to_function_preserving_rescalings(rescaling, estimator):
    original, transformed, data = rescaled_pair(rescaling)
    options = INVARIANT_ESTIMATORS[estimator]
    before = sharpness_values(original, data, options)
    after = sharpness_values(transformed, data, options)
    for name in NS:
        assert before[name] > 0, name
        # The solver certifies a relative gap of 1e-8 and the estimates transform exactly up to
        # rounding, the scale-invariant one included (ε = 0, same draws): measured ≤ 3e-9 for
        # all three estimators, while Hutchinson's estimate moves by 8-66% here.
        assert after[name] == pytest.approx(before[name], rel=1e-6), name


@pytest.mark.parametrize("rescaling", WEIGHT_CHANGING)
def test_hessian_trace_and_param_norm_change_under_the_same_rescalings(rescaling):
    original, transformed, data = rescaled_pair(rescaling)
    measures = ["hessian-trace", "param-norm"]
    options = {"hessian-trace": {"exact": True}}
    before = gm.compute(original, data, measures=measures, options=options).values
    after = gm.compute(transformed, data, measures=measures, options=options).values
    for name in measures:
        assert abs(after[name] / before[name] - 1) > 0.01, name


def test_pre_batchnorm_scaling_leaves_the_folded_network_unchanged():
    original, transformed, _ = rescaled_pair("pre-batchnorm")
    folded_before = gm.fold_batchnorm(original).state_dict()
    folded_after = gm.fold_batchnorm(transformed).state_dict()
    assert folded_before.keys() == folded_after.keys()
    for key, value in folded_before.items():
        torch.testing.assert_close(folded_after[key], value, rtol=1e-12, atol=1e-14)
    # ... while the unfolded weights did change.
    assert not torch.allclose(transformed[0].weight, original[0].weight)


def test_balancing_grouped_conv_blocks_together_would_break_the_input_channel_invariance(
    monkeypatch,
):
    """The block-diagonal treatment of a grouped conv is what makes the invariance hold.

    Multiplying its compressed ``out × (in/groups · k)`` matrices pairs input channels of
    different groups; rescaling those channels differently then changes ``M_l``.
    """
    original, transformed, data = rescaled_pair("conv-channel-and-grouped-input-channel")
    options = {"estimator": "ggn"}
    monkeypatch.setattr(normalized, "_groups", lambda layer: 1)
    before = sharpness_values(original, data, options)["normalized-sharpness"]
    after = sharpness_values(transformed, data, options)["normalized-sharpness"]
    assert abs(after / before - 1) > 1e-3


# ----------------------------------------------------------------------------- bounds, table


def reference_m_matrices(model: nn.Module, data) -> list[np.ndarray]:
    """``M_l = F̂_l U_lᵀ`` of every weight layer from the full Hessian (dense block-diagonal)."""
    modules = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    hessian = loss_hessian(model, *data)
    matrices = []
    for module, diagonal in zip(
        modules, hessian_diagonal_matrices(model, modules, hessian), strict=True
    ):
        weight = dense_weight_matrix(module, module.weight)
        matrices.append(np.maximum(diagonal, 0.0) @ (weight * weight).T)
    return matrices


@pytest.mark.parametrize(("build", "input_shape"), [(relu_mlp, (4,)), (grouped_cnn, (1, 4, 4))])
def test_per_layer_value_lies_between_the_trace_and_the_gamma_zero_bounds(build, input_shape):
    model, data = build(), random_data(input_shape)
    results = gm.compute(model, data, measures=["normalized-sharpness", "hessian-weighted-norm"])
    table = results["normalized-sharpness"].per_layer
    matrices = reference_m_matrices(model, data)
    np.testing.assert_allclose(table["trace_bound"], [np.trace(m) for m in matrices], rtol=1e-9)
    np.testing.assert_allclose(table["gamma0_bound"], [m.sum() for m in matrices], rtol=1e-9)
    assert (table["trace_bound"] <= table["ns_squared"] * (1 + 1e-12)).all()
    assert (table["ns_squared"] <= table["gamma0_bound"] * (1 + 1e-12)).all()
    # The bounds are not tight here, so the test sees the balancing.
    assert (table["ns_squared"] > 1.001 * table["trace_bound"]).any()
    assert (table["ns_squared"] < 0.999 * table["gamma0_bound"]).any()
    # trace(F̂ Uᵀ) = Σ F̂ θ²: the Hessian-weighted norm, layer by layer.
    weighted = results["hessian-weighted-norm"].per_layer["value"]
    np.testing.assert_allclose(weighted, table["trace_bound"], rtol=1e-12)


def test_a_layer_with_two_outputs_has_the_closed_form():
    model = randomized(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)).double(), 3)
    inputs, labels = random_data((4,), seed=8)
    data = (inputs, labels % 2)
    result = gm.compute(model, data, measures="normalized-sharpness")["normalized-sharpness"]
    values = result.per_layer["ns_squared"]
    for value, m in zip(values, reference_m_matrices(model, data), strict=True):
        assert m[0, 1] > 0 and m[1, 0] > 0
        closed_form = m[0, 0] + m[1, 1] + 2 * math.sqrt(m[0, 1] * m[1, 0])
        assert value == pytest.approx(closed_form, rel=1e-8)
        assert closed_form < m.sum() * 0.999  # γ = 0 is not optimal


def test_per_layer_tables_and_totals():
    model, data = grouped_cnn(), random_data((1, 4, 4))
    results = gm.compute(model, data, measures=list(NS))
    icml, arxiv = results["normalized-sharpness"], results["normalized-sharpness-arxiv"]
    columns = [
        "layer",
        "shape",
        "ns_squared",
        "trace_bound",
        "gamma0_bound",
        "gamma_min",
        "gamma_max",
        "gamma_std",
        "attained",
        "gap",
        "iterations",
        "converged",
        "rescaling_symmetry",
    ]
    for result in (icml, arxiv):
        assert list(result.per_layer.columns) == columns
        assert list(result.per_layer["layer"]) == ["0", "2", "4", "7"]
        # Conv rows are output channels: c_out × (c_in/groups · k_h · k_w).
        assert list(result.per_layer["shape"]) == ["4×4", "4×8", "2×4", "3×8"]
        assert result.per_layer["converged"].all()
        assert (result.per_layer["gap"] <= 1e-8).all()
        assert result.extra["estimator"] == "ggn"
        assert result.extra["max_gap"] == result.per_layer["gap"].max()
        # A ReLU chain: node rescaling is a symmetry at every layer but the last.
        assert list(result.per_layer["rescaling_symmetry"]) == [True, True, True, False]
        assert result.extra["rescaling_invariant"] is True
    total = icml.per_layer["ns_squared"].sum()
    assert icml.extra["sum_of_layers"] == pytest.approx(total, rel=1e-12)
    assert icml.value == pytest.approx(math.sqrt(total), rel=1e-12)
    assert arxiv.value == pytest.approx(arxiv.per_layer["ns_squared"].sum(), rel=1e-12)
    assert arxiv.extra["sum_of_layers"] == pytest.approx(arxiv.value, rel=1e-12)
    assert arxiv.per_layer[["trace_bound", "gamma0_bound"]].isna().all().all()


def test_optimal_gammas_have_one_entry_per_output_and_attain_the_value():
    model, data = grouped_cnn(), random_data((1, 4, 4))
    estimator, layers = normalized_sharpness_layers(context(model, data))
    assert estimator == "ggn"
    table = gm.compute(model, data, measures="normalized-sharpness")["normalized-sharpness"]
    for layer, m, row in zip(
        layers, reference_m_matrices(model, data), table.per_layer.itertuples(), strict=True
    ):
        gamma = layer.solution.gamma
        assert gamma.shape == (layer.shape[0],)
        assert balance_objective(m, gamma) == pytest.approx(layer.value, rel=1e-9)
        assert layer.value == pytest.approx(row.ns_squared, rel=1e-12)
        # Another context sums its batches in another order: the γ agree to the solver's accuracy.
        assert (row.gamma_min, row.gamma_max) == pytest.approx((gamma.min(), gamma.max()), abs=1e-6)


# ----------------------------------------------------------------------------- estimators


def test_auto_estimator_is_ggn_for_relu_and_scale_invariant_for_tanh():
    relu = gm.compute(relu_mlp(), random_data((4,)), measures=list(DIAGONAL_MEASURES))
    smooth = gm.compute(
        tanh_mlp(),
        random_data((4,)),
        measures=list(DIAGONAL_MEASURES),
        options={name: {"probes": 4} for name in DIAGONAL_MEASURES},
    )
    for name in DIAGONAL_MEASURES:
        assert relu[name].extra["estimator"] == "ggn", name
        assert smooth[name].extra["estimator"] == "scale-invariant", name
        recorded = relu[name].params
        expected = {"estimator": "auto", "probes": 100, "r": 1e-3, "eps": 0.0}
        assert {key: recorded[key] for key in expected} == expected, name
        assert smooth[name].params["probes"] == 4


def test_an_explicit_estimator_is_used_and_recorded():
    options = {"estimator": "hutchinson", "probes": 5}
    results = gm.compute(
        tanh_mlp(),
        random_data((4,)),
        measures=list(DIAGONAL_MEASURES),
        options={name: options for name in DIAGONAL_MEASURES},
    )
    for name in DIAGONAL_MEASURES:
        assert results[name].extra["estimator"] == "hutchinson"
        assert results[name].params["estimator"] == "hutchinson"


@pytest.mark.parametrize("name", DIAGONAL_MEASURES)
def test_an_unknown_estimator_is_an_error_naming_the_choices(name):
    with pytest.raises(
        gm.MeasureError,
        match=r"estimator expected one of 'auto', 'exact', 'ggn', 'hutchinson', "
        r"'scale-invariant', received 'diag'",
    ):
        gm.compute(
            relu_mlp(), random_data((4,)), measures=name, options={name: {"estimator": "diag"}}
        )


@pytest.mark.parametrize("name", DIAGONAL_MEASURES)
def test_a_non_finite_weight_is_an_error_naming_the_layer(name):
    model = relu_mlp()
    with torch.no_grad():
        model[2].weight[1, 3] = math.inf
    with pytest.raises(gm.NumericalError, match=r"layer '2'.*non-finite"):
        gm.compute(model, random_data((4,)), measures=name)


@pytest.mark.parametrize("name", DIAGONAL_MEASURES)
def test_a_non_finite_diagonal_estimate_is_an_error_naming_the_layer(name, monkeypatch):
    def overflowing(ctx, estimator, **options):
        estimates = [torch.ones(layer.matrix.shape, dtype=torch.float64) for layer in ctx.layers]
        estimates[1][0, 0] = math.nan
        return estimates

    monkeypatch.setattr(normalized, "hessian_diagonal", overflowing)
    with pytest.raises(gm.NumericalError, match=r"layer '2'.*estimate F has 1 non-finite"):
        gm.compute(relu_mlp(), random_data((4,)), measures=name)


def test_one_diagonal_estimate_serves_every_measure_that_uses_it(monkeypatch):
    estimates = []
    estimate = curvature.diagonal._diagonal

    def counting(ctx, estimator, *args):
        estimates.append(estimator)
        return estimate(ctx, estimator, *args)

    monkeypatch.setattr(curvature.diagonal, "_diagonal", counting)
    model, data = relu_mlp(), random_data((4,))
    gm.compute(model, data, measures=list(DIAGONAL_MEASURES))
    assert estimates == ["ggn"]
    estimates.clear()
    options = {"normalized-sharpness-param": {"estimator": "exact"}}
    gm.compute(model, data, measures=list(DIAGONAL_MEASURES), options=options)
    assert sorted(estimates) == ["exact", "ggn"]


# ----------------------------------------------------------------------------- trace, eigenvalue


@pytest.mark.parametrize("exact", [True, False])
def test_hessian_trace_table_has_one_row_per_parameter_summing_to_the_value(exact):
    model, data = relu_mlp(), random_data((4,))
    options = {"hessian-trace": {"exact": exact, "probes": 25}}
    result = gm.compute(model, data, measures="hessian-trace", options=options, seed=3)[
        "hessian-trace"
    ]
    table = result.per_layer
    names = [name for name, _ in model.named_parameters()]
    assert list(table["parameter"]) == names
    assert list(table["shape"]) == ["5×4", "5", "4×5", "4", "3×4", "3"]
    assert table["trace"].sum() == pytest.approx(result.value, rel=1e-12)
    trace = float(loss_hessian(model, *data).trace())
    if exact:
        assert result.value == pytest.approx(trace, rel=1e-10)
        assert result.extra["stderr"] == 0.0
        assert (table["stderr"] == 0.0).all()
        return
    value, error = curvature.hessian_trace(context(model, data, seed=3), probes=25)
    assert (result.value, result.extra["stderr"]) == pytest.approx((value, error), rel=1e-12)
    assert result.extra["probes"] == 25
    assert (table["stderr"] > 0).all()
    assert error > 0
    assert abs(value - trace) <= 4 * error


def test_hessian_max_eig_matches_eigh_and_splits_its_eigenvector_by_parameter():
    model, data = relu_mlp(), random_data((4,))
    options = {"hessian-max-eig": {"tol": 1e-10, "iterations": 200}}
    result = gm.compute(model, data, measures="hessian-max-eig", options=options)["hessian-max-eig"]
    eigenvalues, eigenvectors = torch.linalg.eigh(loss_hessian(model, *data))
    assert eigenvalues[-1] - eigenvalues[-2] > 0.05 * eigenvalues[-1]  # a simple top eigenvalue
    assert result.converged
    assert result.value == pytest.approx(float(eigenvalues[-1]), rel=1e-9)
    assert result.extra["residual"] <= 1e-10 * result.value
    table = result.per_layer
    assert list(table["parameter"]) == [name for name, _ in model.named_parameters()]
    assert table["eigenvector_mass"].sum() == pytest.approx(1.0, abs=1e-12)
    sizes = [p.numel() for p in model.parameters()]
    masses = [float(part.pow(2).sum()) for part in eigenvectors[:, -1].split(sizes)]
    np.testing.assert_allclose(table["eigenvector_mass"], masses, atol=1e-8)
