"""Perturbation searches and the flatness measures of Jiang et al. (2020), eqs 48-62.

``MEASURES.md`` §2.4 and §3.7 (the paper's §4.3.2 and appendix E, Algorithms 1-3). Four searches
bisect a scale ``s ∈ [s_min, s_max]`` for the largest perturbation of θ that lowers the training
accuracy by the target ``d* = 0.1``. θ is every weight and bias of the BN-folded network in eval
mode, or every parameter of the unfolded network when it cannot be folded
(:func:`~genmeasures.measures.parameters.perturbed_parameters`):

=======================  ================================================  =====================
search                   perturbation at scale s                           estimate ``A(s)``
=======================  ================================================  =====================
``pacbayes-sigma``       ``u ~ N(0, s² I)``                                mean over ``draws``
``pacbayes-mag-sigma``   ``u_i ~ N(0, s² θ0_i² + ε²)`` (variance)          mean over ``draws``
``sharpness-alpha``      projected gradient ascent in ``|u_i| ≤ s``        min over ``restarts``
``sharpness-mag-alpha``  the same in ``|u_i| ≤ s |θ0_i| + ε``               min over ``restarts``
=======================  ================================================  =====================

Each search runs once per model and option set (cached in the context) and serves the three
measures built on it. It returns a :class:`SearchResult`: the value, the deviation reached, the
passes it used, its history, and ``converged`` with a ``reason``; a search that ran out of steps
is never reported as converged.

How the searches are made fast, all without changing what they compute:

- **Copies at once.** The draws (restarts) are stacked parameter vectors evaluated together with
  ``torch.func.vmap`` on shared batches; the ascent steps of all restarts are one vmapped gradient.
- **Common random numbers, generated once.** Draw k's base noise, restart k's start and
  minibatch sequence are the same at every scale (``MEASURES.md`` §2.4), so they are drawn once
  per search; the unperturbed accuracy ``a0`` is computed once for all four searches.
- **Sequential test** (``sequential_error > 0``, the default). A bisection step only needs to
  know which of three regions ``A(s)`` lies in (deviation above, within or below the tolerance
  band). Each draw scores the accuracy set in its own random order, at looks of 64, 128, 256, ...
  examples, and the step stops at the first look whose confidence interval for the full-set
  ``A(s)`` lies in one region. The interval is Hoeffding's Chernoff (Bernoulli-KL) bound, valid
  for sampling without replacement (Hoeffding 1963, Theorems 1 and 4), intersected with the
  deterministic bounds of the examples not yet scored, at level ``sequential_error / (steps ×
  looks × restarts)``: by a union bound, **the search takes the same decisions as the exact
  procedure, hence returns the same value, with probability at least 1 − sequential_error**.
  For sharpness, restarts are ascended and scored one at a time: ``A(s)`` is a minimum, so once
  the restarts so far drop the accuracy past the band, the others cannot change the decision.
  ``sequential_error=0`` runs the paper's exact procedure: every draw and every restart scored
  on all of the accuracy set at every step.

Memory: a PAC-Bayes search holds two ``draws × ω`` tensors (the base noise and the perturbed
copies), a sharpness search two ``restarts × ω``; each scoring pass runs ``batch_size`` examples
through every copy at once.

Modules: ``searches`` (the four searches as data: noise kind, magnitude-aware or not, bound),
``options`` (their options, declared as Settings dataclasses), ``bisection`` (one search run:
streams, estimates of ``A(s)``, the bisection, :func:`perturbation_search`), ``sequential`` (the
Chernoff/KL sequential test), ``network`` (θ as a flat vector), ``results``
(:class:`SearchResult`), ``flatness`` (the twelve measures and their registration).
"""

from genmeasures.measures.perturbation import flatness as flatness  # registers the measures
from genmeasures.measures.perturbation.bisection import perturbation_search
from genmeasures.measures.perturbation.options import (
    MAGNITUDE_EPS,
    STEP_SIZES,
    AscentOptions,
    GaussianOptions,
    MagnitudeAscentOptions,
    MagnitudeGaussianOptions,
    SearchOptions,
)
from genmeasures.measures.perturbation.results import SearchResult, SearchStep
from genmeasures.measures.perturbation.searches import (
    BOX,
    GAUSSIAN,
    PACBAYES,
    SEARCH_OPTIONS,
    SEARCH_TABLE,
    SEARCHES,
    SHARPNESS,
    Bound,
    Noise,
    Search,
)
from genmeasures.measures.perturbation.sequential import (
    FIRST_LOOK,
)

__all__ = [
    "BOX",
    "FIRST_LOOK",
    "GAUSSIAN",
    "MAGNITUDE_EPS",
    "PACBAYES",
    "SEARCHES",
    "SEARCH_OPTIONS",
    "SEARCH_TABLE",
    "SHARPNESS",
    "STEP_SIZES",
    "AscentOptions",
    "Bound",
    "GaussianOptions",
    "MagnitudeAscentOptions",
    "MagnitudeGaussianOptions",
    "Noise",
    "Search",
    "SearchOptions",
    "SearchResult",
    "SearchStep",
    "perturbation_search",
]
