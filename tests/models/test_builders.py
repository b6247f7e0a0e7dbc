from __future__ import annotations

import pytest
import torch
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.models import (
    build_model,
    default_hparams,
    hyperparameters,
    list_models,
    weight_layers,
)
from genmeasures.validation import Rejected

BUILD_CASES = [
    ("mlp", (40,), {}),
    ("mlp", (1, 8, 8), {"batchnorm": True, "dropout": 0.25}),
    ("lenet", (1, 8, 8), {}),
    ("lenet", (1, 28, 28), {}),
    ("lenet", (3, 32, 32), {}),
    ("lenet", (40,), {}),
    ("nin", (1, 8, 8), {"width": 16}),
    ("nin", (3, 32, 32), {"width": 16}),
    ("nin", (1, 40), {"width": 16}),
    ("nin", (40,), {"width": 16, "depth": 3}),
    ("wrn", (3, 16, 16), {"depth": 10, "width": 1}),
    ("wrn", (3, 16, 16), {"depth": 10, "width": 1, "preact": False}),
    ("wrn", (2, 24), {"depth": 10, "width": 1}),
]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _count(model: nn.Module, cls: type[nn.Module]) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_list_models() -> None:
    assert list_models() == ["lenet", "mlp", "nin", "wrn"]


@pytest.mark.parametrize(("name", "shape", "hparams"), BUILD_CASES)
def test_builds_and_forwards(name: str, shape: tuple[int, ...], hparams: dict) -> None:
    model = build_model(name, shape, 7, seed=0, **hparams)
    assert model.input_shape == shape
    assert model.training
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    assert model(x).shape == (3, 7)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_input_shape_accepts_any_integer_sequence() -> None:
    model = build_model("mlp", torch.Size([2, 5]), 3, width=4)
    assert model.input_shape == (2, 5)
    assert type(model.input_shape) is tuple


def test_same_seed_same_parameters_different_seed_differs() -> None:
    for name, shape, hparams in BUILD_CASES[::3]:
        a = build_model(name, shape, 5, seed=11, **hparams)
        b = build_model(name, shape, 5, seed=11, **hparams)
        c = build_model(name, shape, 5, seed=12, **hparams)
        assert _same_state(a, b), name
        assert not _same_state(a, c), name


def test_seeded_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model("nin", (3, 8, 8), 10, width=8, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1)
    a = build_model("mlp", (10,), 3, width=8, seed=4)
    torch.manual_seed(2)
    b = build_model("mlp", (10,), 3, width=8, seed=4)
    assert _same_state(a, b)


def test_unseeded_build_uses_global_rng() -> None:
    torch.manual_seed(5)
    a = build_model("mlp", (10,), 3, width=8)
    torch.manual_seed(5)
    b = build_model("mlp", (10,), 3, width=8)
    c = build_model("mlp", (10,), 3, width=8)
    assert _same_state(a, b)
    assert not _same_state(b, c)


def test_default_hparams() -> None:
    assert default_hparams("mlp") == {
        "depth": 2,
        "width": 512,
        "dropout": 0.0,
        "batchnorm": False,
        "bias": True,
        "seed": None,
    }
    assert default_hparams("nin") == {
        "depth": 2,
        "width": 192,
        "dropout": 0.0,
        "batchnorm": True,
        "seed": None,
    }
    assert default_hparams("wrn") == {
        "depth": 16,
        "width": 4,
        "dropout": 0.0,
        "preact": True,
        "seed": None,
    }
    assert default_hparams("lenet") == {"seed": None}


def test_hyperparameters_are_declared_with_constraints() -> None:
    for name in list_models():
        declared = hyperparameters(name)
        assert {key: item.default for key, item in declared.items()} | {
            "seed": None
        } == default_hparams(name)
        for item in declared.values():
            assert item.constraint.parse(item.default) == item.default
    wrn_depth = hyperparameters("wrn")["depth"].constraint
    assert wrn_depth.parse(22) == 22
    with pytest.raises(Rejected):
        wrn_depth.parse(12)
    assert hyperparameters("mlp")["dropout"].constraint.expected == "a number in [0, 1)"


def test_mlp_structure() -> None:
    model = build_model("mlp", (1, 4, 4), 3, depth=3, width=9, batchnorm=True, bias=False)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 9), (9, 9), (9, 9), (9, 3)]
    assert all(m.bias is None for m in linears)
    assert _count(model, nn.BatchNorm1d) == 3
    linear_only = build_model("mlp", (6,), 2, depth=0)
    assert [type(m) for m in linear_only] == [nn.Flatten, nn.Linear]


def test_lenet_structure() -> None:
    layers = weight_layers(build_model("lenet", (1, 28, 28), 10))
    assert [(layer.kind, tuple(layer.weight.shape)) for layer in layers] == [
        ("conv2d", (6, 1, 5, 5)),
        ("conv2d", (16, 6, 5, 5)),
        ("linear", (120, 16 * 7 * 7)),
        ("linear", (84, 120)),
        ("linear", (10, 84)),
    ]
    assert all(layer.geometry.padding == ((2, 2), (2, 2)) for layer in layers[:2])


def test_nin_structure_follows_appendix_c3() -> None:
    model = build_model("nin", (3, 32, 32), 10, depth=3, width=8, dropout=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * 3 + 1
    for b in range(3):
        first, second, third = convs[3 * b : 3 * b + 3]
        assert (first.kernel_size, first.stride, first.padding) == ((3, 3), (2, 2), (1, 1))
        assert second.kernel_size == third.kernel_size == (1, 1)
        assert all(c.out_channels == 8 and c.bias is None for c in (first, second, third))
    assert convs[-1].out_channels == 10
    assert convs[-1].bias is not None
    assert _count(model, nn.BatchNorm2d) == 9
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5] * 3
    plain = build_model("nin", (3, 32, 32), 10, width=8, batchnorm=False)
    assert _count(plain, nn.BatchNorm2d) == 0
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_nin_one_dimensional_input() -> None:
    model = build_model("nin", (40,), 4, width=8)
    assert _count(model, nn.Conv1d) == 7
    assert _count(model, nn.BatchNorm1d) == 6
    assert _count(model, nn.Conv2d) == 0


@pytest.mark.parametrize("preact", [True, False])
def test_wrn_structure(preact: bool) -> None:
    model = build_model("wrn", (3, 16, 16), 10, depth=16, width=2, preact=preact)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 3 groups × 2 blocks × 2 convs + one 1×1 shortcut per group (channels change)
    assert len(convs) == 1 + 12 + 3
    assert all(c.bias is None for c in convs)
    assert sum(c.kernel_size == (1, 1) for c in convs) == 3
    assert max(c.out_channels for c in convs) == 64 * 2
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(fc) == 1
    assert fc[0].in_features == 128
    # preact: 2 BN per block + final BN; postact: 2 per block + 3 shortcut BNs + stem BN
    assert _count(model, nn.BatchNorm2d) == (13 if preact else 16)


@pytest.mark.parametrize(
    ("name", "hparams", "fragments"),
    [
        ("mlp", {"detph": 3}, ["'mlp'", "'detph'", "depth", "Did you mean 'depth'"]),
        ("mlp", {"width": 0}, ["model 'mlp': width expected an integer >= 1, received 0."]),
        ("mlp", {"depth": 2.0}, ["model 'mlp': depth expected an integer >= 0", "received 2.0"]),
        ("mlp", {"dropout": 1.0}, ["'mlp': dropout expected", "[0, 1)", "received 1.0"]),
        ("mlp", {"dropout": "0.1"}, ["dropout expected", "received '0.1'"]),
        ("mlp", {"batchnorm": 1}, ["batchnorm expected true or false, received 1."]),
        ("lenet", {"width": 4}, ["'lenet'", "unknown hyperparameter 'width'", "seed"]),
        ("nin", {"depth": 0}, ["model 'nin': depth expected an integer >= 1, received 0."]),
        ("nin", {"width": True}, ["'nin': width expected", "received True"]),
        ("wrn", {"depth": 12}, ["'wrn': depth expected", "divisible by 6", "received 12"]),
        ("wrn", {"preact": "no"}, ["'wrn': preact expected", "received 'no'"]),
        ("wrn", {"seed": -1}, ["'wrn': seed expected None or an integer in [0, ", "received -1"]),
        ("wrn", {"seed": 1.5}, ["seed expected", "received 1.5"]),
    ],
)
def test_bad_hparams(name: str, hparams: dict, fragments: list[str]) -> None:
    shape = (3, 16, 16)
    with pytest.raises(ModelError) as info:
        build_model(name, shape, 10, **hparams)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("name", "shape", "num_classes", "fragment"),
    [
        ("lenet", (1, 3, 8), 10, ">= 4"),
        ("nin", (1, 2, 3, 4), 10, "(C, H, W), (C, L) or (L,)"),
        ("mlp", (), 10, "input_shape"),
        ("mlp", (3, 0), 10, "input_shape expected a non-empty sequence of positive integers"),
        ("mlp", "32", 10, "input_shape"),
        ("mlp", (4,), 0, "num_classes expected an integer >= 1, received 0."),
        ("mlp", (4,), 2.0, "num_classes"),
        ("wrm", (4,), 3, "Did you mean 'wrn'"),
    ],
)
def test_bad_arguments(name: str, shape: object, num_classes: object, fragment: str) -> None:
    with pytest.raises(ModelError) as info:
        build_model(name, shape, num_classes)
    assert fragment in str(info.value)
    assert name in str(info.value)
