"""What a worker does with a unit of configs: train them and return results, never write.

A unit is a list of configs that share their data, architecture and the settings that place
their steps and checks (see :func:`genmeasures.zoo.executors.plan_units`); batched, they train
together in lockstep (:func:`genmeasures.zoo.batched.train_batched`), otherwise one after another,
each as a unit of one: the training kernel gives each configuration the same bits either way.
Everything here runs with one torch thread (:func:`~genmeasures.zoo.batched.one_torch_thread`),
so that the training measures too are the same bits in every process. Each trained model comes
back as a :class:`~genmeasures.zoo.store.ModelResult` with its weights, records and the
optimization-based measures (Jiang et al. 2020, eqs 63-66), which need the full training records
and are cheapest to compute while the model is in memory.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import GenMeasuresWarning
from genmeasures.measures import compute
from genmeasures.zoo.batched import one_torch_thread, train_batched
from genmeasures.zoo.checkpoint import model_spec
from genmeasures.zoo.space import Config
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import ModelResult
from genmeasures.zoo.train import TrainingRun

#: Measures computed with the training run and stored with it (Jiang et al. 2020, §3.8).
TRAINING_MEASURES = (
    "num-step-to-0.1-loss",
    "num-step-0.1-to-0.01-loss",
    "grad-noise-epoch-1",
    "grad-noise-final",
)

Emit = Callable[[ModelResult], None]

_DATASETS: dict[tuple[str, str | None], Dataset] = {}


def cached_dataset(config: Config, data_root: str | None) -> Dataset:
    """The config's dataset, loaded once per process and data settings."""
    key = (config.data_hash, data_root)
    if key not in _DATASETS:
        _DATASETS.clear()  # one study uses few datasets; keep memory to the one in use
        _DATASETS[key] = config.load_dataset(data_root)
    return _DATASETS[key]


def _result(config: Config, run: TrainingRun, dataset: Dataset) -> ModelResult:
    measures = []
    if run.status is not ModelState.DIVERGED:
        with warnings.catch_warnings():
            # Undefined values (e.g. a threshold never reached) are stored with their reason.
            warnings.simplefilter("ignore", GenMeasuresWarning)
            results = compute(
                run.model,
                dataset,
                measures=list(TRAINING_MEASURES),
                records=run.records,
                seed=config.seed,
            )
            measures = [results[name] for name in results]
    return ModelResult(
        hash=config.hash,
        status=run.status,
        metrics=dict(run.metrics),
        records=dict(run.records),
        final_state={k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        init_state={k: v.detach().cpu() for k, v in run.init_model.state_dict().items()},
        spec=model_spec(
            config.model,
            dataset.input_shape,
            dataset.num_classes,
            **config.model_hparams,
            seed=config.seed,
        ),
        measures=measures,
    )


def _failure(config: Config) -> ModelResult:
    return ModelResult(hash=config.hash, status=ModelState.FAILED, error=traceback.format_exc())


def train_unit(
    configs: Sequence[Config], *, data_root: str | None, batched: bool, emit: Emit
) -> None:
    """Train a unit of configs, calling ``emit`` with each model's result as soon as it stops.

    Every exception is caught per model and reported as a ``failed`` result with its traceback,
    so a bad config never stops a study.

    Args:
        configs: Configs sharing data, architecture and the settings a unit shares.
        data_root: Folder of file-based datasets (machine-local, not part of any config).
        batched: Train the unit's configs together; otherwise one after another. Either way
            each gives the same model.
        emit: Receives each :class:`ModelResult`.
    """
    with one_torch_thread():
        try:
            dataset = cached_dataset(configs[0], data_root)
            models = [config.build_model(dataset) for config in configs]
        except Exception:
            for config in configs:
                emit(_failure(config))
            return
        groups = [list(range(len(configs)))] if batched else [[i] for i in range(len(configs))]
        for group in groups:
            _train_together([configs[i] for i in group], [models[i] for i in group], dataset, emit)


def _train_together(
    configs: Sequence[Config], models: list[nn.Module], dataset: Dataset, emit: Emit
) -> None:
    finished: set[int] = set()

    def on_finish(index: int, run: TrainingRun) -> None:
        finished.add(index)
        try:
            result = _result(configs[index], run, dataset)
        except Exception:
            result = _failure(configs[index])
        emit(result)

    try:
        train_batched(models, dataset, [c.training for c in configs], on_finish=on_finish)
    except Exception:
        for index, config in enumerate(configs):
            if index not in finished:
                emit(_failure(config))


def collect_unit(
    configs: Sequence[Config], data_root: str | None, batched: bool
) -> list[ModelResult]:
    """:func:`train_unit` for a worker process: one torch thread, results returned as a list."""
    torch.set_num_threads(1)
    results: list[ModelResult] = []
    train_unit(configs, data_root=data_root, batched=batched, emit=results.append)
    return results
