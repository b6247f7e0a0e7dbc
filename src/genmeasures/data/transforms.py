"""Pure transforms of dataset tensors: normalization, random labels, class-balanced subsets.

Every function returns new tensors and leaves its inputs unchanged. Randomness comes only from a
``torch.Generator`` seeded with the ``seed`` argument, never from a global generator, so the same
seed gives the same result on every run and platform.
"""

from __future__ import annotations

from typing import Any

import torch

from genmeasures.errors import DataError
from genmeasures.validation import Integer, Real, check

#: Seeds are passed to :meth:`torch.Generator.manual_seed`, which accepts 64-bit values.
MAX_SEED = 2**64 - 1

#: What the transforms' arguments accept (:mod:`genmeasures.validation`).
SEED = Integer(0, MAX_SEED)
FRACTION = Real(0.0, 1.0)
COUNT = Integer(1)


def normalize(
    train_inputs: torch.Tensor, test_inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Standardize both splits with statistics of the training inputs only.

    The rule depends on the shape of one example:

    * ``(C, ...)`` (rank 2 or more, channel first, e.g. images ``(C, H, W)``): one mean and one
      standard deviation per channel, over all examples and positions (``"per-channel"``);
    * ``(d,)`` (flat vectors such as MNIST-1D): a single mean and standard deviation over all
      examples and features (``"global"``).

    The standard deviation is the population one (divisor ``n``). Statistics are accumulated in
    float64; the outputs keep the input dtype.

    Args:
        train_inputs: Training inputs of shape ``(m, *input_shape)``, floating point.
        test_inputs: Test inputs with the same ``input_shape``.

    Returns:
        ``(train, test, statistics)`` where ``statistics`` is a dict with ``"rule"``
        (``"per-channel"`` or ``"global"``), ``"mean"`` and ``"std"`` (lists of floats, one per
        channel or a single one) and ``"computed_on"`` (``"train"``).

    Raises:
        DataError: If the inputs are not floating point, have no example dimension, disagree in
            shape, the training split is empty, or a standard deviation is zero.
    """
    for parameter, inputs in (("train_inputs", train_inputs), ("test_inputs", test_inputs)):
        if not inputs.is_floating_point() or inputs.ndim < 2:
            raise DataError(
                f"{parameter}: expected a floating-point tensor of shape (m, *input_shape), "
                f"found {inputs.dtype} of shape {tuple(inputs.shape)}."
            )
    if train_inputs.shape[1:] != test_inputs.shape[1:]:
        raise DataError(
            f"test_inputs: expected examples of shape {tuple(train_inputs.shape[1:])} like the "
            f"training inputs, found {tuple(test_inputs.shape[1:])}."
        )
    if train_inputs.shape[0] == 0:
        raise DataError("train_inputs: expected at least one example, found none.")
    per_channel = train_inputs.ndim >= 3
    if per_channel:
        dims = [0, *range(2, train_inputs.ndim)]
        shape = [1, train_inputs.shape[1]] + [1] * (train_inputs.ndim - 2)
    else:
        dims = list(range(train_inputs.ndim))
        shape = [1] * train_inputs.ndim
    count = train_inputs.numel() // (train_inputs.shape[1] if per_channel else 1)
    mean = train_inputs.sum(dim=dims, dtype=torch.float64) / count
    centered = train_inputs - mean.to(train_inputs.dtype).reshape(shape)
    std = (centered.square().sum(dim=dims, dtype=torch.float64) / count).sqrt()
    mean, std = mean.reshape(-1), std.reshape(-1)
    if bool((std == 0).any()):
        channel = int(torch.nonzero(std == 0)[0])
        where = f"channel {channel}" if per_channel else "all features"
        raise DataError(
            f"train_inputs: expected a positive standard deviation, found 0 for {where}; "
            "constant inputs cannot be standardized."
        )
    mean_cast = mean.to(train_inputs.dtype).reshape(shape)
    std_cast = std.to(train_inputs.dtype).reshape(shape)
    statistics = {
        "rule": "per-channel" if per_channel else "global",
        "mean": mean.tolist(),
        "std": std.tolist(),
        "computed_on": "train",
    }
    return centered / std_cast, (test_inputs - mean_cast) / std_cast, statistics


def randomize_labels(
    labels: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the labels of a random fraction of the examples by uniformly random labels.

    Exactly ``k = round(fraction * m)`` examples (Python's ``round``: halves go to the even
    integer) are chosen without replacement; each gets a label drawn uniformly from *all*
    ``num_classes`` classes, as in Zhang et al. (2017), "Understanding deep learning requires
    rethinking generalization". A new label can therefore equal the true one (with probability
    ``1 / num_classes``), so about ``k * (1 - 1 / num_classes)`` labels actually change.

    Args:
        labels: Integer labels of shape ``(m,)`` in ``[0, num_classes)``.
        num_classes: Number of classes κ.
        fraction: Fraction of examples to corrupt, in ``[0, 1]``.
        seed: Seed of the ``torch.Generator`` that picks the examples and their labels.

    Returns:
        ``(new_labels, indices)``: the labels with the chosen examples relabelled, and the sorted
        int64 indices of the ``k`` chosen examples.

    Raises:
        DataError: If an argument is invalid or a label lies outside ``[0, num_classes)``.
    """
    where = "randomize_labels"
    num_classes = check(num_classes, COUNT, where=where, parameter="num_classes", error=DataError)
    fraction = check(fraction, FRACTION, where=where, parameter="fraction", error=DataError)
    seed = check(seed, SEED, where=where, parameter="seed", error=DataError)
    _check_labels(labels, num_classes)
    generator = torch.Generator().manual_seed(seed)
    count = round(fraction * labels.shape[0])
    indices = torch.randperm(labels.shape[0], generator=generator)[:count].sort().values
    new_labels = labels.clone()
    new_labels[indices] = torch.randint(
        num_classes, (count,), generator=generator, dtype=labels.dtype
    )
    return new_labels, indices


def balanced_subset_indices(
    labels: torch.Tensor, size: int, num_classes: int, seed: int, *, parameter: str = "size"
) -> torch.Tensor:
    """Choose a class-balanced random subset of the examples.

    Each class gets ``size // num_classes`` examples, and the first ``size % num_classes`` classes
    (in label order) one more. Within a class the examples are drawn without replacement by a
    ``torch.Generator`` seeded with ``seed``.

    Args:
        labels: Integer labels of shape ``(m,)`` in ``[0, num_classes)``.
        size: Number of examples in the subset (at least 1).
        num_classes: Number of classes κ.
        seed: Seed of the generator.
        parameter: Name given to ``size`` in error messages (the caller's own parameter name,
            e.g. ``"train_size"``).

    Returns:
        The sorted int64 indices of the chosen examples (so the subset keeps the original order).

    Raises:
        DataError: If an argument is invalid, a label lies outside ``[0, num_classes)``, or a class
            has fewer examples than its share of ``size``.
    """
    where = "balanced_subset_indices"
    size = check(size, COUNT, where=where, parameter=parameter, error=DataError)
    num_classes = check(num_classes, COUNT, where=where, parameter="num_classes", error=DataError)
    seed = check(seed, SEED, where=where, parameter="seed", error=DataError)
    _check_labels(labels, num_classes)
    generator = torch.Generator().manual_seed(seed)
    per_class, remainder = divmod(size, num_classes)
    chosen = []
    for label in range(num_classes):
        wanted = per_class + (1 if label < remainder else 0)
        members = torch.nonzero(labels == label).reshape(-1)
        if members.numel() < wanted:
            raise DataError(
                f"{parameter}: expected at least {wanted} examples of class {label} for a balanced "
                f"subset of {size} examples over {num_classes} classes, found {members.numel()}."
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:wanted]])
    return torch.cat(chosen).sort().values


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if (
        labels.ndim != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise DataError(
            f"labels: expected a 1-D integer tensor, found {labels.dtype} of shape "
            f"{tuple(labels.shape)}."
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"labels: expected values in [0, {num_classes - 1}], found values from "
            f"{int(labels.min())} to {int(labels.max())}."
        )
