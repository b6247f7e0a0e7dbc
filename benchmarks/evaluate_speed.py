"""Scoring speed at the paper's scale: 2,187 models (3^7 grid) x 50 measures.

Prints, measured in this run:
- the time of the conditional-MI core (every |S| <= 2, 29 sets) for all 50 measures, and of
  `score_table` (τ, ψ, Ψ, K, oracles, canonical, random, Pearson) as a whole;
- the matrix-product CMI against a plain loop over ordered pairs (dict of cells keyed by tuples)
  on the same random subset of models, with the speed-up and the largest difference;
- with 3 seeds per configuration (6,561 models, `--seeds`), `score_table`, `robust_scores` (the
  sign-error over environments, test-set size 10,000) and `gap_prediction` side by side, each the
  best of `--repeats` runs, and the ratio robust / score_table (the target: at most 2).

Usage: python benchmarks/evaluate_speed.py [--models-loop 150] [--measures 50] [--draws 10]
                                           [--seeds 3] [--repeats 3] [--robust-only]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from genmeasures.evaluate import gap_prediction, robust_scores, score_table
from genmeasures.evaluate.cmi import cmi_matrix, condition_sets, conditioning
from genmeasures.evaluate.table import level_codes

TYPES = 7


def synthetic_table(
    measures: int, seed: int = 0, seeds: int = 1
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The 3^7 grid, each configuration `seeds` times (a `seed` column when more than once)."""
    rng = np.random.default_rng(seed)
    names = [f"h{i}" for i in range(TYPES)]
    grid = pd.DataFrame(list(itertools.product(range(3), repeat=TYPES)), columns=names)
    if seeds > 1:
        grid = pd.concat([grid.assign(seed=k) for k in range(seeds)], ignore_index=True)
    effect = grid[names].to_numpy() @ rng.normal(0, 0.01, TYPES)
    grid["gap"] = 0.2 + effect + rng.normal(0, 0.01, len(grid))
    columns = [f"m{k}" for k in range(measures)]
    noise = rng.normal(0, 1, (len(grid), measures)) * rng.uniform(0.005, 0.05, measures)
    grid[columns] = grid["gap"].to_numpy()[:, None] + noise
    return grid, names, columns


def loop_cmi(mu: np.ndarray, g: np.ndarray, codes: np.ndarray, columns: tuple[int, ...]) -> float:
    """Î(μ, S) by the definition: ordered pairs of distinct models, ties dropped, tuple cells."""
    cells: dict[tuple, list[int]] = {}
    for a in range(len(mu)):
        for b in range(len(mu)):
            vm, vg = np.sign(mu[a] - mu[b]), np.sign(g[a] - g[b])
            if a == b or vm == 0 or vg == 0:
                continue
            key = tuple((codes[a, j], codes[b, j]) for j in columns)
            counts = cells.setdefault(key, [0, 0, 0, 0])
            counts[(vg > 0) * 2 + (vm > 0)] += 1
    total = sum(sum(c) for c in cells.values())
    information = entropy = 0.0
    for counts in cells.values():
        n = sum(counts)
        for gi in (0, 1):
            pg = (counts[gi * 2] + counts[gi * 2 + 1]) / n
            if pg > 0:
                entropy -= n / total * pg * math.log(pg)
            for mi in (0, 1):
                pm = (counts[mi] + counts[2 + mi]) / n
                joint = counts[gi * 2 + mi] / n
                if joint > 0:
                    information += n / total * joint * math.log(joint / (pg * pm))
    return information / entropy


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """The shortest wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def robust_side_by_side(args: argparse.Namespace) -> None:
    """score_table, robust_scores and gap_prediction on the same seeded table, best of repeats."""
    table, names, columns = synthetic_table(args.measures, seeds=args.seeds)
    hparams = [*names, "seed"] if args.seeds > 1 else names
    orders = dict.fromkeys(names, "increasing")
    score = best_of(
        args.repeats,
        lambda: score_table(table, columns, hparams=hparams, canonical=orders, draws=args.draws),
    )
    robust = best_of(
        args.repeats,
        lambda: robust_scores(table, columns, hparams=hparams, test_size=10_000, draws=args.draws),
    )
    prediction = best_of(args.repeats, lambda: gap_prediction(table, columns, hparams=hparams))
    print(
        f"{len(table) // args.seeds} configurations x {args.seeds} seeds = {len(table)} models x "
        f"{args.measures} measures, best of {args.repeats}:"
    )
    print(f"  score_table (with {args.draws} draws x 4 oracles): {score:.2f} s")
    print(f"  robust_scores (test size 10,000, {args.draws} draws x 4 oracles): {robust:.2f} s")
    print(f"  ratio robust_scores / score_table: {robust / score:.3f} (target <= 2)")
    print(f"  gap_prediction (5 folds by configuration): {prediction:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-loop", type=int, default=150)
    parser.add_argument("--measures", type=int, default=50)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--robust-only", action="store_true", help="only the robust comparison")
    args = parser.parse_args()
    if not args.robust_only:
        cmi_side_by_side(args)
    robust_side_by_side(args)


def cmi_side_by_side(args: argparse.Namespace) -> None:
    """The CMI core and score_table on 2,187 models, then the CMI against the pair loop."""
    table, names, columns = synthetic_table(args.measures)
    codes = level_codes(table[names])
    sets = condition_sets(TYPES, 2, pgdl=False)
    mu, g = table[columns].to_numpy(), table["gap"].to_numpy()

    start = time.perf_counter()
    cmi_matrix(mu, g, conditioning(codes, sets))
    core = time.perf_counter() - start
    start = time.perf_counter()
    orders = dict.fromkeys(names, "increasing")  # one canonical ordering per type
    score_table(table, columns, hparams=names, canonical=orders, draws=args.draws)
    whole = time.perf_counter() - start
    print(f"{len(table)} models x {args.measures} measures, {len(sets)} conditioning sets")
    print(f"  conditional MI, all measures: {core:.2f} s")
    print(f"  score_table (with {args.draws} draws x 4 oracles): {whole:.2f} s")

    rng = np.random.default_rng(1)
    subset = np.sort(rng.choice(len(table), args.models_loop, replace=False))
    sub_codes, sub_mu, sub_g = codes[subset], mu[subset, :1], g[subset]
    start = time.perf_counter()
    loop = [loop_cmi(sub_mu[:, 0], sub_g, sub_codes, s) for s in sets]
    loop_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fast = cmi_matrix(sub_mu, sub_g, conditioning(sub_codes, sets))[:, 0]
    fast_seconds = time.perf_counter() - start
    print(f"{args.models_loop} models x 1 measure, same sets, side by side:")
    print(
        f"  pair loop {loop_seconds:.2f} s, matrix products {fast_seconds:.4f} s: "
        f"{loop_seconds / fast_seconds:.0f}x; largest difference "
        f"{np.nanmax(np.abs(np.asarray(loop) - fast)):.1e}"
    )
    per_pair = loop_seconds / (args.models_loop * (args.models_loop - 1))
    estimate = per_pair * len(table) * (len(table) - 1) * args.measures
    print(f"  the loop at {len(table)} x {args.measures} would take about {estimate / 3600:.1f} h")


if __name__ == "__main__":
    main()
