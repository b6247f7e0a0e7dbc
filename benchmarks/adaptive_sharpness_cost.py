"""Worst-case adaptive sharpness against its bare arithmetic, at the paper's defaults.

At the defaults (one ρ, 20 ascent steps, 1,024 examples in batches of m = 128, the weights
perturbed), ``adaptive-sharpness-linf`` and ``adaptive-sharpness-l2`` cost 20 forward-backward
passes per batch and one forward pass per batch to score the last iterate. The bare arithmetic is
exactly that, written as plainly as possible on the same examples and batches: for each batch, 20
times the cross-entropy and its gradient with respect to the weights (``torch.autograd.grad``),
then one forward pass without gradient. Both are timed in the same process, alternately, and the
medians' ratio printed (the issue's target: at most 1.2×). The measure's time is that of
``genmeasures.compute`` on the model and the whole training set (its context, the seeded subset,
the ascent). ``adaptive-sharpness-avg`` (20 draws, forward passes only) is printed for reference.

Networks, untrained (the cost does not depend on training):

- the 3×512 ReLU MLP on MNIST-1D (4,000 training sequences);
- a small ResNet: WRN-10-1 with post-activation blocks on the 8×8 digits (1,437 images).

    python benchmarks/adaptive_sharpness_cost.py [--repeats 5] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import genmeasures as gm
from genmeasures.measures.adaptive import EXAMPLES_PURPOSE
from genmeasures.seeding import derive_seed

STEPS = 20
EXAMPLES = 1024
M = 128


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """20 forward-backward passes per batch (gradient of the weights), one forward pass."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    for x, y in batches:
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x), y)
            torch.autograd.grad(loss, weights)
        with torch.no_grad():
            model(x)


def subset(inputs, labels, device):
    """The examples the measure evaluates (its seeded subset, seed 0), in batches of m."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(0, EXAMPLES_PURPOSE, 0))
    if len(labels) > EXAMPLES:
        index = torch.randperm(len(labels), generator=generator, device=device)[:EXAMPLES]
        index = index.sort().values
        inputs, labels = inputs[index], labels[index]
    return [(inputs[s : s + M], labels[s : s + M]) for s in range(0, len(labels), M)]


def timed(run, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def report(name: str, model: nn.Module, data: gm.Dataset, repeats: int, device) -> None:
    model = model.to(device).eval()
    inputs, labels = (t.to(device) for t in data.train)
    working = copy.deepcopy(model)
    for parameter in working.parameters():
        parameter.requires_grad_(parameter.dim() >= 2)
    batches = subset(inputs, labels, device)
    print(f"{name}: {sum(len(y) for _, y in batches)} examples in {len(batches)} batches")
    measures = ("adaptive-sharpness-linf", "adaptive-sharpness-l2", "adaptive-sharpness-avg")
    times: dict[str, list[float]] = {"bare": [], **{m: [] for m in measures}}
    for run in range(repeats + 1):  # the first round warms up and is dropped
        sample = {"bare": timed(lambda: bare(working, batches), device)}
        for measure in measures:
            sample[measure] = timed(
                lambda m=measure: gm.compute(
                    model, (inputs, labels), measures=[m], seed=0, device=device
                ),
                device,
            )
        if run:
            for key, seconds in sample.items():
                times[key].append(seconds)
    unit = statistics.median(times["bare"])
    print(f"  bare arithmetic ({STEPS} fwd-bwd + 1 fwd per batch)  {unit * 1000:8.1f} ms")
    for measure in measures:
        seconds = statistics.median(times[measure])
        print(f"  {measure:<40} {seconds * 1000:8.1f} ms = {seconds / unit:5.2f}× bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mnist1d = gm.load_dataset("mnist1d")
    mlp = gm.build_model("mlp", mnist1d.input_shape, 10, depth=3, width=512, seed=0)
    report("3x512 MLP, MNIST-1D", mlp, mnist1d, args.repeats, device)
    digits = gm.load_dataset("digits")
    wrn = gm.build_model("wrn", digits.input_shape, 10, depth=10, width=1, preact=False, seed=0)
    report("WRN-10-1 (post-activation), digits", wrn, digits, args.repeats, device)


if __name__ == "__main__":
    main()
