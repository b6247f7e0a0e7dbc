"""Imports every family module so that its measures are registered."""

from genmeasures.measures import capacity, normalized, norms, output, spectral, training  # noqa: F401
