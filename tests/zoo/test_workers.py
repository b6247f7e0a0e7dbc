"""A `train --workers 2` stopped by SIGKILL, SIGTERM or SIGINT leaves no process behind.

The driver's pool workers (and multiprocessing's resource tracker) must exit within seconds of
the driver, however it stops; SIGTERM and SIGINT stop it cleanly, with one line and no
traceback; the resumed study equals an uninterrupted one, model for model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pytest
from test_kill_resume import SPACE, done_rows, start

from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.space import load_space
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import Zoo

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree from /proc"
)

#: Twelve models: enough that a run is still training when its first result is stored.
WORKER_SPACE = SPACE.replace("seed = [0, 1]", "seed = [0, 1, 2]")
POOL = ("--workers", "2", "--no-batch")
#: How long workers may outlive their driver (issue 15).
GRACE = 10.0


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, parent = text[text.rindex(")") + 2 :].split()[:2]  # the name may hold ") "
    return state, int(parent)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = defaultdict(list)
    for folder in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(folder.name))
        if stat is not None:
            children[stat[1]].append(int(folder.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children[stack.pop()]:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def running(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that still run (a zombie has exited: it only waits to be reaped)."""
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z"}


def command_line(pid: int) -> bytes:
    """A process's command line (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pool_workers(pid: int) -> set[int]:
    """The spawned multiprocessing workers below ``pid``."""
    return {child for child in descendants(pid) if b"spawn_main" in command_line(child)}


def end(pids: Iterable[int]) -> None:
    """SIGKILL those of ``pids`` still running: a failed test leaves nothing behind either."""
    for pid in running(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    begin = time.monotonic()
    while not condition():
        if time.monotonic() - begin > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - begin


def results(study: Path) -> pd.DataFrame:
    with Zoo(study) as zoo:
        assert zoo.verify_all() == []
        return zoo.table(measures=True).drop(columns="seconds")


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(WORKER_SPACE)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def reference(space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The study trained without interruption, by the same pool of two one-thread workers."""
    folder = tmp_path_factory.mktemp("reference") / "study"
    with Zoo.create(folder, load_space(space_file)) as zoo:
        train_zoo(zoo, workers=2, batched=False)
    return results(folder)


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name
)
def test_workers_end_with_their_driver_and_the_study_resumes(
    space_file: Path, tmp_path: Path, reference: pd.DataFrame, signum: signal.Signals
) -> None:
    study = tmp_path / "study"
    driver = start(space_file, study, *POOL)
    wait_for(
        lambda: done_rows(study) >= 1 and len(pool_workers(driver.pid)) == 2,
        timeout=300,
        what="a stored result and two pool workers",
    )
    processes = descendants(driver.pid)
    driver.send_signal(signum)
    sent = time.monotonic()
    try:
        driver.wait(timeout=GRACE)
        wait_for(lambda: not running(processes), GRACE - (time.monotonic() - sent), "workers gone")
    finally:
        end(processes)
    print(f"{signum.name}: {len(processes)} processes gone {time.monotonic() - sent:.2f} s after")
    stderr = driver.stderr.read()  # after the workers: they hold the pipe open too
    assert done_rows(study) < 12, "the run finished before the signal: use a larger space"
    if signum != signal.SIGKILL:
        message = stderr.decode().strip()
        assert driver.returncode == 128 + signum
        assert "Traceback" not in message
        assert message.splitlines()[-1].startswith("genmeasures: interrupted: ")
        assert message.endswith(" of 12 models stored; run the same command to resume")
        with Zoo(study) as zoo:
            assert zoo.counts()[ModelState.RUNNING] == 0
    resumed = start(space_file, study, *POOL)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    pd.testing.assert_frame_equal(results(study), reference)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_local_ray_instance_ends_with_its_driver(tmp_path: Path, signum: signal.Signals) -> None:
    """Ray's own fate-sharing: its processes die with the driver that started them.

    After a SIGKILL, Ray's two per-node agents (DashboardAgent, RuntimeEnvAgent) notice the
    raylet's death at once but then wait 60 s trying to report it to the dead GCS before they
    exit (Ray 2.60): a Ray limitation, left out of the 10 s bound here and ended by the test.
    SIGTERM shuts Ray down cleanly, every process included.
    """
    pytest.importorskip("ray")
    space = tmp_path / "space.toml"
    space.write_text(SPACE.replace("seed = [0, 1]", "seed = [0, 1, 2, 3, 4, 5, 6, 7]"))
    study = tmp_path / "study"
    driver = start(space, study, "--executor", "ray", "--no-batch")
    wait_for(lambda: done_rows(study) >= 1, timeout=300, what="a stored result")
    processes = descendants(driver.pid)
    agents = {pid for pid in processes if b"Agent" in command_line(pid)}
    driver.send_signal(signum)
    sent = time.monotonic()
    try:
        driver.wait(timeout=GRACE)
        late = agents if signum == signal.SIGKILL else set()
        remaining = GRACE - (time.monotonic() - sent)
        wait_for(lambda: not running(processes - late), remaining, "Ray's processes gone")
    finally:
        end(processes)
    message = driver.stderr.read().decode().strip()
    if signum == signal.SIGTERM:
        assert driver.returncode == 128 + signum, message
        assert "Traceback" not in message
        assert message.splitlines()[-1].startswith("genmeasures: interrupted: ")
