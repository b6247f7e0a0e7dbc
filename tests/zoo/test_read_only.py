"""Read-only opens of a study whose writer was killed in the middle of a transaction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from test_store import tiny_space
from test_versions import V2_MEASURES

import genmeasures
from genmeasures.errors import GenMeasuresWarning, StudyError
from genmeasures.zoo import opening
from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.store import DATABASE_FILE, Zoo

JOURNAL = DATABASE_FILE + "-journal"

#: A writer that changes every row in one transaction, spilling pages into the database file
#: before it commits (a cache of one page), then waits to be killed.
WRITER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size = 1")
connection.execute("BEGIN IMMEDIATE")
connection.execute("UPDATE models SET status = 'running', gap = NULL")
connection.execute("DELETE FROM measures")
connection.execute("CREATE TABLE filler (x)")
connection.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 1000,) for _ in range(2000)])
print("writing", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def measured_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("read-only") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMEASURES_CACHE", str(folder.parent / "cache"))
        with Zoo.create(folder, tiny_space("read-only")) as zoo:
            train_zoo(zoo)
            measure_zoo(zoo, ["param-norm", "path-norm"])
    return folder


@pytest.fixture
def killed(measured_once: Path, tmp_path: Path) -> Path:
    """A copy of the study whose writer was SIGKILLed in the middle of a transaction."""
    folder = Path(shutil.copytree(measured_once, tmp_path / "study"))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder / DATABASE_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (folder / JOURNAL).is_file(), "the killed writer left a hot journal"
    return folder


def table(folder: Path) -> pd.DataFrame:
    with Zoo(folder) as zoo:
        return zoo.table()


def read_only_connect(database: Path) -> sqlite3.Connection:
    """What an open without write access gets: the folder or the file is not writable."""
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)


@pytest.fixture
def without_write_access(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Zoo, "_connect", staticmethod(read_only_connect))


def test_the_killed_writer_left_half_a_transaction_in_the_database(killed: Path) -> None:
    torn = killed.parent / "torn"
    torn.mkdir()
    shutil.copyfile(killed / DATABASE_FILE, torn / DATABASE_FILE)  # without its journal
    connection = sqlite3.connect(torn / DATABASE_FILE)
    statuses = {status for (status,) in connection.execute("SELECT status FROM models")}
    connection.close()
    assert statuses == {"running"}, "the journal is what tells the old rows from the torn ones"


@pytest.mark.usefixtures("without_write_access")
def test_a_read_only_open_reads_the_rolled_back_study(
    measured_once: Path, killed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (killed / DATABASE_FILE).read_bytes(), (killed / JOURNAL).read_bytes()
    with pytest.warns(GenMeasuresWarning, match=r"killed while writing(.|\n)*rolled-back copy"):
        rolled_back = table(killed)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(rolled_back, table(measured_once))
    assert (rolled_back["status"] == "done").all() and rolled_back["param-norm"].notna().all()
    after = (killed / DATABASE_FILE).read_bytes(), (killed / JOURNAL).read_bytes()
    assert after == before, "the study's files are left for a writable open to roll back"


@pytest.mark.usefixtures("without_write_access")
def test_the_rolled_back_copy_is_read_only(killed: Path) -> None:
    with pytest.warns(GenMeasuresWarning), Zoo(killed) as zoo:
        first = zoo.configs()[0].hash
        with pytest.raises(StudyError, match=r"cannot write to the study .*readonly.*write access"):
            zoo.mark_running([first])


def test_an_open_with_write_access_rolls_the_transaction_back_in_place(
    measured_once: Path, killed: Path
) -> None:
    pd.testing.assert_frame_equal(table(killed), table(measured_once))
    assert not (killed / JOURNAL).exists()


@pytest.mark.usefixtures("without_write_access")
def test_a_copy_that_cannot_be_rolled_back_says_how_to_fix_it(
    killed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(source: Path, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(opening.shutil, "copyfile", no_space)
    with pytest.raises(
        StudyError,
        match=rf"{DATABASE_FILE}: a process killed while writing the study left an unfinished "
        rf"transaction in .*{JOURNAL}(.|\n)*No space left(.|\n)*Open the study once with write "
        rf"access(.|\n)*Do not delete",
    ):
        Zoo(killed)


@pytest.fixture
def unwritable(killed: Path) -> Iterator[list[str]]:
    """The killed study's folder and files made read-only; the command prefix that honours it.

    Root ignores file permissions: then the command drops its capabilities (setpriv).
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root ignores file permissions and setpriv is not installed")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
        if subprocess.run([*prefix, "true"], check=False).returncode != 0:
            pytest.skip("root ignores file permissions and cannot drop its capabilities here")
    for path in (killed / DATABASE_FILE, killed / JOURNAL):
        path.chmod(0o444)
    killed.chmod(0o555)
    yield prefix
    killed.chmod(0o755)


def test_show_and_evaluate_work_on_an_unwritable_study_left_by_a_killed_writer(
    killed: Path, unwritable: list[str], tmp_path: Path
) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(genmeasures.__file__).parents[1])}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [*unwritable, sys.executable, "-m", "genmeasures.cli", *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    shown = cli("show", str(killed), "--json")
    assert shown.returncode == 0, shown.stderr
    rows = pd.DataFrame(json.loads(shown.stdout))
    assert (rows["status"] == "done").all() and rows["gap"].notna().all()
    assert "unfinished transaction" in shown.stderr and "Traceback" not in shown.stderr
    report = tmp_path / "report"
    evaluated = cli("evaluate", str(killed), "--report", str(report))
    assert evaluated.returncode == 0, evaluated.stderr
    assert (report / "report.md").is_file()
    measured = cli("measure", str(killed), "--measures", "frob-distance")
    assert measured.returncode != 0
    assert "cannot write to the study" in measured.stderr and "Traceback" not in measured.stderr
    assert (killed / JOURNAL).is_file()


@pytest.mark.usefixtures("without_write_access")
def test_a_study_of_an_older_schema_is_read_where_it_cannot_be_migrated(
    measured_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Path(shutil.copytree(measured_once, tmp_path / "study"))
    connection = sqlite3.connect(folder / DATABASE_FILE)
    connection.executescript(V2_MEASURES)
    connection.close()
    before = (folder / DATABASE_FILE).read_bytes()
    with pytest.warns(GenMeasuresWarning, match=r"schema version 2 and cannot be migrated"):
        old = table(folder)
    assert (folder / DATABASE_FILE).read_bytes() == before
    monkeypatch.undo()
    pd.testing.assert_frame_equal(old, table(measured_once))
