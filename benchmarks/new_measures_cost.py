"""Cost of the measures of issue 19 in full-data forward-pass equivalents.

For each network, the unit is one forward pass over the whole training set (in the context's
mini-batches, no gradient), the median of ``--repeats`` runs. Each measure is then computed alone
from a fresh context (nothing cached), ``--repeats`` times, and its median time printed as a
multiple of the unit. Networks:

- the 3×512 ReLU MLP on MNIST-1D (4,000 training sequences), untrained (the costs do not depend
  on training);
- a small ResNet: WRN-10-1 with post-activation blocks on the 8×8 digits (1,437 images).

    python benchmarks/new_measures_cost.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import genmeasures as gm

#: The measures of issue 19, in the order printed.
MEASURES = (
    "ht-alpha",
    "ht-alpha-weighted",
    "ht-log-alpha-norm",
    "ht-stable-rank",
    "ht-mp-outliers",
    "db-index",
    "mixup-error",
    "db-times-mixup",
    "label-variation",
    "adaptive-sharpness-linf",
    "adaptive-sharpness-l2",
    "adaptive-sharpness-avg",
    "relative-flatness",
)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_pass(model: nn.Module, inputs: torch.Tensor, batch: int = 512) -> None:
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            model(inputs[start : start + batch])


def report(name: str, model: nn.Module, data: gm.Dataset, repeats: int) -> None:
    model.eval()
    inputs, labels = data.train
    unit = median_seconds(lambda: forward_pass(model, inputs), repeats)
    print(f"{name}: one full-data forward pass {unit * 1000:.1f} ms ({len(inputs)} examples)")
    for measure in MEASURES:
        seconds = median_seconds(
            lambda m=measure: gm.compute(model, (inputs, labels), measures=[m], seed=0), repeats
        )
        status = gm.compute(model, (inputs, labels), measures=[measure], seed=0)[measure].status
        print(f"  {measure:<24} {seconds * 1000:8.1f} ms = {seconds / unit:7.1f} passes ({status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mnist1d = gm.load_dataset("mnist1d")
    mlp = gm.build_model("mlp", mnist1d.input_shape, 10, depth=3, width=512, seed=0)
    report("3x512 MLP, MNIST-1D", mlp, mnist1d, args.repeats)
    digits = gm.load_dataset("digits")
    wrn = gm.build_model("wrn", digits.input_shape, 10, depth=10, width=1, preact=False, seed=0)
    report("WRN-10-1 (post-activation), digits", wrn, digits, args.repeats)


if __name__ == "__main__":
    main()
