"""Where a default study's time goes: each stage, the costliest measures, units against singles.

Runs the stages of ``genmeasures study`` on a preset (default: the CLI's default) in a temporary
folder, as the command does: training, measuring and drawing the report's figures with one worker
process per core (one torch thread each), training in units, the preset's measures, the
evaluation and the report. It prints each stage's seconds, the measures that took longest
(their stored ``seconds``, summed over the models), then trains the same configurations again
one model at a time (``--no-batch``, the same workers) and prints the ratio of the two training
times and how many models' checkpoints differ between the two (none: one configuration, one
model).

    python benchmarks/study_speed.py                    # the default preset
    python benchmarks/study_speed.py --preset smoke     # a quick check
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from genmeasures.cli_arguments import DEFAULT_STUDY
from genmeasures.timing import Stages
from genmeasures.zoo import Zoo, load_space, measure_zoo, train_zoo
from genmeasures.zoo.evaluating import evaluate_zoo, write_zoo_report


def checkpoints(zoo: Zoo) -> dict[str, bytes]:
    """Every checkpoint file's bytes, by path relative to the study folder."""
    return {
        str(path.relative_to(zoo.path)): path.read_bytes()
        for path in sorted(zoo.path.glob("checkpoints/*/*.safetensors"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_STUDY, help=f"default {DEFAULT_STUDY}")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--top", type=int, default=8, help="costliest measures to list")
    args = parser.parse_args()
    space = load_space(args.preset)
    print(f"preset {args.preset}: {len(space)} models, {args.workers} workers")
    with tempfile.TemporaryDirectory() as folder:
        stages = Stages()
        zoo = Zoo.create(Path(folder) / "units", space)
        with stages("training"):
            train_zoo(zoo, workers=args.workers)
        with stages("measuring"):
            measure_zoo(zoo, list(space.measures), workers=args.workers)
        with stages("evaluating"):
            evaluation = evaluate_zoo(zoo, list(space.measures))
        with stages("report"):
            write_zoo_report(zoo, evaluation, workers=args.workers)
        print(stages.summary())

        costs = zoo.measures_table().groupby("name")["seconds"].sum().sort_values()
        print(f"measures: {costs.sum():.1f} s of measure time in all; the costliest:")
        for name, seconds in costs.tail(args.top)[::-1].items():
            print(f"  {name:<36} {seconds:8.1f} s  ({100 * seconds / costs.sum():4.1f} %)")

        singles = Zoo.create(Path(folder) / "singles", space)
        one_at_a_time = Stages()
        with one_at_a_time("training one model at a time"):
            train_zoo(singles, workers=args.workers, batched=False)
        print(one_at_a_time.summary())
        ratio = one_at_a_time.total / stages.seconds["training"]
        print(f"ratio (one at a time / units): {ratio:.2f}x")
        units, alone = checkpoints(zoo), checkpoints(singles)
        differ = sum(units[path] != alone.get(path) for path in units)
        print(f"checkpoint files that differ between the two: {differ} of {len(units)}")


if __name__ == "__main__":
    main()
