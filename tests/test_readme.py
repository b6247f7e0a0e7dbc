"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path))
    exec(compile(python_blocks()[0], str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "prod-of-spec" in printed
    assert "spectral" in printed


def test_readme_normalized_sharpness_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path))
    block = python_blocks()[1]
    assert len(block.strip().splitlines()) == 5
    exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "ggn" in printed
    for column in ("ns_squared", "trace_bound", "gamma_max", "attained", "gap"):
        assert column in printed


@pytest.fixture(scope="module")
def zoo_example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The folder in which the README's zoo example ran, and its namespace."""
    folder = tmp_path_factory.mktemp("readme")
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMEASURES_CACHE", str(folder / "cache"))
        patch.chdir(folder)
        exec(compile(python_blocks()[2], str(README), "exec"), namespace)
    return folder, namespace


def test_readme_zoo_example_runs(zoo_example):
    folder, namespace = zoo_example
    table = namespace["table"]
    assert len(table) == len(namespace["zoo"].space) and (table["status"] == "done").all()
    assert table["path-norm"].notna().all()
    assert (folder / "runs" / "smoke" / "table.parquet").is_file()


def test_readme_evaluation_example_runs(zoo_example, monkeypatch, capsys):
    folder, _ = zoo_example
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(python_blocks()[3], str(README), "exec"), namespace)
    scores = namespace["scores"]
    assert {"path-norm", "oracle 0.01", "canonical ordering"} <= set(scores.ranks.index)
    assert "K" in capsys.readouterr().out


def test_readme_quick_start_has_exactly_two_commands():
    text = README.read_text()
    quick_start = text[text.index("## Quick start") :]
    (block,) = re.findall(r"```bash\n(.*?)```", quick_start, re.S)[:1]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "genmeasures study" in commands[0]
    assert "pytest" in commands[1]
    assert all("torch==2.13.0" in command for command in commands)


def test_readme_own_network_example_runs(monkeypatch, tmp_path, capsys):
    pytest.importorskip("transformers")
    monkeypatch.setenv("GENMEASURES_CACHE", str(tmp_path))
    block = python_blocks()[4]
    assert "ViTForImageClassification" in block
    exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "chain: no" in printed
    rows = {line.split()[0]: line for line in printed.splitlines() if line.split()}
    assert " ok " in rows["pacbayes-flatness"] and " ok " in rows["normalized-sharpness"]
    assert "unsupported" in rows["spec-init"] and "unsupported" in rows["path-norm"]
