"""The four searches as data: noise kind, magnitude-aware or not, bound (``MEASURES.md`` §2.4).

=======================  =========  ===============  =========  ===========================
search                   noise      magnitude-aware  bound      ``A(s)``
=======================  =========  ===============  =========  ===========================
``pacbayes-sigma``       gaussian   no               PAC-Bayes  mean over ``draws``
``pacbayes-mag-sigma``   gaussian   yes              PAC-Bayes  mean over ``draws``
``sharpness-alpha``      box        no               sharpness  min over ``restarts``
``sharpness-mag-alpha``  box        yes              sharpness  min over ``restarts``
=======================  =========  ===============  =========  ===========================

One search loop (:mod:`~genmeasures.measures.perturbation.bisection`) and one bound formula
(:mod:`~genmeasures.measures.perturbation.flatness`) read these facts instead of the search's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genmeasures.measures.context import DELTA
from genmeasures.measures.perturbation.options import (
    AscentOptions,
    GaussianOptions,
    MagnitudeAscentOptions,
    MagnitudeGaussianOptions,
    SearchOptions,
)


@dataclass(frozen=True)
class Noise:
    """How a search perturbs θ at scale s, and how its copies make ``A(s)``.

    Attributes:
        name: ``"gaussian"`` (``u ~ N(0, diag(width²))``, ``A(s)`` the mean accuracy over the
            draws) or ``"box"`` (projected gradient ascent in ``|u_i| ≤ width_i``, ``A(s)`` the
            least accuracy over the restarts).
        copies: The option that counts the copies per scale (``"draws"``, ``"restarts"``).
        pooled: Whether the sequential test pools the copies' examples (a mean over draws)
            rather than bounding each copy (a minimum over restarts).
        width: ``(s, θ0, ε)`` → the noise's standard deviation or the box's half-width, per
            parameter; ``ε`` is None for the searches that are not magnitude-aware.
    """

    name: str
    copies: str
    pooled: bool
    width: Callable[[float, torch.Tensor, float | None], float | torch.Tensor]


def _gaussian_width(scale: float, theta0: torch.Tensor, eps: float | None) -> float | torch.Tensor:
    """σ (eq 50), or the magnitude-aware ``sqrt(σ'² θ0_i² + ε²)`` (eq 55)."""
    if eps is None:
        return scale
    return torch.sqrt(scale**2 * theta0**2 + eps**2)


def _box_width(scale: float, theta0: torch.Tensor, eps: float | None) -> torch.Tensor:
    """α in every coordinate, or the magnitude-aware ``α' |θ0_i| + ε`` (eq 58)."""
    if eps is None:
        return torch.full_like(theta0, scale)
    return scale * theta0.abs() + eps


GAUSSIAN = Noise("gaussian", copies="draws", pooled=True, width=_gaussian_width)
BOX = Noise("box", copies="restarts", pooled=False, width=_box_width)


@dataclass(frozen=True)
class Bound:
    """The generalization bound built on a search's scale s (``MEASURES.md`` §3.7).

    Attributes:
        name: ``"pacbayes"`` or ``"sharpness"``.
        family: The registry family of the measures built on it.
        factor: ``ω ↦`` the factor of ``‖θ − θ_ref‖² · factor / (4 s²)`` (eqs 48-49, 51-52).
        prior_term: ``ω ↦`` the term added to ``s²`` in the prior variance of the
            magnitude-aware bounds (eqs 56-57, 59-60).
    """

    name: str
    family: str
    factor: Callable[[int], float]
    prior_term: Callable[[int], float]


PACBAYES = Bound("pacbayes", "flatness-pacbayes", lambda omega: 1, lambda omega: 1)
SHARPNESS = Bound(
    "sharpness",
    "flatness-sharpness",
    lambda omega: math.log(2 * omega),
    lambda omega: 4 * math.log(2 * omega / DELTA),
)


@dataclass(frozen=True)
class Search:
    """One of the four searches: its noise, whether it is magnitude-aware, its bound, options."""

    noise: Noise
    magnitude_aware: bool
    bound: Bound
    options: type[SearchOptions]


#: Search name → its :class:`Search`, in the order of :data:`SEARCHES`.
SEARCH_TABLE: dict[str, Search] = {
    "pacbayes-sigma": Search(GAUSSIAN, False, PACBAYES, GaussianOptions),
    "pacbayes-mag-sigma": Search(GAUSSIAN, True, PACBAYES, MagnitudeGaussianOptions),
    "sharpness-alpha": Search(BOX, False, SHARPNESS, AscentOptions),
    "sharpness-mag-alpha": Search(BOX, True, SHARPNESS, MagnitudeAscentOptions),
}

#: The four searches of ``MEASURES.md`` §2.4.
SEARCHES = tuple(SEARCH_TABLE)

#: The options each search accepts.
SEARCH_OPTIONS: dict[str, type[SearchOptions]] = {
    name: search.options for name, search in SEARCH_TABLE.items()
}
