"""The measures that need only a differentiable network, on networks that cannot be folded.

Issue 14: on a network with LayerNorm, GELU, attention or an embedding, the twelve PAC-Bayes and
sharpness measures, the Hessian trace and top eigenvalue and the gradient noise compute with θ =
every parameter of the unfolded network (``genmeasures.measures.parameters``), and agree with the
brute-force references of ``tests/reference.py``; the papers' networks keep θ = the folded weight
layers.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import measure_context
from torch import nn

import genmeasures as gm
from genmeasures.errors import ModelError
from genmeasures.measures.curvature import hessian_top_eigenpair, hessian_trace
from genmeasures.measures.parameters import (
    FOLDED_ALL,
    FOLDED_LAYERS,
    UNFOLDED,
    differentiated_parameters,
    perturbed_parameters,
)
from genmeasures.measures.perturbation import SEARCHES, perturbation_search
from reference import all_parameters, loss_hessian, perturbation_search_by_loops

# ----------------------------------------------------------------------------- networks


class MixerBlock(nn.Module):
    """An MLP-Mixer block: LayerNorm, token and channel mixing MLPs with GELU, residuals."""

    def __init__(self, tokens: int = 4, channels: int = 6, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token = nn.Sequential(nn.Linear(tokens, hidden), nn.GELU(), nn.Linear(hidden, tokens))
        self.norm2 = nn.LayerNorm(channels)
        self.channel = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels)
        )
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, tokens, channels)
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel(self.norm2(x))
        return self.head(self.norm(x).mean(dim=1))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block on a short sequence of vectors, mean-pooled."""

    def __init__(self, dim: int = 6, heads: int = 2, classes: int = 3):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, length, dim)
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class TokenClassifier(nn.Module):
    """Embedding, LayerNorm, mean over the sequence, linear head (tied to the embedding, or not)."""

    def __init__(self, vocabulary: int = 10, dim: int = 6, classes: int = 3, tied: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocabulary if tied else classes)
        if tied:
            self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (batch, length) integers
        return self.head(self.norm(self.embedding(tokens)).mean(dim=1))


def inputs_of(name: str, m: int, generator: torch.Generator) -> torch.Tensor:
    if name == "tokens":
        return torch.randint(0, 10, (m, 5), generator=generator)
    shape = (4, 6) if name == "mixer" else (5, 6)
    return torch.randn(m, *shape, generator=generator)


NETWORKS = {"mixer": MixerBlock, "transformer": TransformerBlock, "tokens": TokenClassifier}


def fitted(name: str, m: int = 64, seed: int = 0):
    """(trained, init, epoch-1 state, inputs, labels): labels the initial network's argmax,
    then 100 Adam steps on them, so that the trained network differs from init and fits."""
    torch.manual_seed(seed)  # the modules' default initialization
    init = NETWORKS[name]().eval()
    inputs = inputs_of(name, m, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        labels = init(inputs).argmax(dim=1)
    model = copy.deepcopy(init)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    epoch1 = None
    for step in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        if step == 9:
            epoch1 = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        assert (model(inputs).argmax(dim=1) == labels).float().mean() >= 0.9
    return model, init, epoch1, inputs, labels


GAUSSIAN = {"steps": 6, "draws": 3}
BOX = {"steps": 6, "restarts": 1, "ascent_steps": 3}
FLATNESS = [
    "pacbayes-init",
    "pacbayes-orig",
    "pacbayes-flatness",
    "pacbayes-mag-init",
    "pacbayes-mag-orig",
    "pacbayes-mag-flatness",
    "sharpness-init",
    "sharpness-orig",
    "sharpness-flatness",
    "pac-sharpness-mag-init",
    "pac-sharpness-mag-orig",
    "sharpness-mag-flatness",
]
SMALL_OPTIONS = {name: GAUSSIAN if name.startswith("pacbayes") else BOX for name in FLATNESS}


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged short searches; PyTorch's vmap fallbacks
        return function(*args, **kwargs)


# ----------------------------------------------------------------------------- compute


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_flatness_and_gradient_noise_compute_on_networks_that_cannot_be_folded(name):
    model, init, epoch1, inputs, labels = fitted(name)
    results = quietly(
        gm.compute,
        model,
        (inputs, labels),
        measures=["pacbayes-*", "sharpness-*", "pac-sharpness-*", "grad-noise-*"],
        init_model=init,
        records={"epoch1_state": epoch1},
        options=SMALL_OPTIONS,
    )
    expected = {*FLATNESS, "grad-noise-final", "grad-noise-epoch-1"}
    assert expected <= set(results)
    omega = sum(p.numel() for p in model.parameters())
    for measure in expected:
        result = results[measure]
        assert result.status == "ok", (measure, result.message)
        assert math.isfinite(result.value), measure
        if measure in FLATNESS:
            assert result.extra["parameters"] == UNFOLDED
            assert result.extra["omega"] == omega


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_hessian_trace_and_top_eigenvalue_on_networks_that_cannot_be_folded(name):
    model, _, _, inputs, labels = fitted(name)
    ctx = measure_context(model, inputs, labels)
    assert differentiated_parameters(ctx).description == UNFOLDED
    trace, error = hessian_trace(ctx, probes=8)
    pair = quietly(hessian_top_eigenpair, ctx, iterations=20)
    assert math.isfinite(trace) and math.isfinite(error)
    assert math.isfinite(pair.value) and pair.value > 0
    assert list(pair.vector) == [n for n, _ in model.named_parameters()]


def test_hessian_measures_compute_on_a_network_that_cannot_be_folded():
    model, _, _, inputs, labels = fitted("mixer")
    results = quietly(
        gm.compute, model, (inputs, labels), measures=["hessian-trace", "hessian-max-eig"]
    )
    for name in ("hessian-trace", "hessian-max-eig"):
        assert results[name].status == "ok" and math.isfinite(results[name].value)
        assert results[name].extra["parameters"] == UNFOLDED


# ----------------------------------------------------------------------------- θ


def test_theta_is_every_parameter_of_the_unfolded_network_normalization_included():
    model, init, _, inputs, labels = fitted("transformer")
    ctx = measure_context(model, inputs, labels, init_model=init)
    names = [n for n, _ in model.named_parameters()]
    for theta in (perturbed_parameters(ctx), differentiated_parameters(ctx)):
        assert theta.description == UNFOLDED
        assert list(theta.names) == names
        assert {"norm1.weight", "norm1.bias", "attention.in_proj_weight"} <= set(theta.names)
        assert torch.equal(
            theta.flat(), torch.cat([p.detach().double().flatten() for p in model.parameters()])
        )


def test_a_tied_weight_is_one_coordinate_block_of_theta():
    torch.manual_seed(0)
    model = TokenClassifier(tied=True)
    inputs = torch.randint(0, 10, (16, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model.eval()(inputs).argmax(dim=1)
    ctx = measure_context(model, inputs, labels)
    theta = perturbed_parameters(ctx)
    assert list(theta.names) == ["embedding.weight", "norm.weight", "norm.bias", "head.bias"]
    assert theta.omega == 10 * 6 + 6 + 6 + 10
    result = quietly(perturbation_search, ctx, "sharpness-alpha", **BOX)
    assert math.isfinite(result.value)


def test_an_init_model_with_other_parameters_is_an_error_naming_the_parameter():
    model, _, _, inputs, labels = fitted("mixer")
    other = MixerBlock(hidden=5)
    with pytest.raises(ModelError, match=r"parameter 'token\.0\.weight': shape \(8, 4\)"):
        quietly(
            gm.compute,
            model,
            (inputs, labels),
            measures="pacbayes-init",
            init_model=other,
            options={"pacbayes-init": GAUSSIAN},
        )
    renamed = nn.Sequential()
    renamed.add_module("block", copy.deepcopy(model))
    with pytest.raises(ModelError, match=r"parameter 'norm1\.weight' of the trained model"):
        quietly(
            gm.compute,
            model,
            (inputs, labels),
            measures="sharpness-init",
            init_model=renamed,
            options={"sharpness-init": BOX},
        )


def test_a_missing_init_model_is_reported_missing():
    model, _, _, inputs, labels = fitted("tokens")
    results = quietly(
        gm.compute,
        model,
        (inputs, labels),
        measures="pacbayes-*",
        options={name: GAUSSIAN for name in FLATNESS if name.startswith("pacbayes")},
    )
    assert results["pacbayes-init"].status == "missing"
    assert results["pacbayes-orig"].status == "ok"


def test_the_papers_networks_keep_the_folded_weight_layers():
    model = gm.build_model("mlp", (5,), 3, depth=2, width=4, batchnorm=True, seed=0).eval()
    init = gm.build_model("mlp", (5,), 3, depth=2, width=4, batchnorm=True, seed=1).eval()
    inputs = torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = model(inputs).argmax(dim=1)
    ctx = measure_context(model, inputs, labels, init_model=init)
    assert perturbed_parameters(ctx).description == FOLDED_LAYERS
    assert differentiated_parameters(ctx).description == FOLDED_ALL
    # 5·4+4 + 4·4+4 + 4·3+3: the folded Linear layers, BatchNorm folded away
    assert perturbed_parameters(ctx).omega == 59
    results = quietly(
        gm.compute,
        model,
        (inputs, labels),
        measures=["pacbayes-init", "sharpness-flatness"],
        init_model=init,
        options={"pacbayes-init": GAUSSIAN, "sharpness-flatness": BOX},
    )
    for name in ("pacbayes-init", "sharpness-flatness"):
        result = results[name]
        assert result.status == "ok"
        assert result.extra["parameters"] == FOLDED_LAYERS
        assert result.extra["omega"] == 59


# ----------------------------------------------------------------------------- references


class LayerNormNet(nn.Module):
    """A tiny float64 network that cannot be folded: Linear, LayerNorm, GELU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def layernorm_problem(m: int = 30):
    generator = torch.Generator().manual_seed(5)
    model = LayerNormNet().double().eval()
    with torch.no_grad():
        for parameter in model.parameters():  # LayerNorm's affine parameters away from 1 and 0
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    inputs = torch.randn(m, 3, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labels = model(inputs).argmax(dim=1)
    labels[::7] = (labels[::7] + 1) % 3  # not a minimum: a Hessian that is not PSD
    return model, inputs, labels


def test_exact_hessian_trace_and_top_eigenvalue_equal_the_full_hessian_of_all_parameters():
    model, inputs, labels = layernorm_problem()
    ctx = measure_context(model, inputs, labels, batch_size=7)
    hessian = loss_hessian(model, inputs, labels)  # every parameter, LayerNorm's included
    assert hessian.shape == (39, 39)
    trace, error = hessian_trace(ctx, probes=1, exact=True)
    assert error == 0.0
    assert trace == pytest.approx(float(hessian.trace()), rel=1e-10, abs=1e-12)
    pair = hessian_top_eigenpair(ctx, iterations=39, tol=1e-12)
    assert pair.value == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-8)


@pytest.mark.parametrize("search", SEARCHES)
def test_exact_search_equals_the_reference_that_perturbs_every_parameter(search):
    model, inputs, labels = layernorm_problem(m=60)
    ctx = measure_context(model, inputs, labels)
    copies = {"draws": 3} if search.startswith("pacbayes") else {"restarts": 2, "ascent_steps": 4}
    result = quietly(perturbation_search, ctx, search, sequential_error=0, steps=8, **copies)
    reference = perturbation_search_by_loops(
        model,
        inputs,
        labels,
        search=search,
        steps=8,
        samples=next(iter(copies.values())),
        ascent_steps=copies.get("ascent_steps", 20),
        parameters_of=all_parameters,
    )
    assert result.value == reference["value"]
    assert result.base_accuracy == reference["a0"]
    assert len(result.history) == len(reference["history"])
    for step, (scale, accuracy, deviation) in zip(
        result.history, reference["history"], strict=True
    ):
        assert step.scale == pytest.approx(scale, abs=1e-12)
        assert step.accuracy == pytest.approx(accuracy, abs=1e-12)
        assert step.deviation == pytest.approx(deviation, abs=1e-12)
