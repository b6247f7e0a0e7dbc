"""Every measure on networks written outside this project: Hugging Face models (issue 14).

Built from small configs (nothing is downloaded) and run on scikit-learn's digits, as 1×8×8 images
for the vision models and as sequences of 64 pixel intensities (token ids 0-16) for the sequence
classifier. Each model's labels are its own predictions, so that every margin is positive and the
searches start from a training accuracy of 1. For each network the test lists the expected status
of every registered measure, and checks that every ``ok`` value is finite.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import genmeasures as gm
from domains import CHAIN, HOMOGENEOUS, RECORDS, assert_values_and_reasons

transformers = pytest.importorskip("transformers")

ALL = [spec.name for spec in gm.list_measures()]

#: Short searches and few probes: the statuses and the finiteness are under test, not the values.
GAUSSIAN = {"steps": 3, "draws": 2}
BOX = {"steps": 3, "restarts": 1, "ascent_steps": 2}
OPTIONS = {
    "pacbayes-flatness": GAUSSIAN,
    "pacbayes-mag-flatness": GAUSSIAN,
    "sharpness-flatness": BOX,
    "sharpness-mag-flatness": BOX,
    "hessian-trace": {"probes": 2},
    "hessian-max-eig": {"iterations": 5},
    "normalized-sharpness": {"probes": 4},
    "adaptive-sharpness-linf": {"steps": 3, "examples": 32},
    "adaptive-sharpness-l2": {"steps": 3, "examples": 32},
    "adaptive-sharpness-avg": {"draws": 2, "examples": 32},
}


def resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10
    )
    return transformers.ResNetForImageClassification(config)


def vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
    )
    return transformers.ViTForImageClassification(config)


def convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        num_channels=1,
        patch_size=2,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_stages=2,
        image_size=8,
        num_labels=10,
    )
    return transformers.ConvNextForImageClassification(config)


def bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=17,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=10,
    )
    return transformers.BertForSequenceClassification(config)


NETWORKS = {"resnet": resnet, "vit": vit, "convnext": convnext, "bert": bert}

#: Outside the domain on every one of them: none is a chain (residual additions, attention), and
#: homogeneity cannot be shown (normalization, GELU, or a forward torch.fx cannot trace).
NOT_CHAINS = CHAIN | HOMOGENEOUS
UNSUPPORTED = {
    "resnet": NOT_CHAINS,
    "vit": NOT_CHAINS,
    "convnext": NOT_CHAINS,
    # Token ids have no input gradient and cannot be mixed.
    "bert": NOT_CHAINS | {"input-grad-norm", "mixup-error", "db-times-mixup", "label-variation"},
}


def inputs_for(name: str) -> torch.Tensor:
    x, _ = gm.load_dataset("digits").train
    x = x[:96]
    if name == "bert":
        return (x.reshape(len(x), -1) * 16 / x.max()).round().long()
    return x.reshape(-1, 1, 8, 8).float()


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return NETWORKS[name]().eval()


@pytest.fixture(scope="module", params=list(NETWORKS))
def network_results(request):
    name = request.param
    model, init = build(name, 0), build(name, 1)
    inputs = inputs_for(name)
    with torch.no_grad():
        labels = model(inputs).logits.argmax(dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = gm.compute(model, (inputs, labels), init_model=init, options=OPTIONS)
    return name, results, int(labels.unique().numel())


#: Undefined with a single class (an untrained model's predictions, the labels here, often are):
#: the Davies-Bouldin index compares classes.
BETWEEN_CLASSES = {"db-index", "db-times-mixup"}


def expected_status(network: str, measure: str, classes: int) -> str:
    if measure in RECORDS:
        return "missing"
    if measure in UNSUPPORTED[network]:
        return "unsupported"
    return "undefined" if measure in BETWEEN_CLASSES and classes < 2 else "ok"


def test_every_measure_has_its_expected_status(network_results):
    network, results, classes = network_results
    received = {name: results[name].status for name in ALL}
    assert received == {name: expected_status(network, name, classes) for name in ALL}


def test_ok_values_are_finite_and_unsupported_ones_say_why(network_results):
    _, results, _ = network_results
    assert_values_and_reasons(results)
