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
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from torch import nn

from genmeasures.data import DATASETS, Dataset, list_datasets, load_dataset
from genmeasures.errors import MeasureError, SpaceError
from genmeasures.evaluate.baselines import CANONICAL_ORDERS, canonical_rank
from genmeasures.measures.registry import resolve_measures
from genmeasures.models import build_model, hyperparameters, list_models
from genmeasures.seeding import derive_seed
from genmeasures.validation import Rejected
from genmeasures.zoo.train import CE_CHECK_MODES, OPTIMIZERS, TrainingConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "PER_OPTIMIZER",
    "Config",
    "Space",
    "SpaceError",
    "list_presets",
    "load_space",
    "setting_names",
    "space_from_dict",
]

#: Purposes of the seeds derived from ``data_seed`` (:func:`genmeasures.seeding.derive_seed`).
LABELS_STREAM, SUBSET_STREAM = "zoo/labels", "zoo/subset"

#: Settings that may be given per optimizer (Jiang et al. 2020, appendix C.3).
PER_OPTIMIZER = ("lr", "l2", "weight_decay")

DIRECTIONS = ("increasing", "decreasing", "none")

_TOP_LEVEL = ("name", "description", "measures", "fixed", "grid", "canonical")
_FIXED_ONLY = ("dataset", "model", "dataset_options")
_MAX_SEED = 2**64 - 1
_HASH_CHARS = 16


# ---------------------------------------------------------------------------------------------
# Setting types


class _Bad(Exception):
    """Internal: a value that does not parse (reported as a SpaceError by the caller)."""


@dataclass(frozen=True)
class _Setting:
    """One setting: what it accepts (in words), its parser, default and kind."""

    expected: str
    parse: Callable[[object], Any]
    default: Any
    group: str  # "data", "model", "training" or "seed"
    numeric: bool = True


def _int_parser(minimum: int, maximum: int | None = None) -> tuple[str, Callable[[object], int]]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Bad
        if value < minimum or (maximum is not None and value > maximum):
            raise _Bad
        return int(value)

    if maximum is None:
        return f"an integer >= {minimum}", parse
    return f"an integer in [{minimum}, {maximum}]", parse


def _real_parser(
    minimum: float = -math.inf, *, positive: bool = False, maximum: float | None = None
) -> tuple[str, Callable[[object], float]]:
    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Bad
        number = float(value) + 0.0  # + 0.0 turns -0.0 into 0.0 (one JSON spelling)
        if not math.isfinite(number) or number < minimum or (positive and number <= minimum):
            raise _Bad
        if maximum is not None and number > maximum:
            raise _Bad
        return number

    if maximum is not None:
        return f"a number in [{minimum:g}, {maximum:g}]", parse
    if minimum == -math.inf:
        return "a finite number", parse
    return ("a finite number > 0" if positive else f"a finite number >= {minimum:g}"), parse


def _bool_parser() -> tuple[str, Callable[[object], bool]]:
    def parse(value: object) -> bool:
        if not isinstance(value, bool):
            raise _Bad
        return value

    return "true or false", parse


def _choice_parser(choices: Sequence[str]) -> tuple[str, Callable[[object], str]]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Bad
        return value

    return f"one of {', '.join(map(repr, choices))}", parse


def _milestones_parser() -> tuple[str, Callable[[object], tuple[int, ...]]]:
    def parse(value: object) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _Bad
        steps = tuple(value)
        if not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1 for t in steps
        ):
            raise _Bad
        if list(steps) != sorted(set(steps)):
            raise _Bad
        return tuple(int(t) for t in steps)

    return "a list of increasing positive integers (steps)", parse


def _setting(
    spec: tuple[str, Callable[[object], Any]], default: Any, group: str, numeric: bool = True
) -> _Setting:
    return _Setting(spec[0], spec[1], default, group, numeric)


_TRAINING_DEFAULTS = TrainingConfig()

#: Settings that do not depend on the model, by name (model hyperparameters are added per model).
_COMMON_SETTINGS: dict[str, _Setting] = {
    "normalize": _setting(_bool_parser(), True, "data"),
    "train_size": _setting(_int_parser(1), None, "data"),
    "test_size": _setting(_int_parser(1), None, "data"),
    "random_labels": _setting(_real_parser(0.0, maximum=1.0), 0.0, "data"),
    "data_seed": _setting(_int_parser(0, _MAX_SEED), 0, "data"),
    "optimizer": _setting(
        _choice_parser(OPTIMIZERS), _TRAINING_DEFAULTS.optimizer, "training", False
    ),
    "lr": _setting(_real_parser(0.0, positive=True), _TRAINING_DEFAULTS.lr, "training"),
    "batch_size": _setting(_int_parser(1), _TRAINING_DEFAULTS.batch_size, "training"),
    "l2": _setting(_real_parser(0.0), _TRAINING_DEFAULTS.l2, "training"),
    "weight_decay": _setting(_real_parser(0.0), _TRAINING_DEFAULTS.weight_decay, "training"),
    "lr_milestones": _setting(
        _milestones_parser(), _TRAINING_DEFAULTS.lr_milestones, "training", False
    ),
    "target_ce": _setting(
        _real_parser(0.0, positive=True), _TRAINING_DEFAULTS.target_ce, "training"
    ),
    "max_epochs": _setting(_int_parser(1), _TRAINING_DEFAULTS.max_epochs, "training"),
    "check_every": _setting(_int_parser(1), _TRAINING_DEFAULTS.check_every, "training"),
    "check_batches": _setting(_int_parser(1), _TRAINING_DEFAULTS.check_batches, "training"),
    "ce_check": _setting(
        _choice_parser(CE_CHECK_MODES), _TRAINING_DEFAULTS.ce_check, "training", False
    ),
    "seed": _setting(_int_parser(0, _MAX_SEED), 0, "seed"),
}
_DATA_KEYS = tuple(k for k, s in _COMMON_SETTINGS.items() if s.group == "data")
_TRAINING_KEYS = tuple(k for k, s in _COMMON_SETTINGS.items() if s.group == "training")


def _model_settings(model: str) -> dict[str, _Setting]:
    """The hyperparameters of ``model`` (without ``seed``), parsed by the model registry."""
    settings = {}
    for key, item in hyperparameters(model).items():

        def parse(value: object, _parse: Callable[[object], object] = item.constraint.parse) -> Any:
            try:
                return _parse(value)
            except Rejected:
                raise _Bad from None

        numeric = isinstance(item.default, numbers.Real)
        settings[key] = _Setting(item.constraint.expected, parse, item.default, "model", numeric)
    clash = sorted(set(settings) & set(_COMMON_SETTINGS))
    if clash:  # pragma: no cover - a registry change would have to introduce it
        raise SpaceError(f"model {model!r}: hyperparameter {clash[0]!r} clashes with a setting")
    return settings


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
        raise SpaceError(f"model: expected one of {', '.join(list_models())}, received {model!r}.")
    return [*_FIXED_ONLY, *_DATA_KEYS, *_model_settings(model), *_TRAINING_KEYS, "seed"]


def _generator_defaults(dataset: str) -> dict[str, Any]:
    """Defaults of the generator options of ``dataset``, read from its loader's signature."""
    spec = DATASETS[dataset]
    parameters = inspect.signature(spec.loader).parameters
    defaults = {}
    for option in spec.options:
        default = parameters[option].default if option in parameters else None
        defaults[option] = None if default is inspect.Parameter.empty else default
    return defaults


# ---------------------------------------------------------------------------------------------
# JSON helpers


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (every value of a space is a JSON scalar, list or dict)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:_HASH_CHARS]


def _show(value: Any) -> str:
    """A value as it would be written in TOML/JSON (lists instead of tuples)."""
    return json.dumps(_jsonable(value), ensure_ascii=False, default=repr)


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Config:
    """One point of a space: everything needed to build, train and label one model.

    Attributes:
        dataset: Dataset name (:func:`genmeasures.data.list_datasets`).
        dataset_options: ``normalize``, ``train_size``, ``test_size``, ``random_labels`` and
            ``data_seed`` (see the module docstring for how ``data_seed`` seeds the label
            corruption and the subsets).
        generator_options: Generator options of the dataset (the TOML table
            ``dataset_options``), completed with the loader's defaults.
        model: Model name (:func:`genmeasures.models.list_models`).
        model_hparams: Every hyperparameter of the model except ``seed``, defaults filled in.
        training: How the model is trained; ``training.seed == seed``.
        seed: Seed of the initialization and of training.
        hparams: The varied grid keys and their resolved values (per-optimizer settings resolved
            to the number the optimizer uses), in grid order: the hyperparameter columns of the
            evaluation. A label, not part of :attr:`hash`.
        levels: For each grid key, the position of this configuration's value in the key's list
            (the level k of a per-optimizer key): configurations that differ only in the
            optimizer have the same levels of ``lr``/``l2``/``weight_decay`` even though the
            resolved numbers differ (Jiang et al. 2020, appendix C.3). A label.
        index: Position in the space's product order. A label.

    Dicts are held as plain dicts (so that configurations pickle to worker processes); treat them
    as read-only. Construct configurations with :meth:`Space.configs` or :meth:`from_json`; direct
    construction normalizes and validates the values.

    Raises:
        SpaceError: For an unknown dataset, model, option or hyperparameter, a value of the wrong
            type, or ``training.seed != seed``.
    """

    dataset: str
    dataset_options: dict[str, Any]
    generator_options: dict[str, Any]
    model: str
    model_hparams: dict[str, Any]
    training: TrainingConfig
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
    index: int = 0

    def __post_init__(self) -> None:
        source = "config"
        if self.dataset not in DATASETS:
            _fail(source, "dataset", self.dataset, f"one of {', '.join(list_datasets())}")
        if self.model not in list_models():
            _fail(source, "model", self.model, f"one of {', '.join(list_models())}")
        if not isinstance(self.training, TrainingConfig):
            _fail(source, "training", self.training, "a TrainingConfig")
        seed = _parse(source, "seed", self.seed, _COMMON_SETTINGS["seed"])
        index = _parse(source, "index", self.index, _setting(_int_parser(0), 0, ""))
        if self.training.seed != seed:
            _fail(source, "training.seed", self.training.seed, f"the config's seed {seed}")
        unknown = sorted(set(self.dataset_options) - set(_DATA_KEYS))
        if unknown:
            _fail(
                source,
                f"dataset_options.{unknown[0]}",
                self.dataset_options[unknown[0]],
                f"one of the dataset options {', '.join(_DATA_KEYS)}",
            )
        data = {}
        for key in _DATA_KEYS:
            setting = _COMMON_SETTINGS[key]
            value = self.dataset_options.get(key, setting.default)
            data[key] = None if value is None else _parse(source, key, value, setting)
        generator = _parse_generator_options(
            source, "generator_options", self.dataset, self.generator_options
        )
        settings = _model_settings(self.model)
        unknown = sorted(set(self.model_hparams) - set(settings))
        if unknown:
            _fail(
                source,
                f"model_hparams.{unknown[0]}",
                self.model_hparams[unknown[0]],
                f"a hyperparameter of model {self.model!r}: {', '.join(settings)}",
            )
        hparams = {
            key: _parse(source, key, self.model_hparams.get(key, s.default), s)
            for key, s in settings.items()
        }
        training = self.training
        floats = {k: float(getattr(training, k)) + 0.0 for k in ("lr", "l2", "weight_decay")}
        floats["target_ce"] = float(training.target_ce)
        training = replace(training, **floats)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "dataset_options", data)
        object.__setattr__(self, "generator_options", generator)
        object.__setattr__(self, "model_hparams", hparams)
        object.__setattr__(self, "training", training)
        object.__setattr__(self, "hparams", {k: _freeze(v) for k, v in self.hparams.items()})
        object.__setattr__(self, "levels", dict(self.levels))

    def __hash__(self) -> int:
        return int(self.hash, 16)

    def _semantic(self) -> dict[str, Any]:
        """What determines the trained model: everything except the labels and the data root."""
        return {
            "dataset": self.dataset,
            "dataset_options": self.dataset_options,
            "generator_options": self.generator_options,
            "model": self.model,
            "model_hparams": self.model_hparams,
            "training": asdict(self.training),
            "seed": self.seed,
        }

    @property
    def hash(self) -> str:
        """Stable identifier of the model this configuration trains (16 hex characters).

        The sha256 of the canonical JSON (sorted keys, no spaces) of the dataset and its options,
        the model and its hyperparameters, the training settings and the seed, with every value
        normalized to its setting's type (``lr = 1`` and ``lr = 1.0`` hash the same). The labels
        ``hparams``, ``levels`` and ``index`` and the machine's data root are not part of it.
        """
        return _digest(self._semantic())

    @property
    def data_hash(self) -> str:
        """Identifier of the data this configuration trains on (16 hex characters).

        Configurations with the same ``data_hash`` can share one loaded
        :class:`~genmeasures.data.Dataset`.
        """
        semantic = self._semantic()
        return _digest(
            {k: semantic[k] for k in ("dataset", "dataset_options", "generator_options")}
        )

    def to_json(self) -> dict[str, Any]:
        """Return the configuration as JSON types (lists, dicts, str, numbers, bool, null).

        ``Config.from_json(config.to_json()) == config``.
        """
        labels = {"hparams": self.hparams, "levels": self.levels, "index": self.index}
        return _jsonable(self._semantic() | labels)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Config:
        """Rebuild a configuration from :meth:`to_json` output (a dict or its JSON string).

        Raises:
            SpaceError: If a key is missing or a value is invalid.
        """
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            _fail("config JSON", "config", data, "a JSON object")
        required = ("dataset", "model", "training", "seed")
        missing = [key for key in required if key not in data]
        if missing:
            _fail("config JSON", missing[0], None, "a value (key missing)")
        training = data["training"]
        if not isinstance(training, Mapping):
            _fail("config JSON", "training", training, "a JSON object of TrainingConfig fields")
        try:
            training_config = TrainingConfig(**training)
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"config JSON: training: {exc}") from None
        return cls(
            dataset=data["dataset"],
            dataset_options=dict(data.get("dataset_options", {})),
            generator_options=dict(data.get("generator_options", {})),
            model=data["model"],
            model_hparams=dict(data.get("model_hparams", {})),
            training=training_config,
            seed=data["seed"],
            hparams=dict(data.get("hparams", {})),
            levels=dict(data.get("levels", {})),
            index=data.get("index", 0),
        )

    def load_dataset(self, root: str | os.PathLike[str] | None = None) -> Dataset:
        """Load this configuration's data with :func:`genmeasures.data.load_dataset`.

        Args:
            root: The folder of the dataset's files (``mnist``, ``cifar10``, ``svhn``) or the cache
                folder (``mnist1d``); a property of the machine, not of the configuration.

        Returns:
            The dataset, subsets, normalization and random labels applied; the label corruption
            is seeded with ``derive_seed(data_seed, "zoo/labels")`` and the subsets with
            ``derive_seed(data_seed, "zoo/subset")``.

        Raises:
            DataError: If the data cannot be read or an option does not fit the data.
        """
        options = self.dataset_options
        data_seed = options["data_seed"]
        return load_dataset(
            self.dataset,
            root,
            normalize=options["normalize"],
            random_labels=options["random_labels"],
            label_seed=derive_seed(data_seed, LABELS_STREAM),
            train_size=options["train_size"],
            test_size=options["test_size"],
            subset_seed=derive_seed(data_seed, SUBSET_STREAM),
            **self.generator_options,
        )

    def build_model(self, dataset: Dataset) -> nn.Module:
        """Build the freshly initialized model for ``dataset`` (input shape, number of classes).

        The initialization is seeded with :attr:`seed`.
        """
        return build_model(
            self.model,
            dataset.input_shape,
            dataset.num_classes,
            seed=self.seed,
            **self.model_hparams,
        )


def _freeze(value: Any) -> Any:
    """Lists to tuples, recursively (JSON lists read back as the tuples they were)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _fail(source: str, key: str, value: Any, expected: str, hint: str = "") -> NoReturn:
    received = "nothing" if value is None else f"{_show(value)}"
    raise SpaceError(f"{source}: {key}: expected {expected}, received {received}.{hint}")


def _close(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def _parse(source: str, key: str, value: Any, setting: _Setting) -> Any:
    try:
        return setting.parse(value)
    except _Bad:
        _fail(source, key, value, setting.expected)


def _parse_generator_options(source: str, key: str, dataset: str, value: Any) -> dict[str, Any]:
    """Validate the generator options by name and by the type of the loader's default."""
    if not isinstance(value, Mapping):
        _fail(source, key, value, "a table of generator options")
    defaults = _generator_defaults(dataset)
    options = dict(defaults)
    for name, option in value.items():
        if name not in defaults:
            accepted = ", ".join(defaults) if defaults else "none"
            _fail(
                source,
                f"{key}.{name}",
                option,
                f"a generator option of dataset {dataset!r} (accepted: {accepted})",
                _close(name, defaults),
            )
        default = defaults[name]
        if isinstance(default, bool):
            options[name] = _parse(
                source, f"{key}.{name}", option, _setting(_bool_parser(), default, "")
            )
        elif isinstance(default, numbers.Integral):
            options[name] = _parse(
                source, f"{key}.{name}", option, _setting(_int_parser(0), default, "")
            )
        elif isinstance(default, numbers.Real):
            options[name] = _parse(
                source, f"{key}.{name}", option, _setting(_real_parser(), default, "")
            )
        elif not isinstance(option, (str, int, float, bool)):
            _fail(source, f"{key}.{name}", option, "a string, number or boolean")
        else:
            options[name] = option
    return options


# ---------------------------------------------------------------------------------------------
# Space


@dataclass(frozen=True)
class Space:
    """A population of configurations: fixed settings × a grid (Jiang et al. 2020, appendix C.3).

    Attributes:
        name: The preset's name, the TOML file's ``name`` or stem, or the ``name`` given.
        description: What the space reproduces and how long it takes.
        fixed: The fixed settings as given, normalized to their types (per-optimizer settings as a
            dict optimizer → value, ``dataset_options`` as a dict).
        grid: Grid key → tuple of values (per-optimizer keys: dict optimizer → tuple, all of the
            same length). Insertion order is the product order: the first key varies slowest.
        canonical: Type → ``"increasing"``, ``"decreasing"``, ``"none"`` or a tuple of values
            from the smallest to the largest expected gap (Jiang et al. 2020, appendix C.4):
            :data:`~genmeasures.evaluate.baselines.CANONICAL_ORDERS` for the types the space's
            model knows, updated with the space's ``[canonical]`` table.
        measures: What to compute for the models by default (names, glob patterns, ``!``
            exclusions); not part of the hash, not compared.
        source: Where the space came from (preset name or file path), used in messages; not
            compared.

    Build spaces with :func:`load_space`, :func:`space_from_dict` or :meth:`from_json`, which
    validate them.
    """

    name: str
    description: str
    fixed: dict[str, Any]
    grid: dict[str, tuple[Any, ...] | dict[str, tuple[Any, ...]]]
    canonical: dict[str, str | tuple[Any, ...]]
    measures: tuple[str, ...] = field(default=("all",), compare=False)
    source: str = field(default="<dict>", compare=False, repr=False)

    def __hash__(self) -> int:
        return int(self.hash, 16)

    def __len__(self) -> int:
        return math.prod(_levels(values) for values in self.grid.values())

    @cached_property
    def _settings(self) -> dict[str, _Setting]:
        return _all_settings(self.fixed["model"])

    @cached_property
    def _base(self) -> dict[str, Any]:
        """Every setting that is not in the grid, defaults filled in (per-optimizer tables kept)."""
        base: dict[str, Any] = {
            "dataset": self.fixed["dataset"],
            "model": self.fixed["model"],
            "dataset_options": _parse_generator_options(
                self.source,
                "fixed.dataset_options",
                self.fixed["dataset"],
                self.fixed.get("dataset_options", {}),
            ),
        }
        for key, setting in self._settings.items():
            if key not in self.grid:
                base[key] = self.fixed.get(key, setting.default)
        return base

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The optimizers the configurations use."""
        if "optimizer" in self.grid:
            return tuple(self.grid["optimizer"])
        return (self._base["optimizer"],)

    @cached_property
    def _configs(self) -> tuple[Config, ...]:
        keys = list(self.grid)
        ranges = [range(_levels(self.grid[key])) for key in keys]
        configs = []
        cache: dict[tuple[Any, ...], TrainingConfig] = {}
        for index, point in enumerate(itertools.product(*ranges)):
            settings = dict(self._base)
            for key, level in zip(keys, point, strict=True):
                values = self.grid[key]
                settings[key] = (
                    {opt: vals[level] for opt, vals in values.items()}
                    if isinstance(values, dict)
                    else values[level]
                )
            optimizer = settings["optimizer"]
            for key in PER_OPTIMIZER:
                if isinstance(settings[key], dict):
                    settings[key] = settings[key][optimizer]
            configs.append(
                self._make_config(settings, dict(zip(keys, point, strict=True)), index, cache)
            )
        return tuple(configs)

    def _make_config(
        self,
        settings: dict[str, Any],
        levels: dict[str, int],
        index: int,
        cache: dict[tuple[Any, ...], TrainingConfig],
    ) -> Config:
        """Build a configuration from settings that are already validated and normalized.

        Skips :meth:`Config.__post_init__` (which would redo the validation, a few hundred
        microseconds per configuration of a large grid); ``Config.from_json(c.to_json()) == c``
        is tested for every preset, so both paths give equal configurations.
        """
        seed = settings["seed"]
        training_key = (*(settings[key] for key in _TRAINING_KEYS), seed)
        training = cache.get(training_key)
        if training is None:  # TrainingConfig is frozen: configurations may share one
            training = TrainingConfig(**{key: settings[key] for key in _TRAINING_KEYS}, seed=seed)
            cache[training_key] = training
        values = {
            "dataset": settings["dataset"],
            "dataset_options": {key: settings[key] for key in _DATA_KEYS},
            "generator_options": dict(settings["dataset_options"]),
            "model": settings["model"],
            "model_hparams": {
                key: settings[key] for key, s in self._settings.items() if s.group == "model"
            },
            "training": training,
            "seed": seed,
            "hparams": {key: settings[key] for key in self.grid},
            "levels": levels,
            "index": index,
        }
        config = object.__new__(Config)
        for name, value in values.items():
            object.__setattr__(config, name, value)
        return config

    def configs(self) -> list[Config]:
        """Return every configuration, in product order (the first grid key varies slowest).

        ``configs()[i].index == i``; per-optimizer settings are resolved with the configuration's
        optimizer (level k of the grid's lists, Jiang et al. 2020, appendix C.3).
        """
        return list(self._configs)

    def canonical_rank(self, type: str, value: Any) -> float | None:
        """A number whose order is the canonical prediction of the gap's order (appendix C.4).

        Args:
            type: A setting key of the space (a hyperparameter type such as ``"width"``).
            value: A value of that type (as in :attr:`Config.hparams`).

        Returns:
            ``value`` for ``"increasing"``, ``-value`` for ``"decreasing"``, the position of the
            value in an explicit list; ``None`` for a type with no canonical order (``seed``,
            ``data_seed``, ...). A larger rank predicts a larger generalization gap.

        Raises:
            SpaceError: If ``type`` is not a setting of this space, or ``value`` does not parse or
                is missing from an explicit list.
        """
        key = f"canonical_rank({type!r})"
        if type not in self._settings:
            _fail(
                self.source,
                key,
                type,
                f"a setting of this space ({', '.join(self._settings)})",
                _close(str(type), self._settings),
            )
        order = self.canonical.get(type, "none")
        if order == "none":
            return None
        parsed = _parse(self.source, key, _freeze(value), self._settings[type])
        if isinstance(order, tuple) and parsed not in order:
            _fail(self.source, key, value, f"one of the canonical values {_show(order)}")
        return canonical_rank(order, parsed)

    def _semantic(self) -> dict[str, Any]:
        return {
            "fixed": self._base,
            "grid": [[key, values] for key, values in self.grid.items()],
            "canonical": self.canonical,
        }

    @property
    def hash(self) -> str:
        """Stable identifier of the space's content (16 hex characters).

        The sha256 of the canonical JSON of the fixed settings with every default filled in, the
        grid (keys in product order, values normalized to their types) and the canonical orders;
        the name, the description and the source are not part of it. Spaces with the same hash
        produce the same configurations in the same order.
        """
        return _digest(self._semantic())

    def differences(self, other: Space) -> list[str]:
        """Human-readable lines naming the settings on which two spaces differ.

        Args:
            other: Another space (e.g. the one stored in a study folder being resumed).

        Returns:
            One line per difference, e.g. ``"fixed.depth: 2 here, 3 in the other space"``; empty
            when the spaces have the same :attr:`hash`.
        """
        lines: list[str] = []
        mine, theirs = self._semantic(), other._semantic()
        for section in ("fixed", "canonical"):
            a, b = mine[section], theirs[section]
            for key in [*a, *(k for k in b if k not in a)]:
                if _jsonable(a.get(key)) != _jsonable(b.get(key)):
                    lines.append(_difference(f"{section}.{key}", a, b, key))
        a_grid, b_grid = self.grid, other.grid
        for key in [*a_grid, *(k for k in b_grid if k not in a_grid)]:
            if _jsonable(a_grid.get(key)) != _jsonable(b_grid.get(key)):
                lines.append(_difference(f"grid.{key}", a_grid, b_grid, key))
        common = [k for k in a_grid if k in b_grid]
        if common != [k for k in b_grid if k in a_grid]:
            lines.append(
                f"grid order: {_show(list(a_grid))} here, {_show(list(b_grid))} in the other space"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        """Return the space as JSON types; ``Space.from_json(space.to_json()) == space``.

        The grid is a list of ``[key, values]`` pairs, so that its order survives a JSON writer
        that sorts keys.
        """
        return _jsonable(
            {
                "name": self.name,
                "description": self.description,
                "measures": list(self.measures),
                "fixed": self.fixed,
                "grid": [[key, values] for key, values in self.grid.items()],
                "canonical": self.canonical,
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str, *, source: str = "space JSON") -> Space:
        """Rebuild (and validate) a space from :meth:`to_json` output (a dict or JSON string).

        Raises:
            SpaceError: If the content is not a valid space.
        """
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            _fail(source, "space", data, "a JSON object")
        content = dict(data)
        grid = content.get("grid", {})
        if isinstance(grid, list):
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in grid):
                _fail(source, "grid", grid, "a list of [key, values] pairs")
            content["grid"] = {str(key): values for key, values in grid}
        return space_from_dict(content, source=source)


def _difference(key: str, a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> str:
    here = _show(a[name]) if name in a else "absent"
    there = _show(b[name]) if name in b else "absent"
    return f"{key}: {here} here, {there} in the other space"


def _levels(values: tuple[Any, ...] | dict[str, tuple[Any, ...]]) -> int:
    if isinstance(values, dict):
        return len(next(iter(values.values())))
    return len(values)


def _all_settings(model: str) -> dict[str, _Setting]:
    """Every variable setting of a space with ``model``, in a stable order."""
    common = _COMMON_SETTINGS
    return {
        **{k: common[k] for k in _DATA_KEYS},
        **_model_settings(model),
        **{k: common[k] for k in _TRAINING_KEYS},
        "seed": common["seed"],
    }


# ---------------------------------------------------------------------------------------------
# Reading spaces


def space_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", name: str | None = None
) -> Space:
    """Validate a space given as a dict (the TOML document's structure) and build it.

    Args:
        data: ``{"description": str, "fixed": {...}, "grid": {...}, "canonical": {...}}``, and
            optionally ``"name"``; ``fixed`` must hold ``dataset`` and ``model``.
        source: Named in error messages (preset name or file path).
        name: The space's name when ``data`` has none (default ``"unnamed"``).

    Returns:
        The validated space.

    Raises:
        SpaceError: Naming the source, the key and the value, for an unknown key (with close
            matches), an empty list, a value of the wrong type or out of range, an unknown
            optimizer, dataset or model, a per-optimizer table with an unknown optimizer, lists of
            unequal length or a missing optimizer, a key both fixed and varied, duplicate values,
            or an invalid ``[canonical]`` entry.
    """
    if not isinstance(data, Mapping):
        _fail(source, "space", data, "a table with description, fixed, grid and canonical")
    for key, value in data.items():
        if key not in _TOP_LEVEL:
            _fail(
                source,
                key,
                value,
                f"one of the top-level keys {', '.join(_TOP_LEVEL)}",
                _close(str(key), _TOP_LEVEL),
            )
    space_name = data.get("name", name if name is not None else "unnamed")
    if not isinstance(space_name, str) or not space_name:
        _fail(source, "name", space_name, "a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(source, "description", description, "a string")
    measures = data.get("measures", ["all"])
    if (
        not isinstance(measures, list | tuple)
        or not measures
        or not all(isinstance(item, str) for item in measures)
    ):
        _fail(source, "measures", measures, "a non-empty list of measure names or patterns")
    try:
        resolve_measures(measures)
    except MeasureError as error:
        raise SpaceError(f"{source}: measures: {error}") from None
    sections = {}
    for section in ("fixed", "grid", "canonical"):
        value = data.get(section, {})
        if not isinstance(value, Mapping):
            _fail(source, section, value, f"a table [{section}]")
        sections[section] = dict(value)
    fixed_in, grid_in, canonical_in = sections["fixed"], sections["grid"], sections["canonical"]

    for key in _FIXED_ONLY:
        if key in grid_in:
            _fail(
                source,
                f"grid.{key}",
                grid_in[key],
                f"{key} in [fixed] (it cannot be varied: one {key} per space)",
            )
    dataset = fixed_in.get("dataset")
    if dataset not in DATASETS:
        _fail(
            source,
            "fixed.dataset",
            dataset,
            f"one of {', '.join(list_datasets())}",
            _close(str(dataset), DATASETS) if isinstance(dataset, str) else "",
        )
    model = fixed_in.get("model")
    if model not in list_models():
        _fail(
            source,
            "fixed.model",
            model,
            f"one of {', '.join(list_models())}",
            _close(str(model), list_models()) if isinstance(model, str) else "",
        )
    settings = _all_settings(model)
    known = [*_FIXED_ONLY, *settings]

    def check_known(section: str, key: str, value: Any) -> None:
        if key not in known:
            _fail(
                source,
                f"{section}.{key}",
                value,
                f"a setting of a space with model {model!r}: {', '.join(known)}",
                _close(key, known),
            )

    fixed: dict[str, Any] = {"dataset": dataset, "model": model}
    for key, value in fixed_in.items():
        check_known("fixed", key, value)
        if key in ("dataset", "model"):
            continue
        if key == "dataset_options":
            parsed = _parse_generator_options(source, "fixed.dataset_options", dataset, value)
            fixed[key] = {option: parsed[option] for option in value}
        elif key in grid_in:
            _fail(
                source,
                f"grid.{key}",
                grid_in[key],
                f"a setting that is not also in [fixed] (fixed.{key} = {_show(value)}); a "
                "setting is either fixed or varied, not both",
            )
        elif key in PER_OPTIMIZER and isinstance(value, Mapping):
            fixed[key] = _per_optimizer(source, f"fixed.{key}", value, settings[key], grid=False)
        else:
            fixed[key] = _parse(source, f"fixed.{key}", value, settings[key])

    grid: dict[str, Any] = {}
    for key, values in grid_in.items():
        check_known("grid", key, values)
        if key in PER_OPTIMIZER and isinstance(values, Mapping):
            grid[key] = _per_optimizer(source, f"grid.{key}", values, settings[key], grid=True)
        else:
            grid[key] = _values(source, f"grid.{key}", values, settings[key])

    optimizers = grid.get("optimizer", (fixed.get("optimizer", settings["optimizer"].default),))
    where = "grid.optimizer" if "optimizer" in grid else "fixed.optimizer"
    for section, table in (("fixed", fixed), ("grid", grid)):
        for key in PER_OPTIMIZER:
            if isinstance(table.get(key), dict):
                for optimizer in optimizers:
                    if optimizer not in table[key]:
                        _fail(
                            source,
                            f"{section}.{key}",
                            table[key],
                            f"a value for optimizer {optimizer!r}, which the configurations "
                            f"use ({where}); give one for each of {', '.join(optimizers)}",
                        )

    canonical = _canonical(source, canonical_in, settings, grid)
    return Space(
        name=space_name,
        description=description,
        fixed=fixed,
        grid=grid,
        canonical=canonical,
        measures=tuple(measures),
        source=source,
    )


def _values(source: str, key: str, values: Any, setting: _Setting) -> tuple[Any, ...]:
    """A grid list: non-empty, every value parsed, no duplicates."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        _fail(source, key, values, f"a non-empty list of values, each {setting.expected}")
    if not values:
        _fail(source, key, [], f"a non-empty list of values, each {setting.expected}")
    parsed = tuple(_parse(source, f"{key}[{i}]", v, setting) for i, v in enumerate(values))
    for i, value in enumerate(parsed):
        if value in parsed[:i]:
            _fail(
                source,
                key,
                values,
                "a list without duplicate values",
                f" {_show(value)} appears more than once.",
            )
    return parsed


def _per_optimizer(
    source: str, key: str, table: Mapping[str, Any], setting: _Setting, *, grid: bool
) -> dict[str, Any]:
    """A per-optimizer table (Jiang et al. 2020, appendix C.3): optimizer → value or list."""
    if not table:
        _fail(source, key, {}, f"a value per optimizer ({', '.join(OPTIMIZERS)})")
    result: dict[str, Any] = {}
    for optimizer, value in table.items():
        if optimizer not in OPTIMIZERS:
            _fail(
                source,
                f"{key}.{optimizer}",
                value,
                f"a known optimizer as key: one of {', '.join(OPTIMIZERS)}",
                _close(str(optimizer), OPTIMIZERS),
            )
        item = f"{key}.{optimizer}"
        result[optimizer] = (
            _values(source, item, value, setting) if grid else _parse(source, item, value, setting)
        )
    if grid:
        lengths = {opt: len(vals) for opt, vals in result.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{opt}: {n}" for opt, n in lengths.items())
            _fail(
                source,
                key,
                table,
                "lists of the same length for every optimizer (entry k of each list is level "
                f"k), got lengths {shown}",
            )
    return result


def _canonical(
    source: str,
    table: Mapping[str, Any],
    settings: Mapping[str, _Setting],
    grid: Mapping[str, Any],
) -> dict[str, str | tuple[Any, ...]]:
    """Default canonical orders of the known types, updated with the ``[canonical]`` table."""
    canonical: dict[str, str | tuple[Any, ...]] = {
        key: order for key, order in CANONICAL_ORDERS.items() if key in settings
    }
    for key, order in table.items():
        where = f"canonical.{key}"
        if key not in settings:
            _fail(
                source,
                where,
                order,
                f"a hyperparameter type: one of {', '.join(settings)}",
                _close(str(key), settings),
            )
        setting = settings[key]
        if isinstance(order, str):
            allowed = DIRECTIONS if setting.numeric else ("none",)
            if order not in allowed:
                lists = "" if setting.numeric else f" (a list of values: {key} is not numeric)"
                _fail(
                    source,
                    where,
                    order,
                    f"one of {', '.join(map(repr, allowed))} or a list of values from the "
                    f"smallest to the largest expected gap{lists}",
                )
            canonical[key] = order
            continue
        ranked = _values(source, where, order, setting)
        if key in grid:
            values = grid[key]
            used = (
                [v for vals in values.values() for v in vals]
                if isinstance(values, dict)
                else list(values)
            )
            for value in used:
                if value not in ranked:
                    _fail(
                        source,
                        where,
                        order,
                        f"a list holding every value of grid.{key}",
                        f" {_show(value)} is missing.",
                    )
        canonical[key] = ranked
    return canonical


def _presets_folder() -> Any:
    return resources.files("genmeasures").joinpath("presets")


def list_presets() -> list[str]:
    """Return the names of the packaged presets (``genmeasures/presets/*.toml``), sorted."""
    folder = _presets_folder()
    return sorted(
        entry.name[: -len(".toml")]
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".toml")
    )


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: invalid TOML: {exc}") from None


def load_space(name_or_path: str | os.PathLike[str]) -> Space:
    """Load a space: a packaged preset by name, or a TOML file by path.

    A string is read as a path when it ends in ``.toml``, contains a path separator, or names an
    existing file that is not a preset name.

    Args:
        name_or_path: A name from :func:`list_presets` or the path of a ``.toml`` file.

    Returns:
        The validated space. Its name is the preset's name, else the file's ``name`` key, else
        the file's stem.

    Raises:
        SpaceError: For an unknown preset (listing the presets), a missing or unreadable file, a
            TOML syntax error (naming the file and line) or an invalid space.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        _fail("load_space", "name_or_path", repr(name_or_path), "a preset name or a file path")
    text = os.fspath(name_or_path)
    presets = list_presets()
    is_path = (
        isinstance(name_or_path, os.PathLike)
        or text.endswith(".toml")
        or "/" in text
        or os.sep in text
        or (text not in presets and Path(text).is_file())
    )
    if not is_path:
        if text not in presets:
            raise SpaceError(
                f"{text!r}: expected a preset name ({', '.join(presets)}) or the path of a .toml "
                f"file; no preset or file has this name.{_close(text, presets)}"
            )
        source = f"preset {text!r}"
        content = _presets_folder().joinpath(f"{text}.toml").read_text(encoding="utf-8")
        data = _read_toml(content, source)
        return space_from_dict(data, source=source, name=data.get("name", text))
    path = Path(text)
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(
            f"{path}: expected a readable .toml file describing a space, could not read it "
            f"({exc.strerror or exc}). Presets: {', '.join(presets)}."
        ) from None
    data = _read_toml(content, str(path))
    return space_from_dict(data, source=str(path), name=path.stem)
