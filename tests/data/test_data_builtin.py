from __future__ import annotations

import random
import re

import mnist1d.data
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

from genmeasures.data.builtin import default_cache_dir, load_digits, load_mnist1d
from genmeasures.errors import DataError


def _forbid_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d.data.get_dataset must never be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)


def test_mnist1d_shapes_and_matches_generator(tmp_path, monkeypatch):
    _forbid_download(monkeypatch)
    data = load_mnist1d(tmp_path, num_samples=100, seed=3)

    assert data.name == "mnist1d" and data.num_classes == 10 and data.input_shape == (40,)
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (80, 40) and x_test.shape == (20, 40)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert sorted(torch.cat([y_train, y_test]).bincount().tolist()) == [10] * 10

    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = 100, 3
    reference = mnist1d.data.make_dataset(args)
    assert torch.equal(x_train, torch.from_numpy(reference["x"].astype(np.float32)))
    assert torch.equal(y_test, torch.from_numpy(reference["y_test"]))
    assert data.preprocessing["source"]["args"]["num_samples"] == 100
    assert data.preprocessing["source"]["args"]["seed"] == 3


def test_mnist1d_default_arguments_give_4000_and_1000(tmp_path):
    data = load_mnist1d(tmp_path)
    assert data.train[0].shape == (4000, 40) and data.test[0].shape == (1000, 40)
    assert data.preprocessing["source"]["args"]["seed"] == 42


def test_mnist1d_is_cached_and_read_back(tmp_path, monkeypatch):
    first = load_mnist1d(tmp_path, num_samples=50, seed=1)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 1  # no temporary file left behind
    assert files[0].startswith("mnist1d-n50-seed1-") and files[0].endswith(".npz")
    assert first.preprocessing["source"]["cache_file"] == str(tmp_path / files[0])

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mnist1d.data, "make_dataset", refuse)
    second = load_mnist1d(tmp_path, num_samples=50, seed=1)
    for a, b in zip((*first.train, *first.test), (*second.train, *second.test), strict=True):
        assert torch.equal(a, b)


def test_mnist1d_seed_changes_data_and_cache_file(tmp_path):
    one = load_mnist1d(tmp_path, num_samples=50, seed=1)
    two = load_mnist1d(tmp_path, num_samples=50, seed=2)
    assert not torch.equal(one.train[0], two.train[0])
    assert len(list(tmp_path.iterdir())) == 2


def test_mnist1d_restores_global_random_states(tmp_path):
    random.seed(1234)
    np.random.seed(99)
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    load_mnist1d(tmp_path, num_samples=30, seed=5)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    assert np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


def test_mnist1d_cache_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    load_mnist1d(num_samples=20)
    assert len(list((tmp_path / "env-cache").glob("mnist1d-n20-seed42-*.npz"))) == 1


def test_mnist1d_default_cache_under_home_and_nothing_in_cwd(tmp_path, monkeypatch):
    _forbid_download(monkeypatch)
    monkeypatch.delenv("GENMEASURES_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    load_mnist1d(num_samples=20)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "genmeasures"
    assert len(list(default_cache_dir().glob("mnist1d-n20-*.npz"))) == 1
    assert list(work.iterdir()) == []


def test_mnist1d_damaged_cache_names_the_file(tmp_path):
    load_mnist1d(tmp_path, num_samples=20)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: expected a MNIST-1D cache file"):
        load_mnist1d(tmp_path, num_samples=20)


def test_mnist1d_cache_with_wrong_shapes_names_the_file(tmp_path):
    load_mnist1d(tmp_path, num_samples=20)
    (path,) = tmp_path.iterdir()
    arrays = {"x": np.zeros((3, 40), np.float32), "y": np.zeros(3, np.int64)}
    np.savez(path, **arrays, x_test=np.zeros((4, 40), np.float32), y_test=np.zeros(4, np.int64))
    with pytest.raises(
        DataError, match=rf"{re.escape(str(path))}: expected array 'x' of shape \(16, 40\)"
    ):
        load_mnist1d(tmp_path, num_samples=20)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"num_samples": 9},
            r"dataset 'mnist1d': num_samples expected an integer >= 10, received 9\.",
        ),
        ({"num_samples": 50.0}, r"num_samples expected an integer >= 10, received 50.0"),
        ({"seed": -1}, r"seed expected an integer in \[0, 4294967295\], received -1"),
        ({"seed": 2**32}, r"seed expected an integer in \[0, 4294967295\], received 4294967296"),
        ({"seed": True}, r"seed expected an integer .*received True"),
    ],
)
def test_mnist1d_bad_options(tmp_path, options, message):
    with pytest.raises(DataError, match=message):
        load_mnist1d(tmp_path, **options)
    assert list(tmp_path.iterdir()) == []


def test_digits_split_scaling_and_determinism():
    data = load_digits()
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_test.dtype == torch.int64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0

    again = load_digits()
    assert torch.equal(again.train[0], x_train) and torch.equal(again.test[1], y_test)

    # Stratified: every class keeps its share of the test split to within one example.
    bunch = sklearn_load_digits()
    totals = np.bincount(bunch.target, minlength=10)
    assert np.all(np.abs(y_test.bincount(minlength=10).numpy() - 0.2 * totals) <= 1)

    # The two splits partition the original images, scaled by 1/16.
    rows = torch.cat([x_train, x_test]).reshape(-1, 64).numpy() * 16
    pairs = sorted(zip(map(tuple, rows), torch.cat([y_train, y_test]).tolist(), strict=True))
    original = zip(map(tuple, bunch.data.astype(np.float32)), bunch.target.tolist(), strict=True)
    assert pairs == sorted(original)
