"""The names the command line offers, known without importing torch, pandas or matplotlib.

``genmeasures --help`` builds every command's options from these, so it answers in a fraction of
a second; the registries they name live with their implementations (:mod:`genmeasures.data`,
:mod:`genmeasures.models`, :mod:`genmeasures.zoo.optimizers`), and ``tests/test_cli_help.py``
checks that the names here are theirs.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["DATASETS", "EXECUTORS", "MODELS", "OPTIMIZERS", "preset_names", "presets_folder"]

#: :func:`genmeasures.data.list_datasets`.
DATASETS = ("cifar10", "digits", "mnist", "mnist1d", "svhn")

#: :func:`genmeasures.models.list_models`.
MODELS = ("lenet", "mlp", "nin", "wrn")

#: :data:`genmeasures.zoo.training_config.OPTIMIZERS`.
OPTIMIZERS = ("sgd", "adam", "rmsprop")

#: Where a study's models train: this machine's processes, or a Ray cluster.
EXECUTORS = ("local", "ray")


def presets_folder() -> Any:
    """The packaged presets' folder (a :mod:`importlib.resources` traversable)."""
    return resources.files("genmeasures").joinpath("presets")


def preset_names() -> list[str]:
    """The names of the packaged presets (``genmeasures/presets/*.toml``), sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in presets_folder().iterdir()
        if entry.is_file() and entry.name.endswith(".toml")
    )
