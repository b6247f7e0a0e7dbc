"""SIGKILL a real `genmeasures train` at several moments, then resume: nothing lost or doubled.

The killed runs leave no process behind, and the resumed study is the bits of one trained without
interruption in this process, whether it trains in units, one model at a time or in a pool.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fingerprint
from processes import GRACE, descendants, end, running, wait_for
from test_store import tiny_space

from genmeasures.zoo import load_space, train_zoo
from genmeasures.zoo.store import DATABASE_FILE, Zoo

SPACE = """
name = "kill-test"
description = "8 tiny MLPs on digits, for the kill-and-resume test"

[fixed]
dataset = "digits"
model = "mlp"
depth = 1
width = 8
train_size = 300
test_size = 100
batch_size = 16
target_ce = 0.05
max_epochs = 200
check_every = 20
check_batches = 5

[grid]
lr = [0.05, 0.03, 0.02, 0.01]
seed = [0, 1]
"""


def done_rows(study: Path) -> int:
    try:
        connection = sqlite3.connect(f"file:{study / DATABASE_FILE}?mode=ro", uri=True, timeout=5)
        try:
            query = "SELECT COUNT(*) FROM models WHERE status = 'done'"
            return connection.execute(query).fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return -1


def start(space: Path, study: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "genmeasures.cli", "train", "--space", str(space)]
    return subprocess.Popen(
        [*command, "--out", str(study), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def kill_when(process: subprocess.Popen[bytes], ready: callable, timeout: float = 120) -> bool:
    """SIGKILL the process once ``ready()`` holds; False if it finished first.

    Every process it started must exit within :data:`~processes.GRACE` seconds of the kill.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            started = descendants(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait()
            try:
                gone = lambda pids=started: not running(pids)  # noqa: E731
                wait_for(gone, GRACE, "the killed run's workers gone")
            finally:
                end(started)
            return True
        time.sleep(0.01)
    process.kill()
    pytest.fail("the training subprocess made no progress")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    space = folder / "space.toml"
    space.write_text(SPACE)
    with Zoo.create(folder / "study", load_space(space)) as zoo:
        train_zoo(zoo)
        return fingerprint(zoo)


@pytest.mark.parametrize(
    "route", [[], ["--no-batch"], ["--workers", "2"]], ids=["batched", "one-by-one", "workers"]
)
def test_sigkill_at_any_moment_then_resume(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: list[str],
    uninterrupted: dict[str, Any],
) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    study = tmp_path / "study"
    moments = [
        lambda: (study / DATABASE_FILE).exists(),  # right after the study is created
        lambda: done_rows(study) >= 1,  # just after a result was committed
        lambda: done_rows(study) >= 3,
        lambda: time.monotonic() > began + delay,  # anywhere, imports and startup included
    ]
    delay = random.Random(len(route)).uniform(0.0, 6.0)
    print(f"the last run is killed {delay:.2f} s after it starts")
    kills = 0
    for ready in moments:
        began = time.monotonic()
        kills += kill_when(start(space, study, *route), ready)
    assert kills >= 2, "the subprocess finished before it could be killed"
    finish = start(space, study, *route)
    _, stderr = finish.communicate(timeout=300)
    assert finish.returncode == 0, stderr.decode()
    zoo = Zoo(study)
    assert zoo.counts()["done"] == 8 and sum(zoo.counts().values()) == 8
    table = zoo.table()
    assert table.index.is_unique and len(table) == 8
    assert zoo.verify_all() == []
    for config in zoo.configs():
        zoo.load(config.hash)
    assert not [p for p in study.rglob(".*.tmp-*")]
    assert fingerprint(zoo) == uninterrupted


#: Imports genmeasures, says it is ready, waits for the go file, then runs the command line:
#: the processes race for the new study folder within milliseconds, not seconds of imports.
AT_ONCE = """
import sys, time
from pathlib import Path
from genmeasures.cli import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(main(sys.argv[3:]))
"""


def test_runs_started_at_once_on_a_new_folder_one_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    study, go = tmp_path / "study", tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(10)]
    command = ["train", "--space", str(space), "--out", str(study)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", AT_ONCE, str(flag), str(go), *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 300
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        assert all(process.poll() is None for process in processes)
        time.sleep(0.05)
    go.touch()
    outcomes = [(p.wait(timeout=300), p.communicate()[1].decode()) for p in processes]
    assert not [err for _, err in outcomes if "Traceback" in err]
    assert sorted(code for code, _ in outcomes) == [0] + [2] * 9, outcomes
    refusals = [err for code, err in outcomes if code == 2]
    assert all(f"{study} is being trained by pid " in err for err in refusals), refusals
    with Zoo(study) as zoo:
        assert zoo.counts()["done"] == sum(zoo.counts().values()) == 8
        assert zoo.verify_all() == []
    assert not [p for p in study.rglob(".*.tmp-*")]


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "study", tiny_space())
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        names = {
            "dead": f".{DATABASE_FILE}.tmp-{dead.pid}",
            "dead journal": f".{DATABASE_FILE}.tmp-{dead.pid}-journal",
            "this process": f".final.safetensors.tmp-{os.getpid()}",
            "alive": f".{DATABASE_FILE}.tmp-{alive.pid}",
            "alive journal": f".{DATABASE_FILE}.tmp-{alive.pid}-journal",
        }
        for name in names.values():
            (zoo.path / name).write_bytes(b"")
        with zoo.lock():
            assert zoo.remove_temporary_files() == 3
        alive.kill()
    left = {p.name for p in zoo.path.rglob(".*.tmp-*")}
    assert left == {names["alive"], names["alive journal"]}
