"""Relative flatness (Petzka et al., NeurIPS 2021), issue 19.

In float64 on tiny networks:

- the closed form against ``Σ ⟨w_s, w_s'⟩ Tr H_{s,s'}`` read off the full loss Hessian by loops,
  on raw features and on features normalized by reparameterizing the network (the authors'
  procedure), for a Linear head and a NiN head (1×1 convolution, global average pooling);
- invariance: rescaling a ReLU network's layer by c and the next by 1/c, or single nodes of
  either hidden layer, leaves the (normalized) value unchanged, while the head's plain Hessian
  trace changes, and raw relative flatness changes when the penultimate nodes are rescaled;
- the domain: heads it cannot read are ``unsupported`` with the reason; constant features are
  left out.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures.layer_flatness import varying
from networks import TransformerBlock, relu_mlp, rescaled_layer, rescaled_nodes
from reference import loss_hessian, parameter_slices, relative_flatness_by_hessian

NAME = "relative-flatness"


def result(model, x, y, seed=0, **options):
    return gm.compute(model, (x, y), measures=[NAME], seed=seed, options={NAME: options})[NAME]


def value(model, x, y, **options):
    outcome = result(model, x, y, **options)
    assert outcome.status == "ok", outcome.message
    return outcome.value


class NiNHead(nn.Module):
    """conv 3×3 → ReLU → 1×1 conv to 3 classes → global average pooling, on (2, 5, 5) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.features(x))).mean(dim=(2, 3))


def seeded_images(model: nn.Module, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``model`` in float64 with N(0, 0.7²) weights, 12 images (2, 5, 5) and 3-class labels."""
    generator = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.7 * torch.randn(parameter.shape, generator=generator))
    x = torch.randn(12, 2, 5, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=generator)
    return model, x, y


def nin_head() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return seeded_images(NiNHead(), 4)


#: Each network, the names of its head and of the layer whose ReLU output feeds the head.
HEADS = {"relu mlp": (relu_mlp, "4", "2"), "nin head": (nin_head, "classifier", "features")}


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("network", list(HEADS))
def test_matches_the_full_hessian(network, normalize):
    build, head, producer = HEADS[network]
    model, x, y = build()
    expected = relative_flatness_by_hessian(
        model, x, y, head=head, feature_producer=producer if normalize else None, pooled=True
    )
    assert expected > 0
    assert value(model, x, y, normalize=normalize) == pytest.approx(expected, rel=1e-10)


def head_hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The trace of the loss Hessian w.r.t. the head's weights: flatness without the weights."""
    block = parameter_slices(model)["4.weight"]
    return float(loss_hessian(model, x, y).diagonal()[block].sum())


RESCALINGS = {
    "first layer-wise": lambda m: rescaled_layer(m, 7.3),
    "head layer-wise": lambda m: rescaled_layer(m, 7.3, layer=2),
    "penultimate nodes": rescaled_nodes,
    "first hidden nodes": lambda m: rescaled_nodes(m, layer=0),
}


@pytest.mark.parametrize("rescaling", list(RESCALINGS))
def test_invariant_to_relu_rescalings_where_the_plain_trace_is_not(rescaling):
    model, x, y = relu_mlp()
    scaled = RESCALINGS[rescaling](model)
    with torch.no_grad():
        assert torch.allclose(model(x), scaled(x), rtol=1e-12, atol=1e-12)
    assert value(scaled, x, y) == pytest.approx(value(model, x, y), rel=1e-10)
    if rescaling.startswith(("head", "penultimate")):  # the others leave the head's Hessian be
        plain, plain_scaled = head_hessian_trace(model, x, y), head_hessian_trace(scaled, x, y)
        assert abs(plain_scaled - plain) > 0.05 * plain, (plain, plain_scaled)


def test_raw_features_are_not_invariant_to_rescaling_penultimate_nodes():
    """Why the features are normalized by default: raw κ changes, layer-wise rescaling aside."""
    model, x, y = relu_mlp()
    raw = value(model, x, y, normalize=False)
    for layer_wise in (rescaled_layer(model, 7.3), rescaled_layer(model, 7.3, layer=2)):
        assert value(layer_wise, x, y, normalize=False) == pytest.approx(raw, rel=1e-10)
    changed = value(rescaled_nodes(model), x, y, normalize=False)
    assert abs(changed - raw) > 0.05 * raw, (raw, changed)


@pytest.mark.parametrize("constant", [2.0, 0.1, 0.123456789])
def test_constant_features_are_left_out_and_counted(constant):
    """A feature constant over the training set acts as a bias; its σ is 0 or rounding error.

    0.1 and 0.123456789 are not binary fractions; for the second, torch's std of 40 copies is
    1.4e-17 rather than 0, which a test σ > 0 would take for a tiny variation, inflating the
    value by 1e30.
    """
    model, x, y = relu_mlp()
    with torch.no_grad():  # penultimate node 0 outputs ReLU(0 + constant) on every input
        model[2].weight[0] = 0.0
        model[2].bias[0] = constant
    kept = [i for i in range(8) if i != 0]
    pruned = nn.Sequential(model[0], model[1], nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        pruned[2].weight.copy_(model[2].weight[kept])
        pruned[2].bias.copy_(model[2].bias[kept])
        pruned[4].weight.copy_(model[4].weight[:, kept])
        pruned[4].bias.copy_(model[4].bias + constant * model[4].weight[:, 0])
    head = result(model, x, y)
    assert head.status == "ok" and head.extra["constant_features"] == 1
    assert head.value == pytest.approx(value(pruned, x, y), rel=1e-10)
    named = result(model, x, y, layer="4", probes=64)  # 8² probes: exact
    assert named.extra["constant_channels"] == 1
    assert named.value == pytest.approx(head.value, rel=1e-10)


def test_a_standard_deviation_at_rounding_level_counts_as_constant():
    """torch's std of 40 copies of 0.123456789 is 1.4e-17, not 0: rounding, not variation."""
    copies = torch.full((40,), 0.123456789, dtype=torch.float64)
    scale, root_mean_square = copies.std(correction=0), copies.pow(2).mean().sqrt()
    assert 0 < scale < 1e-15
    assert not varying(scale, root_mean_square)
    assert varying(torch.tensor(1e-9), torch.tensor(1.0))


def test_no_feature_to_normalize_is_undefined():
    model, x, y = relu_mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    with pytest.warns(gm.GenMeasuresWarning, match="no feature to normalize"):
        outcome = result(model, x, y)
    assert outcome.status == "undefined"
    assert "constant over the training set" in outcome.message


class SquashedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5 * torch.tanh(self.out(torch.relu(self.hidden(x))))


class WideKernelHead(NiNHead):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(4, 3, 3, padding=1)


@pytest.mark.parametrize(
    ("model", "inputs", "reason"),
    [
        (SquashedHead(), torch.randn(10, 4), "logits differ from the affine map"),
        (WideKernelHead(), torch.randn(10, 2, 5, 5), "needs a Linear head or a 1×1 convolution"),
    ],
)
def test_heads_it_cannot_read_are_unsupported_with_the_reason(model, inputs, reason):
    model = model.double()
    data = (inputs.double(), torch.randint(0, 3, (10,)))
    outcome = gm.compute(model, data, measures=["relative-flat*"])[NAME]
    assert outcome.status == "unsupported"
    assert reason in outcome.message
    assert "`out`" in outcome.message or "`classifier`" in outcome.message


# ------------------------------------------------------------------------ a chosen hidden layer

#: Each case: the network, the layer, the layer whose ReLU output feeds it, and whether the
#: features are normalized (the reference normalizes by reparameterizing that layer, so a layer
#: reading the network's input is checked on raw features). The NiN head named as a layer is a
#: convolution like any other: its channels are normalized over examples and positions.
HIDDEN = {
    "relu mlp, second layer, raw": (relu_mlp, "2", "0", False),
    "relu mlp, second layer, normalized": (relu_mlp, "2", "0", True),
    "nin, first convolution, raw": (nin_head, "features", None, False),
    "nin, 1x1 convolution named, normalized": (nin_head, "classifier", "features", True),
}


@pytest.mark.parametrize("case", list(HIDDEN))
def test_a_hidden_layer_with_every_unit_probe_is_the_full_hessians(case):
    build, layer, producer, normalize = HIDDEN[case]
    model, x, y = build()
    expected = relative_flatness_by_hessian(
        model, x, y, head=layer, feature_producer=producer if normalize else None
    )
    outcome = result(model, x, y, layer=layer, probes=400, normalize=normalize)
    assert outcome.status == "ok", outcome.message
    assert outcome.extra["exact"] and outcome.extra["standard_error"] == 0
    assert outcome.value == pytest.approx(expected, rel=1e-10)


def test_the_head_named_as_a_layer_is_the_closed_form():
    model, x, y = relu_mlp()
    assert result(model, x, y, layer="4", probes=64).value == pytest.approx(
        value(model, x, y), rel=1e-10
    )


@pytest.mark.parametrize("normalize", [False, True])
def test_the_random_probe_estimate_is_within_its_standard_error(normalize):
    """Rows of 8 weights: 63 probes (< 8²) take the estimate's path."""
    model, x, y = relu_mlp()
    exact = result(model, x, y, layer="2", probes=64, normalize=normalize)
    estimates = [
        result(model, x, y, layer="2", probes=63, normalize=normalize, seed=seed)
        for seed in range(4)
    ]
    for estimate in estimates:
        assert not estimate.extra["exact"] and estimate.extra["products"] == 63
        error = estimate.extra["standard_error"]
        assert 0 < error < 0.5 * exact.value
        assert abs(estimate.value - exact.value) < 4 * error, (estimate.value, exact.value)
    assert len({estimate.value for estimate in estimates}) == 4  # the seed draws the probes


@pytest.mark.parametrize("rescaling", list(RESCALINGS))
def test_a_hidden_layer_estimate_is_invariant_probe_by_probe(rescaling):
    """With the same seed, the same probes: the rescalings leave every product unchanged."""
    model, x, y = relu_mlp()
    scaled = RESCALINGS[rescaling](model)
    before = result(model, x, y, layer="2", probes=8)
    after = result(scaled, x, y, layer="2", probes=8)
    assert after.value == pytest.approx(before.value, rel=1e-9)


def test_a_layer_that_is_not_a_weight_layer_is_a_named_error():
    model, x, y = relu_mlp()
    with pytest.raises(gm.MeasureError, match=r"layer must be 'head' or the name of .*0, 2, 4"):
        result(model, x, y, layer="1")
    with pytest.raises(gm.MeasureError, match="layer"):
        result(model, x, y, layer="")


def test_a_layer_whose_input_cannot_be_read_is_unsupported_with_the_reason():
    """nn.MultiheadAttention multiplies by out_proj.weight without calling out_proj."""
    model = TransformerBlock().double().eval()
    x = torch.randn(12, 4, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    options = {NAME: {"layer": "attn.out_proj"}}
    outcome = gm.compute(model, (x, y), measures=["relative-flat*"], options=options)[NAME]
    assert outcome.status == "unsupported"
    assert "`attn.out_proj` is not called in the forward pass" in outcome.message


class GroupedNet(nn.Module):
    """conv 3×3 (2→4) → ReLU → grouped conv 3×3 (4→4, 2 groups) → ReLU → 1×1 conv → pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(2, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.grouped(torch.relu(self.first(x))))
        return self.classifier(hidden).mean(dim=(2, 3))


def test_a_grouped_convolution_reads_each_channel_through_its_group():
    """Rescaling single input channels of a grouped convolution leaves normalized κ unchanged.

    Each output channel of group g reads only that group's input channels: a wrong map from
    weights to channels would normalize the wrong weights and break the invariance.
    """
    model, x, y = seeded_images(GroupedNet(), 6)
    scaled = copy.deepcopy(model)
    c = torch.tensor([0.3, 4.0, 1.7, 0.6], dtype=torch.float64)
    with torch.no_grad():
        scaled.first.weight.mul_(c[:, None, None, None])
        scaled.first.bias.mul_(c)
        for out in range(4):  # output channel `out` reads channels 2·(out // 2) + (0, 1)
            scaled.grouped.weight[out].div_(c[2 * (out // 2) : 2 * (out // 2) + 2, None, None])
        assert torch.allclose(model(x), scaled(x), rtol=1e-12, atol=1e-12)
    for normalize, changes in ((True, False), (False, True)):
        options = {"layer": "grouped", "probes": 400, "normalize": normalize}
        before, after = result(model, x, y, **options), result(scaled, x, y, **options)
        assert before.extra["exact"]
        if changes:
            assert abs(after.value - before.value) > 0.05 * before.value
        else:
            assert after.value == pytest.approx(before.value, rel=1e-10)
