"""Curvature primitives against the full Hessian of tiny float64 networks.

The reference is ``torch.autograd.functional.hessian`` of the full-data mean cross-entropy as a
function of the flattened parameters of the folded model (one pass over all examples, no
mini-batches: ``reference.loss_hessian``), and a brute-force generalized Gauss-Newton matrix
from the full logit Jacobian.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import measure_context
from torch import nn
from torch.func import functional_call

from genmeasures.errors import GenMeasuresWarning, MeasureError
from genmeasures.measures import curvature
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.curvature import ggn as ggn_module
from genmeasures.measures.curvature import (
    hessian_diagonal,
    hessian_max_eigenvalue,
    hessian_top_eigenpair,
    hessian_trace,
    hessian_trace_samples,
    hvp,
)
from genmeasures.measures.curvature import loss as loss_module
from reference import loss_hessian

# ----------------------------------------------------------------------------- tiny networks


def randomized(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Gaussian parameters times ``scale``, and random BatchNorm running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.running_mean.copy_(
                    0.3 * torch.randn(module.num_features, generator=generator)
                )
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


def mlp(activation: type[nn.Module], seed: int = 0) -> nn.Module:
    """A float64 MLP 4 → 5 → 3."""
    model = nn.Sequential(nn.Linear(4, 5), activation(), nn.Linear(5, 3)).double()
    return randomized(model, seed)


def relu_cnn(seed: int = 0) -> nn.Module:
    """A float64 conv net on (2, 5, 5) with a BatchNorm to fold, then a Linear."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    return randomized(model, seed, scale=0.7)


def mlp_data(m: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    inputs = torch.randn(m, 4, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (m,), generator=generator)


def cnn_data(m: int = 18) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(12)
    inputs = torch.randn(m, 2, 5, 5, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (m,), generator=generator)


def context(model, data, *, batch_size: int = 7, seed: int = 0) -> MeasureContext:
    return measure_context(model, *data, batch_size=batch_size, seed=seed)


CASES = {
    "tanh-mlp": (lambda: mlp(nn.Tanh), mlp_data),
    "relu-mlp": (lambda: mlp(nn.ReLU), mlp_data),
    "relu-cnn": (relu_cnn, cnn_data),
}


def make_case(name: str, **kwargs) -> MeasureContext:
    build, data = CASES[name]
    return context(build(), data(), **kwargs)


# ----------------------------------------------------------------------------- references


def flat_params(ctx: MeasureContext) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    named = list(ctx.folded_model.named_parameters())
    return torch.cat([p.detach().flatten() for _, p in named]), [(n, p.shape) for n, p in named]


def unflatten(flat: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def full_hessian(ctx: MeasureContext) -> torch.Tensor:
    """The Hessian of the folded model's mean cross-entropy over all parameters (flattened)."""
    inputs, labels = ctx.require_data()
    return loss_hessian(ctx.folded_model, inputs, labels)


def weight_slices(ctx: MeasureContext) -> list[slice]:
    """Positions of each weight layer's weight in the flattened parameter vector."""
    _, layout = flat_params(ctx)
    starts, start = {}, 0
    for name, shape in layout:
        starts[name] = (start, start + math.prod(shape))
        start += math.prod(shape)
    weights = {id(p): n for n, p in ctx.folded_model.named_parameters()}
    return [slice(*starts[weights[id(layer.weight)]]) for layer in ctx.layers]


def weight_index(ctx: MeasureContext) -> torch.Tensor:
    return torch.cat([torch.arange(s.start, s.stop) for s in weight_slices(ctx)])


def split_weights(ctx: MeasureContext, flat_weights: torch.Tensor) -> list[torch.Tensor]:
    out, start = [], 0
    for layer in ctx.layers:
        size = layer.weight.numel()
        out.append(flat_weights[start : start + size].reshape(layer.matrix.shape))
        start += size
    return out


def brute_ggn_diagonal(ctx: MeasureContext) -> torch.Tensor:
    """diag (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n over all parameters, from the full Jacobian."""
    flat, layout = flat_params(ctx)
    inputs, _ = ctx.require_data()

    def logits(theta):
        return functional_call(ctx.folded_model, unflatten(theta, layout), (inputs,))

    jacobian = torch.autograd.functional.jacobian(logits, flat)  # (N, C, P)
    p = torch.softmax(logits(flat), dim=1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("ncp,ncd,ndp->p", jacobian, h, jacobian)
    return ggn / len(inputs)


def rademacher_draws(ctx: MeasureContext, purpose: str, probes: int, sizes: list[int]):
    """The probes as the module draws them: one at a time, one tensor per parameter in order."""
    generator = ctx.generator(purpose)
    draws = []
    for _ in range(probes):
        parts = [2 * torch.randint(0, 2, (size,), generator=generator) - 1 for size in sizes]
        draws.append(torch.cat(parts).double())
    return torch.stack(draws)


def assert_close_lists(actual, expected, *, rtol, atol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- hvp


@pytest.mark.parametrize("case", ["tanh-mlp", "relu-cnn"])
def test_hvp_equals_full_hessian_times_vectors(case):
    ctx = make_case(case, batch_size=5)
    hessian = full_hessian(ctx)
    _, layout = flat_params(ctx)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        vector = torch.randn(hessian.shape[0], generator=generator, dtype=torch.float64)
        product = hvp(ctx, list(unflatten(vector, layout).values()))
        expected = list(unflatten(hessian @ vector, layout).values())
        assert_close_lists(product, expected, rtol=1e-9, atol=1e-12)


def test_hvp_does_not_depend_on_the_batch_size():
    small, whole = make_case("relu-cnn", batch_size=4), make_case("relu-cnn", batch_size=1000)
    _, layout = flat_params(small)
    size = sum(math.prod(shape) for _, shape in layout)
    vector = torch.randn(size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    vectors = list(unflatten(vector, layout).values())
    assert_close_lists(hvp(small, vectors), hvp(whole, vectors), rtol=1e-11, atol=1e-14)


def test_hvp_rejects_mismatched_vectors():
    ctx = make_case("tanh-mlp")
    with pytest.raises(MeasureError, match=r"hvp: vectors must be one tensor per parameter"):
        hvp(ctx, [torch.zeros(5, 4)])
    with pytest.raises(MeasureError, match=r"\(5, 4\).*got \[\(4, 5\)"):
        hvp(ctx, [torch.zeros(4, 5), torch.zeros(5), torch.zeros(3, 5), torch.zeros(3)])


def test_the_callers_model_is_left_alone():
    model = relu_cnn().train()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    ctx = context(model, cnn_data())
    hessian_diagonal(ctx, "scale-invariant", probes=3)
    hessian_trace(ctx, probes=3)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


# ----------------------------------------------------------------------------- diagonal


@pytest.mark.parametrize("case", ["tanh-mlp", "relu-cnn"])
def test_exact_diagonal_is_the_hessian_diagonal_per_layer(case):
    ctx = make_case(case)
    diagonal = hessian_diagonal(ctx, "exact")
    expected = [
        full_hessian(ctx).diagonal()[s].reshape(layer.matrix.shape)
        for s, layer in zip(weight_slices(ctx), ctx.layers, strict=True)
    ]
    assert [tuple(d.shape) for d in diagonal] == [tuple(layer.matrix.shape) for layer in ctx.layers]
    assert_close_lists(diagonal, expected, rtol=1e-9, atol=1e-13)


def test_conv_layers_are_viewed_as_out_by_in_matrices():
    ctx = make_case("relu-cnn")
    shapes = [tuple(d.shape) for d in hessian_diagonal(ctx, "ggn")]
    assert shapes == [(3, 18), (2, 27), (3, 8)]


@pytest.mark.parametrize("case", ["relu-mlp", "relu-cnn"])
def test_ggn_equals_exact_on_piecewise_linear_networks(case):
    ctx = make_case(case)
    assert_close_lists(
        hessian_diagonal(ctx, "ggn"), hessian_diagonal(ctx, "exact"), rtol=1e-9, atol=1e-13
    )


def test_ggn_is_the_gauss_newton_diagonal_and_not_the_hessian_on_a_smooth_network():
    ctx = make_case("tanh-mlp")
    ggn = hessian_diagonal(ctx, "ggn")
    expected = split_weights(ctx, brute_ggn_diagonal(ctx)[weight_index(ctx)])
    assert_close_lists(ggn, expected, rtol=1e-9, atol=1e-13)
    exact = torch.cat([d.flatten() for d in hessian_diagonal(ctx, "exact")])
    gap = (torch.cat([d.flatten() for d in ggn]) - exact).abs().max()
    assert gap > 0.05 * exact.abs().max()


def test_ggn_does_not_depend_on_the_batch_size():
    a = hessian_diagonal(make_case("tanh-mlp", batch_size=3), "ggn")
    b = hessian_diagonal(make_case("tanh-mlp", batch_size=100), "ggn")
    assert_close_lists(a, b, rtol=1e-11, atol=1e-15)


def test_hutchinson_reproduces_its_draws_on_the_full_hessian():
    ctx = make_case("tanh-mlp")
    probes = 7
    index = weight_index(ctx)
    block = full_hessian(ctx)[index][:, index]
    sizes = [layer.weight.numel() for layer in ctx.layers]
    z = rademacher_draws(ctx, "curvature/diagonal/hutchinson", probes, sizes)
    expected = (z * (z @ block)).mean(0)
    estimate = hessian_diagonal(ctx, "hutchinson", probes=probes)
    assert_close_lists(estimate, split_weights(ctx, expected), rtol=1e-9, atol=1e-13)


def test_hutchinson_converges_to_exact_and_is_unbiased():
    ctx = make_case("tanh-mlp")
    index = weight_index(ctx)
    block = full_hessian(ctx)[index][:, index]
    exact = block.diagonal()
    errors = {}
    for probes in (10, 1000):
        estimate = torch.cat(
            [d.flatten() for d in hessian_diagonal(ctx, "hutchinson", probes=probes)]
        )
        errors[probes] = (estimate - exact).abs().mean()
    assert errors[1000] < errors[10] / 3  # 1/sqrt(K) predicts a factor 10
    # Var(z_i (Hz)_i) = Σ_{j≠i} H_ij², so the standard error of each entry is known exactly.
    standard_error = ((block.pow(2).sum(1) - exact.pow(2)) / 1000).sqrt()
    assert ((estimate - exact).abs() <= 5 * standard_error + 1e-12).all()


def softplus_mlp() -> nn.Module:
    return mlp(nn.Softplus, seed=1)


def test_scale_invariant_reproduces_its_draws_on_a_smooth_network():
    """For small r, eq 29 is Hutchinson with probes d ⊙ s rescaled by 1/d: check the same draws."""
    ctx = context(softplus_mlp(), mlp_data())
    probes, r, eps = 5, 1e-5, 0.01
    index = weight_index(ctx)
    block = full_hessian(ctx)[index][:, index]
    theta = torch.cat([layer.weight.detach().flatten() for layer in ctx.layers])
    d = r * (theta.abs() + eps)
    sizes = [layer.weight.numel() for layer in ctx.layers]
    s = rademacher_draws(ctx, "curvature/diagonal/scale-invariant", probes, sizes)
    expected = (s * ((s * d) @ block) / d).mean(0)
    estimate = hessian_diagonal(ctx, "scale-invariant", probes=probes, r=r, eps=eps)
    assert_close_lists(estimate, split_weights(ctx, expected), rtol=1e-6, atol=1e-9)


def test_scale_invariant_converges_to_exact_as_probes_grow_and_r_shrinks():
    ctx = context(softplus_mlp(), mlp_data())
    exact = torch.cat([d.flatten() for d in hessian_diagonal(ctx, "exact")])
    errors = {}
    for probes in (10, 1000):
        estimate = hessian_diagonal(ctx, "scale-invariant", probes=probes, r=1e-4, eps=0.0)
        errors[probes] = (torch.cat([d.flatten() for d in estimate]) - exact).abs().mean()
    assert errors[1000] < errors[10] / 3
    assert errors[1000] < 0.2 * exact.abs().mean()


def rescaled(model: nn.Module, unit: int, c: float) -> nn.Module:
    """Scale hidden unit ``unit``: incoming weights and bias by c, outgoing weights by 1/c."""
    with torch.no_grad():
        model[0].weight[unit] *= c
        model[0].bias[unit] *= c
        model[2].weight[:, unit] /= c
    return model


@pytest.mark.parametrize("estimator", ["scale-invariant", "exact"])
def test_diagonal_transforms_like_the_hessian_under_node_rescaling(estimator):
    unit, c = 2, 3.7
    original = context(mlp(nn.ReLU), mlp_data())
    scaled = context(rescaled(mlp(nn.ReLU), unit, c), mlp_data())
    torch.testing.assert_close(original.logits, scaled.logits, rtol=1e-12, atol=1e-12)
    before = hessian_diagonal(original, estimator, probes=6, r=0.05, eps=0.0)
    after = hessian_diagonal(scaled, estimator, probes=6, r=0.05, eps=0.0)
    expected = [before[0].clone(), before[1].clone()]
    expected[0][unit] /= c**2
    expected[1][:, unit] *= c**2
    assert_close_lists(after, expected, rtol=1e-10, atol=1e-14)
    assert after[0][unit].abs().max() > 0  # the unit is alive, the test can fail


def test_scale_invariant_is_not_invariant_with_eps():
    unit, c = 2, 3.7
    before = hessian_diagonal(
        context(mlp(nn.ReLU), mlp_data()), "scale-invariant", eps=0.5, probes=6, r=0.05
    )
    after = hessian_diagonal(
        context(rescaled(mlp(nn.ReLU), unit, c), mlp_data()),
        "scale-invariant",
        eps=0.5,
        probes=6,
        r=0.05,
    )
    assert not torch.allclose(after[0][unit], before[0][unit] / c**2, rtol=1e-3)


def test_scale_invariant_sets_unperturbed_zero_weights_to_zero():
    model = mlp(nn.Tanh)
    with torch.no_grad():
        model[0].weight[1, 2] = 0.0
    ctx = context(model, mlp_data())
    estimate = hessian_diagonal(ctx, "scale-invariant", probes=4, eps=0.0)
    assert estimate[0][1, 2] == 0
    assert all(torch.isfinite(d).all() for d in estimate)
    with_eps = hessian_diagonal(ctx, "scale-invariant", probes=4, eps=1e-3)
    assert with_eps[0][1, 2] != 0


class PositionwiseClassifier(nn.Module):
    """A ReLU Linear applied at every position of ``(n, 3, 4)`` inputs, then a Linear on all."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Linear(4, 5)
        self.head = nn.Linear(15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.position(x)).flatten(1))


#: Layers whose per-example gradients the fast GGN path builds from unfolded inputs: name →
#: (network builder, shape of one input).
FAST_GGN_CASES = {
    "conv1d-same-padding-even-kernels-dilated": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 4, padding="same", dilation=2),  # padding 3 on both sides
            nn.ReLU(),
            nn.Conv1d(3, 2, 2, padding="same"),  # padding 0 before, 1 after
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(18, 3),
        ),
        (2, 9),
    ),
    "conv1d-grouped-circular-strided": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=1, padding_mode="circular", groups=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(20, 3),
        ),
        (2, 9),
    ),
    "conv2d-grouped-reflect-rectangular-kernel": (
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, (3, 2), padding=1, padding_mode="reflect", groups=2),
            nn.ReLU(),
            nn.Conv2d(6, 2, 2, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8, 3),
        ),
        (4, 4, 3),
    ),
    "linear-on-sequences": (PositionwiseClassifier, (3, 4)),
}


def odd_layer_case(build, input_shape: tuple[int, ...]) -> MeasureContext:
    """A float64 network with random weights on 13 random examples, in batches of 5."""
    generator = torch.Generator().manual_seed(21)
    inputs = torch.randn(13, *input_shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (13,), generator=generator)
    return context(randomized(build().double(), seed=5, scale=0.6), (inputs, labels), batch_size=5)


def ggn_loss(ctx: MeasureContext) -> loss_module._Loss:
    """The loss as the GGN estimators see it: differentiated in the layers' weights only."""
    return loss_module._Loss(ctx, list(dict.fromkeys(loss_module._weight_names(ctx))))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("case", list(FAST_GGN_CASES))
def test_fast_ggn_path_equals_the_per_example_path(case):
    ctx = odd_layer_case(*FAST_GGN_CASES[case])
    loss = ggn_loss(ctx)
    fast = ggn_module._ggn_diagonal_by_layer(loss)
    assert fast is not None  # the fast path handles these layers
    slow = ggn_module._ggn_diagonal_per_example(loss)
    assert list(fast) == list(slow) == loss.names
    for name in loss.names:
        scale = float(slow[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-12, atol=1e-12 * scale)


def test_conv3d_falls_back_to_the_per_example_ggn_which_is_exact_on_relu():
    build = lambda: nn.Sequential(  # noqa: E731
        nn.Conv3d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)
    )
    ctx = odd_layer_case(build, (1, 3, 3, 3))
    assert ggn_module._ggn_diagonal_by_layer(ggn_loss(ctx)) is None
    ggn = hessian_diagonal(ctx, "ggn")
    assert [tuple(d.shape) for d in ggn] == [(2, 8), (3, 16)]
    assert all(d.abs().max() > 0 for d in ggn)
    assert_close_lists(ggn, hessian_diagonal(ctx, "exact"), rtol=1e-9, atol=1e-13)


# ----------------------------------------------------------------------------- trace


@pytest.mark.parametrize("case", ["tanh-mlp", "relu-cnn"])
def test_hessian_trace_exact_and_hutchinson(case):
    ctx = make_case(case)
    trace = float(full_hessian(ctx).trace())
    exact, exact_error = hessian_trace(ctx, probes=1, exact=True)
    assert exact == pytest.approx(trace, rel=1e-10)
    assert exact_error == 0.0
    estimate, error = hessian_trace(ctx, probes=200)
    assert 0 < error < abs(trace)
    assert abs(estimate - trace) <= 4 * error


def test_hessian_trace_is_seeded():
    a = hessian_trace(make_case("tanh-mlp", seed=5), probes=20)
    b = hessian_trace(make_case("tanh-mlp", seed=5), probes=20)
    c = hessian_trace(make_case("tanh-mlp", seed=6), probes=20)
    assert a == b
    assert a != c
    ctx = make_case("tanh-mlp", seed=5)
    explicit = hessian_trace(ctx, probes=20, generator=ctx.generator("curvature/hessian-trace"))
    assert explicit == a
    assert math.isnan(hessian_trace(ctx, probes=1)[1])


def test_hessian_trace_changes_under_node_rescaling():
    original = hessian_trace(context(mlp(nn.ReLU), mlp_data()), probes=1, exact=True)[0]
    scaled = hessian_trace(
        context(rescaled(mlp(nn.ReLU), 2, 3.7), mlp_data()), probes=1, exact=True
    )[0]
    assert abs(scaled - original) > 0.1 * abs(original)


# ----------------------------------------------------------------------------- eigenvalue


@pytest.mark.parametrize("case", ["tanh-mlp", "relu-cnn"])
def test_hessian_max_eigenvalue_matches_eigvalsh(case):
    ctx = make_case(case)
    eigenvalues = torch.linalg.eigvalsh(full_hessian(ctx))
    top, second = float(eigenvalues[-1]), float(eigenvalues[-2])
    assert top - second > 0.05 * top  # a spectral gap
    assert hessian_max_eigenvalue(ctx, iterations=200, tol=1e-10) == pytest.approx(top, rel=1e-6)


def test_hessian_max_eigenvalue_is_seeded_and_warns_without_convergence():
    ctx = make_case("tanh-mlp")
    assert hessian_max_eigenvalue(ctx) == hessian_max_eigenvalue(ctx)
    with pytest.warns(UserWarning, match="did not reach"):
        hessian_max_eigenvalue(ctx, iterations=2, tol=1e-14)


def test_trace_samples_split_each_probe_by_parameter():
    ctx = make_case("tanh-mlp", seed=4)
    probes = 9
    samples = hessian_trace_samples(ctx, probes=probes)
    _, layout = flat_params(ctx)
    assert list(samples) == [name for name, _ in layout]
    # Sample k of parameter p is Σ_{i ∈ p} z_ki (H z_k)_i for the probes as the module draws them.
    sizes = [math.prod(shape) for _, shape in layout]
    z = rademacher_draws(ctx, curvature.TRACE_PURPOSE, probes, sizes)
    products = z * (z @ full_hessian(ctx))
    for (name, _), block in zip(layout, products.split(sizes, dim=1), strict=True):
        torch.testing.assert_close(samples[name], block.sum(1), rtol=1e-9, atol=1e-12)
    value, _ = hessian_trace(make_case("tanh-mlp", seed=4), probes=probes)
    assert sum(float(s.mean()) for s in samples.values()) == pytest.approx(value, rel=1e-12)


def test_exact_trace_samples_are_the_diagonal_blocks_traces():
    ctx = make_case("tanh-mlp")
    samples = hessian_trace_samples(ctx, probes=1, exact=True)
    diagonal = full_hessian(ctx).diagonal()
    _, layout = flat_params(ctx)
    blocks = diagonal.split([math.prod(shape) for _, shape in layout])
    for (name, _), block in zip(layout, blocks, strict=True):
        assert samples[name].shape == (1,)
        assert float(samples[name][0]) == pytest.approx(float(block.sum()), rel=1e-10, abs=1e-14)


def test_top_eigenpair_is_an_eigenpair_of_the_full_hessian():
    ctx = make_case("tanh-mlp")
    hessian = full_hessian(ctx)
    pair = hessian_top_eigenpair(ctx, iterations=200, tol=1e-10)
    _, layout = flat_params(ctx)
    assert list(pair.vector) == [name for name, _ in layout]
    assert [tuple(v.shape) for v in pair.vector.values()] == [tuple(s) for _, s in layout]
    vector = torch.cat([v.flatten() for v in pair.vector.values()])
    assert float(vector.norm()) == pytest.approx(1.0, abs=1e-12)
    assert pair.converged
    assert pair.residual <= 1e-10 * abs(pair.value)
    assert float((hessian @ vector - pair.value * vector).norm()) <= 1e-8 * abs(pair.value)
    assert pair.value == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-9)


def test_top_eigenpair_reports_no_convergence_quietly_and_the_eigenvalue_warns():
    ctx = make_case("tanh-mlp")
    top = float(torch.linalg.eigvalsh(full_hessian(ctx))[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pair = hessian_top_eigenpair(ctx, iterations=2, tol=1e-14)
    assert not pair.converged
    assert pair.iterations == 2
    assert pair.value <= top + 1e-12  # a Ritz value, below λ_max
    with pytest.warns(GenMeasuresWarning, match="did not reach"):
        value = hessian_max_eigenvalue(ctx, iterations=2, tol=1e-14)
    assert value == pair.value  # the same seeded start vector


# ----------------------------------------------------------------------------- cache, errors


def test_the_diagonal_is_cached_per_estimator_and_parameters():
    ctx = make_case("tanh-mlp")
    first = hessian_diagonal(ctx, "scale-invariant", probes=3, r=0.01)
    assert hessian_diagonal(ctx, "scale-invariant", probes=3, r=0.01) is first
    assert hessian_diagonal(ctx, "scale-invariant", probes=4, r=0.01) is not first
    assert hessian_diagonal(ctx, "scale-invariant", probes=3, r=0.02) is not first
    assert hessian_diagonal(ctx, "scale-invariant", probes=3, r=0.01, eps=0.1) is not first
    hutchinson = hessian_diagonal(ctx, "hutchinson", probes=3)
    assert hutchinson is not first
    assert hessian_diagonal(ctx, "hutchinson", probes=3, r=0.5) is hutchinson  # r is unused
    exact = hessian_diagonal(ctx, "exact")
    assert hessian_diagonal(ctx, "exact", probes=9) is exact
    assert hessian_diagonal(ctx, "ggn") is not exact


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"estimator": "diag"},
            r"estimator must be one of 'exact', 'ggn', 'hutchinson', "
            r"'scale-invariant', got 'diag'",
        ),
        ({"estimator": None}, r"estimator must be one of .*got None"),
        ({"estimator": "ggn", "probes": 0}, r"probes expected an integer >= 1, received 0"),
        ({"estimator": "ggn", "probes": True}, r"probes expected an integer >= 1, received True"),
        ({"estimator": "ggn", "probes": 2.0}, r"probes expected an integer >= 1, received 2.0"),
        ({"estimator": "ggn", "r": 0.0}, r"r expected a finite number > 0, received 0.0"),
        ({"estimator": "ggn", "r": math.nan}, r"r expected a finite number > 0, received nan"),
        ({"estimator": "ggn", "eps": -1e-3}, r"eps expected a finite number >= 0, received -0.001"),
    ],
)
def test_hessian_diagonal_rejects_bad_arguments(kwargs, message):
    ctx = make_case("tanh-mlp")
    estimator = kwargs.pop("estimator")
    with pytest.raises(MeasureError, match=f"hessian_diagonal: {message}"):
        hessian_diagonal(ctx, estimator, **kwargs)


def test_trace_and_eigenvalue_reject_bad_arguments():
    ctx = make_case("tanh-mlp")
    with pytest.raises(
        MeasureError, match=r"hessian_trace: probes expected an integer >= 1, received 0"
    ):
        hessian_trace(ctx, probes=0)
    with pytest.raises(MeasureError, match=r"iterations expected an integer >= 1, received 0"):
        hessian_max_eigenvalue(ctx, iterations=0)
    with pytest.raises(MeasureError, match=r"tol expected a finite number > 0, received -1"):
        hessian_max_eigenvalue(ctx, tol=-1)


def test_estimator_names_are_exported():
    assert curvature.ESTIMATORS == ("exact", "ggn", "hutchinson", "scale-invariant")
