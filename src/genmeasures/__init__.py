"""genmeasures: which quantity of a trained network predicts how well it generalizes?

Measures (Jiang et al. 2020; Tsuzuku et al. 2020) on any PyTorch model, model zoos, and their
evaluation. The public API::

    import genmeasures as gm
    data = gm.load_dataset("mnist1d")
    model = gm.build_model("mlp", data.input_shape, data.num_classes, depth=2, width=64)
    results = gm.compute(model, data, measures="*spec*", init_model=initial_copy)
    zoo = gm.Zoo("runs/quick")  # a study folder made by `genmeasures train`
"""

from importlib.metadata import version

from genmeasures.data import Dataset, load_dataset
from genmeasures.errors import (
    DataError,
    GenMeasuresError,
    GenMeasuresWarning,
    MeasureError,
    MissingInputError,
    ModelError,
    NumericalError,
    UnknownMeasureError,
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
from genmeasures.models import build_model, fold_batchnorm, weight_layers
from genmeasures.zoo import Zoo

__version__ = version("genmeasures")

__all__ = [
    "DataError",
    "Dataset",
    "GenMeasuresError",
    "GenMeasuresWarning",
    "MeasureContext",
    "MeasureError",
    "MeasureResult",
    "MissingInputError",
    "ModelError",
    "NumericalError",
    "Results",
    "UnknownMeasureError",
    "UnsupportedLayerError",
    "Zoo",
    "__version__",
    "build_model",
    "compute",
    "fold_batchnorm",
    "get_measure",
    "list_measures",
    "load_dataset",
    "register_measure",
    "weight_layers",
]
