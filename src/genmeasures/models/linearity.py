"""Whether a network is piecewise linear in its input.

For a piecewise-linear network the GGN diagonal equals the Hessian diagonal
(NORMALIZED_SHARPNESS.md), which the curvature measures use.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from genmeasures.models.probe import POOLING_AND_RESHAPE_TYPES, check_model

__all__ = ["uses_piecewise_linear_activations"]


_PIECEWISE_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Sequential,
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Hardtanh,
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    *POOLING_AND_RESHAPE_TYPES,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
_SMOOTH_FUNCTIONS = {
    torch.tanh,
    torch.sigmoid,
    torch.exp,
    torch.log,
    torch.erf,
    torch.sqrt,
    torch.rsqrt,
    torch.pow,
    torch.softmax,
    torch.log_softmax,
    F.tanh,
    F.sigmoid,
    F.gelu,
    F.silu,
    F.mish,
    F.softplus,
    F.elu,
    F.selu,
    F.celu,
    F.logsigmoid,
    F.hardswish,
    F.softmax,
    F.log_softmax,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
    F.normalize,
    operator.pow,
}
_SMOOTH_METHODS = {
    "tanh",
    "sigmoid",
    "exp",
    "log",
    "erf",
    "sqrt",
    "rsqrt",
    "pow",
    "softmax",
    "log_softmax",
}


def uses_piecewise_linear_activations(model: nn.Module) -> bool:
    """Return whether the eval-mode forward of ``model`` is piecewise linear in its input.

    True when every leaf module (one without children) is an affine or piecewise-linear layer
    (Linear, Conv, eval-mode BatchNorm, ReLU, LeakyReLU, PReLU, Hardtanh, max/avg pooling, flatten,
    dropout, identity, constant padding) or a class with ``piecewise_linear = True`` (such as
    :class:`~genmeasures.models.builders.AddChannelDim`). Any other leaf module (Tanh, Sigmoid,
    GELU, Softplus, SiLU, ELU, LayerNorm, unknown custom modules) gives False. When the model can
    be traced with ``torch.fx``, functional calls in custom ``forward`` methods are also checked
    against a list of smooth functions (``torch.tanh``, ``F.gelu``, ``x.exp()``...); an untraceable
    model is judged by its modules only.

    Args:
        model: The network.

    Returns:
        Whether the network is piecewise linear (for example, the GGN diagonal then equals the
        Hessian diagonal, NORMALIZED_SHARPNESS.md).
    """
    check_model(model)
    for module in model.modules():
        leaf = next(module.children(), None) is None
        allowed = isinstance(module, _PIECEWISE_LINEAR_MODULES) or getattr(
            type(module), "piecewise_linear", False
        )
        if leaf and not allowed:
            return False
    try:
        graph = fx.Tracer().trace(model)
    except Exception:
        return True
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _SMOOTH_FUNCTIONS:
            return False
        if node.op == "call_method" and str(node.target).rstrip("_") in _SMOOTH_METHODS:
            return False
    return True
