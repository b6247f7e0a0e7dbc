"""A report folder is replaced as a whole: never a mix of two reports, whatever stops the writer."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genmeasures.errors import EvaluationError, ReportError
from genmeasures.evaluate import Evaluation, score_table
from genmeasures.evaluate import report as rp
from genmeasures.evaluate.report import files, folder

HPARAMS = ["width", "lr"]


def evaluation(measures: list[str]) -> Evaluation:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(list(itertools.product([128, 256, 512], [0.1, 0.01])), columns=HPARAMS)
    table["gap"] = 0.3 - 0.0002 * table.width + rng.normal(0, 0.01, len(table))
    for name in measures:
        table[name] = rng.normal(size=len(table))
    return score_table(table, measures, hparams=HPARAMS, draws=2, seed=0)


@pytest.fixture(scope="module")
def two() -> Evaluation:
    return evaluation(["m1", "m2"])


@pytest.fixture(scope="module")
def one() -> Evaluation:
    return evaluation(["m1"])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.parent.iterdir() if p.name != root.name)


def test_a_new_report_leaves_nothing_of_the_previous_one(
    two: Evaluation, one: Evaluation, tmp_path: Path
) -> None:
    root = tmp_path / "report"
    rp.write_report(two, root, title="two")
    assert (root / "figures" / "scatter-m2.png").is_file()
    path = rp.write_report(one, root, title="one")
    assert path == root / "report.md"
    assert not (root / "figures" / "scatter-m2.png").exists(), "the stale figure is gone"
    alone = tmp_path / "alone"
    rp.write_report(one, alone, title="one")
    assert snapshot(root).keys() == snapshot(alone).keys()
    assert siblings(root) == ["alone"], "no staging folder is left behind"


def test_a_writer_that_fails_midway_leaves_the_previous_report_whole(
    two: Evaluation, one: Evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "report"
    rp.write_report(two, root, title="two")
    before = snapshot(root)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C between two figures would

    monkeypatch.setattr(folder, "scatter_figure", killed)
    with pytest.raises(KeyboardInterrupt):
        rp.write_report(one, root, title="one")
    assert snapshot(root) == before
    assert siblings(root) == []


def test_a_killed_writers_staging_folder_is_removed_by_the_next_report(
    one: Evaluation, tmp_path: Path
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    root = tmp_path / "report"
    rp.write_report(one, root, title="one")
    before = snapshot(root)
    leftover = tmp_path / f".report.new-{pid}-0123abcd"
    (leftover / "figures").mkdir(parents=True)
    (leftover / "ranks.csv").write_text("half")
    assert snapshot(root) == before, "a writer killed while staging leaves the old report whole"
    rp.write_report(one, root, title="one")
    assert siblings(root) == []


def test_the_swap_without_an_atomic_exchange(
    two: Evaluation, one: Evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    root = tmp_path / "report"
    rp.write_report(two, root, title="two")
    rp.write_report(one, root, title="one")
    assert not (root / "figures" / "scatter-m2.png").exists()
    assert (root / "report.md").read_text(encoding="utf-8").startswith("# one")
    assert siblings(root) == []


@pytest.mark.parametrize("foreign", ["notes.txt", "figures/notes.txt", "data"])
def test_a_folder_holding_other_files_is_refused_not_deleted(
    one: Evaluation, tmp_path: Path, foreign: str
) -> None:
    root = tmp_path / "mine"
    (root / "figures").mkdir(parents=True)
    (root / "report.md").write_text("an old report")
    path = root / foreign
    path.mkdir() if foreign == "data" else path.write_text("keep me")
    with pytest.raises(
        EvaluationError,
        match=rf"report folder {root} holds files that a report does not write \({foreign}\)"
        r".*give a new or empty --report folder",
    ):
        rp.write_report(one, root, title="one")
    assert path.exists() and (root / "report.md").read_text() == "an old report"


def test_report_folders_that_cannot_be_used(one: Evaluation, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EvaluationError, match=r"report folder .*file is a file, expected a folder"):
        rp.write_report(one, tmp_path / "file", title="one")
    with pytest.raises(EvaluationError, match=r"file/report.*is a file, not a folder"):
        rp.write_report(one, tmp_path / "file" / "report", title="one")


def test_figures_drawn_by_worker_processes_are_the_same_files(tmp_path: Path) -> None:
    measures = [f"m{k}" for k in range(2 * folder.MIN_FIGURES_PER_WORKER)]
    many = evaluation(measures)  # enough figures for two drawing workers
    rp.write_report(many, tmp_path / "alone", title="many")
    rp.write_report(many, tmp_path / "pooled", title="many", workers=2)
    alone, pooled = snapshot(tmp_path / "alone"), snapshot(tmp_path / "pooled")
    assert len([name for name in alone if name.startswith("figures/")]) > len(measures)
    assert pooled == alone


def test_a_bad_worker_count_is_refused(one: Evaluation, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="workers must be a positive int, got 0"):
        rp.write_report(one, tmp_path / "report", title="one", workers=0)
