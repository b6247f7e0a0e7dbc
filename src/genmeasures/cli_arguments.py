"""The ``genmeasures`` command line's arguments: every command, its options and their defaults.

:mod:`genmeasures.cli` parses with :func:`parser` and runs the command. Nothing here imports
torch, pandas or matplotlib (the names offered come from :mod:`genmeasures.names`), so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from genmeasures import __version__
from genmeasures.errors import GenMeasuresError
from genmeasures.names import DATASETS, EXECUTORS, MODELS, OPTIMIZERS, preset_names

#: The space ``genmeasures study`` runs without --preset or --space.
DEFAULT_STUDY = "quick"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default at the end of its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _command(
    commands: argparse._SubParsersAction, name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A command's parser, with the help format of every command."""
    return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def parser() -> argparse.ArgumentParser:
    """The parser of every ``genmeasures`` command and its options."""
    parser = argparse.ArgumentParser(
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "genmeasures study                      # the quick preset, end to end",
            "genmeasures list '*spec*'              # the spectral measures",
            "genmeasures measure --measures path-norm",
        ),
        prog="genmeasures",
        description="Generalization measures of trained networks "
        "(Jiang et al. 2020; Tsuzuku et al. 2020).",
    )
    parser.add_argument("--version", action="version", version=f"genmeasures {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = _command(
        commands,
        "list",
        help="list the registered measures, or one measure with its options",
        description="Lists the measures a glob pattern matches; given one measure's name or "
        "alias, prints it with its options, their defaults and what they accept.",
        epilog=_examples(
            "genmeasures list                       # every registered measure",
            "genmeasures list '*sharpness*'         # the measures a pattern matches",
            "genmeasures list pacbayes-flatness     # one measure, its options and defaults",
        ),
    )
    listing.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="glob pattern ('*spec*'), or a measure's name or alias for its details",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    train = _command(
        commands,
        "train",
        help="train the models of a hyperparameter space into a study folder (resumable)",
        description="Trains every config of a space until its training cross-entropy reaches "
        "the target, storing weights, records and results in --out. Re-running the same command "
        "resumes: finished models are skipped, models left running by a killed run are retried.",
        epilog=_examples(
            "genmeasures train --preset smoke --out runs/smoke",
            "genmeasures train --space my_space.toml --workers 2",
            "genmeasures train --preset quick --executor ray --address auto",
        ),
    )
    # One worker by default: `train` is also the building block of scripts that run several at
    # once; `study`, the end-to-end job, takes every core.
    _add_training_options(
        train,
        source_required=True,
        default_workers=1,
        workers_why="1: this process; `study` uses every core",
    )

    study = _command(
        commands,
        "study",
        help="train, measure and evaluate a study end to end (resumable)",
        description="Trains the models of a space (default: the quick preset, 81 MLPs on the "
        "built-in MNIST-1D), computes the measures of every finished model, scores them "
        "(Kendall's tau, granulated tau, conditional mutual information, baselines) and writes "
        "a report. Re-running resumes each step where it stopped.",
        epilog=_examples(
            "genmeasures study                      # the quick preset into runs/quick",
            "genmeasures study --preset jiang2020-nin-digits-cpu",
            "genmeasures study --space my_space.toml --measures 'pacbayes*' path-norm",
        ),
    )
    # A study's models outnumber the cores: one process per core beats threads, for training
    # (2 cores: the quick preset trains in 545 s with 2 workers, 675 s in one process with 2
    # threads) and for measuring.
    _add_training_options(
        study,
        source_required=False,
        default_workers=_cores(),
        workers_why=f"{_cores()}: one per core",
    )
    study.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="names, aliases, glob patterns or !exclusions to compute and score (default: the "
        "space's measures list, else all)",
    )
    _add_evaluation_options(study)

    evaluate = _command(
        commands,
        "evaluate",
        help="score a study's measures, or a CSV table's, and write a report",
        description="Scores every measure against the generalization gap: Kendall's tau-a, "
        "granulated tau (psi per hyperparameter, Psi), conditional mutual information (K), "
        "the oracle, canonical-ordering and random baselines, Pearson's r, the sign-error over "
        "environments (Dziugaite et al. 2020) and the held-out R2 of the gap; prints the summary "
        "table and writes report.md, report.html, CSV and LaTeX tables and plots.",
        epilog=_examples(
            "genmeasures evaluate runs/quick",
            "genmeasures evaluate runs/quick --measures 'pacbayes*' --report runs/quick/pacbayes",
            "genmeasures evaluate --table results.csv --hparams width,lr --test-size 10000",
        ),
    )
    evaluate.add_argument("study", type=Path, nargs="?", default=None, help="study folder")
    evaluate.add_argument(
        "--table", type=Path, default=None, help="a .csv or .parquet table instead of a study"
    )
    evaluate.add_argument("--gap", default="gap", help="the gap column of --table")
    evaluate.add_argument(
        "--hparams",
        default=None,
        help="comma-separated hyperparameter columns of --table (needed with it)",
    )
    evaluate.add_argument(
        "--architecture", default=None, help="column that tells architectures apart (--table)"
    )
    evaluate.add_argument(
        "--test-size",
        type=float,
        default=None,
        help="test examples behind each test error of --table, which weigh the sign-error's "
        "pairs ('inf': no test noise; a study knows its own; needed with --table unless "
        "--no-robust)",
    )
    evaluate.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="a study's measures to score, as names, aliases, glob patterns or !exclusions "
        "(default: every stored measure); with --table, its measure columns (default: every "
        "numeric column)",
    )
    _add_data_root(evaluate)
    _add_evaluation_options(evaluate)

    show = _command(
        commands,
        "show",
        help="print a study's status and results table",
        description="Prints a study's space, its models' statuses and its results table.",
        epilog=_examples(
            "genmeasures show runs/quick",
            "genmeasures show runs/quick --measures 'pacbayes*' path-norm",
            "genmeasures show runs/quick --export runs/quick/table.parquet",
        ),
    )
    show.add_argument("study", type=Path, help="study folder")
    show.add_argument(
        "--export", type=Path, default=None, help="also write the table to a .csv or .parquet"
    )
    show.add_argument("--json", action="store_true", help="print the table as JSON records")
    show.add_argument(
        "--measures",
        nargs="*",
        default=None,
        help="add a column per stored measure: the names, aliases, glob patterns or !exclusions "
        "given, every stored measure if none (default: no measure columns)",
    )

    measure = _command(
        commands,
        "measure",
        help="compute measures of a study's models, or of one small model",
        description="With a study folder: computes the measures for every finished model of the "
        "study and stores them (resumable: stored values are not recomputed). Without one: "
        "trains a model on a built-in dataset until its training cross-entropy reaches "
        "--target-ce (or loads one with --weights and --spec) and prints its measures.",
        epilog=_examples(
            "genmeasures measure runs/quick --measures 'sharpness*'",
            "genmeasures measure --dataset digits --model mlp --width 256 --measures path-norm",
            "genmeasures measure --weights final.safetensors --spec model.json --json",
        ),
    )
    measure.add_argument("study", type=Path, nargs="?", default=None, help="study folder")
    _add_data_root(measure)
    measure.add_argument(
        "--workers",
        type=int,
        default=_cores(),
        help=f"with a study folder: parallel worker processes, one torch thread each (default "
        f"{_cores()}: one per core)",
    )
    data = measure.add_argument_group("data")
    data.add_argument("--dataset", default="mnist1d", choices=DATASETS, help="the training data")
    data.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="class-balanced training subset (default: the whole training split)",
    )
    model = measure.add_argument_group("model to train")
    model.add_argument("--model", default="mlp", choices=MODELS, help="the architecture")
    model.add_argument(
        "--depth", type=int, default=None, help="its depth (default: the model's own default)"
    )
    model.add_argument(
        "--width", type=int, default=None, help="its width (default: the model's own default)"
    )
    model.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="the optimizer")
    model.add_argument("--lr", type=float, default=0.02, help="learning rate")
    model.add_argument("--batch-size", type=int, default=64, help="training batch size")
    model.add_argument(
        "--target-ce", type=float, default=0.01, help="the training cross-entropy to reach"
    )
    model.add_argument("--max-epochs", type=int, default=300, help="give up after this many epochs")
    model.add_argument(
        "--save", type=Path, default=None, help="write the trained model to this folder"
    )
    loaded = measure.add_argument_group("model to load")
    loaded.add_argument("--weights", type=Path, default=None, help="trained weights (.safetensors)")
    loaded.add_argument("--spec", type=Path, default=None, help="model spec (.json)")
    loaded.add_argument("--init", type=Path, default=None, help="initial weights (.safetensors)")
    measure.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="names, aliases, glob patterns or !exclusions (default: a study's measures list, "
        "else all)",
    )
    measure.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialization, the training and the stochastic measures",
    )
    measure.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _add_training_options(
    parser: argparse.ArgumentParser,
    *,
    source_required: bool,
    default_workers: int,
    workers_why: str,
) -> None:
    source = parser.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--preset", help=f"a packaged space: {', '.join(preset_names())}")
    source.add_argument("--space", type=Path, help="a space TOML file")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default runs/NAME)")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help=f"parallel worker processes, one torch thread each (default {workers_why})",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: this machine's worker processes; ray: a Ray cluster",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    _add_data_root(parser)
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="train one model at a time instead of in units (the same models)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="train failed models again")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder of the MNIST/CIFAR-10/SVHN files (default: the built-in datasets only)",
    )


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--converged-only",
        action="store_true",
        help="score only the values that converged (default: score every value, counting those "
        "that did not converge per measure; a study's only)",
    )
    parser.add_argument(
        "--report",
        type=_report_folder,
        default=None,
        help="report folder (default: STUDY/report)",
    )
    parser.add_argument(
        "--no-robust",
        action="store_true",
        help="leave out the sign-error over environments (Dziugaite et al. 2020) and the "
        "held-out gap prediction, with their tables and figures (default: computed)",
    )
    parser.add_argument(
        "--min-ess",
        type=float,
        default=None,
        help="effective sample size an environment needs to count in the sign-error (default: "
        "the paper's 12, or half the pairs of the largest environment if smaller)",
    )
    parser.add_argument("--draws", type=int, default=10, help="draws averaged per oracle row")
    parser.add_argument(
        "--baseline-seed",
        type=int,
        default=0,
        help="seed of the baselines: the oracles' noise and the random measure; it seeds no model",
    )


def _report_folder(text: str) -> Path:
    """The type of --report: a folder that exists or can be created, refused before any work."""
    from genmeasures.evaluate.report import check_report_folder  # matplotlib: only when given

    try:
        return check_report_folder(text)
    except GenMeasuresError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
