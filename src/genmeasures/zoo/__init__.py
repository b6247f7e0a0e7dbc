"""Model zoos: train populations of networks, store them, resume (Jiang et al. 2020, §2).

A space (:mod:`~genmeasures.zoo.space`) is a grid of hyperparameters; a study folder
(:class:`~genmeasures.zoo.store.Zoo`) holds its models; :func:`train_zoo` trains the pending ones
(in process, in a process pool or on Ray) and :func:`measure_zoo` computes measures of the
finished ones.
"""

from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.space import Config, Space, list_presets, load_space
from genmeasures.zoo.store import Zoo

__all__ = [
    "Config",
    "Space",
    "Zoo",
    "list_presets",
    "load_space",
    "measure_zoo",
    "train_zoo",
]
