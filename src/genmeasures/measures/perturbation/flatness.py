"""The twelve flatness measures of ``MEASURES.md`` §3.7 (eqs 48-62) and their registration."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from genmeasures.measures.context import DELTA, MeasureContext
from genmeasures.measures.parameters import Theta, initial_parameters, perturbed_parameters
from genmeasures.measures.perturbation.bisection import (
    perturbation_search,
)
from genmeasures.measures.perturbation.options import (
    MAGNITUDE_EPS,
    SearchOptions,
)
from genmeasures.measures.perturbation.searches import (
    SEARCH_OPTIONS,
    SEARCH_TABLE,
    SEARCHES,
)
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput


def _reference(ctx: MeasureContext, theta: Theta, quantity: str) -> torch.Tensor | None:
    """The reference point of a bound: θ^0 for ``"init"``, the origin for ``"orig"``."""
    return initial_parameters(ctx, theta) if quantity == "init" else None


def _flatness(
    ctx: MeasureContext, search: str, quantity: str, options: dict[str, Any]
) -> MeasureOutput:
    """One of the twelve measures of ``MEASURES.md`` §3.7 from its search's scale.

    ``quantity`` is ``"init"`` or ``"orig"`` for a bound (eqs 48-52, 56-60; μ of eq 15, with
    ``sqrt(μ/m)`` in ``extra["bound"]``) and ``"flatness"`` for ``1/scale²`` (eqs 53, 54, 61, 62).
    """
    parameters = perturbed_parameters(ctx)
    # a missing init_model is reported before searching
    reference = _reference(ctx, parameters, quantity)
    result = perturbation_search(ctx, search, **options)
    scale = result.value
    extra = result.diagnostics()
    extra["parameters"] = parameters.description
    if quantity == "flatness":
        extra["omega"] = parameters.omega
        return MeasureOutput(value=1.0 / scale**2, converged=result.converged, extra=extra)
    theta = parameters.flat()
    difference = theta if reference is None else theta - reference
    squared = float(difference.square().sum())
    omega, m = theta.numel(), ctx.num_train
    spec = SEARCH_TABLE[search]
    if not spec.magnitude_aware:  # eqs 48-49 and 51-52
        value = squared * spec.bound.factor(omega) / (4 * scale**2)
    else:  # eqs 56-57 and 59-60: ¼ Σ_i log(prior variance / posterior variance_i)
        eps = options.get("eps", MAGNITUDE_EPS)
        factor = scale**2 + spec.bound.prior_term(omega)
        prior = math.log(eps**2 + factor * squared / omega)
        posterior = torch.log(eps**2 + scale**2 * difference.square())
        value = 0.25 * float((prior - posterior).sum())
        if reference is None:
            extra["reference"] = (
                "origin in the numerator and in every denominator term (MEASURES.md eqs 57, 60)"
            )
    value += math.log(m / DELTA) + 10
    extra |= {"omega": omega, "bound": math.sqrt(value / m)}
    return MeasureOutput(value=value, converged=result.converged, extra=extra)


def _measure_function(search: str) -> Callable[..., MeasureOutput]:
    """The function of the three measures built on ``search``.

    Each registration fixes its ``quantity``; all take the search's options,
    :data:`SEARCH_OPTIONS` ``[search]``.
    """

    def measure(ctx: MeasureContext, *, quantity: str, options: SearchOptions) -> MeasureOutput:
        return _flatness(ctx, search, quantity, options.as_dict())

    measure.__name__ = measure.__qualname__ = search.replace("-", "_")
    measure.__doc__ = f"Flatness measures from the scale of the ``{search}`` search."
    return measure


#: (name, eq, search, quantity, aliases, description) of ``MEASURES.md`` §3.7.
_CATALOG: tuple[tuple[str, int, str, str, tuple[str, ...], str], ...] = (
    (
        "pacbayes-init",
        48,
        "pacbayes-sigma",
        "init",
        ("pacbayes", "pac-bayes-init"),
        "PAC-Bayes bound ‖θ−θ0‖²/(4σ²) + log(m/δ) + 10 (eq 48)",
    ),
    (
        "pacbayes-orig",
        49,
        "pacbayes-sigma",
        "orig",
        ("pacbayes 0ref",),
        "PAC-Bayes bound ‖θ‖²/(4σ²) + log(m/δ) + 10 (eq 49)",
    ),
    (
        "sharpness-init",
        51,
        "sharpness-alpha",
        "init",
        ("sharpness",),
        "Sharpness bound ‖θ−θ0‖² log(2ω)/(4α²) + log(m/δ) + 10 (eq 51)",
    ),
    (
        "sharpness-orig",
        52,
        "sharpness-alpha",
        "orig",
        ("sharpness 0ref",),
        "Sharpness bound ‖θ‖² log(2ω)/(4α²) + log(m/δ) + 10 (eq 52)",
    ),
    (
        "pacbayes-flatness",
        53,
        "pacbayes-sigma",
        "flatness",
        ("1/σ pacbayes", "1-over-sigma-pacbayes", "1/sigma gaussian"),
        "1/σ², σ the Gaussian noise scale that drops training accuracy by 0.1 (eq 53)",
    ),
    (
        "sharpness-flatness",
        54,
        "sharpness-alpha",
        "flatness",
        ("1/σ sharpness", "1-over-sigma-sharpness", "1/sigma sharpness"),
        "1/α², α the worst-case box half-width that drops training accuracy by 0.1 (eq 54)",
    ),
    (
        "pacbayes-mag-init",
        56,
        "pacbayes-mag-sigma",
        "init",
        ("pac-bayes-mag-init",),
        "Magnitude-aware PAC-Bayes bound relative to θ0, from σ' (eq 56)",
    ),
    (
        "pacbayes-mag-orig",
        57,
        "pacbayes-mag-sigma",
        "orig",
        (),
        "Magnitude-aware PAC-Bayes bound relative to the origin, from σ' (eq 57)",
    ),
    (
        "pac-sharpness-mag-init",
        59,
        "sharpness-mag-alpha",
        "init",
        ("sharpness-mag-init",),
        "Magnitude-aware sharpness bound relative to θ0, from α' (eq 59)",
    ),
    (
        "pac-sharpness-mag-orig",
        60,
        "sharpness-mag-alpha",
        "orig",
        ("sharpness-mag-orig",),
        "Magnitude-aware sharpness bound relative to the origin, from α' (eq 60)",
    ),
    (
        "pacbayes-mag-flatness",
        61,
        "pacbayes-mag-sigma",
        "flatness",
        (
            "1/σ' pacbayes mag",
            "1-over-sigma-pacbayes-mag",
            "1/alpha pacbayes mag",
            "pac-bayes-mag-flat",
        ),
        "1/σ'², σ' the magnitude-aware noise scale that drops training accuracy by 0.1 (eq 61)",
    ),
    (
        "sharpness-mag-flatness",
        62,
        "sharpness-mag-alpha",
        "flatness",
        (
            "1/α' sharpness mag",
            "1-over-sigma-sharpness-mag",
            "1/alpha sharpness mag",
            "sharpness-mag-flat",
        ),
        "1/α'², α' the magnitude-aware box half-width that drops training accuracy by 0.1 (eq 62)",
    ),
)

_FUNCTIONS = {search: _measure_function(search) for search in SEARCHES}

for _name, _eq, _search, _quantity, _aliases, _description in _CATALOG:
    register_measure(
        _name,
        eq=_eq,
        family=SEARCH_TABLE[_search].bound.family,
        needs=("data", "init") if _quantity == "init" else ("data",),
        stochastic="yes",
        aliases=_aliases,
        options=SEARCH_OPTIONS[_search],
        fixed={"quantity": _quantity},
        description=_description,
        domain="differentiable",
    )(_FUNCTIONS[_search])
