"""The ``genmeasures`` command line's arguments: every command, its options and their defaults.

:mod:`genmeasures.cli` parses with :func:`parser` and runs the command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from genmeasures import __version__
from genmeasures.data import list_datasets
from genmeasures.errors import GenMeasuresError
from genmeasures.evaluate.report import check_report_folder
from genmeasures.models import list_models
from genmeasures.zoo.executors import EXECUTORS
from genmeasures.zoo.space import list_presets
from genmeasures.zoo.train import OPTIMIZERS

#: The space ``genmeasures study`` runs without --preset or --space.
DEFAULT_STUDY = "quick"


def parser() -> argparse.ArgumentParser:
    """The parser of every ``genmeasures`` command and its options."""
    parser = argparse.ArgumentParser(
        prog="genmeasures",
        description="Generalization measures of trained networks "
        "(Jiang et al. 2020; Tsuzuku et al. 2020).",
    )
    parser.add_argument("--version", action="version", version=f"genmeasures {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser(
        "list",
        help="list the registered measures, or one measure with its options",
        description="Lists the measures a glob pattern matches; given one measure's name or "
        "alias, prints it with its options, their defaults and what they accept.",
    )
    listing.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="glob pattern ('*spec*'), or a measure's name or alias for its details",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    train = commands.add_parser(
        "train",
        help="train the models of a hyperparameter space into a study folder (resumable)",
        description="Trains every config of a space until its training cross-entropy reaches "
        "the target, storing weights, records and results in --out. Re-running the same command "
        "resumes: finished models are skipped, models left running by a killed run are retried.",
    )
    _add_training_options(train, source_required=True, default_workers=1)

    study = commands.add_parser(
        "study",
        help="train, measure and evaluate a study end to end (resumable)",
        description="Trains the models of a space (default: the quick preset, 81 MLPs on the "
        "built-in MNIST-1D), computes the measures of every finished model, scores them "
        "(Kendall's tau, granulated tau, conditional mutual information, baselines) and writes "
        "a report. Re-running resumes each step where it stopped.",
    )
    # A study's models outnumber the cores: one process per core beats threads, for training
    # (2 cores: the quick preset trains in 545 s with 2 workers, 675 s in one process with 2
    # threads) and for measuring.
    _add_training_options(study, source_required=False, default_workers=_cores())
    study.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="names, aliases, glob patterns or !exclusions to compute and score (default: the "
        "space's measures list, else all)",
    )
    _add_evaluation_options(study)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a study's measures, or a CSV table's, and write a report",
        description="Scores every measure against the generalization gap: Kendall's tau-a, "
        "granulated tau (psi per hyperparameter, Psi), conditional mutual information (K), "
        "the oracle, canonical-ordering and random baselines, Pearson's r; prints the summary "
        "table and writes report.md, report.html, CSV and LaTeX tables and plots.",
    )
    evaluate.add_argument("study", type=Path, nargs="?", default=None, help="study folder")
    evaluate.add_argument(
        "--table", type=Path, default=None, help="a .csv or .parquet table instead of a study"
    )
    evaluate.add_argument("--gap", default="gap", help="the gap column of --table (default gap)")
    evaluate.add_argument(
        "--hparams", default=None, help="comma-separated hyperparameter columns of --table"
    )
    evaluate.add_argument(
        "--architecture", default=None, help="column that tells architectures apart (--table)"
    )
    evaluate.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="a study's measures to score, as names, aliases, glob patterns or !exclusions "
        "(default: every stored measure); with --table, its measure columns (default: every "
        "numeric column)",
    )
    _add_evaluation_options(evaluate)

    show = commands.add_parser("show", help="print a study's status and results table")
    show.add_argument("study", type=Path, help="study folder")
    show.add_argument(
        "--export", type=Path, default=None, help="also write the table to a .csv or .parquet"
    )
    show.add_argument("--json", action="store_true", help="print the table as JSON records")
    show.add_argument(
        "--measures", action="store_true", help="add a column per stored measure to the table"
    )

    measure = commands.add_parser(
        "measure",
        help="compute measures of a study's models, or of one small model",
        description="With a study folder: computes the measures for every finished model of the "
        "study and stores them (resumable: stored values are not recomputed). Without one: "
        "trains a model on a built-in dataset until its training cross-entropy reaches "
        "--target-ce (or loads one with --weights and --spec) and prints its measures.",
    )
    measure.add_argument("study", type=Path, nargs="?", default=None, help="study folder")
    measure.add_argument("--data-root", default=None, help="folder of MNIST/CIFAR-10/SVHN files")
    measure.add_argument(
        "--workers",
        type=int,
        default=_cores(),
        help="with a study folder: parallel worker processes, one torch thread each (default "
        f"{_cores()})",
    )
    data = measure.add_argument_group("data")
    data.add_argument("--dataset", default="mnist1d", choices=list_datasets())
    data.add_argument("--root", default=None, help="folder of a file-based dataset")
    data.add_argument("--train-size", type=int, default=None, help="class-balanced training subset")
    model = measure.add_argument_group("model to train")
    model.add_argument("--model", default="mlp", choices=list_models())
    model.add_argument("--depth", type=int, default=2)
    model.add_argument("--width", type=int, default=128)
    model.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    model.add_argument("--lr", type=float, default=0.02)
    model.add_argument("--batch-size", type=int, default=64)
    model.add_argument("--target-ce", type=float, default=0.01)
    model.add_argument("--max-epochs", type=int, default=300)
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
        help="seed of the initialization, the training and the stochastic measures (default 0)",
    )
    measure.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _add_training_options(
    parser: argparse.ArgumentParser, *, source_required: bool, default_workers: int
) -> None:
    source = parser.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--preset", help=f"a packaged space: {', '.join(list_presets())}")
    source.add_argument("--space", type=Path, help="a space TOML file")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default runs/NAME)")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help=f"parallel worker processes, one torch thread each (default {default_workers})",
    )
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--data-root", default=None, help="folder of MNIST/CIFAR-10/SVHN files")
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="train one model at a time instead of in units (the same models)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="train failed models again")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report",
        type=_report_folder,
        default=None,
        help="report folder (default: STUDY/report)",
    )
    parser.add_argument(
        "--draws", type=int, default=10, help="draws averaged per oracle row (default 10)"
    )
    parser.add_argument(
        "--baseline-seed",
        type=int,
        default=0,
        help="seed of the baselines: the oracles' noise and the random measure (default 0); "
        "it seeds no model",
    )


def _report_folder(text: str) -> Path:
    """The type of --report: a folder that exists or can be created, refused before any work."""
    try:
        return check_report_folder(text)
    except GenMeasuresError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
