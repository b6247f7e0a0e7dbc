"""Measures on the network's output (Jiang et al. 2020, eqs 21-23; ``MEASURES.md`` §3.2, §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genmeasures.errors import UnsupportedInputError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput


@register_measure(
    "cross-entropy",
    eq=21,
    family="output",
    needs=("data",),
    aliases=("cross entropy",),
    domain="differentiable",
)
def cross_entropy(ctx: MeasureContext) -> MeasureOutput:
    """Mean training cross-entropy, exact over the whole training set (eq 21)."""
    loss = F.cross_entropy(ctx.logits, ctx.require_data()[1], reduction="sum")
    return MeasureOutput(value=float(loss) / ctx.num_train)


@register_measure(
    "inverse-margin",
    eq=22,
    family="output",
    needs=("data",),
    aliases=("1/margin", "1/γ", "margin"),
    domain="differentiable",
)
def inverse_margin(ctx: MeasureContext) -> MeasureOutput:
    """1/γ² with γ the 10th-percentile training margin (eq 22); NaN if γ ≤ 0."""
    gamma = ctx.positive_margin
    return MeasureOutput(value=1.0 / gamma**2, extra={"margin": gamma})


@register_measure(
    "neg-entropy",
    eq=23,
    family="output",
    needs=("data",),
    aliases=("entropy", "-entropy", "logit entropy"),
    domain="differentiable",
)
def neg_entropy(ctx: MeasureContext) -> MeasureOutput:
    """Mean negative entropy Σ_c p log p of the softmax outputs (eq 23); ≤ 0."""
    log_p = F.log_softmax(ctx.logits, dim=1)
    p = log_p.exp()
    # A class with p = 0 contributes 0; never evaluate 0·(−inf).
    terms = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    return MeasureOutput(value=float(terms.sum()) / ctx.num_train)


@register_measure(
    "input-grad-norm",
    eq="-",
    family="output",
    needs=("data",),
    aliases=("input grad norm",),
    domain="differentiable",
)
def input_grad_norm(ctx: MeasureContext) -> MeasureOutput:
    """Mean ℓ2 norm of the cross-entropy's gradient w.r.t. the input (project definition, §4).

    Raises:
        UnsupportedInputError: for integer inputs (token ids), which have no gradient.
    """
    inputs, _ = ctx.require_data()
    if not inputs.is_floating_point():
        raise UnsupportedInputError(
            f"the inputs are {inputs.dtype} (e.g. token ids): the input-gradient norm needs "
            "real-valued inputs to differentiate with respect to"
        )
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for inputs, labels in ctx.batches():
        inputs = inputs.detach().requires_grad_(True)
        # Eval mode: examples are independent, so the gradient of the summed loss holds every
        # example's own input gradient.
        loss = F.cross_entropy(ctx.model(inputs), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs)
        total += grad.flatten(1).double().norm(dim=1).sum()
    return MeasureOutput(value=float(total) / ctx.num_train)
