"""Slow, obviously-correct references for every numerical shortcut of genmeasures.

Each function here computes a quantity the library computes faster, by the most literal route
available (dense matrices, explicit loops and enumeration). The tests compare the two in float64
on tiny networks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def dense_matrix(linear_map: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...]):
    """The matrix of a linear map, one column per basis vector of the input space."""
    size = int(np.prod(input_shape))
    columns = []
    for index in range(size):
        basis = torch.zeros(size, dtype=torch.float64)
        basis[index] = 1.0
        columns.append(linear_map(basis.reshape(1, *input_shape)).reshape(-1))
    return torch.stack(columns, dim=1).numpy()


def conv_operator_norm(conv: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Largest singular value of the dense matrix of ``x ↦ conv(x)`` without bias."""
    conv = conv.double()

    def apply(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return conv(x) - (conv(torch.zeros_like(x)) if conv.bias is not None else 0)

    return float(np.linalg.svd(dense_matrix(apply, input_shape), compute_uv=False)[0])


def circular_conv2d_norm_fft(kernel: torch.Tensor, side: int) -> float:
    """Sedghi et al.'s exact norm of a circular, stride-1 2-D conv on a side×side input.

    The conv is block-diagonalized by the 2-D DFT: its singular values are those of the
    c_out × c_in matrices of the kernel's DFT at each frequency. PyTorch's conv is a
    cross-correlation, which has the same singular values as the convolution.
    """
    transformed = np.fft.fft2(kernel.detach().double().numpy(), s=(side, side), axes=(2, 3))
    return max(
        float(np.linalg.svd(transformed[:, :, u, v], compute_uv=False)[0])
        for u in range(side)
        for v in range(side)
    )


def mlp_path_sum_by_enumeration(linears: list[nn.Linear]) -> float:
    """S of the path norm for a ReLU MLP, by enumerating every path from an input or a bias.

    A path starting at input unit i contributes Π_l W_l[h_l, h_{l-1}]²; a path starting at the
    bias of layer l at unit h_l contributes b_l[h_l]² times the squared weights after it. With
    an all-ones input, S is the sum of all these products over every output unit.
    """
    weights = [layer.weight.detach().double().numpy() for layer in linears]
    biases = [
        np.zeros(layer.out_features) if layer.bias is None else layer.bias.detach().double().numpy()
        for layer in linears
    ]
    total = 0.0
    for start in range(len(weights) + 1):
        # start = 0: paths from the inputs; start = l ≥ 1: paths from the bias of layer l.
        first_units = (
            range(weights[0].shape[1]) if start == 0 else range(weights[start - 1].shape[0])
        )
        later = weights[start:]
        for first in first_units:
            head = 1.0 if start == 0 else biases[start - 1][first] ** 2
            for units in itertools.product(*(range(w.shape[0]) for w in later)):
                product = head
                previous = first
                for w, unit in zip(later, units, strict=True):
                    product *= w[unit, previous] ** 2
                    previous = unit
                total += product
    return total


def margin_percentile(logits: np.ndarray, labels: np.ndarray) -> float:
    """γ: the k-th smallest margin with k = max(1, ⌊m/10⌋), by sorting in numpy."""
    margins = []
    for row, label in zip(logits, labels, strict=True):
        others = np.delete(row, label)
        margins.append(row[label] - others.max())
    k = max(1, len(margins) // 10)
    return float(np.sort(margins)[k - 1])


def fisher_rao_by_loop(model: nn.Module, weights: list[torch.Tensor], inputs, labels) -> float:
    """(d+1)²/m Σ_j ⟨w, ∇_w ℓ_j⟩², one backward pass per example."""
    total = 0.0
    for x, y in zip(inputs, labels, strict=True):
        loss = F.cross_entropy(model(x[None]), y[None])
        grads = torch.autograd.grad(loss, weights)
        inner = sum(float((w.detach() * g).sum()) for w, g in zip(weights, grads, strict=True))
        total += inner**2
    return (len(weights) + 1) ** 2 * total / len(labels)


def input_grad_norm_by_loop(model: nn.Module, inputs, labels) -> float:
    """Mean over examples of ‖∇_x ℓ(f(x), y)‖₂, one backward pass per example."""
    norms = []
    for x, y in zip(inputs, labels, strict=True):
        x = x[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y[None]), x)
        norms.append(float(grad.norm()))
    return float(np.mean(norms))


def entropy_terms_by_loop(logits: np.ndarray) -> float:
    """Mean over examples of Σ_c p_c log p_c, with softmax written out."""
    values = []
    for row in logits:
        shifted = np.exp(row - row.max())
        p = shifted / shifted.sum()
        values.append(sum(pc * np.log(pc) for pc in p if pc > 0))
    return float(np.mean(values))


def gradient_variance_by_loop(model: nn.Module, inputs, labels) -> float:
    """Σ_j ‖g_j − ḡ‖² / n over every parameter, one backward pass per example, in eval mode.

    ``g_j`` is the gradient of example j's cross-entropy with respect to all parameters of
    ``model``; the gradients are stacked into an n × P matrix and the population variance is
    taken column by column, then summed.
    """
    model = model.eval()
    parameters = list(model.parameters())
    rows = []
    for x, y in zip(inputs, labels, strict=True):
        loss = F.cross_entropy(model(x[None]), y[None])
        grads = torch.autograd.grad(loss, parameters)
        rows.append(torch.cat([g.detach().double().reshape(-1) for g in grads]))
    gradients = torch.stack(rows).numpy()
    deviations = gradients - gradients.mean(axis=0)
    return float((deviations**2).sum() / len(gradients))
