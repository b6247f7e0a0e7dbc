from __future__ import annotations

import pytest
import torch

from genmeasures.data.transforms import balanced_subset_indices, normalize, randomize_labels
from genmeasures.errors import DataError


def _images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 3.0, 0.5]).reshape(1, 3, 1, 1)
    shift = torch.tensor([0.2, -4.0, 7.0]).reshape(1, 3, 1, 1)
    return torch.rand(count, 3, 5, 4, generator=generator) * scale + shift


def test_normalize_images_per_channel_with_train_statistics():
    train, test = _images(200, 0), _images(50, 1)
    train_n, test_n, stats = normalize(train, test)

    assert stats["rule"] == "per-channel" and stats["computed_on"] == "train"
    assert len(stats["mean"]) == 3 and len(stats["std"]) == 3
    channel_mean = train_n.mean(dim=(0, 2, 3))
    channel_std = train_n.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(channel_mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(channel_std, torch.ones(3), atol=1e-5, rtol=0)

    expected_mean = train.double().mean(dim=(0, 2, 3))
    expected_std = train.double().std(dim=(0, 2, 3), correction=0)
    assert stats["mean"] == pytest.approx(expected_mean.tolist(), rel=1e-9)
    assert stats["std"] == pytest.approx(expected_std.tolist(), rel=1e-6)
    # The test split uses the training statistics, not its own.
    mean = torch.tensor(stats["mean"]).reshape(1, 3, 1, 1).float()
    std = torch.tensor(stats["std"]).reshape(1, 3, 1, 1).float()
    torch.testing.assert_close(test_n, (test - mean) / std)
    assert train_n.dtype == torch.float32 and train.mean() > 0.5  # inputs unchanged


def test_normalize_flat_vectors_globally():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(300, 7, generator=generator) * torch.arange(1.0, 8.0) + 3.0
    test = torch.randn(40, 7, generator=generator)
    train_n, test_n, stats = normalize(train, test)

    assert stats["rule"] == "global" and len(stats["mean"]) == 1
    assert float(train_n.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(train_n.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    # A single statistic: per-feature spreads survive.
    assert float(train_n[:, 6].std()) > 3 * float(train_n[:, 0].std())
    torch.testing.assert_close(test_n, (test - stats["mean"][0]) / stats["std"][0])


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        (torch.ones(10, 4), torch.ones(2, 4), "positive standard deviation, found 0 for all"),
        (torch.zeros(10, 2, 3, 3), torch.zeros(2, 2, 3, 3), "found 0 for channel 0"),
        (torch.ones(10, 4, dtype=torch.int64), torch.ones(2, 4), "train_inputs: expected a float"),
        (torch.rand(10, 4), torch.rand(2, 5), r"test_inputs: expected examples of shape \(4,\)"),
        (torch.rand(10), torch.rand(2), r"train_inputs: .*found torch.float32 of shape \(10,\)"),
        (torch.rand(0, 4), torch.rand(2, 4), "train_inputs: expected at least one example"),
    ],
)
def test_normalize_rejects_bad_inputs(train, test, message):
    with pytest.raises(DataError, match=message):
        normalize(train, test)


def test_randomize_labels_corrupts_exact_count_with_seed():
    labels = torch.arange(1000) % 10
    rng_state = torch.get_rng_state()
    new, indices = randomize_labels(labels, 10, 0.3, seed=7)

    assert torch.equal(torch.get_rng_state(), rng_state)  # global generator untouched
    assert indices.numel() == 300 and indices.unique().numel() == 300
    assert torch.equal(indices, indices.sort().values)
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(new[untouched], labels[untouched])
    changed = int((new != labels).sum())
    # Uniform over all 10 classes: about 10% of the corrupted labels keep their true value.
    assert 240 <= changed < 300
    assert torch.equal(labels, torch.arange(1000) % 10)  # input not modified

    again, again_indices = randomize_labels(labels, 10, 0.3, seed=7)
    assert torch.equal(again, new) and torch.equal(again_indices, indices)
    other, other_indices = randomize_labels(labels, 10, 0.3, seed=8)
    assert not torch.equal(other_indices, indices) and not torch.equal(other, new)


def test_randomize_labels_draws_from_all_classes():
    labels = torch.zeros(5000, dtype=torch.int64)
    new, indices = randomize_labels(labels, 4, 1.0, seed=0)
    assert indices.tolist() == list(range(5000))
    counts = new.bincount(minlength=4)
    assert counts.tolist() == pytest.approx([1250] * 4, abs=150)  # class 0 (true label) included


@pytest.mark.parametrize(("fraction", "count"), [(0.0, 0), (1.0, 10), (0.25, 2), (0.35, 4)])
def test_randomize_labels_count_is_python_round(fraction, count):
    new, indices = randomize_labels(torch.arange(10), 10, fraction, seed=0)
    assert indices.numel() == count == round(fraction * 10)
    if count == 0:
        assert torch.equal(new, torch.arange(10))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            (torch.arange(5), 5, 1.5, 0),
            r"randomize_labels: fraction expected a number in \[0, 1\], received 1.5\.",
        ),
        ((torch.arange(5), 5, 0.5, -1), r"randomize_labels: seed expected an integer in \[0, "),
        ((torch.arange(5), 4, 0.5, 0), r"labels: expected values in \[0, 3\], found .* to 4"),
        ((torch.rand(5), 5, 0.5, 0), "labels: expected a 1-D integer tensor"),
    ],
)
def test_randomize_labels_rejects_bad_arguments(arguments, message):
    with pytest.raises(DataError, match=message):
        randomize_labels(*arguments)


def test_balanced_subset_counts_and_seed():
    labels = torch.arange(500) % 10
    indices = balanced_subset_indices(labels, 23, 10, seed=0)
    counts = labels[indices].bincount(minlength=10).tolist()
    assert counts == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert indices.unique().numel() == 23 and torch.equal(indices, indices.sort().values)
    assert torch.equal(balanced_subset_indices(labels, 23, 10, seed=0), indices)
    assert not torch.equal(balanced_subset_indices(labels, 23, 10, seed=1), indices)


def test_balanced_subset_fails_when_a_class_is_short():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    assert labels[balanced_subset_indices(labels, 9, 3, seed=0)].bincount().tolist() == [3, 3, 3]
    with pytest.raises(
        DataError, match=r"size: expected at least 4 examples of class 1 .* found 3"
    ):
        balanced_subset_indices(labels, 12, 3, seed=0)
    with pytest.raises(DataError, match="train_size: expected at least 4 examples of class 1"):
        balanced_subset_indices(labels, 12, 3, seed=0, parameter="train_size")
    with pytest.raises(
        DataError, match="balanced_subset_indices: size expected an integer >= 1, received 0"
    ):
        balanced_subset_indices(labels, 0, 3, seed=0)
