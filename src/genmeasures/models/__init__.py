"""Model builders (``mlp``, ``lenet``, ``nin``, ``wrn``) and the network surgery the measures need.

- :func:`build_model` / :func:`build_meta_model` (the same on the ``meta`` device, to size a
  model without building it) / :func:`list_models` / :func:`default_hparams` /
  :func:`hyperparameters` (each model's hyperparameters declared with
  :mod:`genmeasures.validation` constraints): the model registry (``builders``).
- :func:`fold_batchnorm` (``folding``): merge every BatchNorm into the Linear/Conv layer before
  it (Jiang et al. 2020, appendix C.1; MEASURES.md §1.2).
- :func:`weight_layers` (``layers``): the weight layers in forward order, as :class:`WeightLayer`
  records with their :class:`ConvGeometry` and recorded input shape (MEASURES.md §2.2).
- :func:`uses_piecewise_linear_activations` (``linearity``): whether the network is piecewise
  linear.
- :func:`describe` (``architecture``): what kind of network it is (weight layers, chain or not,
  normalizations, activations), the domain every measure is checked against.
- ``probe``: the eval-mode forward pass of zeros that ``layers`` and ``folding`` read.
"""

from __future__ import annotations

from genmeasures.models.architecture import Architecture, describe
from genmeasures.models.builders import (
    build_meta_model,
    build_model,
    default_hparams,
    hyperparameters,
    list_models,
)
from genmeasures.models.folding import fold_batchnorm
from genmeasures.models.layers import ConvGeometry, WeightLayer, weight_layers
from genmeasures.models.linearity import uses_piecewise_linear_activations

__all__ = [
    "Architecture",
    "ConvGeometry",
    "WeightLayer",
    "build_meta_model",
    "build_model",
    "default_hparams",
    "describe",
    "fold_batchnorm",
    "hyperparameters",
    "list_models",
    "uses_piecewise_linear_activations",
    "weight_layers",
]
