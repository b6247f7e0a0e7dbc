"""Imports every family module so that its measures are registered."""

from genmeasures.measures import (  # noqa: F401
    capacity,
    normalized,
    norms,
    output,
    perturbation,
    spectral,
    training,
)
