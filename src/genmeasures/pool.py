"""Local worker processes of a driver: spawned, and gone as soon as the driver is.

A study's training (:mod:`genmeasures.zoo.executors`) and measuring
(:mod:`genmeasures.zoo.measuring`) and a report's figures (:mod:`genmeasures.evaluate.report`)
run their work in such a pool. Workers only compute and return; the driver, the process that
opened the pool, is the only writer of files, so a worker that dies loses nothing stored.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import TypeVar

from genmeasures.errors import WorkerError

__all__ = ["check_workers", "completed_in_pool", "first_completed", "worker_pool"]

Task = TypeVar("Task")
Outcome = TypeVar("Outcome")


def check_workers(workers: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``workers`` is a positive int (a count of worker processes)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise error(f"workers must be a positive int, got {workers!r}")


def _follow_driver(lifeline: Connection) -> None:
    """Pool initializer: end this worker as soon as the driver is gone, however it went.

    The driver holds the only write end of the ``lifeline`` pipe (spawned processes inherit no
    descriptor they are not given, and the driver gives only the read end). The kernel closes
    it when the driver exits, even by SIGKILL, and the watching thread then reads end-of-file
    and exits the process at once; the driver also closes it on purpose to stop its workers
    without waiting for their work. Unlike ``prctl(PR_SET_PDEATHSIG)`` this does not depend on
    which driver thread started the worker, and unlike polling ``os.getppid()`` it reacts
    immediately. The worker ignores SIGINT: Ctrl-C reaches the whole process group, and the
    driver alone decides how to stop.

    Args:
        lifeline: The read end of the driver's pipe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        lifeline.poll(None)  # the driver never writes: readable means end of file
        os._exit(1)  # no cleanup: the driver is the only writer, there is nothing to save

    threading.Thread(target=watch, name="genmeasures-driver-watch", daemon=True).start()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes that end with the block or with the driver.

    A block left by an exception (Ctrl-C, SIGTERM turned into one, an error) ends the workers
    at once instead of waiting for the work they hold.
    """
    # Spawned (not forked) workers: a fork of a process that has run torch can deadlock.
    context = multiprocessing.get_context("spawn")
    lifeline, keep_alive = context.Pipe(duplex=False)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_follow_driver,
        initargs=(lifeline,),
    )
    try:
        yield pool
    except BaseException:
        keep_alive.close()  # stopped: end the workers, do not wait
        raise
    finally:
        pool.shutdown(cancel_futures=True)
        keep_alive.close()
        lifeline.close()


def first_completed(futures: Iterable[Future[Outcome]], doing: str) -> list[Future[Outcome]]:
    """Wait for at least one of ``futures``; the completed ones, their results available.

    Raises:
        WorkerError: if a worker process died (``doing`` says what it was doing).
    """
    done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
    for future in done:
        try:
            future.result()
        except BrokenProcessPool as error:
            raise WorkerError(
                f"a worker process died while {doing} (killed from outside, or out of "
                "memory?); run the same command to resume"
            ) from error
    return list(done)


def completed_in_pool(
    work: Callable[[Task], Outcome], tasks: Iterable[Task], workers: int, doing: str
) -> Iterator[tuple[Task, Outcome]]:
    """Run ``work`` on each task in a :func:`worker_pool`; yield ``(task, outcome)`` as done.

    At most two tasks per worker are in flight, so the driver holds few inputs and outcomes
    at a time. ``work`` must be importable (a module-level function).

    Raises:
        WorkerError: if a worker process died (``doing`` says what it was doing).
    """
    queue = iter(tasks)
    with worker_pool(workers) as pool:
        pending: dict[Future[Outcome], Task] = {}
        for task in queue:
            pending[pool.submit(work, task)] = task
            if len(pending) == 2 * workers:
                break
        while pending:
            for future in first_completed(pending, doing):
                task = pending.pop(future)
                for refill in queue:
                    pending[pool.submit(work, refill)] = refill
                    break
                yield task, future.result()
