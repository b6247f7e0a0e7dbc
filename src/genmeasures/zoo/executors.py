"""Train a study's pending models: in this process, in a local process pool, or on Ray.

Workers only train and return :class:`~genmeasures.zoo.store.ModelResult` objects; the driver
(the process that called :func:`train_zoo`) is the only writer of the study folder. Work is cut
into units of configs that train in lockstep (:func:`plan_units`; a configuration trains to the
same bits in any unit, see :mod:`genmeasures.zoo.batched`); a pool or a Ray cluster runs units in
parallel, each worker with one torch thread, since oversubscribed threads are far slower than one
thread per process.

Workers die with their driver: a pool worker exits as soon as the driver is gone, however it
went (:func:`genmeasures.pool.worker_pool`), and an interrupted driver stops its workers
without waiting for their units. A local Ray instance mostly fate-shares with the driver by itself
(``PR_SET_PDEATHSIG``); the processes that would outlive a killed driver (Ray's per-node agents)
are ended by a watchdog (:mod:`genmeasures.zoo.watchdog`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from genmeasures.errors import StudyError
from genmeasures.names import EXECUTORS
from genmeasures.pool import check_workers, first_completed, worker_pool
from genmeasures.zoo.batched import SHARED_FIELDS
from genmeasures.zoo.space import Config, canonical_json
from genmeasures.zoo.space.memory import forward_multiply_adds
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import ModelResult, Zoo
from genmeasures.zoo.watchdog import watch_descendants
from genmeasures.zoo.worker import collect_unit, train_unit

#: Most members in one unit: bounds what a kill can lose and what one worker holds.
MAX_UNIT = 32

#: Called after each stored result with (result, models finished so far, models to train).
ResultCallback = Callable[[ModelResult, int, int], None]


@dataclass
class TrainSummary:
    """What one :func:`train_zoo` call did.

    Attributes:
        trained: Results stored by this call, by status
            (:class:`~genmeasures.zoo.states.ModelState`).
        skipped: Models already finished before the call.
        reset: Rows left ``running`` by a dead process and retried.
        invalidated: Models whose checkpoint failed verification and were retrained.
        seconds: Wall time of the call.
    """

    trained: dict[ModelState, int] = field(default_factory=dict)
    skipped: int = 0
    reset: int = 0
    invalidated: int = 0
    seconds: float = 0.0


def _unit_key(config: Config) -> str:
    """What configs must share to train in one unit: data, architecture, :data:`SHARED_FIELDS`."""
    return canonical_json(
        {
            "data": config.data_hash,
            "model": [config.model, config.model_hparams],
            "batch": [getattr(config.training, name) for name in SHARED_FIELDS],
        }
    )


def plan_units(
    configs: Sequence[Config], *, batched: bool, workers: int = 1, max_unit: int = MAX_UNIT
) -> list[list[Config]]:
    """Cut configs into units of work, in the order they should start.

    In one process, with ``batched``, configs that share data, architecture and the settings a
    unit shares (:data:`~genmeasures.zoo.batched.SHARED_FIELDS`: batch size and loss checks)
    form units of at most ``max_unit`` members, in grid order; a unit saves a little Python per
    step. For parallel workers every config is a unit of its own, the costliest first
    (longest-processing-time-first, by the multiply-adds of a forward pass,
    :func:`~genmeasures.zoo.space.memory.forward_multiply_adds`), so that the last models to
    finish are short ones: measured over two workers on the quick preset, lockstep units of 4-5
    members trained 6-7 % slower than single models (several models' activations compete for
    the cache, and larger pieces balance worse). A configuration trains to the same bits in any
    unit (:mod:`genmeasures.zoo.batched`): the plan changes only the time.

    Args:
        configs: The configs to train.
        batched: In one process, group configs that can train together; otherwise one unit
            per config.
        workers: Parallel workers that will run the units.
        max_unit: Most members per unit.

    Returns:
        The units.
    """
    if workers > 1:
        return sorted(
            ([config] for config in configs),
            key=lambda unit: (-forward_multiply_adds(unit[0]), unit[0].index),
        )
    if not batched:
        return [[config] for config in configs]
    groups: dict[str, list[Config]] = defaultdict(list)
    for config in configs:
        groups[_unit_key(config)].append(config)
    units = []
    for group in groups.values():
        parts = -(-len(group) // max_unit)
        units += [group[part::parts] for part in range(parts)]
    return sorted(units, key=lambda unit: unit[0].index)


def _run_in_process(
    units: list[list[Config]],
    zoo: Zoo,
    data_root: str | None,
    batched: bool,
    store: Callable[[ModelResult], None],
) -> None:
    for unit in units:
        zoo.mark_running(c.hash for c in unit)
        train_unit(unit, data_root=data_root, batched=batched, emit=store)


def _run_queued(
    units: list[list[Config]],
    zoo: Zoo,
    store: Callable[[ModelResult], None],
    capacity: int,
    *,
    submit: Callable[[list[Config]], Any],
    finished: Callable[[list[Any]], list[tuple[Any, list[ModelResult]]]],
) -> None:
    """Keep up to two units per worker in flight; store each unit's results as it completes."""
    queue = deque(units)
    pending: dict[Any, list[Config]] = {}
    while queue or pending:
        while queue and len(pending) < 2 * capacity:
            unit = queue.popleft()
            zoo.mark_running(c.hash for c in unit)
            pending[submit(unit)] = unit
        for handle, results in finished(list(pending)):
            pending.pop(handle)
            for result in results:
                store(result)


def _run_pool(
    units: list[list[Config]],
    zoo: Zoo,
    data_root: str | None,
    batched: bool,
    store: Callable[[ModelResult], None],
    workers: int,
) -> None:
    doing = f"training a unit of {zoo.path}"

    def finished(futures: list[Future[list[ModelResult]]]) -> list[tuple[Any, Any]]:
        return [(future, future.result()) for future in first_completed(futures, doing)]

    with worker_pool(workers) as pool:
        _run_queued(
            units,
            zoo,
            store,
            workers,
            submit=lambda unit: pool.submit(collect_unit, unit, data_root, batched),
            finished=finished,
        )


def _init_ray(ray: Any, address: str | None) -> None:
    """Start or join Ray, keeping the caller's SIGTERM handler.

    ``ray.init`` replaces it with an immediate exit, which would skip the caller's clean stop
    (the CLI's: end the workers, reset this run's rows).
    """
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _run_ray(
    units: list[list[Config]],
    zoo: Zoo,
    data_root: str | None,
    batched: bool,
    store: Callable[[ModelResult], None],
    address: str | None,
) -> None:
    try:
        import ray
    except ImportError as error:
        raise StudyError(
            "--executor ray needs Ray: pip install 'genmeasures[ray]' (or pip install ray)"
        ) from error
    started_here = not ray.is_initialized()
    # A local instance is this run's processes: a watchdog ends them if the driver is killed.
    release = watch_descendants() if started_here and address is None else (lambda: None)
    try:
        if started_here:
            _init_ray(ray, address)
        remote_unit = ray.remote(num_cpus=1)(collect_unit)
        capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))

        def finished(refs: list[Any]) -> list[tuple[Any, Any]]:
            done, _ = ray.wait(refs, num_returns=1)
            return [(ref, ray.get(ref)) for ref in done]

        _run_queued(
            units,
            zoo,
            store,
            capacity,
            submit=lambda unit: remote_unit.remote(unit, data_root, batched),
            finished=finished,
        )
    finally:
        if started_here:
            ray.shutdown()
        release()


def train_zoo(
    zoo: Zoo,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    data_root: str | None = None,
    batched: bool = True,
    retry_failed: bool = False,
    on_result: ResultCallback | None = None,
) -> TrainSummary:
    """Train every pending model of a study and store the results; resumable.

    Holds the study's lock for the whole call, so rows found ``running`` are left by a dead
    process and are retried; finished rows are skipped; checkpoints of finished models are
    verified first and retrained if they do not match their digests.

    Args:
        zoo: The study.
        executor: ``"local"`` (this process when ``workers == 1``, else a process pool) or
            ``"ray"``.
        workers: Parallel worker processes for the local executor (each uses one torch thread).
        address: Address of a running Ray cluster; None starts a local Ray instance.
        data_root: Folder of file-based datasets (MNIST, CIFAR-10, SVHN).
        batched: Train the configs of a unit together, in lockstep (the same models either way).
        retry_failed: Train ``failed`` models again.
        on_result: Called after each stored result, e.g. to drive a progress bar.

    Returns:
        A :class:`TrainSummary`.

    Raises:
        StudyError: for an unknown executor, a bad worker count, a study in use by another
            process, or Ray missing.
        WorkerError: if a worker process of the local pool died.
    """
    if executor not in EXECUTORS:
        raise StudyError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    check_workers(workers, StudyError)
    start = time.perf_counter()
    summary = TrainSummary()
    with zoo.lock():
        zoo.remove_temporary_files()
        summary.reset = zoo.reset_stale()
        summary.invalidated = len(zoo.verify_all())
        configs = zoo.to_train(retry_failed=retry_failed)
        summary.skipped = len(zoo.space) - len(configs)
        parallel = 1 if executor == "local" and workers == 1 else workers
        if executor == "ray":
            parallel = max(workers, 2)
        units = plan_units(configs, batched=batched, workers=parallel)
        finished = 0

        def store(result: ModelResult) -> None:
            nonlocal finished
            zoo.record(result)
            finished += 1
            summary.trained[result.status] = summary.trained.get(result.status, 0) + 1
            if on_result is not None:
                on_result(result, finished, len(configs))

        try:
            if executor == "ray":
                _run_ray(units, zoo, data_root, batched, store, address)
            elif workers == 1:
                _run_in_process(units, zoo, data_root, batched, store)
            else:
                _run_pool(units, zoo, data_root, batched, store, workers)
        except KeyboardInterrupt:
            # Stopped by Ctrl-C (or SIGTERM, which the CLI turns into one): results are stored
            # in transactions, so nothing is half-written; the lock is still held, so the rows
            # left running are this run's, back to pending for the next run.
            zoo.reset_stale()
            zoo.remove_temporary_files()
            raise
    summary.seconds = time.perf_counter() - start
    return summary
