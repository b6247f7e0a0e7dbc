"""genmeasures: which quantity of a trained network predicts how well it generalizes?

Measures (Jiang et al. 2020; Tsuzuku et al. 2020) on any PyTorch model, model zoos, and their
evaluation. The public API::

    import genmeasures as gm
    data = gm.load_dataset("mnist1d")
    model = gm.build_model("mlp", data.input_shape, data.num_classes, depth=2, width=64)
    results = gm.compute(model, data, measures="*spec*", init_model=initial_copy)
    zoo = gm.Zoo("runs/quick")  # a study folder made by `genmeasures train`
    scores = gm.evaluate.score_table(zoo.table())

Names are imported on first use, so that ``genmeasures.evaluate`` (which reads tables only) and
the command line start without importing torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genmeasures import evaluate
    from genmeasures.data import Dataset, load_dataset
    from genmeasures.errors import (
        CorruptCheckpointError,
        DataError,
        EvaluationError,
        GenMeasuresError,
        GenMeasuresWarning,
        MeasureError,
        MissingInputError,
        ModelError,
        NumericalError,
        ReportError,
        SpaceError,
        StudyError,
        TrainingError,
        UnknownMeasureError,
        UnsupportedInputError,
        UnsupportedLayerError,
    )
    from genmeasures.measures import (
        MeasureContext,
        MeasureResult,
        Results,
        compute,
        get_measure,
        list_measures,
        register_measure,
    )
    from genmeasures.models import build_model, describe, fold_batchnorm, weight_layers
    from genmeasures.zoo import Zoo

__version__ = version("genmeasures")

_ERRORS = (
    "CorruptCheckpointError",
    "DataError",
    "EvaluationError",
    "GenMeasuresError",
    "GenMeasuresWarning",
    "MeasureError",
    "MissingInputError",
    "ModelError",
    "NumericalError",
    "ReportError",
    "SpaceError",
    "StudyError",
    "TrainingError",
    "UnknownMeasureError",
    "UnsupportedInputError",
    "UnsupportedLayerError",
    "WorkerError",
)
_SOURCES: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "genmeasures.errors"),
    **dict.fromkeys(("Dataset", "load_dataset"), "genmeasures.data"),
    **dict.fromkeys(
        (
            "MeasureContext",
            "MeasureResult",
            "Results",
            "compute",
            "get_measure",
            "list_measures",
            "register_measure",
        ),
        "genmeasures.measures",
    ),
    **dict.fromkeys(
        ("build_model", "describe", "fold_batchnorm", "weight_layers"), "genmeasures.models"
    ),
    "Zoo": "genmeasures.zoo",
}

__all__ = [
    "CorruptCheckpointError",
    "DataError",
    "Dataset",
    "EvaluationError",
    "GenMeasuresError",
    "GenMeasuresWarning",
    "MeasureContext",
    "MeasureError",
    "MeasureResult",
    "MissingInputError",
    "ModelError",
    "NumericalError",
    "ReportError",
    "Results",
    "SpaceError",
    "StudyError",
    "TrainingError",
    "UnknownMeasureError",
    "UnsupportedInputError",
    "UnsupportedLayerError",
    "WorkerError",
    "Zoo",
    "__version__",
    "build_model",
    "compute",
    "describe",
    "evaluate",
    "fold_batchnorm",
    "get_measure",
    "list_measures",
    "load_dataset",
    "register_measure",
    "weight_layers",
]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        return importlib.import_module("genmeasures.evaluate")
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genmeasures' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
