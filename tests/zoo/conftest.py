"""Tiny datasets and models shared by the zoo tests."""

from __future__ import annotations

import pytest
import torch

from genmeasures.data import Dataset


def make_blobs(
    m: int = 40, *, m_test: int = 20, spread: float = 0.6, seed: int = 0, classes: int = 2
) -> Dataset:
    """``classes`` Gaussian blobs in 2-d, centred on a circle of radius 2 (separable)."""
    gen = torch.Generator().manual_seed(seed)
    angles = torch.arange(classes, dtype=torch.float32) * (2 * torch.pi / classes)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % classes
        inputs = centres[labels] + spread * torch.randn(n, 2, generator=gen)
        return inputs, labels

    return Dataset("blobs", split(m), split(m_test), classes, (2,))


@pytest.fixture
def blobs() -> Dataset:
    return make_blobs()
