"""The generalized Gauss-Newton diagonal, and the per-layer-kind rules of its fast path.

The ``"ggn"`` estimator of :func:`~genmeasures.measures.curvature.hessian_diagonal`: the exact
diagonal of ``(1/N) Σ_n J_nᵀ H_n J_n`` through the factorization ``H_n = Σ_c q_c q_cᵀ`` of the
softmax cross-entropy Hessian. The fast path forms every example's weight gradient from each
layer's inputs ``a`` and output gradients ``δ`` by the rule of the layer's kind in
:data:`LAYER_RULES`; a network with a layer of another kind (e.g. ``conv3d``) takes the
per-example ``vmap`` path instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from genmeasures.measures.curvature.loss import CHUNK_BYTES, Params, _chunks, _Loss, _weight_names
from genmeasures.models import WeightLayer

__all__ = ["LAYER_RULES", "LayerRule"]


# ---------------------------------------------------------------------------------- layer rules

#: A layer's inputs ``a`` and output gradients ``δ`` (batch first) → ``(rows, columns, groups)``:
#: ``rows`` ``(n, P, out)`` and ``columns`` ``(n, P, in · groups)`` such that example n's weight
#: gradient is ``Σ_p rows[n, p]ᵀ columns[n, p]`` (group by group).
Patches = Callable[
    [WeightLayer, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]
]


def _linear_patches(
    layer: WeightLayer, a: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Linear: every position of the extra dimensions is one ``δ_pᵀ a_p``."""
    n = len(a)
    columns = a.reshape(n, -1, a.shape[-1]).double()  # (n, positions, in)
    rows = delta.reshape(n, -1, delta.shape[-1]).double()  # (n, positions, out)
    return rows, columns, 1


def _conv2d_patches(
    layer: WeightLayer, a: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Conv2d: ``δᵀ unfold(a)``, the input padded as the layer pads it."""
    geometry = layer.geometry
    return _unfolded(
        a, delta, geometry.kernel_size, geometry.stride, geometry.dilation, geometry.padding, layer
    )


def _conv1d_patches(
    layer: WeightLayer, a: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Conv1d: as a conv2d of height 1."""
    geometry = layer.geometry
    a, delta = a.unsqueeze(2), delta.unsqueeze(2)
    kernel, stride, dilation = (
        (1, *geometry.kernel_size),
        (1, *geometry.stride),
        (1, *geometry.dilation),
    )
    padding = ((0, 0), *geometry.padding)
    return _unfolded(a, delta, kernel, stride, dilation, padding, layer)


def _unfolded(
    a: torch.Tensor,
    delta: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Sequence[tuple[int, int]],
    layer: WeightLayer,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    geometry = layer.geometry
    pads = [side for before_after in reversed(padding) for side in before_after]
    if any(pads):
        mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
        a = F.pad(a, pads, mode=mode)
    patches = F.unfold(a, kernel, dilation=dilation, stride=stride)  # (n, c_in·k, P)
    columns = patches.double().transpose(1, 2)  # (n, P, c_in·k)
    rows = delta.flatten(2).double().transpose(1, 2)  # (n, P, c_out)
    return rows, columns, geometry.groups


@dataclass(frozen=True)
class LayerRule:
    """How the fast GGN path treats one kind of weight layer.

    Attributes:
        patches: Per-example weight gradients as ``rows``/``columns`` (see :data:`Patches`).
        squares_factor: Whether, on ``(n, in)`` inputs, the squares factor over the classes:
            ``Σ_n Σ_c (δ_{n,c} a_nᵀ)² = (Σ_c δ_c²)ᵀ a²`` (one matrix product per batch).
    """

    patches: Patches
    squares_factor: bool = False


#: Layer kind (:attr:`WeightLayer.kind`) → its :class:`LayerRule`. A layer whose kind is not here
#: sends the whole network to the per-example path.
LAYER_RULES: dict[str, LayerRule] = {
    "linear": LayerRule(_linear_patches, squares_factor=True),
    "conv1d": LayerRule(_conv1d_patches),
    "conv2d": LayerRule(_conv2d_patches),
}


# ---------------------------------------------------------------------------------- the estimator


def _ggn_diagonal(loss: _Loss) -> Params:
    """The GGN diagonal: by layer-wise factorization where possible, else per example."""
    by_layer = _ggn_diagonal_by_layer(loss)
    return by_layer if by_layer is not None else _ggn_diagonal_per_example(loss)


def _ggn_diagonal_per_example(loss: _Loss) -> Params:
    """Any architecture: per-example gradients of ``logits · q_c`` by ``vmap``, squared."""
    selected = loss.selected
    total = loss.zeros()
    chunk = max(1, CHUNK_BYTES // (8 * max(1, loss.size)))

    def contracted(weights: Params, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        logits = loss.network(weights, x[None])[0]
        return (logits * q).sum()

    per_example = vmap(grad(contracted), in_dims=(None, 0, 0))
    for x, _ in loss.ctx.batches():
        with torch.no_grad():
            logits = loss.network({}, x)
        for q in _gauss_newton_factors(logits):
            for lo, hi in _chunks(len(x), chunk):
                gradients = per_example(selected, x[lo:hi], q[lo:hi])
                for n in loss.names:
                    total[n] += gradients[n].double().pow(2).sum(0)
    return {n: t / loss.num_train for n, t in total.items()}


def _gauss_newton_factors(logits: torch.Tensor) -> Iterator[torch.Tensor]:
    """Columns ``q_c = √p_c (e_c − p)`` of ``H = diag(p) − ppᵀ = Σ_c q_c q_cᵀ``, one per class.

    Each is an ``(n, C)`` tensor in the logits' dtype: row n is example n's ``q_c``.
    """
    p = torch.softmax(logits.detach().double(), dim=1)
    classes = p.shape[1]
    for c in range(classes):
        q = p[:, c : c + 1].sqrt() * (F.one_hot(torch.tensor(c), classes).to(p) - p)
        yield q.to(logits.dtype)


def _ggn_diagonal_by_layer(loss: _Loss) -> Params | None:
    """The GGN diagonal from each layer's inputs ``a`` and output gradients ``δ``.

    Example n's gradient of ``logits_n · q`` w.r.t. a Linear weight is ``δ_nᵀ a_n`` (positions
    of extra dimensions summed) and w.r.t. a convolution's ``δ_nᵀ unfold(a_n)``, so one batched
    backward pass per class gives every example's gradient. For a Linear layer on ``(n, in)``
    inputs the squares even factor, ``Σ_n Σ_c (δ_{n,c} a_nᵀ)² = (Σ_c δ_c²)ᵀ a²``: one matrix
    product per batch. Cost: C backward passes without weight gradients, ≈ C/1.5
    gradient-equivalents, plus the products.

    Returns:
        The diagonal, or None when a layer's kind has no rule in :data:`LAYER_RULES`, a layer
        module runs other than once per forward pass (its gradient is then not one ``δᵀa``), or
        the network cannot be folded (its weight matrices are not all Linear/Conv layers).
    """
    ctx = loss.ctx
    if not ctx.foldable:  # the unfolded network's matrices: the per-example path
        return None
    layers = ctx.layers
    names = _weight_names(ctx)
    if len(set(names)) != len(names) or not all(layer.kind in LAYER_RULES for layer in layers):
        return None
    total = loss.zeros()
    for x, _ in ctx.batches():
        recorded = _record_layers(loss.model, layers, x)
        if recorded is None:
            return None
        logits, inputs, offsets = recorded
        factors = list(_gauss_newton_factors(logits))
        # Σ_c δ_c² per Linear layer on (n, in) inputs, multiplied by a² once after the classes.
        summed_squares: dict[int, torch.Tensor] = {}
        for c, q in enumerate(factors):
            deltas = torch.autograd.grad(
                logits, offsets, grad_outputs=q, retain_graph=c + 1 < len(factors)
            )
            for i, (layer, a, delta) in enumerate(zip(layers, inputs, deltas, strict=True)):
                if LAYER_RULES[layer.kind].squares_factor and a.ndim == 2:
                    square = delta.double().pow(2)
                    summed_squares[i] = summed_squares.get(i, 0) + square
                else:
                    squares = _squared_example_gradients(layer, a, delta)
                    total[names[i]] += squares.reshape(total[names[i]].shape)
        for i, square in summed_squares.items():
            product = square.T @ inputs[i].double().pow(2)
            total[names[i]] += product.reshape(total[names[i]].shape)
    return {n: t / loss.num_train for n, t in total.items()}


def _record_layers(
    model: nn.Module, layers: Sequence[WeightLayer], x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
    """Forward ``x`` recording each layer's input and a zero offset added to its output.

    The gradient of anything w.r.t. a layer's offset is the gradient w.r.t. its output.

    Returns:
        ``(logits, inputs, offsets)``, or None if a layer module ran other than once.
    """
    calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layers]

    def record(
        module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor, index: int
    ) -> torch.Tensor:
        offset = torch.zeros_like(output, requires_grad=True)
        calls[index].append((args[0].detach(), offset))
        return output + offset

    handles = [
        layer.module.register_forward_hook(functools.partial(record, index=i))
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if any(len(call) != 1 for call in calls):
        return None
    return logits, [call[0][0] for call in calls], [call[0][1] for call in calls]


def _squared_example_gradients(
    layer: WeightLayer, a: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """``Σ_n G_n ⊙ G_n`` for the per-example weight gradients ``G_n`` (``out × in`` matrix).

    ``a``: the layer's inputs, ``delta``: the gradients w.r.t. its outputs, batch first.
    """
    n = len(a)
    rows, columns, groups = LAYER_RULES[layer.kind].patches(layer, a, delta)
    out_features, in_features = rows.shape[-1], columns.shape[-1] // groups
    columns = columns.reshape(n, columns.shape[1], groups, in_features)
    rows = rows.reshape(n, rows.shape[1], groups, out_features // groups)
    chunk = max(1, CHUNK_BYTES // (8 * out_features * in_features))
    total = torch.zeros(groups, out_features // groups, in_features, dtype=torch.float64)
    for lo, hi in _chunks(n, chunk):
        gradients = torch.einsum("npgo,npgi->ngoi", rows[lo:hi], columns[lo:hi])
        total += gradients.pow(2).sum(0)
    return total.reshape(out_features, in_features)
