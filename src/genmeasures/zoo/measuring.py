"""Compute measures for every finished model of a study, resumably.

A value is identified by (model, measure name, parameters): a value already stored with the same
parameters is not computed again, so an interrupted ``genmeasures measure DIR`` continues where
it stopped, and asking for a measure with other options adds values beside the old ones. A stored
value computed by another implementation version of its measure is stale
(:mod:`genmeasures.zoo.versions`): it is computed again and replaced. Each model's values are
written in one transaction as soon as they are computed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from genmeasures.data import Dataset
from genmeasures.errors import CorruptCheckpointError, GenMeasuresWarning
from genmeasures.measures import compute
from genmeasures.measures.registry import MeasureSpec, get_measure, resolve_measures
from genmeasures.zoo.space import Config
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import Zoo
from genmeasures.zoo.versions import is_stale

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
        warnings: Distinct warning messages raised while computing.
        seconds: Wall time of the call.
    """

    measured: int = 0
    up_to_date: int = 0
    values: int = 0
    recomputed: int = 0
    corrupt: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


def measure_zoo(
    zoo: Zoo,
    measures: str | Iterable[str] = "all",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    data_root: str | None = None,
    on_model: ModelCallback | None = None,
) -> MeasureSummary:
    """Compute the requested measures for every ``done`` model of a study and store them.

    A value already stored with the same parameters is skipped unless it is stale (computed by
    another implementation version of its measure): then it is computed again and replaced.
    Each model is measured with its training data, its initial weights and its training records,
    with ``seed`` = the config's seed. Models that did not reach the target are not measured:
    they are excluded from every score (``EVALUATION.md``).

    Args:
        zoo: The study.
        measures: Names, aliases or glob patterns (as :func:`genmeasures.compute` takes).
        options: Measure name → keyword parameters.
        data_root: Folder of file-based datasets.
        on_model: Called after each model, e.g. to drive a progress bar.

    Returns:
        A :class:`MeasureSummary`.

    Raises:
        UnknownMeasureError: for a name that is not registered.
        MeasureError: for options a measure does not accept.
    """
    start = time.perf_counter()
    specs = [spec for spec, _ in resolve_measures(measures)]
    options = {get_measure(name).name: value for name, value in (options or {}).items()}
    summary = MeasureSummary()
    configs = zoo.configs((ModelState.DONE,))
    dataset: tuple[str, Dataset] | None = None
    seen_warnings: dict[str, None] = {}
    for position, config in enumerate(configs, start=1):
        missing, stale = _to_compute(specs, options, config.seed, zoo.stored_measures(config.hash))
        if not missing:
            summary.up_to_date += 1
        else:
            try:
                run = zoo.load(config.hash)
            except CorruptCheckpointError:
                summary.corrupt += 1
            else:
                key = config.data_hash
                if dataset is None or dataset[0] != key:
                    dataset = (key, config.load_dataset(data_root))
                wanted = [spec.name for spec in missing]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", GenMeasuresWarning)
                    results = compute(
                        run.model,
                        dataset[1],
                        measures=wanted,
                        init_model=run.init_model,
                        records=run.records,
                        seed=config.seed,
                        options={n: o for n, o in options.items() if n in wanted},
                    )
                for warning in caught:
                    seen_warnings.setdefault(f"{config.hash}: {warning.message}")
                zoo.record_measures(config.hash, [results[name] for name in results])
                summary.measured += 1
                summary.values += len(results)
                summary.recomputed += stale
                for name in results:
                    status = results[name].status
                    summary.statuses[status] = summary.statuses.get(status, 0) + 1
        if on_model is not None:
            on_model(config, position, len(configs))
    summary.warnings = list(seen_warnings)
    summary.seconds = time.perf_counter() - start
    return summary
