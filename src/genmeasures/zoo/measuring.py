"""Compute measures for every finished model of a study, resumably.

A value is identified by (model, measure name, parameters): a value already stored with the same
parameters is not computed again, so an interrupted ``genmeasures measure DIR`` continues where
it stopped, and asking for a measure with other options adds values beside the old ones. A stored
value computed by another implementation version of its measure is stale
(:mod:`genmeasures.zoo.versions`): it is computed again and replaced. Each model's values are
written in one transaction as soon as they are computed. Models are measured in this process or
in a pool of worker processes (:mod:`genmeasures.pool`), one torch thread each; this process
alone writes the study.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genmeasures.errors import CorruptCheckpointError, GenMeasuresWarning, StudyError
from genmeasures.measures import MeasureResult, compute
from genmeasures.measures.registry import MeasureSpec, get_measure, resolve_measures
from genmeasures.pool import check_workers, completed_in_pool
from genmeasures.zoo.batched import one_torch_thread
from genmeasures.zoo.checkpoint import load_run
from genmeasures.zoo.space import Config
from genmeasures.zoo.space.memory import forward_multiply_adds
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import Zoo
from genmeasures.zoo.versions import is_stale
from genmeasures.zoo.worker import cached_dataset

#: Called after each model with (config, models done so far, models to measure).
ModelCallback = Callable[[Config, int, int], None]


@dataclass
class MeasureSummary:
    """What one :func:`measure_zoo` call did.

    Attributes:
        measured: Models for which at least one value was computed.
        up_to_date: Models that already had every requested value.
        values: Values computed and stored.
        recomputed: Of those, stale values replaced: values stored by another implementation
            version of their measure (:mod:`genmeasures.zoo.versions`).
        corrupt: Models skipped because a checkpoint failed verification (sent back to
            ``pending`` for retraining).
        statuses: Count of the computed values by status (ok, missing, undefined, ...).
        unconverged: For each measure, the values computed that did not converge (status ok,
            ``converged`` false: an iterative step stopped before its criterion).
        warnings: One line per kind of warning raised while computing (:func:`warning_kind`),
            with the model that raised it or how many did.
        seconds: Wall time of the call.
    """

    measured: int = 0
    up_to_date: int = 0
    values: int = 0
    recomputed: int = 0
    corrupt: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unconverged: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add_model(self, results: list[MeasureResult], stale: int) -> None:
        """Count one measured model's values, ``stale`` of which replaced stale ones."""
        self.measured += 1
        self.values += len(results)
        self.recomputed += stale
        for result in results:
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            if result.status == "ok" and not result.converged:
                self.unconverged[result.name] = self.unconverged.get(result.name, 0) + 1


def _to_compute(
    specs: list[MeasureSpec],
    options: Mapping[str, Mapping[str, Any]],
    seed: int,
    stored: Mapping[tuple[str, str], int | None],
) -> tuple[list[MeasureSpec], int]:
    """The measures whose value is not stored or is stale, and how many of them are stale.

    Args:
        specs: The measures asked for.
        options: Measure name → keyword parameters.
        seed: The model's seed.
        stored: The model's stored values (:meth:`Zoo.stored_measures`).
    """
    wanted, stale = [], 0
    for spec in specs:
        key = (spec.name, spec.params_key(options.get(spec.name, {}), seed))
        if key in stored and not is_stale(stored[key], spec.version):
            continue
        wanted.append(spec)
        stale += key in stored
    return wanted, stale


@dataclass(frozen=True)
class MeasureTask:
    """One model's measures to compute: what a measuring worker receives.

    Attributes:
        config: The model's configuration (its data, seed).
        checkpoints: Its checkpoint folder, verified by the driver.
        names: The measures to compute.
        options: Measure name → keyword parameters, for these measures.
        data_root: Folder of file-based datasets.
    """

    config: Config
    checkpoints: Path
    names: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]]
    data_root: str | None


def measure_model(task: MeasureTask) -> tuple[list[MeasureResult], list[str]]:
    """Compute one model's measures; its results and the warnings they raised.

    Runs with one torch thread, in a worker process or in the driver, so a value does not
    depend on the number of workers that computed the study.
    """
    run = load_run(task.checkpoints)
    dataset = cached_dataset(task.config, task.data_root)
    with one_torch_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GenMeasuresWarning)
        results = compute(
            run.model,
            dataset,
            measures=list(task.names),
            init_model=run.init_model,
            records=run.records,
            seed=task.config.seed,
            options=dict(task.options),
        )
    return [results[name] for name in results], [str(warning.message) for warning in caught]


#: A number standing alone in a warning (not part of a name such as ``num-step-0.1-to-0.01-loss``).
_NUMBER = re.compile(r"(?<![\w.-])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.-])")


def warning_kind(message: str) -> str:
    """What warnings of one kind share: the message with its numbers masked (``#``).

    A saturated search warns with the value and scale at which it stopped, which differ from
    model to model; the kind is the same.
    """
    return _NUMBER.sub("#", message)


def _warning_line(messages: list[str], models: list[str]) -> str:
    """Warnings of one kind and the models that raised them: one line however many they are."""
    if len(models) == 1:
        return f"{models[0]}: {messages[0]}"
    figures = "" if len(set(messages)) == 1 else " (the first model's figures; others differ)"
    return f"{len(models)} models ({models[0]}, ...): {messages[0]}{figures}"


def measure_zoo(
    zoo: Zoo,
    measures: str | Iterable[str] = "all",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    data_root: str | None = None,
    workers: int = 1,
    on_model: ModelCallback | None = None,
) -> MeasureSummary:
    """Compute the requested measures for every ``done`` model of a study and store them.

    A value already stored with the same parameters is skipped unless it is stale (computed by
    another implementation version of its measure): then it is computed again and replaced.
    Each model is measured with its training data, its initial weights and its training records,
    with ``seed`` = the config's seed, with one torch thread (:func:`measure_model`). Models that
    did not reach the target are not measured: they are excluded from every score
    (``EVALUATION.md``). With ``workers > 1`` models are measured in parallel worker processes;
    this process stores each model's values as they come, so an interrupted call loses at most
    the models being measured.

    Args:
        zoo: The study.
        measures: Names, aliases or glob patterns (as :func:`genmeasures.compute` takes).
        options: Measure name → keyword parameters.
        data_root: Folder of file-based datasets.
        workers: Parallel worker processes (1: measure in this process).
        on_model: Called after each model, e.g. to drive a progress bar.

    Returns:
        A :class:`MeasureSummary`.

    Raises:
        UnknownMeasureError: for a name that is not registered.
        MeasureError: for options a measure does not accept.
        StudyError: for a bad worker count.
        WorkerError: if a worker process died.
    """
    check_workers(workers, StudyError)
    start = time.perf_counter()
    specs = [spec for spec, _ in resolve_measures(measures)]
    options = {get_measure(name).name: value for name, value in (options or {}).items()}
    summary = MeasureSummary()
    configs = zoo.configs((ModelState.DONE,))
    position = 0

    def progress(config: Config) -> None:
        nonlocal position
        position += 1
        if on_model is not None:
            on_model(config, position, len(configs))

    tasks: list[MeasureTask] = []
    stale_counts: dict[str, int] = {}
    for config in configs:
        missing, stale = _to_compute(specs, options, config.seed, zoo.stored_measures(config.hash))
        if not missing:
            summary.up_to_date += 1
            progress(config)
            continue
        try:
            checkpoints = zoo.verified_checkpoint_dir(config.hash)
        except CorruptCheckpointError:
            summary.corrupt += 1
            progress(config)
            continue
        names = tuple(spec.name for spec in missing)
        wanted = {name: value for name, value in options.items() if name in names}
        tasks.append(MeasureTask(config, checkpoints, names, wanted, data_root))
        stale_counts[config.hash] = stale

    if workers == 1:
        outcomes: Iterable[tuple[MeasureTask, Any]] = ((t, measure_model(t)) for t in tasks)
    else:
        # The largest models first, so that the last ones to finish are quick.
        tasks.sort(key=lambda task: -forward_multiply_adds(task.config))
        outcomes = completed_in_pool(measure_model, tasks, workers, f"measuring {zoo.path}")
    warned: dict[str, dict[str, str]] = {}  # kind → each model that raised it → its message
    for task, (results, messages) in outcomes:
        model_hash = task.config.hash
        zoo.record_measures(model_hash, results)
        for message in messages:
            warned.setdefault(warning_kind(message), {}).setdefault(model_hash, message)
        summary.add_model(results, stale_counts[model_hash])
        progress(task.config)
    summary.warnings = [
        _warning_line(list(models.values()), list(models)) for models in warned.values()
    ]
    summary.seconds = time.perf_counter() - start
    return summary
