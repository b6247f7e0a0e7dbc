"""Datasets as tensors: built-in (MNIST-1D, digits) and local files (MNIST, CIFAR-10, SVHN).

:func:`load_dataset` is the entry point. It validates every option, loads the raw splits, then
applies, in this order:

1. class-balanced subsets of the training and/or test split (``train_size``, ``test_size``);
2. normalization with statistics of the (subset) training inputs, applied to both splits;
3. random-label corruption of a fraction of the training labels (test labels never change).

Everything applied is recorded in :attr:`Dataset.preprocessing`.

Example:
    >>> from genmeasures.data import load_dataset
    >>> data = load_dataset("digits", normalize=True, random_labels=0.2, label_seed=1)
    >>> data.train[0].shape
    torch.Size([1437, 1, 8, 8])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from genmeasures.data import transforms
from genmeasures.data.builtin import (
    DIGITS_NUM_CLASSES,
    DIGITS_SHAPE,
    MNIST1D_LENGTH,
    MNIST1D_NUM_CLASSES,
    load_digits,
    load_mnist1d,
)
from genmeasures.data.dataset import Dataset
from genmeasures.data.files import (
    CIFAR10_SHAPE,
    MNIST_SHAPE,
    NUM_CLASSES,
    SVHN_SHAPE,
    load_cifar10,
    load_mnist,
    load_svhn,
)
from genmeasures.errors import DataError
from genmeasures.validation import Flag, Maybe, OneOf, Settings, build, check, rejection, setting

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetOptions",
    "DatasetSpec",
    "list_datasets",
    "load_dataset",
]


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is loaded.

    Attributes:
        name: Registry name.
        description: One line shown by listings.
        loader: Function returning the raw :class:`Dataset`; called as ``loader(root, **options)``
            unless ``root`` is ``"unused"``, then as ``loader(**options)``.
        root: What ``root`` means: ``"required"`` (folder holding the files), ``"cache"``
            (optional cache folder of generated data) or ``"unused"`` (ignored).
        input_shape: The shape of one input example, as the loader returns it (known without
            loading, e.g. to size a model before any data is read).
        num_classes: The number of classes, likewise.
        options: Names of the generator options the loader accepts as keyword arguments.
    """

    name: str
    description: str
    loader: Callable[..., Dataset]
    root: Literal["required", "cache", "unused"]
    input_shape: tuple[int, ...]
    num_classes: int
    options: tuple[str, ...] = ()


#: Every dataset :func:`load_dataset` knows, by name.
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            DatasetSpec(
                "mnist1d",
                "MNIST-1D, generated procedurally (40 features, 10 classes); root: cache folder",
                load_mnist1d,
                "cache",
                (MNIST1D_LENGTH,),
                MNIST1D_NUM_CLASSES,
                ("num_samples", "seed"),
            ),
            DatasetSpec(
                "digits",
                "scikit-learn's bundled 8x8 digits (1797 images, 10 classes)",
                load_digits,
                "unused",
                DIGITS_SHAPE,
                DIGITS_NUM_CLASSES,
            ),
            DatasetSpec(
                "mnist",
                "MNIST from idx files (optionally .gz) in root",
                load_mnist,
                "required",
                MNIST_SHAPE,
                NUM_CLASSES,
            ),
            DatasetSpec(
                "cifar10",
                "CIFAR-10 from the python pickle batches in root",
                load_cifar10,
                "required",
                CIFAR10_SHAPE,
                NUM_CLASSES,
            ),
            DatasetSpec(
                "svhn",
                "SVHN cropped digits from the .mat files in root",
                load_svhn,
                "required",
                SVHN_SHAPE,
                NUM_CLASSES,
            ),
        )
    }
)


@dataclass(frozen=True)
class DatasetOptions(Settings):
    """The preprocessing options of :func:`load_dataset`, declared once with their constraints.

    Attributes:
        normalize: Standardize both splits with training statistics.
        random_labels: Fraction of training labels replaced by random labels.
        label_seed: Seed of the label corruption.
        train_size: Size of a class-balanced subset of the training split (None: all of it).
        test_size: Same for the test split.
        subset_seed: Seed of both subsets.
    """

    WHERE = "load_dataset"
    ERROR = DataError

    normalize: bool = setting(
        False, Flag(), "standardize both splits with statistics of the training inputs"
    )
    random_labels: float = setting(
        0.0, transforms.FRACTION, "fraction of training labels replaced by random labels"
    )
    label_seed: int = setting(0, transforms.SEED, "seed of the label corruption")
    train_size: int | None = setting(
        None, Maybe(transforms.COUNT), "class-balanced subset of the training split (None: all)"
    )
    test_size: int | None = setting(
        None, Maybe(transforms.COUNT), "class-balanced subset of the test split (None: all)"
    )
    subset_seed: int = setting(0, transforms.SEED, "seed of both subsets")


def list_datasets() -> list[str]:
    """Return the names accepted by :func:`load_dataset`, sorted.

    Returns:
        The dataset names.
    """
    return sorted(DATASETS)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    normalize: bool = False,
    random_labels: float = 0.0,
    label_seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    subset_seed: int = 0,
    **generator_options: Any,
) -> Dataset:
    """Load a dataset by name and preprocess it.

    Args:
        name: One of :func:`list_datasets`.
        root: For ``mnist``, ``cifar10`` and ``svhn``, the folder holding the files (required).
            For ``mnist1d``, the cache folder (default ``$GENMEASURES_CACHE`` or
            ``~/.cache/genmeasures``). Ignored for ``digits``.
        normalize: Standardize both splits with training statistics (see
            :func:`genmeasures.data.transforms.normalize` for the per-channel / global rule).
        random_labels: Fraction in ``[0, 1]`` of training labels replaced by uniformly random
            labels (see :func:`genmeasures.data.transforms.randomize_labels`).
        label_seed: Seed of the label corruption.
        train_size: Size of a class-balanced random subset of the training split, or ``None`` for
            the whole split.
        test_size: Same for the test split.
        subset_seed: Seed of both subsets.
        **generator_options: Options of generated datasets: ``num_samples`` and ``seed`` for
            ``mnist1d``; no other dataset accepts any.

    Returns:
        The dataset. ``preprocessing`` holds ``"source"`` (files or generator arguments),
        ``"options"`` (every argument above), ``"subset"``, ``"normalization"`` (the statistics)
        and ``"label_corruption"`` (fraction, seed, count and indices of corrupted examples); the
        last three are ``None`` when not applied.

    Raises:
        DataError: If an option is invalid (the message names it, what was expected and what was
            received), or the data cannot be read.
    """
    spec = _get_spec(name)
    where = f"dataset {name!r}"
    options = build(
        DatasetOptions,
        {
            "normalize": normalize,
            "random_labels": random_labels,
            "label_seed": label_seed,
            "train_size": train_size,
            "test_size": test_size,
            "subset_seed": subset_seed,
        },
        where=where,
    )
    normalize, random_labels = options.normalize, options.random_labels
    label_seed, subset_seed = options.label_seed, options.subset_seed
    train_size, test_size = options.train_size, options.test_size
    unknown = sorted(set(generator_options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) if spec.options else "none"
        raise DataError(
            f"{where}: unknown generator option(s) {', '.join(unknown)}; accepted: {accepted}."
        )
    if root is not None and not isinstance(root, str | os.PathLike):
        raise DataError(rejection(where, "root", "a folder path or None", root))
    if spec.root == "required" and root is None:
        raise DataError(rejection(where, "root", f"the folder holding the {name} files", None))

    if spec.root == "unused":
        raw = spec.loader(**generator_options)
    else:
        raw = spec.loader(root, **generator_options)
    (train_inputs, train_labels), (test_inputs, test_labels) = raw.train, raw.test

    subset = None
    if train_size is not None or test_size is not None:
        subset = {
            "train_size": train_size,
            "test_size": test_size,
            "seed": subset_seed,
            "train_available": int(train_labels.shape[0]),
            "test_available": int(test_labels.shape[0]),
        }
    if train_size is not None:
        keep = transforms.balanced_subset_indices(
            train_labels, train_size, raw.num_classes, subset_seed, parameter="train_size"
        )
        train_inputs, train_labels = train_inputs[keep], train_labels[keep]
    if test_size is not None:
        keep = transforms.balanced_subset_indices(
            test_labels, test_size, raw.num_classes, subset_seed, parameter="test_size"
        )
        test_inputs, test_labels = test_inputs[keep], test_labels[keep]

    normalization = None
    if normalize:
        train_inputs, test_inputs, normalization = transforms.normalize(train_inputs, test_inputs)

    corruption = None
    if random_labels > 0:
        corrupted_labels, indices = transforms.randomize_labels(
            train_labels, raw.num_classes, random_labels, label_seed
        )
        corruption = {
            "fraction": random_labels,
            "seed": label_seed,
            "num_corrupted": int(indices.numel()),
            "num_changed": int((corrupted_labels != train_labels).sum()),
            "indices": indices.tolist(),
        }
        train_labels = corrupted_labels

    preprocessing = {
        **raw.preprocessing,
        "options": {
            "root": None if root is None else os.fspath(root),
            "normalize": normalize,
            "random_labels": random_labels,
            "label_seed": label_seed,
            "train_size": train_size,
            "test_size": test_size,
            "subset_seed": subset_seed,
            "generator_options": dict(generator_options),
        },
        "subset": subset,
        "normalization": normalization,
        "label_corruption": corruption,
    }
    return Dataset(
        name=raw.name,
        train=(train_inputs, train_labels),
        test=(test_inputs, test_labels),
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        preprocessing=preprocessing,
    )


def _get_spec(name: object) -> DatasetSpec:
    check(
        name, OneOf(tuple(list_datasets())), where="load_dataset", parameter="name", error=DataError
    )
    return DATASETS[name]  # type: ignore[index]
