"""Where the time of a multi-stage command went: wall-clock seconds per stage.

``genmeasures study`` ends with one line of them (training, measuring, evaluating, report), and
``benchmarks/study_speed.py`` prints the same breakdown for a default study.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["Stages"]


class Stages:
    """Wall-clock seconds of named stages, in the order they ran.

    Example:
        >>> stages = Stages()
        >>> with stages("training"):
        ...     pass
        >>> list(stages.seconds)
        ['training']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added to its time if it ran before)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        """Seconds of all stages together."""
        return sum(self.seconds.values())

    def summary(self) -> str:
        """One line, e.g. ``time: training 12.3 s (81 %), measuring 2.9 s (19 %); total 15.2 s``."""
        total = self.total
        parts = [
            f"{name} {seconds:.1f} s ({100 * seconds / total if total else 0:.0f} %)"
            for name, seconds in self.seconds.items()
        ]
        return f"time: {', '.join(parts)}; total {total:.1f} s"
