"""The settings of a space, declared once: data, model hyperparameters, training and seed.

Settings form one flat namespace (:func:`setting_names` lists them for a model), each a
:class:`~genmeasures.validation.Declared` (default, constraint, documentation):

* the data settings (:class:`DataSettings`): ``normalize``, ``train_size``, ``test_size`` and
  ``random_labels`` accept what :class:`genmeasures.data.DatasetOptions` accepts, and
  ``data_seed`` seeds both the label corruption and the subsets;
* the model's hyperparameters, as the model registry declares them
  (:func:`genmeasures.models.hyperparameters`);
* the training settings, as :class:`~genmeasures.zoo.train.TrainingConfig` declares them, except
  ``seed``;
* ``seed`` (:data:`SEED`): the model's initialization and ``TrainingConfig.seed``.

Besides them, ``dataset`` and ``model`` (fixed only) and the table ``dataset_options`` (fixed only:
the dataset's generator options, checked by the type of the loader's default).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from genmeasures.data import DATASETS, DatasetOptions
from genmeasures.errors import SpaceError
from genmeasures.models import hyperparameters, list_models
from genmeasures.validation import (
    Constraint,
    Declared,
    Flag,
    IncreasingIntegers,
    Integer,
    Maybe,
    OneOf,
    Real,
    Settings,
    check,
    declared,
    setting,
)
from genmeasures.zoo.space.checks import close, fail
from genmeasures.zoo.train import TrainingConfig

__all__ = [
    "FIXED_ONLY",
    "LABELS_STREAM",
    "PER_OPTIMIZER",
    "SEED",
    "SUBSET_STREAM",
    "DataSettings",
    "all_settings",
    "generator_constraint",
    "generator_defaults",
    "is_numeric",
    "model_settings",
    "parse_generator_options",
    "setting_names",
    "training_settings",
]

#: Purposes of the seeds derived from ``data_seed`` (:func:`genmeasures.seeding.derive_seed`).
LABELS_STREAM, SUBSET_STREAM = "zoo/labels", "zoo/subset"

#: Settings that may be given per optimizer (Jiang et al. 2020, appendix C.3).
PER_OPTIMIZER = ("lr", "l2", "weight_decay")

#: Keys that are only fixed, never varied: one dataset and one model per space.
FIXED_ONLY = ("dataset", "model", "dataset_options")

_TRAINING = declared(TrainingConfig)
_DATA = declared(DatasetOptions)

#: The seed of a configuration: the model's initialization and the training run.
SEED: Declared = Declared(
    "seed", 0, _TRAINING["seed"].constraint, "seed of initialization and training"
)


@dataclass(frozen=True)
class DataSettings(Settings):
    """How a configuration's data is prepared from the dataset (see the package docstring)."""

    WHERE = "config"
    ERROR = SpaceError

    normalize: bool = setting(True, _DATA["normalize"].constraint, _DATA["normalize"].doc)
    train_size: int | None = setting(None, _DATA["train_size"].constraint, _DATA["train_size"].doc)
    test_size: int | None = setting(None, _DATA["test_size"].constraint, _DATA["test_size"].doc)
    random_labels: float = setting(
        0.0, _DATA["random_labels"].constraint, _DATA["random_labels"].doc
    )
    data_seed: int = setting(
        0, _DATA["label_seed"].constraint, "seed of the label corruption and of the subsets"
    )


def training_settings() -> dict[str, Declared]:
    """The training settings of a space: every TrainingConfig field but ``seed``."""
    return {key: item for key, item in _TRAINING.items() if key != "seed"}


@cache
def model_settings(model: str) -> dict[str, Declared]:
    """The hyperparameters of ``model`` (without ``seed``), as the model registry declares them.

    The result is shared between calls: do not modify it.
    """
    settings = hyperparameters(model)
    clash = sorted(set(settings) & {*declared(DataSettings), *_TRAINING})
    if clash:  # pragma: no cover - a registry change would have to introduce it
        raise SpaceError(f"model {model!r}: hyperparameter {clash[0]!r} clashes with a setting")
    return settings


@cache
def all_settings(model: str) -> dict[str, Declared]:
    """Every variable setting of a space with ``model``: data, model, training, seed.

    The result is shared between calls: do not modify it.
    """
    return {
        **declared(DataSettings),
        **model_settings(model),
        **training_settings(),
        "seed": SEED,
    }


def is_numeric(item: Declared) -> bool:
    """Whether a setting's values are numbers, so that a canonical direction applies to them."""
    constraint = item.constraint
    if isinstance(constraint, Maybe):
        constraint = constraint.inner
    if isinstance(constraint, (Integer, Real, Flag)):
        return True
    if isinstance(constraint, (OneOf, IncreasingIntegers)):
        return False
    return isinstance(item.default, numbers.Real)


def setting_names(model: str) -> list[str]:
    """Return every setting key a space with this model accepts (fixed or varied).

    Args:
        model: A name from :func:`genmeasures.models.list_models`.

    Returns:
        ``dataset``, ``model``, ``dataset_options``, the dataset options, the model's
        hyperparameters, the training settings and ``seed``.

    Raises:
        SpaceError: If ``model`` is not a registered model.
    """
    if model not in list_models():
        fail("setting_names", "model", model, f"one of {', '.join(list_models())}")
    return [*FIXED_ONLY, *all_settings(model)]


@cache
def generator_defaults(dataset: str) -> dict[str, Any]:
    """Defaults of the generator options of ``dataset``, read from its loader's signature.

    The result is shared between calls: do not modify it.
    """
    spec = DATASETS[dataset]
    parameters = inspect.signature(spec.loader).parameters
    defaults = {}
    for option in spec.options:
        default = parameters[option].default if option in parameters else None
        defaults[option] = None if default is inspect.Parameter.empty else default
    return defaults


def generator_constraint(default: Any) -> Constraint | None:
    """What a generator option accepts, by the type of its default; None: a plain scalar."""
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, numbers.Integral):
        return Integer(0)
    if isinstance(default, numbers.Real):
        return Real()
    return None


def parse_generator_options(source: str, key: str, dataset: str, value: Any) -> dict[str, Any]:
    """Check the generator options by name and by the type of the loader's default.

    Returns:
        Every generator option of ``dataset``, the loader's defaults filled in.
    """
    if not isinstance(value, Mapping):
        fail(source, key, value, "a table of generator options")
    defaults = generator_defaults(dataset)
    options = dict(defaults)
    for name, option in value.items():
        if name not in defaults:
            accepted = ", ".join(defaults) if defaults else "none"
            fail(
                source,
                f"{key}.{name}",
                option,
                f"a generator option of dataset {dataset!r} (accepted: {accepted})",
                close(name, defaults),
            )
        constraint = generator_constraint(defaults[name])
        if constraint is not None:
            option = check(
                option, constraint, where=source, parameter=f"{key}.{name}", error=SpaceError
            )
        elif not isinstance(option, (str, int, float, bool)):
            fail(source, f"{key}.{name}", option, "a string, number or boolean")
        options[name] = option
    return options
