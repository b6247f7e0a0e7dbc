"""describe(): the architecture analysis the measures' domains are checked against."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures.registry import DOMAINS
from genmeasures.models.architecture import OUTPUT_NOTE, REQUIREMENTS
from networks import concat_net, residual_cnn, residual_mlp, tanh_mlp, transformer_block

PAPER_MODELS = [
    ("mlp", (40,), {"depth": 2, "width": 16}),
    ("mlp", (40,), {"depth": 2, "width": 16, "batchnorm": True}),
    ("lenet", (1, 28, 28), {}),
    ("nin", (1, 8, 8), {"depth": 1, "width": 8}),
    ("nin", (1, 8, 8), {"depth": 1, "width": 8, "batchnorm": True}),
    ("nin", (40,), {"depth": 1, "width": 8}),
]


def test_the_registry_declares_the_requirements_describe_checks():
    assert DOMAINS == REQUIREMENTS


@pytest.mark.parametrize(("name", "shape", "hparams"), PAPER_MODELS)
def test_the_papers_networks_are_homogeneous_chains(name, shape, hparams):
    model = gm.build_model(name, shape, 10, seed=0, **hparams)
    described = gm.describe(model)
    assert described.method == "fx"
    assert described.is_chain, described.chain_breaks
    assert described.is_homogeneous, described.homogeneity_breaks
    assert described.rescaling_invariant
    assert all(n.foldable for n in described.normalizations)
    assert [layer.name for layer in described.weight_layers] == [
        layer.name for layer in gm.weight_layers(gm.fold_batchnorm(model))
    ]
    *hidden, last = described.weight_layers
    assert all(layer.rescaling_symmetry for layer in hidden)
    assert not last.rescaling_symmetry and last.feeds_output
    for requirement in REQUIREMENTS:
        assert described.violation(requirement) is None


def test_a_pre_activation_wide_resnet_is_neither_a_chain_nor_foldable():
    described = gm.describe(gm.build_model("wrn", (3, 8, 8), 10, depth=10, width=1, seed=0))
    kinds = {c.kind for c in described.connections}
    assert kinds == {"residual addition"}
    assert described.violation("chain").startswith("residual addition at `group1.block1`")
    unfoldable = [n.name for n in described.normalizations if not n.foldable]
    assert "group1.block1.bn1" in unfoldable
    assert "not positively" not in " ".join(described.homogeneity_breaks)
    assert described.violation("homogeneous") == (
        "normalization layer `group1.block1.bn1` (BatchNorm2d): not foldable, `conv`'s output is "
        "used elsewhere or called twice"
    )


def test_residual_mlp():
    described = gm.describe(residual_mlp())
    assert [c.kind for c in described.connections] == ["residual addition"]
    assert described.violation("chain").startswith(
        "residual addition at the model's top-level forward"
    )
    assert described.is_homogeneous
    symmetry = {layer.name: layer.rescaling_symmetry for layer in described.weight_layers}
    assert symmetry == {"inp": False, "fc1": True, "fc2": False, "out": False}
    assert not described.rescaling_invariant


def test_tanh_mlp_is_a_chain_of_units_that_are_not_homogeneous():
    described = gm.describe(tanh_mlp())
    assert described.is_chain
    assert [(a.kind, a.homogeneous) for a in described.activations] == [
        ("Tanh", False),
        ("Tanh", False),
    ]
    assert (
        described.violation("homogeneous") == "activation Tanh at `1` is not positively homogeneous"
    )
    assert described.weight_layers[0].note == "its outputs reach Tanh `1`"
    assert not described.rescaling_invariant


def test_concatenation_breaks_the_chain_but_not_homogeneity_nor_rescaling():
    described = gm.describe(concat_net())
    assert [c.kind for c in described.connections] == ["concatenation"]
    assert described.is_homogeneous
    assert described.rescaling_invariant
    assert [layer.rescaling_symmetry for layer in described.weight_layers] == [True, True, False]


def test_transformer_block():
    described = gm.describe(transformer_block())
    assert {c.kind for c in described.connections} == {"attention", "residual addition"}
    assert [(n.name, n.kind, n.foldable) for n in described.normalizations] == [
        ("norm1", "layernorm", False),
        ("norm2", "layernorm", False),
    ]
    kinds = [(layer.name, layer.kind) for layer in described.weight_layers]
    assert kinds == [
        ("attn.in_proj_weight", "attention-projection"),
        ("attn.out_proj", "attention-projection"),
        ("mlp.0", "linear"),
        ("mlp.2", "linear"),
        ("head", "linear"),
    ]
    assert ("GELU", False) in [(a.kind, a.homogeneous) for a in described.activations]
    assert described.violation("chain").startswith("attention at `attn`")
    assert described.violation("weights") is None


def test_residual_cnn_with_foldable_batchnorm():
    described = gm.describe(residual_cnn())
    assert [c.message() for c in described.connections] == [
        "residual addition at `layer1.0` (add of 2 activations)",
        "residual addition at `layer1.1` (add of 2 activations)",
    ]
    assert all(n.foldable for n in described.normalizations)
    assert len(described.normalizations) == 5
    assert described.is_homogeneous
    symmetric = [layer.name for layer in described.weight_layers if layer.rescaling_symmetry]
    assert symmetric == ["layer1.0.conv1", "layer1.1.conv1"]
    assert described.weight_layers[0].note == "its outputs reach add at `layer1.0`"
    assert described.weight_layers[-1].note == OUTPUT_NOTE


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Linear(4, 4)
        self.gate = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.value(x) * torch.sigmoid(self.gate(x)))


class OwnMatrix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(x @ self.w))


class Embedded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).mean(dim=1))


def test_a_multiplicative_gate():
    described = gm.describe(Gated(), (4,))
    assert [c.kind for c in described.connections] == ["multiplicative gate"]
    assert described.violation("homogeneous").startswith("multiplicative gate at")


def test_a_modules_own_weight_matrix_and_an_embedding_are_weight_layers():
    own = gm.describe(OwnMatrix(), (4,))
    assert [(x.name, x.kind) for x in own.weight_layers] == [("w", "matrix"), ("out", "linear")]
    assert own.violation("chain").startswith("non-chain weight layer")
    embedded = gm.describe(Embedded())
    assert embedded.weight_layers[0].kind == "embedding"
    assert not embedded.is_chain


class Untraceable(nn.Module):
    """A ReLU MLP whose forward branches on the data, so torch.fx cannot trace it."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if h.sum() > -1:
            h = h + x if self.residual else h
        return self.fc2(h)


def test_the_forward_hook_fallback_checks_a_chain_by_values():
    chain = gm.describe(Untraceable(), (4,))
    assert chain.method == "hooks" and chain.trace_error
    assert chain.is_chain and chain.is_homogeneous
    assert [x.rescaling_symmetry for x in chain.weight_layers] == [True, False]
    residual = gm.describe(Untraceable(residual=True), (4,))
    assert residual.method == "hooks"
    assert residual.violation("chain").startswith("untraced operation at `fc2`")
    assert not residual.is_homogeneous
    with pytest.raises(gm.ModelError, match="cannot be traced"):
        gm.describe(Untraceable())


def test_describe_leaves_the_model_unchanged():
    model = residual_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    gm.describe(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_summary_says_what_the_network_is():
    text = gm.describe(residual_cnn()).summary()
    assert "chain: no (residual addition at `layer1.0`" in text
    assert "positively homogeneous: yes" in text


class Viewed(nn.Module):
    """A conv chain that flattens with x.view(x.size(0), -1): a shape, not a second activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("shape", [None, (1, 4, 4)])
def test_shapes_are_not_activations_with_or_without_an_input_shape(shape):
    described = gm.describe(Viewed(), shape)
    assert described.is_chain, described.chain_breaks
    assert described.is_homogeneous
    assert [x.rescaling_symmetry for x in described.weight_layers] == [True, False]
