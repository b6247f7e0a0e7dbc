"""Model builders (``mlp``, ``lenet``, ``nin``, ``wrn``) and the network surgery the measures need.

- :func:`build_model` / :func:`list_models` / :func:`default_hparams`: the model registry.
- :func:`fold_batchnorm`: merge every BatchNorm into the Linear/Conv layer before it (Jiang et al.
  2020, appendix C.1; MEASURES.md §1.2).
- :func:`weight_layers`: the weight layers in forward order, as :class:`WeightLayer` records with
  their :class:`ConvGeometry` and recorded input shape (MEASURES.md §2.2).
- :func:`uses_piecewise_linear_activations`: whether the network is piecewise linear.
"""

from __future__ import annotations

from genmeasures.models.builders import build_model, default_hparams, list_models
from genmeasures.models.surgery import (
    ConvGeometry,
    WeightLayer,
    fold_batchnorm,
    uses_piecewise_linear_activations,
    weight_layers,
)

__all__ = [
    "ConvGeometry",
    "WeightLayer",
    "build_model",
    "default_hparams",
    "fold_batchnorm",
    "list_models",
    "uses_piecewise_linear_activations",
    "weight_layers",
]
