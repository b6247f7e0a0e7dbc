from __future__ import annotations

import pytest
import torch
from torch import nn

from genmeasures.errors import ModelError, UnsupportedLayerError
from genmeasures.models import (
    ConvGeometry,
    WeightLayer,
    build_model,
    uses_piecewise_linear_activations,
    weight_layers,
)


class Reversed(nn.Module):
    """Registers the Linear before the Conv; the forward runs the Conv first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 3 * 3, 2)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class WithParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_forward_order_differs_from_registration_order() -> None:
    model = Reversed()
    layers = weight_layers(model, (3, 5, 5))
    assert [layer.name for layer in layers] == ["conv", "fc"]
    assert [layer.input_shape for layer in layers] == [(3, 5, 5), (36,)]
    assert [layer.kind for layer in layers] == ["conv2d", "linear"]
    assert layers[0].module is model.conv
    # Without any input shape: registration order, no shapes.
    fallback = weight_layers(model)
    assert [(layer.name, layer.input_shape) for layer in fallback] == [("fc", None), ("conv", None)]
    model.input_shape = (3, 5, 5)
    assert [layer.name for layer in weight_layers(model)] == ["conv", "fc"]


def test_nin_layers_kinds_and_recorded_shapes() -> None:
    model = build_model("nin", (3, 32, 32), 10, width=8)
    layers = weight_layers(model)
    assert [layer.name for layer in layers] == [
        "block1.conv1",
        "block1.conv2",
        "block1.conv3",
        "block2.conv1",
        "block2.conv2",
        "block2.conv3",
        "classifier",
    ]
    shapes = {layer.name: layer.input_shape for layer in layers}
    assert shapes["block1.conv1"] == (3, 32, 32)
    assert shapes["block2.conv1"] == (8, 16, 16)
    assert shapes["block2.conv2"] == (8, 8, 8)
    assert shapes["classifier"] == (8, 8, 8)
    assert {layer.kind for layer in layers} == {"conv2d"}
    first = layers[0]
    assert first.matrix.shape == (8, 3 * 9)
    assert first.kernel_area == 9
    assert first.bias is None
    assert layers[-1].bias is not None
    assert layers[-1].kernel_area == 1
    one_d = weight_layers(build_model("nin", (40,), 10, width=8))
    assert {layer.kind for layer in one_d} == {"conv1d"}
    assert one_d[0].input_shape == (1, 40)
    assert one_d[3].input_shape == (8, 20)


def test_linear_layer_record() -> None:
    layers = weight_layers(build_model("mlp", (2, 3), 4, width=5, depth=1))
    assert [(layer.kind, layer.input_shape) for layer in layers] == [
        ("linear", (6,)),
        ("linear", (5,)),
    ]
    assert layers[0].geometry is None
    assert layers[0].kernel_area == 1
    assert torch.equal(layers[0].matrix, layers[0].weight)
    assert layers[1].matrix.shape == (4, 5)


def test_grouped_conv3d_matrix_and_geometry() -> None:
    conv = nn.Conv3d(4, 6, (1, 2, 3), stride=(1, 2, 1), padding=(0, 1, 1), dilation=2, groups=2)
    layer = weight_layers(nn.Sequential(conv), (4, 5, 6, 7))[0]
    assert isinstance(layer, WeightLayer)
    assert layer.kind == "conv3d"
    assert layer.matrix.shape == (6, 2 * 1 * 2 * 3)
    assert layer.kernel_area == 6
    assert layer.geometry == ConvGeometry(
        kernel_size=(1, 2, 3),
        stride=(1, 2, 1),
        padding=((0, 0), (1, 1), (1, 1)),
        dilation=(2, 2, 2),
        groups=2,
        padding_mode="zeros",
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Conv2d(2, 4, (4, 3), padding="same", dilation=(1, 2), groups=2),
        nn.Conv2d(2, 3, 3, padding="valid"),
        nn.Conv2d(2, 3, 3, stride=(2, 1), padding=(1, 2), padding_mode="reflect"),
        nn.Conv2d(2, 3, 4, padding="same", padding_mode="circular"),
        nn.Conv1d(2, 3, 5, stride=3, padding=2, padding_mode="replicate"),
        nn.Conv3d(2, 3, 2, padding="same"),
    ],
)
def test_geometry_reproduces_the_module(conv: nn.Module) -> None:
    geometry = ConvGeometry.from_module(conv)
    spatial = (7, 8, 6)[: geometry.ndim]
    x = torch.randn(2, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    conv = conv.double()
    expected = conv(x)
    assert torch.allclose(geometry.conv(x, conv.weight, conv.bias), expected, atol=1e-12)
    assert geometry.output_size(spatial) == tuple(expected.shape[2:])
    without_bias = geometry.conv(x, conv.weight)
    assert torch.allclose(without_bias, expected - conv.bias.reshape(1, -1, *[1] * len(spatial)))


def test_same_padding_even_kernel_is_asymmetric() -> None:
    geometry = ConvGeometry.from_module(nn.Conv2d(1, 1, (4, 3), padding="same", dilation=(1, 2)))
    assert geometry.padding == ((1, 2), (2, 2))


def test_modes_are_restored() -> None:
    model = build_model("nin", (3, 8, 8), 10, width=4, dropout=0.5)
    model.train()
    model.block1.eval()
    weight_layers(model)
    assert model.training
    assert not model.block1.training
    assert not model.block1.bn1.training
    assert model.block2.training


def test_float64_model() -> None:
    layers = weight_layers(build_model("lenet", (1, 8, 8), 3).double())
    assert layers[0].weight.dtype == torch.float64
    assert layers[2].input_shape == (64,)


@pytest.mark.parametrize(
    ("module", "type_name"),
    [
        (nn.LayerNorm(3), "LayerNorm"),
        (nn.GroupNorm(1, 3), "GroupNorm"),
        (nn.Embedding(5, 3), "Embedding"),
        (nn.ConvTranspose2d(3, 3, 1), "ConvTranspose2d"),
        (nn.MultiheadAttention(3, 1), "MultiheadAttention"),
        (WithParameter(), "WithParameter"),
    ],
)
def test_unsupported_layers_are_named(module: nn.Module, type_name: str) -> None:
    model = nn.Sequential()
    model.add_module("head", nn.Linear(3, 3))
    model.add_module("odd", nn.Sequential(nn.ReLU(), module))
    with pytest.raises(UnsupportedLayerError) as info:
        weight_layers(model, (3,))
    assert "'odd.1'" in str(info.value)
    assert type_name in str(info.value)


def test_weight_norm_reparametrization_is_refused() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match="parametrization"):
        weight_layers(nn.Sequential(layer), (3,))


def test_shared_layer_raises() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(Linear\) is called 2 times"):
        weight_layers(model, (4,))
    with pytest.raises(UnsupportedLayerError, match="weight sharing"):
        weight_layers(model)


def test_unused_layer_raises() -> None:
    model = Reversed()
    model.spare = nn.Linear(2, 2)
    with pytest.raises(ModelError, match="'spare'"):
        weight_layers(model, (3, 5, 5))


@pytest.mark.parametrize("shape", [(3, 0, 5), (), "abc", (2.0, 3)])
def test_bad_input_shape(shape: object) -> None:
    with pytest.raises(ModelError, match="input_shape"):
        weight_layers(Reversed(), shape)


def test_failing_forward_is_reported() -> None:
    model = Reversed()
    with pytest.raises(ModelError, match=r"shape \(1, 3, 9, 9\)"):
        weight_layers(model, (3, 9, 9))
    assert model.training


def test_not_a_module() -> None:
    with pytest.raises(ModelError, match=r"torch\.nn\.Module"):
        weight_layers("model")  # type: ignore[arg-type]


class Functional(nn.Module):
    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.fn == "torch.tanh":
            return torch.tanh(y)
        if self.fn == "sigmoid_method":
            return y.sigmoid()
        if self.fn == "gelu":
            return nn.functional.gelu(y)
        return nn.functional.relu(y) + torch.clamp(y, min=0.0)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (build_model("mlp", (4,), 2, batchnorm=True, dropout=0.1), True),
        (build_model("nin", (40,), 2, width=4), True),
        (build_model("wrn", (3, 8, 8), 2, depth=10, width=1), True),
        (build_model("lenet", (1, 8, 8), 2), True),
        (nn.Sequential(nn.Linear(3, 3), nn.Tanh()), False),
        (nn.Sequential(nn.Linear(3, 3), nn.GELU()), False),
        (nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Softplus())), False),
        (nn.Sequential(nn.Linear(3, 3), nn.SiLU()), False),
        (nn.Sequential(nn.Linear(3, 3), nn.ELU()), False),
        (nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), False),
        (nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(), nn.MaxPool1d(1)), True),
        (Functional("torch.tanh"), False),
        (Functional("sigmoid_method"), False),
        (Functional("gelu"), False),
        (Functional("relu"), True),
    ],
)
def test_uses_piecewise_linear_activations(model: nn.Module, expected: bool) -> None:
    assert uses_piecewise_linear_activations(model) is expected
