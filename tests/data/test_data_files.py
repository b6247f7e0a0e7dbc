from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from genmeasures.data.files import load_cifar10, load_mnist, load_svhn
from genmeasures.errors import DataError


def raises_naming(path: Path, message: str):
    """Expect a DataError whose message names ``path`` and contains ``message``."""
    return pytest.raises(DataError, match=rf"{re.escape(str(path))}.*{message}")


# --- MNIST ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_plain_and_gzip_idx(tmp_path, writers, compress):
    raw = writers.mnist(tmp_path, compress=compress)
    data = load_mnist(tmp_path)

    assert data.name == "mnist"
    assert data.num_classes == 10
    assert data.input_shape == (1, 28, 28)
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (12, 1, 28, 28) and x_test.shape == (6, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(x_train[:, 0], torch.from_numpy(raw.train_x.astype(np.float32) / 255))
    assert torch.equal(x_test[:, 0], torch.from_numpy(raw.test_x.astype(np.float32) / 255))
    assert y_train.tolist() == raw.train_y.tolist()
    assert y_test.tolist() == [9, 8, 7, 0, 1, 2]
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    suffix = ".gz" if compress else ""
    assert (
        str(tmp_path / f"train-images-idx3-ubyte{suffix}") in data.preprocessing["source"]["files"]
    )


def test_mnist_missing_folder_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with raises_naming(missing, "expected a folder holding the MNIST files, found nothing"):
        load_mnist(missing)


def test_mnist_missing_file_names_it(tmp_path, writers):
    writers.mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with raises_naming(tmp_path / "t10k-labels-idx1-ubyte", r"or t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path)


def _set_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("train-images-idx3-ubyte", lambda d: _set_byte(d, 0, 1), "two zero bytes, found 0x0100"),
        ("train-labels-idx1-ubyte", lambda d: _set_byte(d, 2, 0x0D), r"0x08 .*found 0x0d"),
        ("t10k-images-idx3-ubyte", lambda d: _set_byte(d, 3, 2), "3 idx dimensions, found 2"),
        ("train-images-idx3-ubyte", lambda d: d[:-5], r"expected 9424 bytes .*found 9419 \(trunc"),
        (
            "t10k-labels-idx1-ubyte",
            lambda d: d + b"\x00",
            r"expected 14 bytes .*found 15 \(trailing bytes\)",
        ),
        ("train-labels-idx1-ubyte", lambda d: d[:3], "4-byte idx header, found a file of 3 bytes"),
        ("train-images-idx3-ubyte", lambda d: d[:10], "16-byte idx header, found a file of 10"),
    ],
)
def test_mnist_damaged_idx_names_file(tmp_path, writers, file, damage, message):
    writers.mnist(tmp_path)
    path = tmp_path / file
    path.write_bytes(damage(path.read_bytes()))
    with raises_naming(path, message):
        load_mnist(tmp_path)


def test_mnist_wrong_image_size(tmp_path, writers):
    writers.mnist(tmp_path)
    path = writers.file(
        tmp_path / "train-images-idx3-ubyte", writers.idx(np.zeros((12, 27, 28), np.uint8))
    )
    with raises_naming(path, "expected size 28 along idx axis 1, found 27"):
        load_mnist(tmp_path)


def test_mnist_wrong_type_code(tmp_path, writers):
    writers.mnist(tmp_path)
    path = writers.file(
        tmp_path / "t10k-images-idx3-ubyte",
        writers.idx(np.zeros((6, 28, 28), np.uint8), type_code=0x0C),
    )
    with raises_naming(path, r"type code 0x08 \(unsigned byte\), found 0x0c"):
        load_mnist(tmp_path)


def test_mnist_label_out_of_range(tmp_path, writers):
    writers.mnist(tmp_path)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1], np.uint8)
    path = writers.file(tmp_path / "train-labels-idx1-ubyte", writers.idx(labels))
    with raises_naming(path, r"expected labels in \[0, 9\], found 10 at index 10"):
        load_mnist(tmp_path)


def test_mnist_inconsistent_counts(tmp_path, writers):
    writers.mnist(tmp_path)
    path = writers.file(tmp_path / "train-labels-idx1-ubyte", writers.idx(np.zeros(11, np.uint8)))
    with raises_naming(path, "found 12 images and 11 labels"):
        load_mnist(tmp_path)


def test_mnist_corrupted_gzip(tmp_path, writers):
    writers.mnist(tmp_path, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with raises_naming(path, "expected a gzip-compressed idx file"):
        load_mnist(tmp_path)


# --- CIFAR-10 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-py"])
@pytest.mark.parametrize("python2_style", [False, True])
def test_cifar10_reads_batches(tmp_path, writers, subfolder, python2_style):
    raw = writers.cifar(tmp_path / subfolder, python2_style=python2_style)
    data = load_cifar10(tmp_path)

    assert data.name == "cifar10" and data.num_classes == 10 and data.input_shape == (3, 32, 32)
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (15, 3, 32, 32) and x_test.shape == (5, 3, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert y_train.tolist() == raw.train_y.tolist()
    assert y_test.tolist() == [3, 1, 4, 1, 5]
    # Row layout of CIFAR-10: 1024 red, then 1024 green, then 1024 blue values, each row-major.
    for n, c, h, w in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7)]:
        expected = np.float32(raw.train_x[n, c * 1024 + h * 32 + w]) / np.float32(255)
        assert float(x_train[n, c, h, w]) == pytest.approx(float(expected), abs=0)
    assert float(x_test[3, 2, 10, 20]) == pytest.approx(raw.test_x[3, 2048 + 340] / 255, rel=1e-6)


def test_cifar10_refuses_other_globals_without_running_them(tmp_path, writers):
    writers.cifar(tmp_path)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "data_batch_2"
    batch = writers.cifar_batch(np.zeros((3, 3072), np.uint8), np.zeros(3, int))
    batch[b"extra"] = Payload()
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with raises_naming(path, r"refused to load the global (io|builtins)\.open"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_missing_everything(tmp_path):
    with raises_naming(tmp_path, "in this folder or in its subfolder cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_cifar10_missing_batch(tmp_path, writers):
    writers.cifar(tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.unlink()
    with raises_naming(path, "expected a CIFAR-10 python batch, found no such file"):
        load_cifar10(tmp_path)


def _without(batch: dict, key: bytes) -> dict:
    return {name: value for name, value in batch.items() if name != key}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b, w: [1, 2, 3], "expected a pickled dict .*found list"),
        (lambda b, w: _without(b, b"labels"), r"expected the key b'labels'.*found keys"),
        (lambda b, w: {**b, b"data": np.zeros((3, 3000), np.uint8)}, r"found shape \(3, 3000\)"),
        (lambda b, w: {**b, b"data": np.zeros((3, 3072))}, "uint8 array, found float64 array"),
        (lambda b, w: {**b, b"labels": [1, 10, 2]}, r"labels in \[0, 9\], found 10 at index 1"),
        (lambda b, w: {**b, b"labels": [1, 2]}, "found 3 images and 2 labels"),
        (lambda b, w: {**b, b"labels": ["a", "b", "c"]}, "list of integers"),
    ],
)
def test_cifar10_bad_batch_content(tmp_path, writers, make, message):
    writers.cifar(tmp_path)
    path = tmp_path / "test_batch"
    batch = writers.cifar_batch(np.zeros((3, 3072), np.uint8), np.array([1, 2, 3]))
    path.write_bytes(pickle.dumps(make(batch, writers), protocol=2))
    with raises_naming(path, message):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("damage", [lambda d: d[: len(d) // 2], lambda d: b"garbage" + d])
def test_cifar10_truncated_or_garbled_pickle(tmp_path, writers, damage):
    writers.cifar(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(damage(path.read_bytes()))
    with raises_naming(path, "could not unpickle it"):
        load_cifar10(tmp_path)


# --- SVHN -------------------------------------------------------------------------------------


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, writers):
    raw = writers.svhn(tmp_path)
    data = load_svhn(tmp_path)

    assert data.name == "svhn" and data.num_classes == 10 and data.input_shape == (3, 32, 32)
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (11, 3, 32, 32) and x_test.shape == (7, 3, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    # Files hold 1..10 with 10 for the digit 0: 1, 2, ..., 9, 10, 1 -> 1, ..., 9, 0, 1.
    assert y_train.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert y_test.tolist() == [1, 2, 3, 4, 5, 6, 7]
    # X is indexed [row, column, channel, example].
    for n, c, h, w in [(0, 0, 0, 0), (10, 2, 31, 3), (5, 1, 7, 30)]:
        assert float(x_train[n, c, h, w]) == pytest.approx(raw.train_x[h, w, c, n] / 255, rel=1e-6)
    assert float(x_test[6, 0, 1, 2]) == pytest.approx(raw.test_x[1, 2, 0, 6] / 255, rel=1e-6)


def test_svhn_missing_file(tmp_path, writers):
    writers.svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with raises_naming(tmp_path / "test_32x32.mat", "found no such file"):
        load_svhn(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"y": np.ones((4, 1), np.uint8)}, "expected an array named 'X', found arrays y"),
        (
            {"X": np.zeros((32, 32, 1, 4), np.uint8), "y": np.ones((4, 1), np.uint8)},
            r"32×32×3×N uint8 array, found uint8 array of shape \(32, 32, 1, 4\)",
        ),
        (
            {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1], [0], [2], [3]])},
            r"expected labels in \[1, 10\], found 0 at index 1",
        ),
        (
            {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1], [11], [2], [3]])},
            r"expected labels in \[1, 10\], found 11 at index 1",
        ),
        (
            {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1), np.uint8)},
            "found 4 images and 3 labels",
        ),
    ],
)
def test_svhn_bad_content(tmp_path, writers, content, message):
    writers.svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    scipy.io.savemat(path, content)
    with raises_naming(path, message):
        load_svhn(tmp_path)


def test_svhn_not_a_mat_file(tmp_path, writers):
    writers.svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(b"\x00" * 10)
    with raises_naming(path, "expected a MATLAB v5 .mat file"):
        load_svhn(tmp_path)


def test_cifar10_reads_protocol_5_pickles(tmp_path, writers):
    writers.cifar(tmp_path)
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    batch = writers.cifar_batch(images, np.array([7, 8]))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    x_test, y_test = load_cifar10(tmp_path).test
    assert y_test.tolist() == [7, 8]
    assert float(x_test[1, 0, 0, 1]) == pytest.approx(((3072 + 1) % 256) / 255, rel=1e-6)
