"""Writers of tiny dataset files in the real on-disk formats (idx, CIFAR pickles, SVHN .mat)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io


@dataclass
class RawSplits:
    """The arrays written to ``folder``, in the files' own layout."""

    folder: Path
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def encode_idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(folder: Path, *, compress: bool = False, seed: int = 0) -> RawSplits:
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    train_y = (np.arange(12) % 10).astype(np.uint8)
    test_y = np.array([9, 8, 7, 0, 1, 2], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    for name, array in (
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ):
        write_file(folder / f"{name}{suffix}", encode_idx(array))
    return RawSplits(folder, train_x, train_y, test_x, test_y)


class _Python2StylePickler(pickle._Pickler):  # type: ignore[misc]
    """Writes ``str`` and ``bytes`` as Python 2 byte strings, like the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def python2_style_pickle(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2 wrote CIFAR-10: byte strings, ``numpy.core`` globals."""
    buffer = io.BytesIO()
    _Python2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(images: np.ndarray, labels: np.ndarray) -> dict[bytes, object]:
    return {
        b"batch_label": b"a batch",
        b"labels": [int(label) for label in labels],
        b"data": images,
        b"filenames": [f"image_{index}.png".encode() for index in range(len(labels))],
    }


def write_cifar(folder: Path, *, python2_style: bool = False, seed: int = 0) -> RawSplits:
    rng = np.random.default_rng(seed)
    per_batch = 3
    train_x = rng.integers(0, 256, size=(5 * per_batch, 3072), dtype=np.uint8)
    train_y = (np.arange(5 * per_batch) * 7 % 10).astype(np.int64)
    test_x = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    test_y = np.array([3, 1, 4, 1, 5])
    folder.mkdir(parents=True, exist_ok=True)
    batches = {
        f"data_batch_{index + 1}": cifar_batch(
            train_x[index * per_batch : (index + 1) * per_batch],
            train_y[index * per_batch : (index + 1) * per_batch],
        )
        for index in range(5)
    }
    batches["test_batch"] = cifar_batch(test_x, test_y)
    for name, batch in batches.items():
        data = python2_style_pickle(batch) if python2_style else pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(data)
    return RawSplits(folder, train_x, train_y, test_x, test_y)


def write_svhn(folder: Path, *, seed: int = 0) -> RawSplits:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits = []
    for name, count in (("train_32x32.mat", 11), ("test_32x32.mat", 7)):
        images = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
        labels = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(count, 1)
        scipy.io.savemat(folder / name, {"X": images, "y": labels})
        splits += [images, labels]
    return RawSplits(folder, *splits)


@pytest.fixture
def writers() -> SimpleNamespace:
    """The file writers, for tests that build or damage their own files."""
    return SimpleNamespace(
        idx=encode_idx,
        file=write_file,
        mnist=write_mnist,
        cifar=write_cifar,
        cifar_batch=cifar_batch,
        svhn=write_svhn,
    )
