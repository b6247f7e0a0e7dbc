"""The network as a function of its parameters (``genmeasures.measures.functional``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.measures.functional import FunctionalNetwork, layer_parameter_names
from genmeasures.models import weight_layers


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def test_all_parameters_by_default_and_the_call_is_the_model():
    model = small_mlp()
    network = FunctionalNetwork(model)
    assert network.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert network.size == 20 + 5 + 15 + 3
    x = torch.randn(6, 4, dtype=torch.float64)
    assert torch.equal(network({}, x), model(x))
    assert torch.equal(network.call_flat(network.flatten(network.selected), x), model(x))


def test_a_subset_is_substituted_and_the_rest_held():
    model = small_mlp()
    network = FunctionalNetwork(model, ["2.weight"])
    x = torch.randn(6, 4, dtype=torch.float64)
    zero = {"2.weight": torch.zeros(3, 5, dtype=torch.float64)}
    assert torch.equal(network(zero, x), model[2].bias.detach().expand(6, 3))
    assert all(p.requires_grad for p in model.parameters())  # the model is not modified


def test_flatten_and_unflatten_are_inverse_with_leading_dimensions():
    network = FunctionalNetwork(small_mlp())
    flat = torch.randn(2, 7, network.size, dtype=torch.float64)
    values = network.unflatten(flat, leading=2)
    assert [tuple(v.shape) for v in values.values()] == [(2, 7, *s) for s in network.shapes]
    assert torch.equal(network.flatten(values, leading=2), flat)


def test_layer_parameters_in_forward_order_by_identity():
    model = small_mlp()
    layers = weight_layers(model)
    assert layer_parameter_names(model, layers, biases=False) == ["0.weight", "2.weight"]
    network = FunctionalNetwork.of_layers(model, layers, biases=True)
    assert network.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ModelError, match=r"its weight is not a parameter of the folded model"):
        layer_parameter_names(small_mlp(), layers, biases=False)
