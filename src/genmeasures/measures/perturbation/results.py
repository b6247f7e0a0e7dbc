"""What a search returns: every bisection step, and the result with its diagnostics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from genmeasures.measures.perturbation.options import (
    STEP_SIZES,
)


@dataclass(frozen=True)
class SearchStep:
    """One bisection step.

    Attributes:
        scale: The scale s tried.
        accuracy: The estimate of ``A(s)`` from the examples scored, exact when ``lower ==
            upper``. A sharpness step decided before its last restart reports the least
            accuracy among the restarts ascended so far, of which ``A(s)`` is at most.
        deviation: ``|a0 − accuracy|``.
        lower: Lower end of the confidence interval for the exact ``A(s)``.
        upper: Upper end; equal to ``lower`` when ``A(s)`` is exact.
        examples: Examples scored per draw (per restart: the most any restart scored).
        decision: ``"tolerance"`` (the search stops), ``"above"`` (the deviation exceeds the
            target: ``hi ← s``) or ``"below"`` (``lo ← s``).
    """

    scale: float
    accuracy: float
    deviation: float
    lower: float
    upper: float
    examples: int
    decision: str


@dataclass(frozen=True)
class SearchResult:
    """The outcome of one perturbation search (``MEASURES.md`` §2.4).

    Attributes:
        search: Which of :data:`SEARCHES`.
        value: The scale found (σ, σ', α or α').
        deviation: The accuracy deviation reached at ``value``.
        converged: True iff the deviation is within the tolerance of the target, or the interval
            test stopped the search after both ends of the bracket moved.
        reason: ``"tolerance"``, ``"interval"``, ``"max-steps"``, or ``"saturated"`` when the
            search ended unconverged with one end of the bracket never moved.
        saturated: ``"high"`` if an unconverged search never lowered ``hi`` (the model is flatter
            than ``s_max`` allows), ``"low"`` if it never raised ``lo``, else None.
        base_accuracy: ``a0``, the unperturbed accuracy on the accuracy set.
        history: Every bisection step, in order.
        forward_passes: Example forward passes used (per parameter copy), in full-training-set
            equivalents; ``a0`` is counted by the search that computed it.
        backward_passes: The same for backward passes (the sharpness ascent).
        options: Every option of the search, defaults included.
    """

    search: str
    value: float
    deviation: float
    converged: bool
    reason: str
    saturated: str | None
    base_accuracy: float
    history: tuple[SearchStep, ...]
    forward_passes: float
    backward_passes: float
    options: dict[str, Any]

    def diagnostics(self) -> dict[str, Any]:
        """The result as plain JSON-able values, for a measure's ``extra``."""
        return {
            "search": self.search,
            "scale": self.value,
            "deviation": self.deviation,
            "reason": self.reason,
            "saturated": self.saturated,
            "base_accuracy": self.base_accuracy,
            "steps_run": len(self.history),
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "history": [asdict(step) for step in self.history],
        } | self._ascent()

    def _ascent(self) -> dict[str, Any]:
        """The ascent's step size η as used (the option may leave it to the rule's default)."""
        if "ascent_rule" not in self.options:
            return {}
        rule = self.options["ascent_rule"]
        return {"step_size": self.options["step_size"] or STEP_SIZES[rule]}
