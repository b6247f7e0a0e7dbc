"""Every measure's status on networks outside the papers' chains: never ok outside its domain."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import genmeasures as gm
from domains import (
    ADAPTIVE,
    CHAIN,
    HOMOGENEOUS,
    POWER_LAW_FITS,
    RECORDS,
    RELATIVE,
    REPRESENTATION,
    WEIGHTS,
    assert_values_and_reasons,
)
from genmeasures.zoo.train import TrainingConfig, train_to_target
from networks import NETWORKS, ResidualCNN

ALL = [spec.name for spec in gm.list_measures()]


#: On the transformer block (LayerNorm, attention), the measures that work today: those reading
#: only the outputs (or a gradient of the unfolded network), those reading only weight matrices
#: (measures/matrices.py: attention projections included; normalized sharpness and the other
#: Hessian-diagonal measures on them) and Fisher-Rao (Liang et al.'s norm). The chain and
#: homogeneous measures stay unsupported.
TRANSFORMER_OK = {"cross-entropy", "inverse-margin", "neg-entropy", "input-grad-norm"}
TRANSFORMER_OK |= {"grad-noise-final", "hessian-trace", "hessian-max-eig", "fisher-rao"}
TRANSFORMER_OK |= WEIGHTS | {"normalized-sharpness-param", "hessian-weighted-norm"}
#: ... and the searches, which perturb every parameter of a network that cannot be folded.
SEARCHES = ("flatness-pacbayes", "flatness-sharpness")
TRANSFORMER_OK |= {spec.name for spec in gm.list_measures() if spec.family in SEARCHES}
#: ... and the representation measures, which read the input of the classification head.
TRANSFORMER_OK |= REPRESENTATION
#: ... and adaptive sharpness, which perturbs the unfolded network's weights.
TRANSFORMER_OK |= ADAPTIVE
#: ... and relative flatness, which reads the head's input and weights (the block is mean-pooled
#: before its Linear head).
TRANSFORMER_OK |= RELATIVE


def expected_status(network: str, name: str) -> str:
    """The status of measure ``name`` on ``network`` without records: the table of the issue."""
    if name in POWER_LAW_FITS and network != "residual_cnn":
        return "undefined"  # every matrix of these tiny networks has fewer than 10 eigenvalues
    return _domain_status(network, name)


def _domain_status(network: str, name: str) -> str:
    if name in RECORDS:
        return "missing"
    if network == "transformer_block":
        return "ok" if name in TRANSFORMER_OK else "unsupported"
    outside = {
        "residual_mlp": CHAIN,
        "residual_cnn": CHAIN,
        "concat_net": CHAIN,
        "tanh_mlp": HOMOGENEOUS,
    }[network]
    return "unsupported" if name in outside else "ok"


def test_the_domains_of_the_issue_are_the_declared_ones():
    declared = {spec.name: spec.domain for spec in gm.list_measures()}
    assert {n for n, d in declared.items() if d == "chain"} == CHAIN
    assert {n for n, d in declared.items() if d == "homogeneous"} == HOMOGENEOUS
    assert {n for n, d in declared.items() if d == "weights"} == WEIGHTS


@pytest.fixture(scope="module", params=list(NETWORKS))
def network_results(request):
    model, init = NETWORKS[request.param](0), NETWORKS[request.param](1)
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(48, *model.input_shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labels = model.eval()(inputs).argmax(dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gm.GenMeasuresWarning)
        results = gm.compute(model, (inputs, labels), init_model=init, seed=0)
    return request.param, results


def test_every_measure_has_its_expected_status(network_results):
    network, results = network_results
    received = {name: results[name].status for name in ALL}
    assert received == {name: expected_status(network, name) for name in ALL}


def test_ok_values_are_finite_and_unsupported_ones_say_why(network_results):
    _, results = network_results
    assert_values_and_reasons(results)


def test_chain_measures_name_the_residual_module():
    results = gm.compute(NETWORKS["residual_cnn"](0), None, measures="*spec*")
    assert results["prod-of-spec"].message.startswith(
        "residual addition at `layer1.0` (add of 2 activations): prod-of-spec (eq 32) is defined "
        "for a chain of layers"
    )
    assert results["spec-dist"].status == "missing"  # a weights-only measure: inside its domain


def test_normalized_sharpness_flags_where_rescaling_is_a_symmetry(network_results):
    network, results = network_results
    result = results["normalized-sharpness"]
    flags = dict(
        zip(result.per_layer["layer"], result.per_layer["rescaling_symmetry"], strict=True)
    )
    expected = {
        "residual_mlp": {"inp": False, "fc1": True, "fc2": False, "out": False},
        "tanh_mlp": {"0": False, "2": False, "4": False},
        "transformer_block": {
            "attn.in_proj_weight[q]": False,
            "attn.in_proj_weight[k]": False,
            "attn.in_proj_weight[v]": False,
            "attn.out_proj": False,
            "mlp.0": False,
            "mlp.2": False,
            "head": False,
        },
        "concat_net": {"left": True, "right": True, "out": False},
        "residual_cnn": {
            "stem": False,
            "layer1.0.conv1": True,
            "layer1.0.conv2": False,
            "layer1.1.conv1": True,
            "layer1.1.conv2": False,
            "fc": False,
        },
    }[network]
    assert flags == expected
    assert result.extra["rescaling_invariant"] is (network == "concat_net")


def test_a_measure_named_outside_its_domain_raises():
    model = NETWORKS["residual_cnn"](0)
    with pytest.raises(gm.UnsupportedLayerError, match=r"measure 'prod-of-spec'.*`layer1\.0`"):
        gm.compute(model, None, measures=["prod-of-spec"])
    with pytest.raises(gm.UnsupportedLayerError, match=r"measure 'path-norm'.*Tanh at `1`"):
        gm.compute(NETWORKS["tanh_mlp"](0), None, measures="path-norm")


def test_a_trained_residual_cnn_with_batchnorm_has_every_other_measure_ok():
    """The issue's criterion: chain-only measures unsupported with a reason, all others ok."""
    data = gm.load_dataset("digits", train_size=300, test_size=100)
    torch.manual_seed(0)
    model = ResidualCNN(in_channels=1, channels=8, classes=data.num_classes)
    model.input_shape = data.input_shape
    config = TrainingConfig(
        optimizer="adam",
        lr=0.02,
        batch_size=32,
        target_ce=0.01,
        check_every=20,
        check_batches=10,
        max_epochs=200,
    )
    run = train_to_target(model, data, config)
    assert run.status == "done"
    results = gm.compute(run.model, data, init_model=run.init_model, records=run.records, seed=3)
    for name in ALL:
        result = results[name]
        if name in CHAIN:
            assert result.status == "unsupported", name
            assert "residual addition at `layer1.0`" in result.message
        else:
            assert result.status == "ok", (name, result.message)
            assert math.isfinite(result.value), name
