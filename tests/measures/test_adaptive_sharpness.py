"""Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023), issue 19.

In float64 on tiny networks:

- worst-case ℓ∞ against exhaustive search over the box ``|ε_i| ≤ ρ`` (every vertex and a grid) on
  softmax regression, whose cross-entropy is convex in the weights, hence in ε (``w + |w| ⊙ ε`` is
  affine in ε): a convex function's maximum over a polytope is attained at a vertex, so the
  vertex maximum is the exact maximum, and the ascent lies between the grid maximum and it;
- worst-case ℓ2 on the same model against a dense sample of the sphere ``‖ε‖₂ = ρ`` (where a
  convex function's maximum over the ball lies);
- average-case against a 200 000-draw Monte-Carlo estimate in numpy, within standard errors;
- invariance: rescaling a ReLU network's layer (weights and bias) by c and the next layer's
  weights by 1/c, or single hidden nodes the same way, leaves every value unchanged, while plain
  sharpness (the same ascent with ``T_w = 1``) changes;
- seeding and option validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.errors import MeasureError
from genmeasures.measures.adaptive import (
    AdaptiveNetwork,
    apgd_checkpoints,
    worst_case_sharpness,
)
from networks import relu_mlp, rescaled_layer, rescaled_nodes
from reference import (
    adaptive_average_by_monte_carlo,
    adaptive_box_maxima,
    softmax_regression_loss,
)

NAMES = ["adaptive-sharpness-linf", "adaptive-sharpness-l2", "adaptive-sharpness-avg"]


def softmax_regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 2-input, 2-class linear model without bias (4 perturbed weights) and 8 examples."""
    generator = torch.Generator().manual_seed(3)
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.3, -0.7], [-0.4, 0.9]], dtype=torch.float64))
    x = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=generator)
    return model, x, y


def numpy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    weight = model.weight.detach().numpy()
    xs, ys = x.numpy(), y.numpy()
    return lambda eps: float(
        softmax_regression_loss(weight + np.abs(weight) * eps.reshape(weight.shape), xs, ys)
    )


def value(model, x, y, name, seed=0, **options):
    results = gm.compute(model, (x, y), measures=[name], seed=seed, options={name: options})
    assert results[name].status == "ok", results[name].message
    return results[name].value


@pytest.mark.parametrize("rho", [0.02, 0.05, 0.1, 0.3])
def test_worst_case_linf_matches_exhaustive_search_over_the_box(rho):
    """For a small ρ the first-order term dominates: the vertex sign(∇_ε L) that the first step
    reaches is the global maximum, and the ascent finds it. For a larger ρ (0.3 here; from about
    0.15 on this model) the ascent stops at another vertex, a local maximum of the box: its value
    is then only a lower bound of the maximum, as any ascent's is (the paper's Auto-PGD too)."""
    model, x, y = softmax_regression()
    m = 4  # two batches: the maximum is taken per batch, then averaged (m-sharpness)
    expected_vertex, expected_grid = 0.0, 0.0
    for start in range(0, len(y), m):
        loss = numpy_loss(model, x[start : start + m], y[start : start + m])
        vertex, grid = adaptive_box_maxima(loss, 4, rho, grid_points=9)
        base = loss(np.zeros(4))
        expected_vertex += (vertex - base) / 2
        expected_grid += (grid - base) / 2
    received = value(model, x, y, "adaptive-sharpness-linf", rho=rho, m=m)
    assert expected_grid <= expected_vertex + 1e-12
    assert received <= expected_vertex + 1e-12  # a feasible point: never above the maximum
    if rho > 0.1:
        assert received >= 0.9 * expected_vertex
        return
    # The ascent's momentum step ε_{k+1} = 0.75 z + 0.25 ε_{k-1} (the authors' Auto-PGD) nears a
    # vertex as 0.25^(k/2): after 20 steps, within ~1e-6 ρ of it, hence the relative tolerance.
    assert expected_grid * (1 - 1e-5) <= received <= expected_vertex + 1e-12
    assert received == pytest.approx(expected_vertex, rel=1e-5)


def test_worst_case_l2_matches_a_dense_sample_of_the_sphere():
    model, x, y = softmax_regression()
    rho = 0.3
    weight = model.weight.detach().numpy()
    directions = np.random.default_rng(0).normal(size=(400_000, 2, 2))
    directions /= np.linalg.norm(directions.reshape(len(directions), -1), axis=1)[:, None, None]
    losses = softmax_regression_loss(
        weight + np.abs(weight) * rho * directions, x.numpy(), y.numpy()
    )
    base = float(softmax_regression_loss(weight, x.numpy(), y.numpy()))
    sampled = float(losses.max()) - base
    received = value(model, x, y, "adaptive-sharpness-l2", rho=rho, m=8)
    assert received >= sampled - 1e-6
    assert received <= sampled + 1e-3 * sampled  # the sample misses the maximum by a little


def test_average_case_matches_a_large_monte_carlo_estimate():
    model, x, y = softmax_regression()
    rho, draws = 0.5, 4000
    expected, error = adaptive_average_by_monte_carlo(
        model.weight.detach().numpy(), x.numpy(), y.numpy(), rho, 200_000, seed=1
    )
    received = value(model, x, y, "adaptive-sharpness-avg", rho=rho, m=8, draws=draws)
    # The measure's own estimate has the standard error of `draws` draws.
    combined = error * math.sqrt(200_000 / draws + 1)
    assert abs(received - expected) <= 4 * combined, (received, expected, combined)
    assert expected > 10 * error  # the noise raises the loss: the test is not about zero


# ------------------------------------------------------------------------------ invariance


INVARIANCE_OPTIONS = {
    "adaptive-sharpness-linf": {"rho": 0.05, "steps": 10},
    "adaptive-sharpness-l2": {"rho": 0.5, "steps": 10},
    "adaptive-sharpness-avg": {"rho": 0.1, "draws": 8},
}


@pytest.mark.parametrize("biases_and_norms", [False, True])
@pytest.mark.parametrize("rescale", [lambda m: rescaled_layer(m, 7.3), rescaled_nodes])
def test_adaptive_sharpness_is_invariant_to_relu_rescalings(rescale, biases_and_norms):
    model, x, y = relu_mlp()
    scaled = rescale(model)
    with torch.no_grad():
        assert torch.allclose(model(x), scaled(x), rtol=1e-12, atol=1e-12)
    options = {
        name: {**given, "examples": 24, "m": 8, "biases_and_norms": biases_and_norms}
        for name, given in INVARIANCE_OPTIONS.items()
    }
    before = gm.compute(model, (x, y), measures=NAMES, seed=5, options=options)
    after = gm.compute(scaled, (x, y), measures=NAMES, seed=5, options=options)
    for name in NAMES:
        assert before[name].value > 0, name
        assert after[name].value == pytest.approx(before[name].value, rel=1e-10, abs=1e-13), name


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_plain_sharpness_of_the_same_radius_is_not_invariant(norm):
    """The same ascent with ``T_w = 1`` (plain sharpness) changes under the rescalings."""
    model, x, y = relu_mlp()
    rho = 0.05 if norm == "linf" else 0.5

    def sharpness(network_model, adaptive):
        network = AdaptiveNetwork(network_model, biases_and_norms=True, normalize_logits=False)
        if not adaptive:
            network.scale = torch.ones_like(network.scale)
        worst, base = worst_case_sharpness(network, x, y, rho, 10, norm)
        return worst - base

    for scaled in (rescaled_layer(model, 7.3), rescaled_nodes(model)):
        assert sharpness(scaled, True) == pytest.approx(sharpness(model, True), rel=1e-10)
        plain, plain_scaled = sharpness(model, False), sharpness(scaled, False)
        assert abs(plain_scaled - plain) > 0.05 * abs(plain), (plain, plain_scaled)


# ------------------------------------------------------------------------------ the contract


def test_same_seed_same_value_and_the_subset_depends_on_the_seed():
    model, x, y = relu_mlp()
    for name in NAMES:
        options = {**INVARIANCE_OPTIONS[name], "examples": 16, "m": 8}
        first = value(model, x, y, name, seed=2, **options)
        assert value(model, x, y, name, seed=2, **options) == first
        assert value(model, x, y, name, seed=3, **options) != first


def test_the_options_reach_the_computation():
    model, x, y = relu_mlp()
    name = "adaptive-sharpness-linf"
    base = {"rho": 0.05, "steps": 5, "examples": 40, "m": 40}
    reference = value(model, x, y, name, **base)
    assert value(model, x, y, name, **{**base, "rho": 0.1}) > reference
    assert value(model, x, y, name, **{**base, "normalize_logits": True}) != reference
    assert value(model, x, y, name, **{**base, "biases_and_norms": True}) != reference
    assert value(model, x, y, name, **{**base, "m": 10}) != reference
    results = gm.compute(model, (x, y), measures=[name], options={name: base})
    assert results[name].extra["perturbed"] == 4 * 8 + 8 * 8 + 8 * 3
    assert results[name].extra["batches"] == 1
    assert results[name].params["rho"] == 0.05


@pytest.mark.parametrize(
    ("name", "options", "parameter"),
    [
        ("adaptive-sharpness-linf", {"rho": 0.0}, "rho"),
        ("adaptive-sharpness-l2", {"rho": -1.0}, "rho"),
        ("adaptive-sharpness-l2", {"steps": 0}, "steps"),
        ("adaptive-sharpness-avg", {"draws": 0}, "draws"),
        ("adaptive-sharpness-avg", {"m": 0}, "m"),
        ("adaptive-sharpness-linf", {"examples": 2.5}, "examples"),
        ("adaptive-sharpness-linf", {"biases_and_norms": 1}, "biases_and_norms"),
        ("adaptive-sharpness-avg", {"steps": 20}, "steps"),
    ],
)
def test_bad_options_are_named_errors(name, options, parameter):
    model, x, y = relu_mlp()
    with pytest.raises(MeasureError, match=f"{name}.*{parameter}"):
        gm.compute(model, (x, y), measures=[name], options={name: options})


def test_the_defaults_are_the_papers():
    specs = {name: gm.get_measure(name) for name in NAMES}
    for name, spec in specs.items():
        assert spec.family == "flatness-adaptive"
        assert spec.domain == "differentiable"
        assert spec.stochastic == "yes"
        assert spec.needs == {"data"}
        defaults = spec.options()
        assert (defaults.examples, defaults.m) == (1024, 128), name
        assert not defaults.biases_and_norms and not defaults.normalize_logits
    assert specs["adaptive-sharpness-linf"].options().steps == 20
    assert specs["adaptive-sharpness-l2"].options().steps == 20
    assert apgd_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
