"""Generalization measures of trained networks: the registry, the context and ``compute``.

Every measure is defined in the project's catalog, ``MEASURES.md`` (Jiang et al. 2020, appendix D;
Tsuzuku et al. 2020).
"""

# The family modules register their measures on import: importing the package registers them all.
from genmeasures.measures import (  # noqa: F401
    adaptive,
    capacity,
    heavy_tailed,
    normalized,
    norms,
    output,
    perturbation,
    relative_flatness,
    representation,
    spectral,
    training,
)
from genmeasures.measures.compute import compute
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.heavy_tailed import heavy_tailed_layers
from genmeasures.measures.registry import (
    MeasureSpec,
    get_measure,
    list_measures,
    register_measure,
)
from genmeasures.measures.result import MeasureOutput, MeasureResult, Results

__all__ = [
    "MeasureContext",
    "MeasureOutput",
    "MeasureResult",
    "MeasureSpec",
    "Results",
    "compute",
    "get_measure",
    "heavy_tailed_layers",
    "list_measures",
    "register_measure",
]
