"""The ``genmeasures`` commands: call the API with the parsed arguments, print.

:mod:`genmeasures.cli` parses (:mod:`genmeasures.cli_arguments`) and imports this module, with
torch, pandas and matplotlib, only to run a command; :data:`COMMANDS` maps each command's name
to its function (the commands are listed in :mod:`genmeasures.cli`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm import tqdm

from genmeasures.cli_arguments import DEFAULT_STUDY
from genmeasures.data import Dataset, load_dataset
from genmeasures.errors import GenMeasuresError, GenMeasuresWarning
from genmeasures.evaluate import Evaluation, read_table, score_table, with_robust_scores
from genmeasures.evaluate.report import format_summary, write_report
from genmeasures.evaluate.table import MEASURES_ATTR
from genmeasures.measures import MeasureSpec, Results, compute, get_measure, list_measures
from genmeasures.measures.registry import resolve_measures
from genmeasures.models import build_model
from genmeasures.timing import Stages
from genmeasures.validation import settings_table
from genmeasures.zoo.checkpoint import load_checkpoint, model_spec, save_run
from genmeasures.zoo.evaluating import evaluate_zoo, write_zoo_report
from genmeasures.zoo.executors import train_zoo
from genmeasures.zoo.measuring import measure_zoo
from genmeasures.zoo.space import CANONICAL_ORDERS, Config, load_space
from genmeasures.zoo.space.memory import forward_multiply_adds
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.store import ModelResult, Zoo
from genmeasures.zoo.train import TrainingConfig, train_to_target
from genmeasures.zoo.versions import stale_warning


def _measure_row(spec: MeasureSpec) -> dict[str, str]:
    return {
        "name": spec.name,
        "eq": spec.eq,
        "family": spec.family,
        "needs": ",".join(sorted(spec.needs)) or "model only",
        "stochastic": spec.stochastic,
        "domain": spec.domain,
        "description": spec.description,
    }


def _list_one(spec: MeasureSpec, as_json: bool) -> int:
    options = [] if spec.options is None else settings_table(spec.options)
    if as_json:
        detail = _measure_row(spec) | {"aliases": list(spec.aliases), "options": options}
        print(json.dumps(detail, indent=2, ensure_ascii=False))
        return 0
    for key, value in (_measure_row(spec) | {"aliases": ", ".join(spec.aliases)}).items():
        print(f"{key + ':':13}{value}")
    if options:
        print(f"\noptions (e.g. options={{{spec.name!r}: {{...}}}}):\n{_left_aligned(options)}")
    else:
        print("\noptions:     none")
    return 0


def _list(args: argparse.Namespace) -> int:
    pattern = args.pattern
    if pattern is not None and pattern != "all" and not any(ch in pattern for ch in "*?["):
        return _list_one(get_measure(pattern), args.json)
    rows = [_measure_row(spec) for spec in list_measures(pattern)]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        print(_left_aligned(rows))
        print(
            f"\n{len(rows)} measures. `genmeasures list NAME` shows one with its options; "
            "definitions: docs/ (see README)."
        )
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


def _open_study(args: argparse.Namespace, default_preset: str | None = None) -> Zoo:
    space = load_space(args.space if args.space is not None else args.preset or default_preset)
    out = args.out if args.out is not None else Path("runs") / space.name
    zoo = Zoo.create(out, space)
    print(f"study {out}: space {space.name!r}, {len(space)} models", file=sys.stderr)
    return zoo


def _train_study(args: argparse.Namespace) -> int:
    return 1 if _train_models(_open_study(args), args) else 0


class _WorkBar:
    """A progress bar over models whose percentage and time left follow the work done.

    Each model weighs the multiply-adds of its forward pass
    (:func:`~genmeasures.zoo.space.memory.forward_multiply_adds`): the costliest models go first,
    so counting models would promise an end too soon. The models done are shown beside the bar.
    """

    def __init__(self, desc: str, configs: Sequence[Config]) -> None:
        self.weights = {c.hash: max(1, forward_multiply_adds(c)) for c in configs}
        self.desc, self.count, self.done, self.work = desc, len(configs), 0, 0
        self.total = max(1, sum(self.weights.values()))
        self.bar = tqdm(
            total=self.total,
            desc=f"{desc} 0/{self.count} models",
            file=sys.stderr,
            disable=None,
            bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix} [{elapsed}<{remaining}]",
        )

    def finished(self, model_hash: str, note: str = "") -> None:
        """One model finished (``note``: e.g. its status)."""
        self.done += 1
        self.bar.set_description_str(f"{self.desc} {self.done}/{self.count} models", refresh=False)
        if note:
            self.bar.set_postfix_str(f"last {note}", refresh=False)
        self.work += self.weights.get(model_hash, 0)
        self.bar.update(self.weights.get(model_hash, 0))

    @property
    def fraction(self) -> float:
        """The share of the work done."""
        return self.work / self.total

    def __enter__(self) -> _WorkBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _train_models(zoo: Zoo, args: argparse.Namespace) -> int:
    """Train the study's pending models; returns how many models have failed."""
    states = (ModelState.PENDING, ModelState.RUNNING)
    states += (ModelState.FAILED,) if args.retry_failed else ()
    with _WorkBar("training", zoo.configs(states)) as bar:

        def on_result(result: ModelResult, done: int, total: int) -> None:
            bar.finished(result.hash, result.status)

        try:
            summary = train_zoo(
                zoo,
                executor=args.executor,
                workers=args.workers,
                address=args.address,
                data_root=args.data_root,
                batched=not args.no_batch,
                retry_failed=args.retry_failed,
                on_result=on_result,
            )
        except KeyboardInterrupt as stop:
            stored = sum(n for state, n in zoo.counts().items() if state.is_finished)
            raise type(stop)(f"{stored} of {len(zoo.space)} models finished") from None
    trained = ", ".join(f"{n} {status}" for status, n in sorted(summary.trained.items()))
    print(
        f"trained {sum(summary.trained.values())} models in {summary.seconds:.1f} s"
        f"{f' ({trained})' if trained else ''}; {summary.skipped} already finished"
        + (f"; {summary.reset} interrupted models retried" if summary.reset else "")
        + (f"; {summary.invalidated} corrupt checkpoints retrained" if summary.invalidated else "")
    )
    print(_status_line(zoo))
    failed = zoo.counts()["failed"]
    if failed:
        print(
            f"{failed} models failed: see `genmeasures show {zoo.path}`; retry with --retry-failed",
            file=sys.stderr,
        )
    return failed


def _study(args: argparse.Namespace) -> int:
    if args.measures is not None:
        resolve_measures(args.measures)  # a misspelt name fails before any training
    zoo, stages = _open_study(args, default_preset=DEFAULT_STUDY), Stages()
    with stages("training"):
        failed = _train_models(zoo, args)
    measures = args.measures or list(zoo.space.measures)
    with stages("measuring"):
        _measure_models(zoo, measures, args.data_root, args.workers)
    with stages("evaluating"):
        evaluation = _evaluate_study(zoo, measures, args)
    with stages("report"):
        report = write_zoo_report(zoo, evaluation, args.report, workers=args.workers)
    _print_report(evaluation, report)
    print(stages.summary())
    return 1 if failed else 0


def _evaluate_study(zoo: Zoo, measures: list[str] | None, args: argparse.Namespace) -> Evaluation:
    """:func:`evaluate_zoo` with the evaluation options that `study` and `evaluate` share."""
    return evaluate_zoo(
        zoo,
        measures,
        draws=args.draws,
        seed=args.baseline_seed,
        converged_only=args.converged_only,
        robust=not args.no_robust,
        min_ess=args.min_ess,
        data_root=args.data_root,
    )


def _evaluate(args: argparse.Namespace) -> int:
    if (args.study is None) == (args.table is None):
        raise GenMeasuresError("give either a study folder or --table FILE (not both)")
    if args.study is not None:
        described = (args.hparams, args.architecture, args.test_size)
        if any(value is not None for value in described) or args.gap != "gap":
            raise GenMeasuresError(
                "--gap, --hparams, --architecture and --test-size describe a --table; a study "
                "folder knows its own"
            )
        zoo = Zoo(args.study)
        evaluation = _evaluate_study(zoo, args.measures, args)
        _warn_stale(zoo, evaluation.measures)
        report = write_zoo_report(zoo, evaluation, args.report)
    else:
        if args.hparams is None:
            raise GenMeasuresError(
                "--table needs --hparams A,B,...: the columns that are hyperparameters"
            )
        if args.converged_only:
            raise GenMeasuresError(
                "--converged-only needs a study folder: a table does not say which values "
                "converged (leave those out of the table instead)"
            )
        evaluation = score_table(
            read_table(args.table),
            args.measures,
            gap=args.gap,
            hparams=[name.strip() for name in args.hparams.split(",") if name.strip()],
            canonical=CANONICAL_ORDERS,
            architecture=args.architecture,
            draws=args.draws,
            seed=args.baseline_seed,
        )
        if not args.no_robust:
            if args.test_size is None:
                raise GenMeasuresError(
                    "--table needs --test-size N for the sign-error over environments: the "
                    "number of test examples behind each test error ('inf' if the gaps have no "
                    "test noise), or --no-robust to leave it out"
                )
            evaluation = with_robust_scores(
                evaluation, test_size=args.test_size, min_ess=args.min_ess
            )
        folder = args.report or args.table.with_name(f"{args.table.stem}-report")
        report = write_report(evaluation, folder, title=f"Table {args.table.name}")
    _print_report(evaluation, report)
    return 0


def _print_report(evaluation: Evaluation, report: Path) -> None:
    print(format_summary(evaluation))
    print(f"report: {report.with_name('report.html')} (also report.md)", file=sys.stderr)


def _status_line(zoo: Zoo) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in zoo.counts().items() if n)
    return f"study {zoo.path} ({zoo.space.name}): {counts}"


def _warn_stale(zoo: Zoo, measures: list[str] | None = None) -> None:
    warning = stale_warning(zoo, measures)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)


def _show(args: argparse.Namespace) -> int:
    zoo = Zoo(args.study)
    table = zoo.table()
    _warn_stale(zoo)
    if args.export is not None:
        zoo.export(args.export)
        print(f"wrote {args.export}", file=sys.stderr)
    if args.json:
        print(table.reset_index().to_json(orient="records", indent=2))
        return 0
    print(f"{zoo.space.name}: {zoo.space.description}".strip())
    print(_status_line(zoo))
    failed = table[table["status"] == "failed"]
    for model_hash in failed.index:
        print(f"failed {model_hash}: {zoo.error(model_hash)}", file=sys.stderr)
    columns = ["status", *zoo.space.grid, "train_ce", "train_error", "test_error", "gap", "steps"]
    stored = list(table.attrs[MEASURES_ATTR])
    if args.measures:  # names, aliases or patterns: the stored measures they select
        selected = {spec.name for spec, _ in resolve_measures(args.measures)}
        columns += [name for name in stored if name in selected]
    elif args.measures is not None:  # --measures alone: every stored measure
        columns += stored
    with pd.option_context(
        "display.float_format", "{:.4g}".format, "display.max_rows", 200, "display.width", 200
    ):
        print(table[columns].to_string())
    if stored and args.measures is None:
        print(f"{len(stored)} measures stored: add --measures to see them, --export to save all")
    return 0


def _measure_study(args: argparse.Namespace) -> int:
    zoo = Zoo(args.study)
    _measure_models(zoo, args.measures or list(zoo.space.measures), args.data_root, args.workers)
    return 0


def _measure_models(zoo: Zoo, measures: list[str], data_root: str | None, workers: int) -> None:
    with _WorkBar("measuring", zoo.configs((ModelState.DONE,))) as bar:

        def on_model(config: Config, done: int, total: int) -> None:
            bar.finished(config.hash)

        summary = measure_zoo(
            zoo, measures, data_root=data_root, workers=workers, on_model=on_model
        )
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items()))
    if summary.unconverged:
        counts = ", ".join(f"{name} {n}" for name, n in summary.unconverged.items())
        statuses += f"; {sum(summary.unconverged.values())} did not converge: {counts}"
    print(
        f"measured {summary.measured} models ({summary.values} values"
        f"{f': {statuses}' if statuses else ''}) in {summary.seconds:.1f} s; "
        f"{summary.up_to_date} already up to date"
        + (f"; {summary.recomputed} stale values recomputed" if summary.recomputed else "")
        + (f"; {summary.corrupt} with corrupt checkpoints skipped" if summary.corrupt else "")
    )


def _train(
    args: argparse.Namespace, dataset: Dataset
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    given = {"depth": args.depth, "width": args.width}  # None: the model's own default
    hparams = {name: value for name, value in given.items() if value is not None}
    spec = model_spec(
        args.model, dataset.input_shape, dataset.num_classes, **hparams, seed=args.seed
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
    if args.measures is not None:
        resolve_measures(args.measures)  # a misspelt name fails before any training
    if args.study is not None:
        if any(x is not None for x in (args.weights, args.spec, args.init, args.save)):
            raise GenMeasuresError(
                "a study folder is measured with its own models: --weights, --spec, --init and "
                "--save apply only without one"
            )
        return _measure_study(args)
    load = args.weights is not None or args.spec is not None or args.init is not None
    if load and (args.weights is None or args.spec is None):
        raise GenMeasuresError(
            "--weights and --spec go together (and --init needs both): give both to load a model"
        )
    dataset = load_dataset(args.dataset, root=args.data_root, train_size=args.train_size)
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
                measures=args.measures or "all",
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


#: Each command's function: parsed arguments → exit status.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _list,
    "train": _train_study,
    "show": _show,
    "measure": _measure,
    "evaluate": _evaluate,
    "study": _study,
}
