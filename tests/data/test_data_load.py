from __future__ import annotations

import re

import pytest
import torch

import genmeasures.data.dataset
from genmeasures.data import DATASETS, Dataset, list_datasets, load_dataset
from genmeasures.errors import DataError


def test_registry_lists_every_dataset():
    assert list_datasets() == ["cifar10", "digits", "mnist", "mnist1d", "svhn"]
    assert set(DATASETS) == set(list_datasets())
    assert DATASETS["mnist1d"].options == ("num_samples", "seed")
    assert DATASETS["mnist"].root == "required" and DATASETS["digits"].root == "unused"
    assert Dataset is genmeasures.data.dataset.Dataset


@pytest.mark.parametrize("name", ["cifar10", "digits", "mnist", "mnist1d", "svhn"])
def test_each_dataset_declares_the_shape_and_classes_its_loader_returns(name, tmp_path, writers):
    """A space sizes its models from the declaration, before any data is read."""
    write = {"cifar10": writers.cifar, "mnist": writers.mnist, "svhn": writers.svhn}.get(name)
    if write is not None:
        write(tmp_path)
    options = {"num_samples": 200} if name == "mnist1d" else {}
    data = load_dataset(name, root=tmp_path, **options)
    assert data.input_shape == DATASETS[name].input_shape
    assert data.num_classes == DATASETS[name].num_classes
    assert tuple(data.train[0].shape[1:]) == data.input_shape


def test_unknown_name_lists_available_names():
    message = (
        "load_dataset: name expected one of 'cifar10', 'digits', 'mnist', 'mnist1d', 'svhn', "
        "received 'mnits'."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("mnits")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"random_labels": 1.5}, r"random_labels expected a number in \[0, 1\], received 1.5\."),
        ({"random_labels": -0.1}, r"random_labels expected .*received -0.1"),
        ({"random_labels": float("nan")}, r"random_labels expected .*received nan"),
        ({"random_labels": "0.5"}, r"random_labels expected .*received '0.5'"),
        ({"train_size": 0}, r"train_size expected None or an integer >= 1, received 0\."),
        ({"train_size": -3}, "train_size expected None or an integer >= 1, received -3"),
        ({"test_size": 2.5}, "test_size expected None or an integer >= 1, received 2.5"),
        ({"test_size": True}, "test_size expected None or an integer >= 1, received True"),
        ({"label_seed": -1}, r"label_seed expected an integer in \[0, \d+\], received -1"),
        ({"subset_seed": 1.0}, r"subset_seed expected an integer .*received 1.0"),
        ({"normalize": "yes"}, "normalize expected true or false, received 'yes'"),
        ({"num_samples": 100}, r"unknown generator option\(s\) num_samples; accepted: none\."),
        ({"root": 3}, "root expected a folder path or None, received 3"),
    ],
)
def test_bad_options_name_the_parameter(options, message):
    with pytest.raises(DataError, match=message) as info:
        load_dataset("digits", **options)
    assert str(info.value).startswith("dataset 'digits': ")


def test_unknown_generator_option_lists_accepted_ones(tmp_path):
    message = "dataset 'mnist1d': unknown generator option(s) seeds; accepted: num_samples, seed."
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("mnist1d", tmp_path, seeds=3)
    with pytest.raises(DataError, match=r"option\(s\) bar, foo; accepted: none\."):
        load_dataset("digits", foo=1, bar=2)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_file_datasets_require_root(name):
    with pytest.raises(
        DataError, match=f"root expected the folder holding the {name} files, received None"
    ):
        load_dataset(name)


def test_options_are_checked_before_reading_files(tmp_path):
    with pytest.raises(DataError, match="random_labels"):
        load_dataset("mnist", tmp_path / "missing", random_labels=2.0)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'missing'}: expected a folder")):
        load_dataset("mnist", tmp_path / "missing")


def test_pipeline_order_subset_normalize_corrupt():
    plain = load_dataset("digits", train_size=100, test_size=50, subset_seed=4)
    data = load_dataset(
        "digits",
        normalize=True,
        random_labels=0.3,
        label_seed=5,
        train_size=100,
        test_size=50,
        subset_seed=4,
    )
    x_train, y_train = data.train
    x_test, y_test = data.test
    assert x_train.shape == (100, 1, 8, 8) and x_test.shape == (50, 1, 8, 8)
    assert plain.train[1].bincount(minlength=10).tolist() == [10] * 10
    assert y_test.bincount(minlength=10).tolist() == [5] * 10
    assert torch.equal(y_test, plain.test[1])  # test labels never corrupted

    # Normalization statistics are those of the 100 training examples kept by the subset.
    stats = data.preprocessing["normalization"]
    assert stats["rule"] == "per-channel"
    assert stats["mean"][0] == pytest.approx(float(plain.train[0].double().mean()), rel=1e-6)
    assert float(x_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x_train.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    expected_test = (plain.test[0] - stats["mean"][0]) / stats["std"][0]
    torch.testing.assert_close(x_test, expected_test)

    corruption = data.preprocessing["label_corruption"]
    assert corruption["num_corrupted"] == 30 and len(corruption["indices"]) == 30
    assert corruption["fraction"] == 0.3 and corruption["seed"] == 5
    changed = torch.nonzero(y_train != plain.train[1]).reshape(-1).tolist()
    assert set(changed) <= set(corruption["indices"])
    assert corruption["num_changed"] == len(changed) > 0

    assert data.preprocessing["options"] == {
        "root": None,
        "normalize": True,
        "random_labels": 0.3,
        "label_seed": 5,
        "train_size": 100,
        "test_size": 50,
        "subset_seed": 4,
        "generator_options": {},
    }
    assert data.preprocessing["subset"]["train_available"] == 1437
    assert data.preprocessing["source"]["loader"] == "sklearn.datasets.load_digits"


def test_defaults_apply_nothing():
    data = load_dataset("digits")
    assert data.train[0].shape == (1437, 1, 8, 8)
    for key in ("subset", "normalization", "label_corruption"):
        assert data.preprocessing[key] is None
    again = load_dataset("digits", random_labels=0.0, label_seed=3)
    assert torch.equal(again.train[1], data.train[1])


def test_subset_larger_than_a_class_names_the_parameter():
    # The smallest digits class has 35 test examples; 360 balanced test examples need 36 each.
    with pytest.raises(DataError, match="test_size: expected at least 36 examples of class"):
        load_dataset("digits", test_size=360)


def test_mnist_from_files_through_load_dataset(tmp_path, writers):
    writers.mnist(tmp_path, compress=True)
    data = load_dataset("mnist", tmp_path, normalize=True, random_labels=0.5, label_seed=1)
    assert data.train[0].shape == (12, 1, 28, 28)
    assert data.preprocessing["label_corruption"]["num_corrupted"] == 6
    assert data.preprocessing["options"]["root"] == str(tmp_path)
    assert float(data.train[0].mean()) == pytest.approx(0.0, abs=1e-5)


def test_mnist1d_through_load_dataset(tmp_path):
    data = load_dataset("mnist1d", tmp_path, normalize=True, num_samples=60, seed=2)
    assert data.train[0].shape == (48, 40) and data.input_shape == (40,)
    assert data.preprocessing["normalization"]["rule"] == "global"
    assert data.preprocessing["options"]["generator_options"] == {"num_samples": 60, "seed": 2}
    assert data.preprocessing["source"]["args"]["seed"] == 2
