"""The ``genmeasures`` command line: parse, call the API, print.

Commands:
    ``genmeasures list [PATTERN]``: the registered measures.
    ``genmeasures measure``: train a small model on a built-in dataset (or load one from a
    safetensors file and its model spec) and print its measures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm import tqdm

from genmeasures import __version__
from genmeasures.data import Dataset, list_datasets, load_dataset
from genmeasures.errors import GenMeasuresError, GenMeasuresWarning
from genmeasures.measures import Results, compute, list_measures
from genmeasures.measures.registry import resolve_measures
from genmeasures.models import build_model, list_models
from genmeasures.zoo.checkpoint import load_checkpoint, model_spec, save_run
from genmeasures.zoo.train import OPTIMIZERS, TrainingConfig, train_to_target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genmeasures",
        description="Generalization measures of trained networks "
        "(Jiang et al. 2020; Tsuzuku et al. 2020).",
    )
    parser.add_argument("--version", action="version", version=f"genmeasures {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list the registered measures")
    listing.add_argument("pattern", nargs="?", default=None, help="glob pattern, e.g. '*spec*'")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    measure = commands.add_parser(
        "measure",
        help="train a small model (or load one) and print its measures",
        description="Without --weights: trains a model on a built-in dataset until its training "
        "cross-entropy reaches --target-ce, then computes the measures. With --weights and "
        "--spec: loads that model instead.",
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
        default=["all"],
        help="names, aliases or glob patterns (default: all)",
    )
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _list(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": spec.name,
            "eq": spec.eq,
            "family": spec.family,
            "needs": ",".join(sorted(spec.needs)) or "model only",
            "stochastic": spec.stochastic,
            "description": spec.description,
        }
        for spec in list_measures(args.pattern)
    ]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        print(_left_aligned(rows))
        print(f"\n{len(rows)} measures. Definitions: MEASURES.md (see README).")
    else:
        print(f"no measure matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def _left_aligned(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    lines = [[c.ljust(widths[c]) for c in columns]]
    lines += [[str(row[c]).ljust(widths[c]) for c in columns] for row in rows]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _train(
    args: argparse.Namespace, dataset: Dataset
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    spec = model_spec(
        args.model,
        dataset.input_shape,
        dataset.num_classes,
        depth=args.depth,
        width=args.width,
        seed=args.seed,
    )
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, **spec["hparams"])
    config = TrainingConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        target_ce=args.target_ce,
        max_epochs=args.max_epochs,
        seed=args.seed,
    )
    with tqdm(
        desc="training (CE)", unit="check", file=sys.stderr, leave=False, disable=None
    ) as bar:

        def on_check(step: int, ce: float) -> None:
            bar.set_postfix(step=step, ce=f"{ce:.4f}")
            bar.update()

        run = train_to_target(model, dataset, config, on_check=on_check)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in run.metrics.items())
    print(f"trained {args.model} on {dataset.name}: {run.status}; {summary}", file=sys.stderr)
    if args.save is not None:
        save_run(args.save, run, spec)
        print(f"saved the model to {args.save}", file=sys.stderr)
    return run.model, run.init_model, run.records


def _measure(args: argparse.Namespace) -> int:
    resolve_measures(args.measures)  # a misspelt name fails before any training
    load = args.weights is not None or args.spec is not None or args.init is not None
    if load and (args.weights is None or args.spec is None):
        raise GenMeasuresError(
            "--weights and --spec go together (and --init needs both): give both to load a model"
        )
    dataset = load_dataset(args.dataset, root=args.root, train_size=args.train_size)
    if load:
        loaded = load_checkpoint(args.weights, args.spec, args.init)
        model, init_model, records = loaded.model, loaded.init_model, loaded.records
    else:
        model, init_model, records = _train(args, dataset)
    with tqdm(desc="measures", unit="measure", file=sys.stderr, leave=False, disable=None) as bar:

        def progress(name: str, done: int, total: int) -> None:
            bar.total = total
            bar.set_postfix_str(name)
            bar.update()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GenMeasuresWarning)
            results = compute(
                model,
                dataset,
                measures=args.measures,
                init_model=init_model,
                records=records,
                seed=args.seed,
                progress=progress,
            )
    for warning in {str(w.message) for w in caught if issubclass(w.category, GenMeasuresWarning)}:
        print(f"warning: {warning}", file=sys.stderr)
    print(_format(results, as_json=args.json))
    return 0


def _format(results: Results, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {
                name: {
                    "value": None if math.isnan(r.value) else r.value,
                    "log_value": r.log_value,
                    "converged": r.converged,
                    "seconds": r.seconds,
                    "status": r.status,
                    "message": r.message,
                    "params": r.params,
                }
                for name, r in results.items()
            },
            indent=2,
        )
    frame = results.to_frame()[["value", "converged", "seconds", "status", "message"]]
    with pd.option_context("display.float_format", "{:.6g}".format, "display.max_colwidth", 60):
        return frame.to_string()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list(args)
        return _measure(args)
    except GenMeasuresError as error:
        print(f"genmeasures: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) closed the pipe: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
