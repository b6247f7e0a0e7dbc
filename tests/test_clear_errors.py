"""Ordinary mistakes end with a named genmeasures error, never a traceback (issue 15, item 5).

Each case is tried through the command line, as a user meets it: the exit status is non-zero, the
message is on stderr and says what was expected, what was received and where.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from genmeasures.cli import main
from genmeasures.errors import EvaluationError, SpaceError
from genmeasures.evaluate import read_table, score_table
from genmeasures.zoo.space import load_space


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GENMEASURES_CACHE", str(folder))
    return folder


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command line, expect a clear failure; its stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("genmeasures: error: ") or "error:" in err
    return err


# ---------------------------------------------------------------- 1. a space file that is not UTF-8


def test_a_space_file_that_is_not_utf8_is_named_with_the_byte_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.toml"
    text = '[fixed]\ndataset = "digits"\n# café\nmodel = "mlp"\n'
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index("é".encode("latin-1"))
    with pytest.raises(SpaceError, match=rf"latin1\.toml: expected UTF-8 text.*offset {offset}"):
        load_space(path)
    err = fails(capsys, "train", "--space", str(path), "--out", str(tmp_path / "study"))
    assert str(path) in err and "UTF-8" in err and f"byte offset {offset}" in err
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------- 4. a table without rows


def test_a_csv_without_rows_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    path.write_text("lr,gap,sharpness\n")
    with pytest.raises(EvaluationError, match="0 rows and 3 columns"):
        read_table(path)
    err = fails(capsys, "evaluate", "--table", str(path), "--hparams", "lr")
    assert str(path) in err
    assert "table expected one row per trained model" in err
    assert "received 0 rows and 3 columns (lr, gap, sharpness)" in err
    assert "at least 2" in err
    assert "no measure column" not in err


def test_an_empty_csv_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    path.write_text("")
    err = fails(capsys, "evaluate", "--table", str(path), "--hparams", "lr")
    assert str(path) in err and "empty file" in err and "header row" in err


def test_score_table_without_rows_says_so() -> None:
    table = pd.DataFrame({"lr": [], "gap": [], "sharpness": []})
    expected = "score_table: table expected one row per trained model"
    with pytest.raises(EvaluationError, match=expected):
        score_table(table, hparams=["lr"])
