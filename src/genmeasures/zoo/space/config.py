"""One point of a space (:class:`Config`), its canonical JSON and its hash.

A configuration's hash names one trained model: the sha256 of the canonical JSON (sorted keys, no
spaces) of everything that determines it, every value in its setting's canonical form. Every
configuration, whether built by :meth:`Space.configs <genmeasures.zoo.space.Space.configs>`, read
back with :meth:`Config.from_json` or constructed directly, goes through the one constructor, which
checks and canonicalizes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from genmeasures.data import DATASETS, Dataset, list_datasets, load_dataset
from genmeasures.errors import SpaceError
from genmeasures.models import build_model, list_models
from genmeasures.seeding import derive_seed
from genmeasures.validation import Declared, Integer, check_settings
from genmeasures.zoo.space.checks import fail, freeze, jsonable, parse
from genmeasures.zoo.space.settings import (
    LABELS_STREAM,
    SEED,
    SUBSET_STREAM,
    DataSettings,
    model_settings,
    parse_generator_options,
)
from genmeasures.zoo.train import TrainingConfig

__all__ = ["Config", "canonical_json", "digest"]

_HASH_CHARS = 16
_INDEX = Declared("index", 0, Integer(0), "position in the space's product order")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(value: Any) -> str:
    """The first 16 hex characters of the sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:_HASH_CHARS]


@dataclass(frozen=True)
class Config:
    """One point of a space: everything needed to build, train and label one model.

    Attributes:
        dataset: Dataset name (:func:`genmeasures.data.list_datasets`).
        dataset_options: ``normalize``, ``train_size``, ``test_size``, ``random_labels`` and
            ``data_seed`` (:class:`~genmeasures.zoo.space.settings.DataSettings`; ``data_seed``
            seeds the label corruption and the subsets), defaults filled in.
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
    as read-only. Construction, by :meth:`Space.configs`, :meth:`from_json` or directly, checks
    every value and canonicalizes it (``lr = 1`` becomes ``1.0``), so that one model has one hash.

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
            fail(source, "dataset", self.dataset, f"one of {', '.join(list_datasets())}")
        if self.model not in list_models():
            fail(source, "model", self.model, f"one of {', '.join(list_models())}")
        if not isinstance(self.training, TrainingConfig):
            fail(source, "training", self.training, "a TrainingConfig")
        seed = parse(source, "seed", self.seed, SEED)
        index = parse(source, "index", self.index, _INDEX)
        if self.training.seed != seed:
            fail(source, "training.seed", self.training.seed, f"the config's seed {seed}")
        if not isinstance(self.dataset_options, Mapping):
            fail(source, "dataset_options", self.dataset_options, "a table of dataset options")
        data = check_settings(DataSettings, self.dataset_options, kind="dataset option")
        generator = parse_generator_options(
            source, "generator_options", self.dataset, self.generator_options
        )
        settings = model_settings(self.model)
        unknown = sorted(set(self.model_hparams) - set(settings))
        if unknown:
            fail(
                source,
                f"model_hparams.{unknown[0]}",
                self.model_hparams[unknown[0]],
                f"a hyperparameter of model {self.model!r}: {', '.join(settings)}",
            )
        hparams = {
            key: parse(source, key, self.model_hparams.get(key, item.default), item)
            for key, item in settings.items()
        }
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "dataset_options", data)
        object.__setattr__(self, "generator_options", generator)
        object.__setattr__(self, "model_hparams", hparams)
        object.__setattr__(self, "hparams", {k: freeze(v) for k, v in self.hparams.items()})
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
        return digest(self._semantic())

    @property
    def data_hash(self) -> str:
        """Identifier of the data this configuration trains on (16 hex characters).

        Configurations with the same ``data_hash`` can share one loaded
        :class:`~genmeasures.data.Dataset`.
        """
        semantic = self._semantic()
        return digest({k: semantic[k] for k in ("dataset", "dataset_options", "generator_options")})

    def to_json(self) -> dict[str, Any]:
        """Return the configuration as JSON types (lists, dicts, str, numbers, bool, null).

        ``Config.from_json(config.to_json()) == config``.
        """
        labels = {"hparams": self.hparams, "levels": self.levels, "index": self.index}
        return jsonable(self._semantic() | labels)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Config:
        """Rebuild a configuration from :meth:`to_json` output (a dict or its JSON string).

        Raises:
            SpaceError: If a key is missing or a value is invalid.
        """
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            fail("config JSON", "config", data, "a JSON object")
        required = ("dataset", "model", "training", "seed")
        missing = [key for key in required if key not in data]
        if missing:
            raise SpaceError(f"config JSON: {missing[0]} expected a value, the key is missing.")
        training = data["training"]
        if not isinstance(training, Mapping):
            fail("config JSON", "training", training, "a JSON object of TrainingConfig fields")
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
