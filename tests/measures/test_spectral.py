"""Conv operator norms against the dense matrix of the conv map (and Sedghi et al.'s FFT)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures import spectral
from genmeasures.measures.spectral import operator_norm, power_iteration
from reference import circular_conv2d_norm_fft, conv_operator_norm


def single_layer(conv: nn.Module, input_shape: tuple[int, ...], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=torch.float64))
    model = nn.Sequential(conv)
    (layer,) = gm.weight_layers(model, input_shape)
    return layer


CONVS = {
    "stride2-pad1": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7)),
    "valid": (lambda: nn.Conv2d(2, 3, 3), (2, 6, 5)),
    "dilated": (lambda: nn.Conv2d(2, 2, 3, dilation=2, padding=2), (2, 7, 7)),
    "grouped": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 5, 5)),
    "circular": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    "reflect": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 5, 5)),
    "replicate": (lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"), (2, 4, 6)),
    "same-even-kernel": (lambda: nn.Conv2d(2, 2, 4, padding="same"), (2, 6, 6)),
    "pointwise-stride2": (lambda: nn.Conv2d(3, 5, 1, stride=2), (3, 6, 6)),
    "pointwise-padded": (lambda: nn.Conv2d(3, 2, 1, padding=1), (3, 4, 4)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 5, stride=2, padding=2), (2, 11)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 3, padding=1), (2, 3, 4, 4)),
}


@pytest.fixture(params=["dense", "arpack", "power"])
def method(request, monkeypatch):
    """Force each of the three routes of operator_norm."""
    if request.param != "dense":
        monkeypatch.setattr(spectral, "DENSE_LIMIT", 0)
    if request.param == "power":

        def no_arpack(*args, **kwargs):
            raise spectral.ArpackNoConvergence("forced", None, None)

        monkeypatch.setattr(spectral, "svds", no_arpack)
    return request.param


@pytest.mark.parametrize("name", sorted(CONVS))
def test_operator_norm_equals_the_dense_matrix_norm(name, method):
    make, input_shape = CONVS[name]
    layer = single_layer(make().double(), input_shape)
    expected = conv_operator_norm(layer.module, input_shape)
    value, converged = operator_norm(layer, layer.weight, torch.Generator().manual_seed(0))
    assert converged
    # The catalog's power iteration stops on a small relative step, not a small error.
    tolerance = 1e-4 if method == "power" else 1e-10
    assert value == pytest.approx(expected, rel=tolerance)
    if method == "power":
        assert value <= expected * (1 + 1e-12)  # it approaches from below


def test_circular_stride_one_conv_matches_the_fft_formula():
    layer = single_layer(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double(), (3, 8, 8))
    value, _ = operator_norm(layer, layer.weight, torch.Generator().manual_seed(0))
    assert value == pytest.approx(circular_conv2d_norm_fft(layer.weight, 8), rel=1e-10)


def test_operator_norm_of_a_padded_strided_conv_is_not_the_reshaped_norm():
    layer = single_layer(nn.Conv2d(2, 3, 3, stride=2, padding=1).double(), (2, 6, 6))
    value, _ = operator_norm(layer, layer.weight, torch.Generator().manual_seed(0))
    assert abs(value - spectral.reshaped_norm(layer.weight)) > 1e-3 * value


def test_zero_kernel_has_norm_zero(monkeypatch):
    monkeypatch.setattr(spectral, "DENSE_LIMIT", 0)
    layer = single_layer(nn.Conv2d(2, 3, 3, padding=1).double(), (2, 5, 5))
    start = torch.randn(1, 2, 5, 5, dtype=torch.float64)

    def apply(x):
        return layer.geometry.conv(x, torch.zeros_like(layer.weight))

    _, adjoint = torch.func.vjp(apply, start)
    assert power_iteration(apply, adjoint, start) == (0.0, True)


def test_power_iteration_reports_no_convergence_when_out_of_steps():
    layer = single_layer(nn.Conv2d(3, 3, 3, padding=1).double(), (3, 6, 6))

    def apply(x):
        return layer.geometry.conv(x, layer.weight)

    start = torch.randn(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, adjoint = torch.func.vjp(apply, start)
    value, converged = power_iteration(apply, adjoint, start, max_iter=2)
    assert not converged
    assert value < conv_operator_norm(layer.module, (3, 6, 6))


def test_spec_dist_uses_the_operator_norm_of_the_difference_kernel():
    trained = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(27, 2))
    init = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(27, 2))
    trained, init = trained.double(), init.double()
    trained.input_shape = (2, 6, 6)
    difference = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        difference.weight.copy_(trained[0].weight - init[0].weight)
    linear_part = torch.linalg.matrix_norm(trained[2].weight - init[2].weight, ord=2).item()
    expected = conv_operator_norm(difference, (2, 6, 6)) ** 2 + linear_part**2
    value = gm.compute(trained, None, measures="spec-dist", init_model=init).values["spec-dist"]
    assert value == pytest.approx(expected, rel=1e-10)


def test_a_large_conv_takes_the_lanczos_route_and_is_exact_where_power_iteration_is_not():
    model = gm.build_model("nin", (3, 26, 26), 10, depth=1, width=16, seed=0).double()
    first = gm.weight_layers(model)[0]
    assert math.prod(first.input_shape) * 16 * 13 * 13 > spectral.DENSE_LIMIT
    expected = conv_operator_norm(first.module, first.input_shape)
    value, converged = operator_norm(first, first.weight, torch.Generator().manual_seed(0))
    assert converged
    assert value == pytest.approx(expected, rel=1e-10)

    def apply(x):
        return first.geometry.conv(x, first.weight.double())

    start = torch.randn(
        1, 3, 26, 26, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    _, adjoint = torch.func.vjp(apply, start)
    estimate, _ = power_iteration(apply, adjoint, start)
    # The catalog's stopping rule (relative step ≤ 1e-7) stops short of the norm on this layer.
    assert estimate < expected * (1 - 1e-7)
