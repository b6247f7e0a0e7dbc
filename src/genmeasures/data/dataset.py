"""The dataset container shared by every part of genmeasures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held as tensors.

    Attributes:
        name: Registry name of the dataset (``"mnist1d"``, ``"digits"``, ``"mnist"``, ...).
        train: ``(inputs, labels)`` of the training split; inputs are float32 of shape
            ``(m, *input_shape)``, labels int64 of shape ``(m,)`` in ``[0, num_classes)``.
        test: ``(inputs, labels)`` of the test split, same conventions.
        num_classes: Number of classes κ.
        input_shape: Shape of one input example as fed to the network (no batch dimension).
        preprocessing: Everything applied to the raw data (normalization statistics, label
            corruption, subsetting, generator arguments), so that a measure such as the input-norm
            bound B can be traced back to it.
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    input_shape: tuple[int, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
