"""A `train --workers 2` stopped by SIGKILL, SIGTERM or SIGINT leaves no process behind.

The driver's pool workers (and multiprocessing's resource tracker) must exit within seconds of
the driver, however it stops; SIGTERM and SIGINT stop it cleanly, with one line and no
traceback; the resumed study is the bits of an uninterrupted one trained in this process.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fingerprint
from processes import GRACE, command_line, descendants, end, pool_workers, running, wait_for
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
POOL = ("--workers", "2")


def results(study: Path) -> dict[str, Any]:
    with Zoo(study) as zoo:
        assert zoo.verify_all() == []
        return fingerprint(zoo)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(WORKER_SPACE)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def reference(space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study trained without interruption, in this process (one configuration, one model)."""
    folder = tmp_path_factory.mktemp("reference") / "study"
    with Zoo.create(folder, load_space(space_file)) as zoo:
        train_zoo(zoo)
    return results(folder)


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name
)
def test_workers_end_with_their_driver_and_the_study_resumes(
    space_file: Path, tmp_path: Path, reference: dict[str, Any], signum: signal.Signals
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
    assert results(study) == reference


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
