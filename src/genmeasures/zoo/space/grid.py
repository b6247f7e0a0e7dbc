"""A space: fixed settings × a grid, its configurations in product order, and its hash.

The configurations are the cartesian product of the grid, the first grid key varying slowest
(Jiang et al. 2020, appendix C.3). A setting given per optimizer (``lr``, ``l2``,
``weight_decay``: a list per optimizer, all of the same length) pairs its level k with the
configuration's optimizer. Each type's canonical order (appendix C.4) ranks its values
(:meth:`Space.canonical_rank`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from genmeasures.validation import Declared, declared
from genmeasures.zoo.space import canonical
from genmeasures.zoo.space.checks import fail, jsonable, show
from genmeasures.zoo.space.config import Config, digest
from genmeasures.zoo.space.settings import (
    PER_OPTIMIZER,
    DataSettings,
    all_settings,
    model_settings,
    parse_generator_options,
    training_settings,
)
from genmeasures.zoo.train import TrainingConfig

__all__ = ["Space"]

_DATA_KEYS = tuple(declared(DataSettings))
_TRAINING_KEYS = tuple(training_settings())


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
            from the smallest to the largest expected gap (Jiang et al. 2020, appendix C.4): the
            default orders (:mod:`~genmeasures.zoo.space.canonical`) of the types the space's
            model knows, updated with the space's ``[canonical]`` table.
        measures: What to compute for the models by default (names, glob patterns, ``!``
            exclusions); not part of the hash, not compared.
        source: Where the space came from (preset name or file path), used in messages; not
            compared.

    Build spaces with :func:`~genmeasures.zoo.space.load_space`,
    :func:`~genmeasures.zoo.space.space_from_dict` or :meth:`from_json`, which validate them.
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

    @property
    def _settings(self) -> dict[str, Declared]:
        return all_settings(self.fixed["model"])

    @cached_property
    def _base(self) -> dict[str, Any]:
        """Every setting that is not in the grid, defaults filled in (per-optimizer tables kept)."""
        base: dict[str, Any] = {
            "dataset": self.fixed["dataset"],
            "model": self.fixed["model"],
            "dataset_options": parse_generator_options(
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
        model_keys = tuple(model_settings(self.fixed["model"]))
        trainings: dict[tuple[Any, ...], TrainingConfig] = {}
        configs = []
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
            seed = settings["seed"]
            training_key = (*(settings[key] for key in _TRAINING_KEYS), seed)
            training = trainings.get(training_key)
            if training is None:  # TrainingConfig is frozen: configurations may share one
                training = TrainingConfig(
                    **{key: settings[key] for key in _TRAINING_KEYS}, seed=seed
                )
                trainings[training_key] = training
            configs.append(
                Config(
                    dataset=settings["dataset"],
                    dataset_options={key: settings[key] for key in _DATA_KEYS},
                    generator_options=dict(settings["dataset_options"]),
                    model=settings["model"],
                    model_hparams={key: settings[key] for key in model_keys},
                    training=training,
                    seed=seed,
                    hparams={key: settings[key] for key in keys},
                    levels=dict(zip(keys, point, strict=True)),
                    index=index,
                )
            )
        return tuple(configs)

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
        return canonical.rank(self.source, self._settings, self.canonical, type, value)

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
        return digest(self._semantic())

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
                if jsonable(a.get(key)) != jsonable(b.get(key)):
                    lines.append(_difference(f"{section}.{key}", a, b, key))
        a_grid, b_grid = self.grid, other.grid
        for key in [*a_grid, *(k for k in b_grid if k not in a_grid)]:
            if jsonable(a_grid.get(key)) != jsonable(b_grid.get(key)):
                lines.append(_difference(f"grid.{key}", a_grid, b_grid, key))
        common = [k for k in a_grid if k in b_grid]
        if common != [k for k in b_grid if k in a_grid]:
            lines.append(
                f"grid order: {show(list(a_grid))} here, {show(list(b_grid))} in the other space"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        """Return the space as JSON types; ``Space.from_json(space.to_json()) == space``.

        The grid is a list of ``[key, values]`` pairs, so that its order survives a JSON writer
        that sorts keys.
        """
        return jsonable(
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

        The space is read back as stored: its models are not checked against this machine's
        memory (:func:`~genmeasures.zoo.space.reading.read_space`), so that a study trained
        elsewhere can be opened here.

        Raises:
            SpaceError: If the content is not a valid space.
        """
        from genmeasures.zoo.space.reading import read_space  # reading builds a Space

        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            fail(source, "space", data, "a JSON object")
        content = dict(data)
        grid = content.get("grid", {})
        if isinstance(grid, list):
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in grid):
                fail(source, "grid", grid, "a list of [key, values] pairs")
            content["grid"] = {str(key): values for key, values in grid}
        return read_space(content, source=source)


def _difference(key: str, a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> str:
    here = show(a[name]) if name in a else "absent"
    there = show(b[name]) if name in b else "absent"
    return f"{key}: {here} here, {there} in the other space"


def _levels(values: tuple[Any, ...] | dict[str, tuple[Any, ...]]) -> int:
    if isinstance(values, dict):
        return len(next(iter(values.values())))
    return len(values)
