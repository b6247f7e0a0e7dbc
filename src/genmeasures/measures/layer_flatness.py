"""Relative flatness of a hidden layer: a Hutchinson estimate from Hessian-vector products.

For a layer other than the classification head, the loss is not a closed-form function of the
layer's weights ``W`` (``d × p``: one row per output unit, its incoming weights flattened), so
``κ = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'}`` is estimated. Written as one sum over the entries of
``W``, ``κ = Tr(H M)`` with ``M = (W Wᵀ) ⊗ I_p``. For a random ``p × p`` matrix ``G`` with
``E[G_kj G_k'j'] = δ_kk' δ_jj'``, ``U = W G`` has ``E[vec U vec Uᵀ] = M``, so

    κ = E_G ⟨U, H U⟩,

one Hessian-vector product per probe. Two choices of ``G``:

- every unit matrix ``E_kj`` (p² products, summed): κ exactly, used when p² ≤ ``probes``;
- otherwise ``probes`` rank-one matrices ``G = a bᵀ`` with Rademacher ``a`` and ``b``, averaged
  (the standard error is reported). ``U = (W a) bᵀ`` follows the rows of ``W`` when they are
  rescaled, so the estimate is invariant probe by probe, not only in expectation.

**Normalized features.** As for the head (:mod:`~genmeasures.measures.relative_flatness`), each
input channel c of the layer is scaled to unit standard deviation σ_c over the training set (over
examples and positions, for a convolution or a layer applied per token), the weights reading it
by σ_c in exchange: ``W̃ = W ⊙ S`` with ``S_sj = σ_c(s,j)``. The Hessian in ``W̃`` is that in
``W`` divided by ``S ⊗ S``, so the probe becomes ``⟨U/S, H (U/S)⟩`` with ``U = W̃ G``.
Entries reading a constant channel (σ = 0) are left out of both factors.

The loss is the mean training cross-entropy of the unfolded model in eval mode. BatchNorm after
the layer (folded or not) rescales its rows, which leaves κ unchanged (row s of ``W`` times
``a_s`` scales the Hessian block ``(s, s')`` by ``1/(a_s a_s')``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.errors import MeasureError, UnsupportedLayerError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.features import first_argument
from genmeasures.measures.inputs import LogitsOf
from genmeasures.models.probe import WEIGHT_TYPES

__all__ = ["LayerFlatness", "hidden_layer_flatness", "varying", "weight_layer"]

#: Probes are drawn and multiplied in chunks holding at most this many bytes (float64 count).
PROBE_CHUNK_BYTES = 64 * 2**20

#: A channel whose standard deviation is at most this fraction of its root mean square is
#: constant over the training set (:func:`varying`).
CONSTANT_TOLERANCE = 1e-10


@dataclass(frozen=True)
class LayerFlatness:
    """A Hutchinson estimate of one layer's relative flatness.

    Attributes:
        value: κ: the mean over the probes, or the exact sum.
        standard_error: The probes' standard deviation over √probes (0 when exact).
        products: The Hessian-vector products computed.
        exact: Whether every unit probe was used (p² ≤ ``probes``, p the row length).
        channels: Input channels of the layer.
        constant_channels: Those constant over the training set (left out when normalizing).
    """

    value: float
    standard_error: float
    products: int
    exact: bool
    channels: int
    constant_channels: int


def weight_layer(ctx: MeasureContext, name: str) -> tuple[str, nn.Module]:
    """The Linear or convolution module ``name`` of the user's model, and its name in ``ctx``.

    Raises:
        MeasureError: naming the option, when there is no such module or it is not a weight layer.
    """
    modules = dict(ctx.model.named_modules())
    prefix = "network." if isinstance(ctx.model, LogitsOf) else ""  # the user's model, wrapped
    path = name if name in modules else prefix + name
    module = modules.get(path)
    if not isinstance(module, WEIGHT_TYPES):
        layers = [n.removeprefix(prefix) for n, m in modules.items() if isinstance(m, WEIGHT_TYPES)]
        found = "no module" if module is None else f"a {type(module).__name__}"
        raise MeasureError(
            f"relative-flatness options: layer must be 'head' or the name of a Linear or "
            f"convolution module of the model ({', '.join(layers[:12])}"
            f"{', ...' if len(layers) > 12 else ''}), got {name!r} ({found})"
        )
    return path, module


def varying(scale: torch.Tensor, root_mean_square: torch.Tensor) -> torch.Tensor:
    """Which channels vary over the training set: σ above rounding error of their magnitude.

    A channel that is constant in exact arithmetic (a dead unit, or one that always outputs the
    same value) gets a σ of order 1e-16 of its magnitude from rounding alone; normalizing by it
    would blow the measure up by 1e30. Such a channel is treated as constant.
    """
    return scale > CONSTANT_TOLERANCE * root_mean_square


def _input_scales(
    ctx: MeasureContext, path: str, module: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """σ_c and the root mean square of each input channel of the layer over the training set.

    The per-batch means and squared deviations are merged pairwise (Chan et al.), so that σ of a
    constant channel stays at rounding level (E[x²] − E[x]² would leave 1e-8 of its magnitude).
    """
    channels = module.in_features if isinstance(module, nn.Linear) else module.in_channels
    moments: dict[str, Any] = {"count": 0, "mean": 0.0, "squares": 0.0, "calls": 0}

    def keep(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = first_argument(args, kwargs).detach().double()
        per_channel = (
            value.reshape(-1, channels)
            if isinstance(module, nn.Linear)
            else value.transpose(0, 1).reshape(channels, -1).T
        )
        variance, mean = torch.var_mean(per_channel, dim=0, correction=0)
        count, added = moments["count"], per_channel.shape[0]
        total = count + added
        delta = mean - moments["mean"]
        moments["mean"] = moments["mean"] + delta * (added / total)
        moments["squares"] = (
            moments["squares"] + variance * added + delta**2 * (count * added / total)
        )
        moments["count"] = total
        moments["calls"] += 1

    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            for x, _ in ctx.batches():
                before = moments["calls"]
                ctx.model(x)
                calls = moments["calls"] - before
                if calls == 0:
                    raise UnsupportedLayerError(
                        f"the layer `{path}` is not called in the forward pass (its parent uses "
                        "its weight directly, as nn.MultiheadAttention does with out_proj): its "
                        "input cannot be read"
                    )
                if calls > 1:
                    raise UnsupportedLayerError(
                        f"the layer `{path}` runs {calls} times in one forward pass: its input is "
                        "not one set of features"
                    )
    finally:
        handle.remove()
    scale = (moments["squares"] / moments["count"]).sqrt()
    return scale, (scale**2 + moments["mean"] ** 2).sqrt()


def _entry_scales(module: nn.Module, sigma: torch.Tensor) -> torch.Tensor:
    """``S``: for each weight (flattened per row), σ of the input channel it reads."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return sigma.expand(weight.shape).clone()
    per_group = weight.shape[1]
    groups = module.groups
    rows_per_group = weight.shape[0] // groups
    group = torch.arange(weight.shape[0], device=sigma.device) // rows_per_group
    channel = group[:, None] * per_group + torch.arange(per_group, device=sigma.device)[None, :]
    kernel = math.prod(weight.shape[2:])
    return sigma[channel].repeat_interleave(kernel, dim=1)


def hidden_layer_flatness(
    ctx: MeasureContext,
    name: str,
    *,
    normalize: bool,
    probes: int,
    generator: torch.Generator,
) -> LayerFlatness:
    """κ of layer ``name`` (module docstring), exact or estimated from Hessian-vector products.

    Exact from p² products if p² ≤ ``probes`` (p the length of a row), else estimated from
    ``probes`` of them.

    Raises:
        MeasureError: for a name that is not a weight layer of the model.
        UnsupportedLayerError: when the layer runs more than once per forward pass, or is never
            called as a module.
    """
    path, module = weight_layer(ctx, name)
    weight = module.weight.detach()
    rows = weight.shape[0]
    flat = weight.reshape(rows, -1).double()
    sigma, root_mean_square = _input_scales(ctx, path, module)
    sigma = torch.where(varying(sigma, root_mean_square), sigma, 0.0)
    scales = _entry_scales(module, sigma) if normalize else torch.ones_like(flat)
    kept = scales > 0
    normalized = torch.where(kept, flat * scales, 0.0)
    safe = torch.where(kept, scales, 1.0)
    constant = int((sigma == 0).sum()) if normalize else 0
    width = flat.shape[1]
    exact = width * width <= probes
    count = width * width if exact else probes
    chunk = max(1, PROBE_CHUNK_BYTES // (8 * flat.numel()))
    samples: list[torch.Tensor] = []
    for start in range(0, count, chunk):
        if exact:
            probe = _unit_probes(normalized, range(start, min(count, start + chunk)))
        else:
            probe = _rank_one_probes(normalized, min(chunk, count - start), generator)
        vectors = torch.where(kept, probe / safe, 0.0)
        samples.append(_quadratic_forms(ctx, path, weight, vectors))
    values = torch.cat(samples)
    if exact:
        return LayerFlatness(values.sum().item(), 0.0, count, True, len(sigma), constant)
    error = values.std().item() / math.sqrt(count)
    return LayerFlatness(values.mean().item(), error, count, False, len(sigma), constant)


def _unit_probes(normalized: torch.Tensor, indices: range) -> torch.Tensor:
    """``W̃ E_kj`` for the unit matrices ``E_kj`` (index ``k·p + j``): column k of W̃ at column j.

    Summed over all p² of them, ``⟨U, H̃ U⟩`` is κ exactly.
    """
    width = normalized.shape[1]
    probes = normalized.new_zeros(len(indices), *normalized.shape)
    for row, index in enumerate(indices):
        probes[row, :, index % width] = normalized[:, index // width]
    return probes


def _rank_one_probes(
    normalized: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``W̃ a bᵀ`` for Rademacher vectors a, b: ``G = a bᵀ`` has ``E[G_kj G_k'j'] = δ_kk' δ_jj'``.

    A probe of this form scales with the rows of ``W̃`` when they are rescaled, so the estimate
    keeps the measure's invariances probe by probe.
    """
    width = normalized.shape[1]
    signs = torch.randint(0, 2, (2, count, width), generator=generator, device=normalized.device)
    a, b = (2 * signs - 1).to(normalized.dtype)
    return (a @ normalized.T)[:, :, None] * b[:, None, :]


def _quadratic_forms(
    ctx: MeasureContext, path: str, weight: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``⟨v, H v⟩`` for each of a stack of vectors (flattened rows), summed over the batches."""
    parameter = weight.clone().requires_grad_(True)
    shaped = vectors.to(weight.dtype).reshape(len(vectors), *weight.shape)
    forms = torch.zeros(len(vectors), dtype=torch.float64, device=ctx.device)
    for x, y in ctx.batches():
        with torch.enable_grad():
            logits = torch.func.functional_call(ctx.model, {f"{path}.weight": parameter}, (x,))
            loss = F.cross_entropy(logits, y, reduction="sum") / ctx.num_train
            (gradient,) = torch.autograd.grad(loss, parameter, create_graph=True)
            for index, vector in enumerate(shaped):
                (product,) = torch.autograd.grad(gradient, parameter, vector, retain_graph=True)
                forms[index] += (product.double() * vector.double()).sum()
    return forms
