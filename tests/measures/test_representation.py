"""The representation-based measures of the PGDL 2020 winners (issue 19).

Each is compared in float64 with an independent implementation: the Davies-Bouldin index with
``sklearn.metrics.davies_bouldin_score`` on features read by hand, the mixup accuracy with a loop
that classifies one mixed example at a time, the label variation with a node-by-node loop over an
explicit k-nearest-neighbour graph (``tests/reference.py``). The penultimate-layer rule is checked
on an MLP, the NiN, a residual MLP, a transformer block and a Hugging Face classifier, and a
network where the rule does not apply is ``unsupported`` with the reason.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import measure_context, tiny_cnn, tiny_mlp
from sklearn.metrics import davies_bouldin_score
from torch import nn

import genmeasures as gm
from genmeasures.measures import representation
from genmeasures.measures.representation import (
    GRAPH_PURPOSE,
    PAIRS_PURPOSE,
    feature_layer,
    features_of,
    label_variation,
    label_variation_draws,
    same_class_pairs,
)
from networks import residual_mlp, tanh_mlp, transformer_block
from reference import label_variation_by_loop, mixup_accuracy_by_loop

NAMES = ["db-index", "mixup-error", "db-times-mixup", "label-variation"]


def problem(model: nn.Module, m: int = 60, classes: int = 3, seed: int = 0):
    """Float64 inputs for ``model`` and labels cycling over ``classes`` (not the predictions:
    the measures must see several classes, and some mixed inputs misclassified)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(m, *model.input_shape, generator=generator, dtype=torch.float64)
    labels = torch.arange(m) % classes
    return inputs, labels


def compute(model, inputs, labels, names, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.compute(model, (inputs, labels), measures=names, **kwargs)


# ------------------------------------------------------------------------ penultimate rule


def test_penultimate_features_of_an_mlp_are_the_input_of_its_output_layer():
    model = tiny_mlp(0)
    inputs, labels = problem(model)
    ctx = measure_context(model, inputs, labels, batch_size=7)
    layer = feature_layer(ctx)
    assert (layer.name, layer.describe()) == ("out", "input of `out` (Linear)")
    with torch.no_grad():
        by_hand = model[:-1](inputs)  # flatten, fc1, relu1, dropout1, fc2, relu2, dropout2
    assert torch.equal(features_of(ctx, layer, inputs), by_hand)


def test_penultimate_features_of_the_nin_are_the_flattened_input_of_its_classifier_conv():
    model = gm.build_model("nin", (1, 8, 8), 3, depth=1, width=4, seed=0).double().eval()
    inputs, labels = problem(model, m=30)
    ctx = measure_context(model, inputs, labels)
    layer = feature_layer(ctx)
    assert layer.name == "classifier" and isinstance(layer.module, nn.Conv2d)
    with torch.no_grad():
        by_hand = model.block1(inputs).flatten(1)  # (30, 4 channels × 4 × 4)
    features = features_of(ctx, layer, inputs)
    assert features.shape == (30, 64)
    assert torch.equal(features, by_hand)


@pytest.mark.parametrize(("build", "head"), [(residual_mlp, "out"), (transformer_block, "head")])
def test_penultimate_features_of_residual_and_attention_networks(build, head):
    model = build(0)
    inputs, labels = problem(model, m=20)
    ctx = measure_context(model, inputs, labels)
    layer = feature_layer(ctx)
    assert layer.name == head
    captured = []
    handle = getattr(model, head).register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    features = features_of(ctx, layer, inputs)
    assert torch.allclose(features, captured[0].flatten(1), rtol=0, atol=1e-12)


def test_penultimate_features_of_a_hugging_face_classifier_are_the_input_of_its_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=4,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).double().eval()
    inputs = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    labels = torch.arange(24) % 4
    ctx = measure_context(model, inputs, labels)
    layer = feature_layer(ctx)
    assert layer.describe() == "input of `network.classifier` (Linear)"
    with torch.no_grad():
        by_hand = model.vit(pixel_values=inputs).last_hidden_state[:, 0, :]  # the [CLS] token
    features = features_of(ctx, layer, inputs)
    assert torch.allclose(features, by_hand, rtol=0, atol=1e-12)
    result = compute(model, inputs, labels, ["db-index"])["db-index"]
    assert result.status == "ok"
    expected = davies_bouldin_score(by_hand.numpy(), labels.numpy())
    assert result.value == pytest.approx(expected, rel=1e-10)


class NoWeightLayer(nn.Module):
    """Logits x @ W from a bare parameter: no Linear or Conv module runs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        self.input_shape = (5,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class FunctionalHead(nn.Module):
    """A Linear hidden layer, then a head computed with F.linear (no module)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 6).double()
        self.head = nn.Parameter(torch.randn(3, 6, dtype=torch.float64))
        self.input_shape = (5,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(self.hidden(x)), self.head)


class SharedHead(nn.Module):
    """One Linear head applied to the two halves of the input, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3).double()
        self.input_shape = (6,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, :3]) + self.head(x[:, 3:])


class SequenceFirst(nn.Module):
    """A per-token Linear head on (tokens, batch, dim), averaged over the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3).double()
        self.input_shape = (5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.transpose(0, 1)).mean(dim=0)


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        (NoWeightLayer, r"no Linear or Conv module runs in the forward pass of `NoWeightLayer`"),
        (FunctionalHead, r"`hidden` \(Linear\) has 6 outputs, not one per logit \(3\)"),
        (SharedHead, r"`head` \(Linear\) runs 2 times in one forward pass"),
        (SequenceFirst, r"input of .*`head` \(Linear\) has shape \(5, 2, 4\).*not the batch"),
    ],
)
def test_a_network_without_a_usable_penultimate_layer_is_unsupported(network, reason):
    model = network().eval()
    inputs, labels = problem(model, m=12)
    results = compute(model, inputs, labels, ["db-index*", "label-variation*", "db-times-mix*"])
    for name in ("db-index", "label-variation", "db-times-mixup"):
        assert results[name].status == "unsupported", name
        assert math.isnan(results[name].value)
        assert re.search(reason, results[name].message), results[name].message
    assert compute(model, inputs, labels, ["mixup-error"])["mixup-error"].status == "ok"
    with pytest.raises(gm.UnsupportedLayerError, match="measure 'db-index'"):
        compute(model, inputs, labels, ["db-index"])


# --------------------------------------------------------------------------- Davies-Bouldin


@pytest.mark.parametrize("batch_size", [7, 512])
def test_db_index_equals_scikit_learn_on_the_penultimate_features(batch_size):
    model = tiny_mlp(3)
    inputs, labels = problem(model, m=50)
    result = compute(model, inputs, labels, ["db-index"], batch_size=batch_size)["db-index"]
    with torch.no_grad():
        features = model[:-1](inputs).numpy()
    assert result.status == "ok"
    assert result.value == pytest.approx(davies_bouldin_score(features, labels), rel=1e-10)
    assert result.extra == {"layer": "input of `out` (Linear)", "features": 4, "classes": 3}


def test_db_index_recomputes_features_that_do_not_fit_in_memory(monkeypatch):
    model = tiny_cnn(0)
    inputs, labels = problem(model, m=40)
    kept = compute(model, inputs, labels, ["db-index"], batch_size=9)["db-index"].value
    monkeypatch.setattr(representation, "FEATURE_CACHE_BYTES", 0)
    streamed = compute(model, inputs, labels, ["db-index"], batch_size=9)["db-index"].value
    with torch.no_grad():
        features = model[:-1](inputs).numpy()  # the flattened input of the Linear head
    reference = davies_bouldin_score(features, labels)
    assert kept == pytest.approx(reference, rel=1e-10)
    assert streamed == pytest.approx(reference, rel=1e-10)


def test_db_index_of_the_first_layer_reads_its_output_max_pooled():
    model = tiny_cnn(1)
    inputs, labels = problem(model, m=40)
    result = compute(model, inputs, labels, ["db-index"], options={"db-index": {"layer": "first"}})
    with torch.no_grad():
        maps = model[0](inputs)  # (40, 4, 3, 3): the first conv's output, before its ReLU
        features = F.max_pool2d(maps, 3).flatten(1).numpy()  # windows of 4 clipped to 3 × 3
    assert result["db-index"].extra["layer"] == "output of `0` (Conv2d)"
    expected = davies_bouldin_score(features, labels)
    assert result["db-index"].value == pytest.approx(expected, rel=1e-10)


def test_first_layer_features_are_read_before_an_in_place_activation():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)).double()
    model.input_shape = (5,)
    inputs, labels = problem(model, m=30)
    ctx = measure_context(model, inputs, labels)
    features = features_of(ctx, feature_layer(ctx, "first"), inputs)
    with torch.no_grad():
        assert torch.equal(features, model[0](inputs))
    assert (features < 0).any()


def test_db_index_is_invariant_to_scaling_the_features_and_undefined_for_one_class():
    model = tiny_mlp(4)
    inputs, labels = problem(model)
    value = compute(model, inputs, labels, ["db-index"])["db-index"].value
    with torch.no_grad():
        model.out.weight /= 3.0  # its input unchanged, the logits scaled
        model.fc2.weight *= 5.0  # with its bias: the penultimate features scaled by 5
        model.fc2.bias *= 5.0
    scaled = compute(model, inputs, labels, ["db-index"])["db-index"].value
    assert scaled == pytest.approx(value, rel=1e-10)
    one_class = compute(model, inputs, torch.zeros_like(labels), ["db-index"])["db-index"]
    assert one_class.status == "undefined" and math.isnan(one_class.value)
    assert "1 class" in one_class.message


# ---------------------------------------------------------------------------------- mixup


def test_same_class_pairs_pair_distinct_examples_of_one_class_with_the_seed():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0])  # class 2 has one example: no pair
    first, second = same_class_pairs(labels, torch.Generator().manual_seed(5))
    assert sorted(first.tolist()) == [0, 1, 2, 4, 5, 6, 7]
    assert sorted(second.tolist()) == sorted(first.tolist())
    assert all(labels[i] == labels[j] and i != j for i, j in zip(first, second, strict=True))
    again = same_class_pairs(labels, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    others = [same_class_pairs(labels, torch.Generator().manual_seed(s))[0] for s in range(6, 12)]
    assert any(not torch.equal(other, first) for other in others)


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_mixup_error_equals_a_loop_over_pairs_classified_one_at_a_time(lam):
    model = tanh_mlp(0)
    inputs, labels = problem(model, m=45)
    results = compute(
        model,
        inputs,
        labels,
        ["mixup-error", "db-index", "db-times-mixup"],
        seed=11,
        batch_size=8,
        options={"mixup-error": {"lam": lam}, "db-times-mixup": {"lam": lam}},
    )
    pairs = same_class_pairs(
        labels, measure_context(model, inputs, labels, seed=11).generator(PAIRS_PURPOSE)
    )
    accuracy = mixup_accuracy_by_loop(model, inputs, labels, pairs, lam)
    assert 0 < accuracy < 1
    error = results["mixup-error"]
    assert error.value == pytest.approx(1 - accuracy, abs=1e-12)
    assert error.extra["pairs"] == 45
    product = results["db-times-mixup"]
    assert product.value == pytest.approx(results["db-index"].value * error.value, rel=1e-12)
    assert product.extra["mixup_error"] == error.value


def test_mixup_measures_are_seeded_and_refuse_token_ids():
    model = tanh_mlp(0)
    inputs, labels = problem(model, m=60)
    names = ["mixup-error", "label-variation"]
    first = compute(model, inputs, labels, names, seed=1).values
    assert compute(model, inputs, labels, names, seed=1).values == first
    seeds = [compute(model, inputs, labels, names, seed=s).values for s in range(2, 6)]
    for name in names:
        assert any(values[name] != first[name] for values in seeds), name
    tokens = torch.randint(0, 10, (20, 5), generator=torch.Generator().manual_seed(0))
    embed = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 3)).eval()
    token_labels = torch.arange(20) % 3
    results = compute(embed, tokens, token_labels, ["mixup-*", "db-*", "label-*"])
    for name in ("mixup-error", "db-times-mixup", "label-variation"):
        assert results[name].status == "unsupported"
        assert results[name].message.startswith("the inputs are torch.int64 (e.g. token ids)")
    assert results["db-index"].status == "ok"
    plain = compute(
        embed,
        tokens,
        token_labels,
        ["label-variation"],
        options={"label-variation": {"mixup_alpha": 0}},
    )
    assert plain["label-variation"].status == "ok"


def test_options_are_checked_in_the_common_grammar():
    model = tiny_mlp(0)
    inputs, labels = problem(model)
    with pytest.raises(gm.MeasureError, match=r"'mixup-error': lam expected a number in \(0, 1\)"):
        compute(model, inputs, labels, ["mixup-error"], options={"mixup-error": {"lam": 1}})
    with pytest.raises(gm.MeasureError, match=r"'db-index': layer expected one of 'penultimate'"):
        compute(model, inputs, labels, ["db-index"], options={"db-index": {"layer": "last"}})
    with pytest.raises(gm.MeasureError, match=r"'label-variation': k expected an integer >= 1"):
        compute(model, inputs, labels, ["label-variation"], options={"label-variation": {"k": 0}})


# ------------------------------------------------------------------------ label variation


def test_label_variation_is_the_normalized_laplacian_form_and_the_loop_over_nodes():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    features[7] = 0.0  # a zero vector: similarity 0 with every node
    features[12] = 3 * features[11]  # ties: the same direction
    labels = torch.randint(0, 4, (40,), generator=generator)
    one_hot = F.one_hot(labels, 4).double()
    lam = torch.rand(40, 1, generator=generator, dtype=torch.float64)
    mixed = lam * one_hot + (1 - lam) * one_hot[torch.randperm(40, generator=generator)]
    for k in (1, 3, 39):
        for targets in (one_hot, mixed):
            value = label_variation(features, targets, k)
            reference = label_variation_by_loop(features.numpy(), targets.numpy(), k)
            assert value == pytest.approx(reference, rel=1e-12, abs=1e-15)
        # The matrix form: tr(Yᵀ(I − D^{-1/2} A D^{-1/2})Y)/n with the loop's neighbours.
        unit = F.normalize(features, dim=1).numpy()
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        adjacency = np.zeros((40, 40))
        for i in range(40):
            adjacency[i, np.argsort(-similarity[i], kind="stable")[:k]] = 1.0
        degree = np.diag(adjacency.sum(axis=1) ** -0.5)
        laplacian = np.eye(40) - degree @ adjacency @ degree
        y = mixed.numpy()
        assert label_variation(features, mixed, k) == pytest.approx(
            np.trace(y.T @ laplacian @ y) / 40, rel=1e-12
        )
        # One-hot labels: the mean fraction of a node's neighbours of another class.
        other = (labels.numpy()[:, None] != labels.numpy()[None, :]) * adjacency
        assert label_variation(features, one_hot, k) == pytest.approx(
            other.sum() / (40 * k), rel=1e-12
        )


def test_label_variation_draws_a_class_balanced_seeded_subset_and_mixing():
    labels = torch.tensor([0] * 30 + [1] * 12 + [2] * 3)
    draws = label_variation_draws(labels, 30, 2.0, torch.Generator().manual_seed(3))
    counts = torch.bincount(labels[draws.subset], minlength=3).tolist()
    assert counts == [10, 10, 3]  # ⌊30 / 3⌋ of each class, all of the smaller one
    assert len(set(draws.subset.tolist())) == 23
    assert sorted(draws.partner.tolist()) == list(range(23))
    assert draws.lam is not None and ((draws.lam > 0) & (draws.lam < 1)).all()
    again = label_variation_draws(labels, 30, 2.0, torch.Generator().manual_seed(3))
    assert torch.equal(again.subset, draws.subset) and torch.equal(again.lam, draws.lam)
    plain = label_variation_draws(labels, 30, 0.0, torch.Generator().manual_seed(3))
    assert plain.lam is None and torch.equal(plain.partner, torch.arange(23))


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_label_variation_equals_the_loop_over_nodes_of_the_mixed_features(alpha):
    model = tanh_mlp(1)  # tanh: no two examples' features share a direction (no near-ties)
    inputs, labels = problem(model, m=48)
    options = {"k": 2, "examples": 30, "mixup_alpha": alpha, "graphs": 3}
    result = compute(
        model,
        inputs,
        labels,
        ["label-variation"],
        seed=7,
        options={"label-variation": options},
    )["label-variation"]
    ctx = measure_context(model, inputs, labels, seed=7)
    values = []
    for graph in range(3):
        draws = label_variation_draws(labels, 30, alpha, ctx.generator(GRAPH_PURPOSE, graph))
        x, y = inputs[draws.subset], F.one_hot(labels[draws.subset], 3).double()
        if alpha > 0:
            lam = draws.lam[:, None]
            x = lam * x + (1 - lam) * x[draws.partner]
            y = lam * y + (1 - lam) * y[draws.partner]
        with torch.no_grad():
            features = model[:-1](x).numpy()
        values.append(label_variation_by_loop(features, y.numpy(), k=2))
    assert result.extra["examples"] == 30
    assert result.extra["graph_values"] == pytest.approx(values, rel=1e-12)
    assert result.value == pytest.approx(float(np.median(values)), rel=1e-12)


def test_label_variation_needs_more_examples_than_neighbours():
    model = tiny_mlp(0)
    inputs, labels = problem(model, m=6)
    result = compute(
        model, inputs, labels, ["label-variation"], options={"label-variation": {"k": 6}}
    )["label-variation"]
    assert result.status == "undefined"
    assert "no 6 neighbours" in result.message


# ------------------------------------------------------------------------------- contract


def test_the_four_measures_are_registered_in_their_family_with_a_reference():
    for name in NAMES:
        spec = gm.get_measure(name)
        assert spec.family == "representation" and spec.domain == "differentiable"
        assert spec.needs == {"data"} and spec.eq == "-"
        assert "arXiv 20" in spec.description
    assert gm.get_measure("vpm").name == "label-variation"
    assert gm.get_measure("davies-bouldin").name == "db-index"


def test_the_four_measures_on_a_small_trained_model(trained_bn_mlp):
    run, data = trained_bn_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = gm.compute(run.model, data, measures=NAMES, seed=3)
    for name in NAMES:
        assert results[name].status == "ok", results[name].message
        assert math.isfinite(results[name].value) and results[name].value >= 0
    assert results["mixup-error"].value < 0.5  # a fitted network classifies most mixed pairs
