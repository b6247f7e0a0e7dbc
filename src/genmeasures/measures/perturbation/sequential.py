"""The sequential test: Chernoff (Bernoulli-KL) intervals, looks, and the bisection's rule.

See the package docstring: a step stops at the first look whose interval for ``A(s)`` lies in
one region of the rule, which takes the exact procedure's decision with high probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Examples per draw at the sequential test's first look; each later look doubles it.
FIRST_LOOK = 64


def _kl_bernoulli(p: float, q: float) -> float:
    """kl(p ‖ q) between Bernoulli distributions, +inf where q excludes what p allows."""
    if q <= 0 or q >= 1:
        return 0.0 if p == q else math.inf
    total = 0.0
    if p > 0:
        total += p * math.log(p / q)
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q))
    return total


def _kl_interval(mean: float, count: int, log_term: float) -> tuple[float, float]:
    """``{q : count · kl(mean ‖ q) ≤ log_term}``: Chernoff's interval for a mean of [0, 1] values.

    Each side fails with probability at most ``exp(−log_term)`` (Hoeffding 1963, Theorem 1;
    by his Theorem 4 also for sampling without replacement).
    """
    budget = log_term / count

    def crossing(outside: float) -> float:
        # kl(mean ‖ q) grows as q moves away from the mean: bisect where it crosses the budget,
        # and return the outer end of the final bracket so that the interval stays conservative.
        inside = mean
        for _ in range(60):
            middle = (inside + outside) / 2
            if _kl_bernoulli(mean, middle) <= budget:
                inside = middle
            else:
                outside = middle
        return outside

    return crossing(0.0), crossing(1.0)


class _Rule:
    """The bisection's decision for an accuracy (``MEASURES.md`` §2.4, steps 5c and 5e)."""

    def __init__(self, base_accuracy: float, target: float, tolerance: float) -> None:
        self.base_accuracy, self.target, self.tolerance = base_accuracy, target, tolerance
        offsets = (target - tolerance, target + tolerance) if tolerance > 0 else (target,)
        self.breakpoints = [base_accuracy + sign * o for o in offsets for sign in (-1, 1)]

    def decide(self, accuracy: float) -> str:
        deviation = abs(self.base_accuracy - accuracy)
        if abs(deviation - self.target) < self.tolerance:
            return "tolerance"
        return "above" if deviation > self.target else "below"

    def decide_interval(self, lower: float, upper: float) -> str | None:
        """The decision shared by every accuracy in ``[lower, upper]``, or None if they differ."""
        if any(lower < point < upper for point in self.breakpoints):
            return None
        decisions = {self.decide(a) for a in (lower, (lower + upper) / 2, upper)}
        return decisions.pop() if len(decisions) == 1 else None


@dataclass
class _Tally:
    """Correct counts of parameter copies that each score the accuracy set in their own order."""

    order: torch.Tensor  # (copies, |E|): the examples of E in the order each copy scores them
    scored: list[int]
    correct: list[int]

    @classmethod
    def start(cls, order: torch.Tensor) -> _Tally:
        return cls(order, [0] * len(order), [0] * len(order))

    def interval(self, index: int, log_term: float) -> tuple[float, float]:
        """Confidence interval for the exact accuracy of copy ``index``."""
        return _combined_interval(
            self.correct[index], self.scored[index], len(self.order[0]), log_term
        )


def _combined_interval(
    correct: int, scored: int, population: int, log_term: float
) -> tuple[float, float]:
    """Chernoff's interval for a population mean, intersected with the bounds left by the rest."""
    if scored == 0:
        return 0.0, 1.0
    if scored == population:
        exact = correct / population
        return exact, exact
    lower, upper = _kl_interval(correct / scored, scored, log_term)
    lower = max(lower, correct / population)
    upper = min(upper, (correct + population - scored) / population)
    return lower, upper


@dataclass(frozen=True)
class _Estimate:
    accuracy: float
    lower: float
    upper: float
    examples: int
    decision: str
