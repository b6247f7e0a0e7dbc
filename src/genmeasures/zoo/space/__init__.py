"""Hyperparameter spaces of model zoos: fixed settings, a grid, canonical orders.

A *space* describes a population of trained models in the manner of Jiang et al. 2020,
"Fantastic Generalization Measures and Where to Find Them", appendix C.3: a set of **fixed**
settings plus a **grid** mapping each varied hyperparameter *type* to a list of values; the
configurations are the cartesian product of the grid, the first grid key varying slowest. A space
also carries the **canonical order** of each type (appendix C.4), the prediction "the gap grows with
this hyperparameter" that the canonical baseline of the evaluation uses.

Spaces are read from TOML, either a packaged preset (:func:`list_presets`) or a user's file::

    description = "What it reproduces and how long it takes."

    [fixed]
    dataset = "mnist1d"
    model = "mlp"
    depth = 2
    target_ce = 0.01

    [fixed.dataset_options]          # generator options, passed through to load_dataset
    num_samples = 5000

    [grid]                           # product order: first key varies slowest
    batch_size = [32, 64, 128]
    optimizer = ["sgd", "adam"]
    lr = { sgd = [0.1, 0.032], adam = [1e-3, 3.2e-4] }   # per-optimizer levels (appendix C.3)

    [canonical]                      # optional overrides of the default orders
    batch_size = "increasing"

A top-level ``measures`` list (default ``["all"]``) names what ``genmeasures study`` and
``genmeasures measure DIR`` compute when not told otherwise, e.g. ``measures = ["all",
"!hessian-trace"]`` (see :func:`genmeasures.measures.registry.resolve_measures`); it is not part
of the space's hash.

Settings form one flat namespace (:func:`setting_names` lists them for a model):

* ``dataset`` and ``model`` (fixed only) and the table ``dataset_options`` (fixed only: generator
  options such as MNIST-1D's ``num_samples``);
* dataset options ``normalize`` (default true), ``train_size`` and ``test_size`` (class-balanced
  subsets; default: the whole split), ``random_labels`` (fraction, default 0) and ``data_seed``
  (default 0). The label corruption is seeded with ``derive_seed(data_seed, "zoo/labels")`` and
  both subsets with ``derive_seed(data_seed, "zoo/subset")``
  (:func:`genmeasures.seeding.derive_seed`), so every configuration of a space with the same
  ``data_seed`` sees the same data;
* the model's hyperparameters (:func:`genmeasures.models.default_hparams` without ``seed``);
* every :class:`~genmeasures.zoo.train.TrainingConfig` field except ``seed``; ``lr``, ``l2`` and
  ``weight_decay`` may be given per optimizer (a table keyed by optimizer; in the grid, lists of
  equal length whose k-th entries form level k);
* ``seed`` (default 0): both the model's initialization (``build_model(..., seed=seed)``) and
  ``TrainingConfig.seed``.

The data root of file datasets is a property of the machine, not of the configuration: it is passed
to :meth:`Config.load_dataset` and is part of neither the configuration nor its hash.

Modules: :mod:`~genmeasures.zoo.space.settings` (the declared settings: data, model
hyperparameters, training, seed), :mod:`~genmeasures.zoo.space.config` (:class:`Config`, its
canonical JSON and hash), :mod:`~genmeasures.zoo.space.grid` (:class:`Space`: the product,
per-optimizer levels, canonical ranks), :mod:`~genmeasures.zoo.space.canonical` (the canonical
orders of the hyperparameter types), :mod:`~genmeasures.zoo.space.reading` (TOML, presets,
:func:`space_from_dict`, :func:`load_space`), :mod:`~genmeasures.zoo.space.memory` (whether each
configuration's model can be trained in this machine's memory, checked when a space is read) and
:mod:`~genmeasures.zoo.space.checks` (how a value is checked and a rejection reported).
"""

from __future__ import annotations

from genmeasures.errors import SpaceError
from genmeasures.zoo.space.canonical import CANONICAL_ORDERS, DIRECTIONS
from genmeasures.zoo.space.config import Config, canonical_json
from genmeasures.zoo.space.grid import Space
from genmeasures.zoo.space.reading import list_presets, load_space, space_from_dict
from genmeasures.zoo.space.settings import (
    LABELS_STREAM,
    PER_OPTIMIZER,
    SUBSET_STREAM,
    setting_names,
)

__all__ = [
    "CANONICAL_ORDERS",
    "DIRECTIONS",
    "LABELS_STREAM",
    "PER_OPTIMIZER",
    "SUBSET_STREAM",
    "Config",
    "Space",
    "SpaceError",
    "canonical_json",
    "list_presets",
    "load_space",
    "setting_names",
    "space_from_dict",
]
