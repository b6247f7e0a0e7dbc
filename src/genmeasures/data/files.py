"""Readers of datasets stored in a local folder: MNIST (idx), CIFAR-10 (pickles), SVHN (.mat).

Nothing is downloaded: the caller points ``root`` at a folder holding the original files. Every
reader checks the files against their format and raises :class:`~genmeasures.errors.DataError`
naming the file, what was expected and what was found. Pixel values (unsigned bytes) are divided by
255, so inputs are float32 in ``[0, 1]``, channel first.

CIFAR-10 batches are pickles. Unpickling can execute code, so they are read with an unpickler that
only resolves the few globals needed to rebuild NumPy arrays (see :data:`CIFAR_ALLOWED_GLOBALS`);
any other global makes the read fail before anything runs.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.io
import torch

from genmeasures.data.dataset import Dataset
from genmeasures.errors import DataError

try:  # NumPy >= 2 moved the array internals to numpy._core.
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_SUBFOLDER = "cifar-10-batches-py"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

#: The only globals a CIFAR-10 batch may reference: NumPy array and dtype reconstruction (under the
#: module names of NumPy 1 and 2, and ``_frombuffer`` used by pickle protocol 5), and
#: ``_codecs.encode``, with which Python 3 writes ``bytes`` in protocol 2 pickles.
CIFAR_ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = MappingProxyType(
    {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
)

_IDX_UNSIGNED_BYTE = 0x08
#: Every file dataset (MNIST, CIFAR-10, SVHN) has ten classes.
NUM_CLASSES = 10
MNIST_SHAPE = (1, 28, 28)
CIFAR10_SHAPE = (3, 32, 32)
SVHN_SHAPE = (3, 32, 32)


def load_mnist(root: str | os.PathLike[str]) -> Dataset:
    """Read MNIST from the four idx files in ``root``.

    Each file (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``) may be plain or gzip-compressed with a
    ``.gz`` suffix; the plain file is used when both exist. The idx header is checked: two zero
    bytes, type code ``0x08`` (unsigned byte), the number of dimensions (3 for images, 1 for
    labels), big-endian 32-bit sizes (images 28×28), and a file length equal to header plus data.

    Args:
        root: Folder holding the files.

    Returns:
        The dataset: float32 inputs of shape ``(m, 1, 28, 28)`` in ``[0, 1]``, int64 labels in
        ``[0, 10)``; 60000 training and 10000 test images for the original files.

    Raises:
        DataError: If the folder or a file is missing, or a file does not match the format.
    """
    folder = _check_folder(root, "MNIST")
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    files: list[str] = []
    for split, (images_name, labels_name) in MNIST_FILES.items():
        images_path = _find_idx(folder, images_name)
        labels_path = _find_idx(folder, labels_name)
        images = _parse_idx(_read_bytes(images_path), images_path, (None, 28, 28))
        labels = _parse_idx(_read_bytes(labels_path), labels_path, (None,))
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{images_path} and {labels_path}: expected as many labels as images, found "
                f"{images.shape[0]} images and {labels.shape[0]} labels."
            )
        _check_label_range(labels, labels_path, 0, NUM_CLASSES - 1)
        splits[split] = (_to_unit_float(images[:, None, :, :]), _to_labels(labels))
        files += [str(images_path), str(labels_path)]
    return Dataset(
        name="mnist",
        train=splits["train"],
        test=splits["test"],
        num_classes=NUM_CLASSES,
        input_shape=MNIST_SHAPE,
        preprocessing={"source": {"files": files, "scaling": "x / 255"}},
    )


def load_cifar10(root: str | os.PathLike[str]) -> Dataset:
    """Read CIFAR-10 from the python pickle batches in ``root`` or ``root/cifar-10-batches-py``.

    The files are ``data_batch_1`` ... ``data_batch_5`` (training, in this order) and
    ``test_batch``. Each is a pickle (Python 2, read with ``encoding="bytes"``) of a dict whose key
    ``b"data"`` holds an ``N×3072`` uint8 array (the red, green and blue 32×32 planes of each image,
    row-major) and ``b"labels"`` a list of ``N`` labels in ``[0, 9]``.

    Args:
        root: Folder holding the batches, or their parent holding ``cifar-10-batches-py``.

    Returns:
        The dataset: float32 inputs of shape ``(m, 3, 32, 32)`` in ``[0, 1]``, int64 labels in
        ``[0, 10)``; 50000 training and 10000 test images for the original files.

    Raises:
        DataError: If the folder or a batch is missing, or a batch does not match the format or
            references a global other than those in :data:`CIFAR_ALLOWED_GLOBALS`.
    """
    folder = _check_folder(root, "CIFAR-10")
    if not (folder / CIFAR_TRAIN_BATCHES[0]).exists():
        if not (folder / CIFAR_SUBFOLDER / CIFAR_TRAIN_BATCHES[0]).exists():
            raise DataError(
                f"{folder}: expected the CIFAR-10 python batches (data_batch_1 ... data_batch_5, "
                f"test_batch) in this folder or in its subfolder {CIFAR_SUBFOLDER}, found "
                f"{CIFAR_TRAIN_BATCHES[0]} in neither."
            )
        folder = folder / CIFAR_SUBFOLDER
    train = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_BATCHES]
    test = _read_cifar_batch(folder / CIFAR_TEST_BATCH)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return Dataset(
        name="cifar10",
        train=(_to_unit_float(train_images), _to_labels(train_labels)),
        test=(_to_unit_float(test[0]), _to_labels(test[1])),
        num_classes=NUM_CLASSES,
        input_shape=CIFAR10_SHAPE,
        preprocessing={
            "source": {
                "files": [str(folder / name) for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)],
                "scaling": "x / 255",
            }
        },
    )


def load_svhn(root: str | os.PathLike[str]) -> Dataset:
    """Read SVHN (cropped digits) from ``train_32x32.mat`` and ``test_32x32.mat`` in ``root``.

    Each file (MATLAB v5, read with :func:`scipy.io.loadmat`) holds ``X``, a ``32×32×3×N`` uint8
    array, and ``y``, ``N×1`` labels in ``[1, 10]`` where 10 stands for the digit 0; labels are
    mapped to ``[0, 9]`` (10 → 0, others unchanged). The ``extra_32x32.mat`` split is not read.

    Args:
        root: Folder holding the files.

    Returns:
        The dataset: float32 inputs of shape ``(m, 3, 32, 32)`` in ``[0, 1]``, int64 labels in
        ``[0, 10)``; 73257 training and 26032 test images for the original files.

    Raises:
        DataError: If the folder or a file is missing, or a file does not match the format.
    """
    folder = _check_folder(root, "SVHN")
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, name in SVHN_FILES.items():
        images, labels = _read_svhn_file(folder / name)
        splits[split] = (_to_unit_float(images), _to_labels(labels))
    return Dataset(
        name="svhn",
        train=splits["train"],
        test=splits["test"],
        num_classes=NUM_CLASSES,
        input_shape=SVHN_SHAPE,
        preprocessing={
            "source": {
                "files": [str(folder / name) for name in SVHN_FILES.values()],
                "scaling": "x / 255",
                "label_mapping": "10 -> 0",
            }
        },
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in :data:`CIFAR_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return CIFAR_ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load the global {module}.{name} (only NumPy array reconstruction is "
                "allowed)"
            ) from None


def _check_folder(root: str | os.PathLike[str], what: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        found = "a file" if folder.exists() else "nothing"
        raise DataError(f"{folder}: expected a folder holding the {what} files, found {found}.")
    return folder


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{folder / name}: expected this idx file or {name}.gz next to it, found neither."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        expected = "a gzip-compressed idx file" if path.suffix == ".gz" else "a readable idx file"
        raise DataError(f"{path}: expected {expected}, could not read it ({exc}).") from exc


def _parse_idx(data: bytes, path: Path, dims: tuple[int | None, ...]) -> np.ndarray:
    """Parse an idx file of unsigned bytes whose sizes must match ``dims`` (``None``: any)."""
    if len(data) < 4:
        raise DataError(f"{path}: expected a 4-byte idx header, found a file of {len(data)} bytes.")
    if data[:2] != b"\x00\x00":
        raise DataError(
            f"{path}: expected an idx file starting with two zero bytes, found 0x{data[:2].hex()}."
        )
    if data[2] != _IDX_UNSIGNED_BYTE:
        raise DataError(
            f"{path}: expected idx data type code 0x08 (unsigned byte), found 0x{data[2]:02x}."
        )
    if data[3] != len(dims):
        raise DataError(f"{path}: expected {len(dims)} idx dimensions, found {data[3]}.")
    header = 4 + 4 * len(dims)
    if len(data) < header:
        raise DataError(
            f"{path}: expected a {header}-byte idx header, found a file of {len(data)} bytes."
        )
    shape = struct.unpack(f">{len(dims)}I", data[4:header])
    for axis, (expected, found) in enumerate(zip(dims, shape, strict=True)):
        if expected is not None and expected != found:
            raise DataError(
                f"{path}: expected size {expected} along idx axis {axis}, found {found}."
            )
    size = header + int(np.prod(shape))
    if len(data) != size:
        problem = "truncated" if len(data) < size else "trailing bytes"
        raise DataError(
            f"{path}: expected {size} bytes for sizes {shape}, found {len(data)} ({problem})."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: expected a CIFAR-10 python batch, found no such file.")
    try:
        with path.open("rb") as handle:
            batch = _RestrictedUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean a bad file
        raise DataError(
            f"{path}: expected a CIFAR-10 python batch (a pickled dict), could not unpickle it "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(
            f"{path}: expected a pickled dict with keys b'data' and b'labels', "
            f"found {type(batch).__name__}."
        )
    images = _batch_entry(batch, "data", path)
    labels = _batch_entry(batch, "labels", path)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        found = (
            f"{images.dtype} array of shape {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise DataError(f"{path}: expected b'data' to be an N×3072 uint8 array, found {found}.")
    if images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected b'data' of shape (N, 3072), found shape {images.shape}.")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: expected b'labels' to be a list of integers, found {labels.dtype} values "
            f"of shape {labels.shape}."
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{path}: expected as many labels as images, found {images.shape[0]} images and "
            f"{labels.shape[0]} labels."
        )
    _check_label_range(labels, path, 0, NUM_CLASSES - 1)
    return images.reshape(-1, 3, 32, 32), labels


def _batch_entry(batch: dict[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    keys = ", ".join(sorted(repr(existing) for existing in batch))
    raise DataError(f"{path}: expected the key b'{key}' in the batch dict, found keys {keys}.")


def _read_svhn_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: expected an SVHN .mat file, found no such file.")
    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises many types on damaged or HDF5 (v7.3) files
        raise DataError(
            f"{path}: expected a MATLAB v5 .mat file with arrays X and y, could not read it "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    for key in ("X", "y"):
        if key not in content:
            keys = ", ".join(sorted(name for name in content if not name.startswith("__")))
            raise DataError(f"{path}: expected an array named {key!r}, found arrays {keys}.")
    images, labels = content["X"], content["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{path}: expected X to be a 32×32×3×N uint8 array, found {images.dtype} array of "
            f"shape {images.shape}."
        )
    if labels.dtype.kind not in "iuf" or labels.ndim != 2 or 1 not in labels.shape:
        raise DataError(
            f"{path}: expected y to be an N×1 (or 1×N) array of labels, found {labels.dtype} "
            f"array of shape {labels.shape}."
        )
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise DataError(f"{path}: expected integer labels in y, found non-integer values.")
    if labels.shape[0] != images.shape[3]:
        raise DataError(
            f"{path}: expected as many labels as images, found {images.shape[3]} images and "
            f"{labels.shape[0]} labels."
        )
    _check_label_range(labels, path, 1, 10)
    labels = np.where(labels == 10, 0, labels).astype(np.int64)
    return images.transpose(3, 2, 0, 1), labels


def _check_label_range(labels: np.ndarray, path: Path, low: int, high: int) -> None:
    outside = np.flatnonzero((labels < low) | (labels > high))
    if outside.size:
        index = int(outside[0])
        raise DataError(
            f"{path}: expected labels in [{low}, {high}], found {labels[index]} at index {index} "
            f"({outside.size} labels out of range)."
        )


def _to_unit_float(images: np.ndarray) -> torch.Tensor:
    scaled = np.ascontiguousarray(images, dtype=np.float32)
    scaled /= 255
    return torch.from_numpy(scaled)


def _to_labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
