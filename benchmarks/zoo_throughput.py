"""Zoo throughput: models per minute, one unit vs one model after another, and the same bits.

Trains the same MLP configs on MNIST-1D (normalized with training statistics, as a zoo study
does) twice in one process: together as one unit with
:func:`genmeasures.zoo.batched.train_batched` and one after another with
:func:`genmeasures.zoo.train.train_to_target` (both train with one torch thread). It prints models
per minute for both and their ratio, the status and optimizer steps of every member, and how many
members' weights differ between the two runs (the training kernel promises none).

The configs are a grid of 3 learning rates × 3 L2 coefficients × seeds (SGD with momentum 0.9,
batch size 64, target training cross-entropy 0.01, as Jiang et al. 2020, appendix C).

    python benchmarks/zoo_throughput.py                       # 27 configs, depth 2, width 128
    python benchmarks/zoo_throughput.py --width 512 --configs 9
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch

import genmeasures as gm
from genmeasures.zoo.batched import train_batched
from genmeasures.zoo.train import TrainingConfig, TrainingRun, train_to_target

LEARNING_RATES = (0.01, 0.02, 0.05)
L2 = (0.0, 1e-5, 1e-4)


def make_configs(count: int, args: argparse.Namespace) -> list[TrainingConfig]:
    seeds = range(-(-count // (len(LEARNING_RATES) * len(L2))))
    grid = itertools.product(seeds, LEARNING_RATES, L2)  # the seed varies slowest
    return [
        TrainingConfig(
            optimizer="sgd",
            lr=lr,
            l2=l2,
            batch_size=args.batch_size,
            target_ce=args.target_ce,
            max_epochs=args.max_epochs,
            seed=seed,
        )
        for seed, lr, l2 in itertools.islice(grid, count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=27, help="number of models (default 27)")
    parser.add_argument("--width", type=int, default=128, help="MLP width (default 128)")
    parser.add_argument("--depth", type=int, default=2, help="MLP hidden layers (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target-ce", type=float, default=0.01)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--skip-sequential", action="store_true", help="time the batched run only")
    args = parser.parse_args()

    data = gm.load_dataset("mnist1d", normalize=True)
    configs = make_configs(args.configs, args)
    hparams = {"depth": args.depth, "width": args.width}
    models = [
        gm.build_model("mlp", data.input_shape, data.num_classes, seed=c.seed, **hparams)
        for c in configs
    ]
    print(
        f"{len(configs)} MLPs depth {args.depth} width {args.width} on MNIST-1D "
        f"({len(data.train[1])} train), SGD batch {args.batch_size}, target CE {args.target_ce}, "
        f"max {args.max_epochs} epochs, one torch thread, torch {torch.__version__}"
    )

    copies = [copy.deepcopy(model) for model in models]
    start = time.perf_counter()
    batched = train_batched(models, data, configs)
    batched_s = time.perf_counter() - start
    steps = sum(int(run.metrics["steps"]) for run in batched)
    per_minute = 60 * len(configs) / batched_s
    print(f"unit:       {batched_s:8.1f} s  {per_minute:8.2f} models/min  ({steps} steps)")

    sequential: list[TrainingRun] = []
    if not args.skip_sequential:
        start = time.perf_counter()
        sequential = [
            train_to_target(model, data, config)
            for model, config in zip(copies, configs, strict=True)
        ]
        sequential_s = time.perf_counter() - start
        alone_steps = sum(int(run.metrics["steps"]) for run in sequential)
        alone_per_minute = 60 * len(configs) / sequential_s
        print(
            f"sequential: {sequential_s:8.1f} s  {alone_per_minute:8.2f} models/min  "
            f"({alone_steps} steps)"
        )

    print(f"{'lr':>6} {'l2':>7} {'seed':>4}  {'status':<13} {'steps':>6} {'alone':>6}")
    for i, (config, run) in enumerate(zip(configs, batched, strict=True)):
        alone = f"{int(sequential[i].metrics['steps']):>6}" if sequential else ""
        print(
            f"{config.lr:>6g} {config.l2:>7g} {config.seed:>4}  {run.status:<13} "
            f"{int(run.metrics['steps']):>6} {alone}"
        )
    if sequential:
        differ = sum(
            any(
                not torch.equal(x, y)
                for x, y in zip(
                    a.model.state_dict().values(), b.model.state_dict().values(), strict=True
                )
            )
            for a, b in zip(batched, sequential, strict=True)
        )
        print(f"members whose weights differ between the runs: {differ} of {len(configs)}")
        print(f"ratio (unit / sequential models per minute): {sequential_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
