"""Cost of the twelve sharpness and PAC-Bayes measures against the paper's loop structure.

On the 3×512 MLP on MNIST-1D (normalized with training statistics, trained with SGD to a training
cross-entropy of 0.01), this script times, in one process with ``--threads`` torch threads:

- **genmeasures**: ``gm.compute`` of the twelve measures of ``MEASURES.md`` §3.7 with the default
  options. The four searches of §2.4 run once each and are shared by three measures; the draws
  are scored together with ``vmap``; each bisection step stops at the first decisive look of the
  sequential test (error probability 0.01 per search).
- **genmeasures, exact**: the same with ``sequential_error=0``, the paper's exact procedure
  (every draw and restart scored on the whole training set), to separate what the sequential
  test brings from the rest.
- **straightforward**: ``tests/reference.py::perturbation_search_by_loops``, Algorithms 2-3
  with the paper's loop structure (bisection × draws, one perturbed model copy, each draw scored
  on the full training set in batches of 512; the ascent by ``loss.backward()``), once per
  search; the twelve values follow from the four scales by closed formulas, which take
  microseconds and are not timed.

It prints each search's time and full-training-set forward passes (an ascent step on a minibatch
of 128 counts 128/m), the scale each implementation found, and the accuracy of that scale:
the distance from the 0.1 target of the deviation it achieves when checked with fresh draws
(``--fresh`` other seeds, each one evaluation of ``A(s)`` at the scale found), averaged. It ends
with PASS/MISS against the issue's target: at least 5× faster than the straightforward
implementation, at equal or better accuracy of the scales found.

    python benchmarks/perturbation_cost.py
    python benchmarks/perturbation_cost.py --threads 1 --json perturbation_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import genmeasures as gm
from genmeasures.data import Dataset
from genmeasures.measures.perturbation import SEARCHES
from genmeasures.zoo.train import TrainingConfig, train_to_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import perturbation_search_by_loops

#: One measure per search, whose ``extra`` holds that search's diagnostics.
MEASURE_OF_SEARCH = {
    "pacbayes-sigma": "pacbayes-flatness",
    "pacbayes-mag-sigma": "pacbayes-mag-flatness",
    "sharpness-alpha": "sharpness-flatness",
    "sharpness-mag-alpha": "sharpness-mag-flatness",
}

#: The twelve measures of the issue.
MEASURES = [
    spec.name
    for spec in gm.list_measures()
    if spec.family in ("flatness-pacbayes", "flatness-sharpness")
]

SPEEDUP_TARGET = 5.0
TARGET_DEVIATION = 0.1


def train(data: Dataset) -> tuple[nn.Module, nn.Module]:
    """The 3×512 MLP trained to training cross-entropy 0.01, and its initial weights."""
    model = gm.build_model("mlp", data.input_shape, data.num_classes, depth=3, width=512, seed=0)
    config = TrainingConfig(optimizer="sgd", lr=0.05, batch_size=64, target_ce=0.01, seed=0)
    run = train_to_target(model, data, config)
    print(
        f"model: 3×512 MLP, {run.status} after {int(run.metrics['steps'])} steps, exact train "
        f"CE {run.metrics['train_ce']:.4f}"
    )
    return run.model, run.init_model


def library_run(
    model: nn.Module, init: nn.Module, data: Dataset, sequential_error: float
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Seconds of the twelve measures, and each search's diagnostics."""
    options = {name: {"sequential_error": sequential_error} for name in MEASURES}
    start = time.perf_counter()
    results = gm.compute(model, data, measures=MEASURES, init_model=init, options=options)
    seconds = time.perf_counter() - start
    searches = {}
    for search, name in MEASURE_OF_SEARCH.items():
        # The first of a search's three measures runs it; the others read the cache.
        sharing = [results[n] for n in results if results[n].extra["search"] == search]
        searches[search] = results[name].extra | {"seconds": sum(r.seconds for r in sharing)}
    return seconds, searches


def straightforward_run(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> dict[str, dict[str, Any]]:
    """Each search by the reference loops: seconds, scale and forward passes."""
    runs = {}
    for search in SEARCHES:
        start = time.perf_counter()
        found = perturbation_search_by_loops(model, inputs, labels, search=search)
        seconds = time.perf_counter() - start
        ascent_examples = found["ascent_steps_run"] * min(128, len(labels))
        runs[search] = {
            "seconds": seconds,
            "scale": found["value"],
            "reason": found["reason"],
            "forward_passes": found["evaluations"] + ascent_examples / len(labels),
        }
    return runs


def fresh_error(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    search: str,
    scale: float,
    seeds: int,
) -> float:
    """Mean of |deviation − 0.1| at ``scale`` over ``seeds`` fresh seeds (one A(scale) each).

    One bisection step on ``[scale/2, 3·scale/2]`` evaluates ``A`` exactly at its midpoint.
    """
    errors = []
    for seed in range(1000, 1000 + seeds):
        step = perturbation_search_by_loops(
            model,
            inputs,
            labels,
            search=search,
            seed=seed,
            steps=1,
            s_min=scale / 2,
            s_max=3 * scale / 2,
        )["history"][0]
        errors.append(abs(step[2] - TARGET_DEVIATION))
    return sum(errors) / len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--fresh", type=int, default=3, help="fresh seeds per accuracy check")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = gm.load_dataset("mnist1d", normalize=True)
    inputs, labels = data.train
    print(f"MNIST-1D, {len(labels)} training examples, {torch.get_num_threads()} threads")
    model, init = train(data)
    model.eval()

    fast_s, fast = library_run(model, init, data, sequential_error=0.01)
    exact_s, exact = library_run(model, init, data, sequential_error=0.0)
    slow = straightforward_run(model, inputs, labels)
    slow_s = sum(run["seconds"] for run in slow.values())

    print(
        f"\n{'search':<20} {'straightforward':>24} {'genmeasures':>24} {'exact':>10}"
        f" {'scale: straightforward / genmeasures':>38} {'|dev−0.1| fresh':>20}"
    )
    print(f"{'':<20} {'s':>10} {'passes':>13} {'s':>10} {'passes':>13} {'passes':>10}")
    figures: dict[str, Any] = {"searches": {}}
    equal_or_better = True
    for search in SEARCHES:
        ours, theirs = fast[search], slow[search]
        ours_error = fresh_error(model, inputs, labels, search, ours["scale"], args.fresh)
        theirs_error = (
            ours_error
            if theirs["scale"] == ours["scale"]
            else fresh_error(model, inputs, labels, search, theirs["scale"], args.fresh)
        )
        equal_or_better &= ours_error <= theirs_error
        print(
            f"{search:<20} {theirs['seconds']:>10.2f} {theirs['forward_passes']:>13.1f}"
            f" {ours['seconds']:>10.2f} {ours['forward_passes']:>13.1f}"
            f" {exact[search]['forward_passes']:>10.1f}"
            f" {theirs['scale']:>18.6g} / {ours['scale']:<17.6g}"
            f" {theirs_error:>9.4f} / {ours_error:.4f}"
        )
        figures["searches"][search] = {
            "straightforward": theirs | {"fresh_error": theirs_error},
            "genmeasures": {
                "seconds": ours["seconds"],
                "scale": ours["scale"],
                "reason": ours["reason"],
                "forward_passes": ours["forward_passes"],
                "fresh_error": ours_error,
            },
            "genmeasures_exact_forward_passes": exact[search]["forward_passes"],
        }
    ratio, exact_ratio = slow_s / fast_s, slow_s / exact_s
    print(
        f"\nall twelve measures: straightforward {slow_s:.2f} s, genmeasures {fast_s:.2f} s "
        f"(ratio {ratio:.2f}×), genmeasures exact procedure {exact_s:.2f} s "
        f"(ratio {exact_ratio:.2f}×)"
    )
    verdict = "PASS" if ratio >= SPEEDUP_TARGET and equal_or_better else "MISS"
    accuracy = "equal or better on every search" if equal_or_better else "worse on some search"
    print(
        f"{verdict}: target ≥ {SPEEDUP_TARGET:g}× faster at equal or better accuracy; measured "
        f"{ratio:.2f}×, accuracy {accuracy}"
    )
    figures |= {
        "threads": args.threads,
        "straightforward_s": slow_s,
        "genmeasures_s": fast_s,
        "genmeasures_exact_s": exact_s,
        "ratio": ratio,
        "exact_ratio": exact_ratio,
        "equal_or_better": equal_or_better,
        "verdict": verdict,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
