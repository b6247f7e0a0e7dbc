"""The searches' options, declared once as Settings dataclasses, and their constants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genmeasures.errors import MeasureError
from genmeasures.validation import (
    Integer,
    Maybe,
    OneOf,
    Real,
    Settings,
    setting,
)

#: ε, the noise and box floor of the magnitude-aware searches (eq 55).
MAGNITUDE_EPS = 1e-3

#: Default ascent step η of each ascent rule (``MEASURES.md`` §2.4).
STEP_SIZES = {"gradient": 0.1, "sign": 0.25}


@dataclass(frozen=True)
class SearchOptions(Settings):
    """Options shared by the four searches (``MEASURES.md`` §2.4)."""

    WHERE = "perturbation search options"
    ERROR = MeasureError

    s_min: float = setting(0.0, Real(0.0), "lower end of the scale interval searched")
    s_max: float = setting(2.0, Real(0.0, open_minimum=True), "upper end of the scale interval")
    steps: int = setting(20, Integer(1), "most bisection steps (M1)")
    target: float = setting(
        0.1, Real(0.0, 1.0, open_minimum=True), "training-accuracy drop sought (d*)"
    )
    tolerance: float = setting(0.01, Real(0.0), "accepted distance from the target (ε_d)")
    interval_tolerance: float = setting(
        0.0, Real(0.0), "stop once the bracket is narrower than this (ε_s)"
    )
    eval_subset: int | None = setting(
        None, Maybe(Integer(1)), "score this many training examples; None scores them all (n_E)"
    )
    sequential_error: float = setting(
        0.01,
        Real(0.0, 1.0, open_maximum=True),
        "probability that the sequential test changes a decision; 0 runs the exact procedure",
    )

    @classmethod
    def check_together(cls, values: Mapping[str, Any]) -> tuple[str, str, Any] | None:
        """The interval is not empty: ``s_min < s_max``."""
        if values["s_min"] >= values["s_max"]:
            return "s_min", f"less than s_max ({values['s_max']:g})", values["s_min"]
        return None


@dataclass(frozen=True)
class GaussianOptions(SearchOptions):
    """Options of ``pacbayes-sigma``: the shared ones and the number of noise draws."""

    draws: int = setting(10, Integer(1), "noise draws per scale (M2)")


@dataclass(frozen=True)
class MagnitudeGaussianOptions(GaussianOptions):
    """Options of ``pacbayes-mag-sigma``: those of ``pacbayes-sigma`` and the noise floor."""

    eps: float = setting(MAGNITUDE_EPS, Real(0.0, open_minimum=True), "noise floor ε (eq 55)")


@dataclass(frozen=True)
class AscentOptions(SearchOptions):
    """Options of ``sharpness-alpha``: the shared ones and the projected gradient ascent's."""

    restarts: int = setting(3, Integer(1), "ascent restarts per scale (M2)")
    ascent_steps: int = setting(20, Integer(0), "ascent steps per restart (M4)")
    ascent_batch: int = setting(128, Integer(1), "examples per ascent minibatch")
    ascent_rule: str = setting(
        "gradient", OneOf(tuple(STEP_SIZES)), "ascent direction: the gradient or its sign"
    )
    step_size: float | None = setting(
        None,
        Maybe(Real(0.0, open_minimum=True)),
        "ascent step η; None: 0.1 for gradient, 0.25 for sign",
    )


@dataclass(frozen=True)
class MagnitudeAscentOptions(AscentOptions):
    """Options of ``sharpness-mag-alpha``: those of ``sharpness-alpha`` and the box floor."""

    eps: float = setting(MAGNITUDE_EPS, Real(0.0, open_minimum=True), "box floor ε (eq 58)")


#: The options each search accepts.
