"""The ``genmeasures`` command line: parse, run the command, say how it ended.

Parsing is :mod:`genmeasures.cli_arguments`, the commands :mod:`genmeasures.cli_commands`.

Commands:
    ``genmeasures list [PATTERN]``: the registered measures.
    ``genmeasures train (--preset NAME | --space FILE) --out DIR``: train a study's models.
    ``genmeasures show DIR``: a study's status and results table.
    ``genmeasures measure DIR``: compute measures for every finished model of a study.
    ``genmeasures evaluate (DIR | --table FILE.csv --hparams A,B)``: score measures, write a report.
    ``genmeasures study [--preset NAME]``: train, measure and evaluate (default: quick).
    ``genmeasures measure``: train a small model on a built-in dataset (or load one from a
    safetensors file and its model spec) and print its measures.

Parsing imports neither torch nor pandas nor matplotlib, so ``--help`` answers at once; the
commands are imported once the arguments are known.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genmeasures.cli_arguments import parser
from genmeasures.errors import GenMeasuresError
from genmeasures.interrupts import exit_status, stopping_cleanly


def _interrupted(args: argparse.Namespace, stop: KeyboardInterrupt) -> int:
    """Say what an interrupted command kept; returns the exit status of its signal."""
    resumable = args.command in ("train", "study") or (
        args.command == "measure" and args.study is not None
    )
    print(
        f"genmeasures: stopped{f': {stop}' if str(stop) else ''}"
        + ("; run the same command again to resume" if resumable else ""),
        file=sys.stderr,
    )
    return exit_status(stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Ctrl-C and SIGTERM stop a command cleanly: one line says what was kept, and the exit status
    is 130 (SIGINT) or 143 (SIGTERM).
    """
    args = parser().parse_args(argv)
    try:
        with stopping_cleanly():
            from genmeasures.cli_commands import COMMANDS

            return COMMANDS[args.command](args)
    except KeyboardInterrupt as stop:
        return _interrupted(args, stop)
    except GenMeasuresError as error:
        print(f"genmeasures: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) closed the pipe: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
