from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn

from genmeasures.errors import ModelError, UnsupportedLayerError
from genmeasures.models import build_model, fold_batchnorm, weight_layers

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN_TYPES) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))
    return model


class BiasFreeConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 4, 3, stride=2, groups=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 3)
        self.input_shape = (2, 7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class RegisteredBackwards(nn.Module):
    """Modules registered bn first, conv second; the forward runs conv then bn."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        self.conv = nn.Conv1d(3, 6, 3, groups=3)
        self.head_bn = nn.BatchNorm1d(2)
        self.head = nn.Linear(6 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_bn(self.head(torch.relu(self.bn(self.conv(x))).flatten(1)))


class Dynamic(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it (hook fallback)."""

    def __init__(self, order: str = "conv-bn", inplace: bool = False, reuse: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3 if order == "conv-bn" else 2)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.order, self.inplace, self.reuse = order, inplace, reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if self.order == "bn-conv":
            y = self.conv(self.bn(x))
        elif self.inplace:
            y = self.bn(self.relu(self.conv(x)))
        else:
            z = self.conv(x)
            y = self.bn(z) + z if self.reuse else self.bn(z)
        return self.fc(torch.relu(y).flatten(1))


FOLDABLE: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("mlp", lambda: build_model("mlp", (12,), 4, width=16, batchnorm=True, seed=0), (12,)),
    (
        "mlp-nobias",
        lambda: build_model("mlp", (2, 6), 4, width=8, batchnorm=True, bias=False, seed=1),
        (2, 6),
    ),
    ("nin", lambda: build_model("nin", (3, 16, 16), 5, width=8, depth=3, seed=0), (3, 16, 16)),
    ("nin-1d", lambda: build_model("nin", (40,), 5, width=8, seed=0), (40,)),
    (
        "wrn-postact",
        lambda: build_model("wrn", (3, 8, 8), 5, depth=10, width=1, preact=False, seed=0),
        (3, 8, 8),
    ),
    ("bias-free-convs", BiasFreeConvBN, (2, 7, 7)),
    (
        "affine-false",
        lambda: nn.Sequential(
            nn.Linear(6, 5), nn.BatchNorm1d(5, affine=False), nn.ReLU(), nn.Linear(5, 2)
        ),
        (6,),
    ),
    ("registered-backwards", RegisteredBackwards, (3, 10)),
    ("no-fx-fallback", Dynamic, (2, 4, 4)),
]


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[type], bool]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [type(m) for m in model.modules()], model.training


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize(("label", "make", "shape"), FOLDABLE, ids=[f[0] for f in FOLDABLE])
def test_fold_preserves_eval_function(
    label: str, make: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        model = randomize(make().to(dtype))
        model.train()
        before = _snapshot(model)
        folded = fold_batchnorm(model, shape)
        x = torch.randn(4, *shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        model.eval()
        with torch.no_grad():
            expected, received = model(x), folded(x)
        model.train()
        assert _relative_error(expected, received) < tol, (label, dtype)
        # The folded model: new, in eval mode, without BatchNorm, same number of weight layers.
        assert folded is not model
        assert not any(m.training for m in folded.modules())
        assert not any(isinstance(m, BN_TYPES) for m in folded.modules())
        layers, original = weight_layers(folded, shape), weight_layers(model, shape)
        assert [layer.name for layer in layers] == [layer.name for layer in original]
        assert all(layer.weight.dtype == dtype for layer in layers)
        # Folding creates the biases of the layers before a BatchNorm, and removes none.
        no_bias = {layer.name for layer in layers if layer.bias is None}
        original_no_bias = {layer.name for layer in original if layer.bias is None}
        assert no_bias < original_no_bias or no_bias == original_no_bias == set()
        # The caller's model is unchanged.
        state, types, training = _snapshot(model)
        assert types == before[1]
        assert training == before[2]
        assert all(torch.equal(state[k], before[0][k]) for k in state)
        assert state.keys() == before[0].keys()


def test_batchnorms_are_replaced_by_identity() -> None:
    model = randomize(build_model("nin", (3, 8, 8), 4, width=4, seed=0))
    bn_paths = [p for p, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    folded = fold_batchnorm(model)
    assert len(bn_paths) == 6
    for path in bn_paths:
        assert type(folded.get_submodule(path)) is nn.Identity
    assert not any(isinstance(m, BN_TYPES) for m in folded.modules())


def test_fold_formula_and_created_bias() -> None:
    model = randomize(BiasFreeConvBN().double(), seed=5)
    folded = fold_batchnorm(model)
    bn, conv = model.bn1, model.conv1
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(folded.conv1.weight, conv.weight * s.reshape(-1, 1, 1, 1), rtol=1e-14)
    assert isinstance(folded.conv1.bias, nn.Parameter)
    assert torch.allclose(folded.conv1.bias, bn.bias - bn.running_mean * s, rtol=1e-14)
    assert model.conv1.bias is None


def test_fresh_batchnorm_divides_by_sqrt_one_plus_eps() -> None:
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2, eps=0.01))
    folded = fold_batchnorm(model, (3,))
    assert torch.allclose(folded[0].weight, model[0].weight / (1.01**0.5))
    assert torch.equal(folded[0].bias, torch.zeros(2))


def test_model_without_batchnorm_is_an_eval_copy() -> None:
    model = build_model("lenet", (1, 8, 8), 3)
    folded = fold_batchnorm(model)
    assert folded is not model
    assert not folded.training
    assert model.training
    assert folded.features.conv1.weight is not model.features.conv1.weight
    assert torch.equal(folded.features.conv1.weight, model.features.conv1.weight)


class UsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize(
    ("make", "shape", "fragments"),
    [
        (
            lambda: build_model("wrn", (3, 8, 8), 3, depth=10, width=1),
            (3, 8, 8),
            ["BatchNorm 'group", "cannot be folded"],
        ),
        (
            lambda: nn.Sequential(
                OrderedDict(bn=nn.BatchNorm2d(2), conv=nn.Conv2d(2, 3, 3), flat=nn.Flatten())
            ),
            (2, 4, 4),
            ["BatchNorm 'bn' (BatchNorm2d)", "network's input"],
        ),
        (
            lambda: nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(2, 3, 3),
                    relu=nn.ReLU(),
                    bn=nn.BatchNorm2d(3),
                    flat=nn.Flatten(),
                )
            ),
            (2, 4, 4),
            ["BatchNorm 'bn'", "'relu' (ReLU)"],
        ),
        (
            lambda: nn.Sequential(
                OrderedDict(lin=nn.Linear(3, 3), bn=nn.BatchNorm1d(3, track_running_stats=False))
            ),
            (3,),
            ["BatchNorm 'bn'", "track_running_stats=False"],
        ),
        (
            lambda: nn.Sequential(OrderedDict(lin=nn.Linear(3, 4), bn=nn.BatchNorm1d(3))),
            None,
            ["BatchNorm 'bn'", "num_features=3", "4 output channels"],
        ),
        (
            lambda: nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 1), bn=nn.BatchNorm1d(4))),
            None,
            ["BatchNorm 'bn'", "Conv2d output needs BatchNorm2d"],
        ),
        (UsedTwice, (2, 3, 3), ["BatchNorm 'bn'", "also used by add"]),
        (lambda: Dynamic(order="bn-conv"), (2, 4, 4), ["BatchNorm 'bn'", "not directly"]),
        (lambda: Dynamic(inplace=True), (2, 4, 4), ["BatchNorm 'bn'", "modified in place"]),
        (lambda: Dynamic(reuse=True), (2, 4, 4), ["changed the network's output"]),
    ],
)
def test_unfoldable(
    make: Callable[[], nn.Module], shape: tuple[int, ...] | None, fragments: list[str]
) -> None:
    model = randomize(make())
    with pytest.raises(UnsupportedLayerError) as info:
        fold_batchnorm(model, shape)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_linear_on_sequence_feeding_batchnorm1d_is_refused() -> None:
    # Linear acts on the last dimension; BatchNorm1d would normalize dimension 1.
    model = nn.Sequential(OrderedDict(lin=nn.Linear(4, 3), bn=nn.BatchNorm1d(3)))
    with pytest.raises(UnsupportedLayerError, match=r"has shape \(1, 3, 3\)"):
        fold_batchnorm(model, (3, 4))


def test_untraceable_without_input_shape() -> None:
    with pytest.raises(ModelError, match="pass input_shape"):
        fold_batchnorm(Dynamic())


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.bn = nn.BatchNorm1d(3)
        self.alias = self.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_shared_registration_replaced_everywhere() -> None:
    model = randomize(Aliased())
    folded = fold_batchnorm(model, (2,))
    assert isinstance(folded.bn, nn.Identity)
    assert isinstance(folded.alias, nn.Identity)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(folded(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_unused_batchnorm() -> None:
    model = Aliased()
    model.spare = nn.BatchNorm1d(3)
    with pytest.raises(ModelError, match=r"'spare'.*not used"):
        fold_batchnorm(model)
