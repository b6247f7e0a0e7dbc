"""The command line's help: every option explained with its default, examples, and no wait."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from genmeasures import names
from genmeasures.cli_arguments import parser
from genmeasures.data import list_datasets
from genmeasures.models import list_models
from genmeasures.zoo.space import list_presets
from genmeasures.zoo.train import OPTIMIZERS


def commands() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_has_a_help_text_that_shows_its_default(name: str) -> None:
    command = commands()[name]
    formatter = command._get_formatter()
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        where = f"{name} {action.option_strings or action.dest}"
        assert action.help, f"{where}: no help text"
        if action.option_strings and action.default not in (None, False):
            assert "default" in formatter._get_help_string(action), f"{where}: default not shown"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_ends_with_examples(name: str) -> None:
    text = commands()[name].format_help()
    examples = text[text.index("examples:") :].splitlines()[1:]
    assert 2 <= len(examples) <= 3
    assert all(line.strip().startswith(f"genmeasures {name}") for line in examples)


def test_measures_takes_names_in_every_command() -> None:
    for name, command in commands().items():
        for action in command._actions:
            if "--measures" in action.option_strings:
                assert action.nargs in ("+", "*"), f"{name} --measures takes no names"


def test_one_data_folder_option() -> None:
    for name, command in commands().items():
        options = {o for a in command._actions for o in a.option_strings}
        assert "--root" not in options, name


def test_the_names_offered_are_the_registries() -> None:
    assert tuple(list_datasets()) == names.DATASETS
    assert tuple(list_models()) == names.MODELS
    assert names.OPTIMIZERS == OPTIMIZERS
    assert names.preset_names() == list_presets()


def test_help_imports_no_heavy_package() -> None:
    # What makes --help answer at once (0.15 s measured, against 3 s before): parsing imports
    # neither torch, nor pandas, nor matplotlib.
    code = (
        "import sys; from genmeasures.cli import main\n"
        "try:\n    main(['measure', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "examples:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
