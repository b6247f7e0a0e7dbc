"""The states of a model in a study, from its ``pending`` row to the outcome of its training.

A model row moves ``pending → running → done | not-converged | diverged | failed``
(``ARCHITECTURE.md``, "Store"). A training run ends in one of the three outcomes
``done`` (the training cross-entropy reached the target), ``not-converged`` (the budget was
spent first) or ``diverged`` (a non-finite training loss or loss check); ``failed`` is a run that
raised. The states are ``str`` values, so that they compare equal to, hash like, format as and
are stored in SQLite and JSON as the plain strings that studies have always held.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ModelState"]


class ModelState(str, Enum):
    """The state of one model of a study; each member is its own string value.

    Example:
        >>> ModelState.DONE == "done", ModelState("diverged").is_finished
        (True, True)
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    NOT_CONVERGED = "not-converged"
    DIVERGED = "diverged"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_finished(self) -> bool:
        """Whether training ended; a resumed study trains it again only if ``failed`` and asked."""
        return self not in (ModelState.PENDING, ModelState.RUNNING)

    @property
    def is_trained(self) -> bool:
        """Whether training ran to an outcome (done, not-converged, diverged) and left a model."""
        return self.is_finished and self is not ModelState.FAILED

    @classmethod
    def sql_values(cls) -> str:
        """Every state as an SQL list of string literals, for a ``CHECK (status IN (...))``."""
        return ", ".join(repr(state.value) for state in cls)
