"""VC-dimension bound and parameter count (Jiang et al. 2020, eqs 19-20; ``MEASURES.md`` §3.1).

Both read only the architecture: every weight layer is a conv with kernel area ``k_i²``, input
channels ``c_{i-1}`` and output channels ``c_i``; a Linear layer is a 1×1 conv on a 1×1 input.
They need no folding: folding changes no weight shape.
"""

from __future__ import annotations

import math

from genmeasures.measures.context import DELTA, MeasureContext
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput
from genmeasures.models import WeightLayer


def parameter_sum(layers: list[WeightLayer]) -> int:
    """Σ_i k_i² c_{i-1} (c_i + 1), the paper's count of eq 20."""
    return sum(
        layer.kernel_area * layer.weight.shape[1] * (layer.weight.shape[0] + 1) for layer in layers
    )


def input_side(ctx: MeasureContext) -> int:
    """n: the largest spatial input side if the first weight layer is a conv, else 1 (§2.2)."""
    first = ctx.architecture_layers[0]
    if first.kind == "linear":
        return 1
    shape = first.input_shape if first.input_shape is not None else ctx.require_shape()
    return max(shape[1:]) if len(shape) > 1 else 1


@register_measure(
    "vc-dim",
    eq=19,
    family="vc/count",
    needs=("shape",),
    aliases=("VC dim", "vc dim"),
    domain="chain",
)
def vc_dim(ctx: MeasureContext) -> MeasureOutput:
    """Simplified VC-dimension bound μ_vc of eq 19 (Bartlett et al., via the paper's Theorem 2)."""
    layers = ctx.architecture_layers
    # κ is the output dimension of the last weight layer: the logits' size for these networks.
    d, n, kappa = len(layers), input_side(ctx), layers[-1].weight.shape[0]
    root = 4000 * kappa * math.sqrt(d * math.log2(6 * d * n) ** 3 * parameter_sum(layers))
    value = (root + math.sqrt(math.log(1 / DELTA))) ** 2
    return MeasureOutput(value=value, log_value=math.log(value), extra={"n": n, "d": d})


@register_measure(
    "num-params",
    eq=20,
    family="vc/count",
    aliases=("# params", "#params", "#-param"),
    domain="chain",
)
def num_params(ctx: MeasureContext) -> MeasureOutput:
    """Σ_i k_i² c_{i-1} (c_i + 1) as printed in eq 20 (not the framework's parameter count)."""
    return MeasureOutput(value=float(parameter_sum(ctx.architecture_layers)))
