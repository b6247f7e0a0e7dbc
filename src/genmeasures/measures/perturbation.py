"""Perturbation searches and the flatness measures of Jiang et al. (2020), eqs 48-62.

``MEASURES.md`` §2.4 and §3.7 (the paper's §4.3.2 and appendix E, Algorithms 1-3). Four searches
bisect a scale ``s ∈ [s_min, s_max]`` for the largest perturbation of θ, every weight and bias of
the BN-folded network in eval mode, that lowers the training accuracy by the target ``d* = 0.1``:

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
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from genmeasures.errors import GenMeasuresWarning, MeasureError, ModelError
from genmeasures.measures.context import DELTA, MeasureContext
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput
from genmeasures.models import WeightLayer
from genmeasures.validation import (
    Integer,
    Maybe,
    OneOf,
    Real,
    Settings,
    check_settings,
    rejection,
    setting,
)

__all__ = ["SEARCHES", "SearchResult", "SearchStep", "perturbation_search"]

#: The four searches of ``MEASURES.md`` §2.4.
SEARCHES = ("pacbayes-sigma", "pacbayes-mag-sigma", "sharpness-alpha", "sharpness-mag-alpha")

#: ε, the noise and box floor of the magnitude-aware searches (eq 55).
MAGNITUDE_EPS = 1e-3

#: Default ascent step η of each ascent rule (``MEASURES.md`` §2.4).
STEP_SIZES = {"gradient": 0.1, "sign": 0.25}

#: Examples per draw at the sequential test's first look; each later look doubles it.
FIRST_LOOK = 64


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
SEARCH_OPTIONS: dict[str, type[SearchOptions]] = {
    "pacbayes-sigma": GaussianOptions,
    "pacbayes-mag-sigma": MagnitudeGaussianOptions,
    "sharpness-alpha": AscentOptions,
    "sharpness-mag-alpha": MagnitudeAscentOptions,
}


# ---------------------------------------------------------------------------------- results


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


# ---------------------------------------------------------------------------------- validation


def _validated(search: str, given: dict[str, Any], num_train: int) -> dict[str, Any]:
    if search not in SEARCH_OPTIONS:
        raise MeasureError(f"unknown perturbation search {search!r}; expected one of {SEARCHES}")
    where = f"perturbation search {search!r}"
    options = check_settings(SEARCH_OPTIONS[search], given, where=where, kind="option")
    subset = options["eval_subset"]
    if subset is not None and subset > num_train:
        expected = f"None or at most the {num_train} training examples"
        raise MeasureError(rejection(where, "eval_subset", expected, subset))
    return options


# ---------------------------------------------------------------------------------- the network


class _FlatNetwork:
    """The folded network as a function of θ: every weight and bias, in forward order, flat.

    The order is that of ``MEASURES.md`` §2.4: weight layers in forward order, each weight
    before its bias. Random tensors are generated in this order, one per parameter.

    Accuracies of many copies of θ are computed with ``torch.func.vmap``. Gradients use a working
    copy of the model whose parameters are views of one flat buffer: a plain backward pass is
    about twice as fast on a CPU as ``torch.func.grad`` through ``functional_call`` (measured on
    the 3×512 MLP: 3.8 against 7.8 ms per minibatch of 128).
    """

    def __init__(self, ctx: MeasureContext) -> None:
        self.model = ctx.folded_model
        entries = []
        for layer in ctx.layers:
            prefix = f"{layer.name}." if layer.name else ""
            entries.append((prefix + "weight", layer.weight))
            if layer.bias is not None:
                entries.append((prefix + "bias", layer.bias))
        self.names = [name for name, _ in entries]
        self.shapes = [tuple(tensor.shape) for _, tensor in entries]
        self.sizes = [tensor.numel() for _, tensor in entries]
        self.theta0 = torch.cat([tensor.detach().reshape(-1) for _, tensor in entries])
        self._vectorize = True
        self._working = copy.deepcopy(self.model)
        self._buffer = self.theta0.clone()
        working = dict(self._working.named_parameters())
        self._working_parameters = [working[name] for name in self.names]
        for parameter, view in zip(
            self._working_parameters, self._buffer.split(self.sizes), strict=True
        ):
            parameter.data = view.view(parameter.shape)
            parameter.requires_grad_(True)

    @property
    def size(self) -> int:
        """ω, the number of perturbed parameters."""
        return self.theta0.numel()

    def random(
        self, sample: Callable[..., torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """One flat tensor drawn parameter by parameter, e.g. with ``torch.randn``."""
        theta0 = self.theta0
        return torch.cat(
            [
                sample(
                    shape, generator=generator, dtype=theta0.dtype, device=theta0.device
                ).reshape(-1)
                for shape in self.shapes
            ]
        )

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        chunks = theta.split(self.sizes)
        params = {
            name: chunk.view(shape)
            for name, chunk, shape in zip(self.names, chunks, self.shapes, strict=True)
        }
        return functional_call(self.model, params, (x,))

    def correct(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many of ``x`` the network at θ classifies as ``y`` (first maximal index wins)."""
        return (self.logits(theta, x).argmax(dim=-1) == y).sum()

    def correct_of_copies(
        self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, shared_data: bool
    ) -> torch.Tensor:
        """:meth:`correct` of every copy θ_k on ``(x, y)``, or on its own ``(x[k], y[k])``.

        Vectorized with ``vmap``; a model that ``vmap`` cannot trace (data-dependent Python
        control flow, ``.item()``) is evaluated copy by copy instead, with a warning.
        """
        data_dim = None if shared_data else 0
        if self._vectorize:
            try:
                return vmap(self.correct, in_dims=(0, data_dim, data_dim))(thetas, x, y)
            except RuntimeError as error:
                self._vectorize = False
                warnings.warn(
                    "the perturbation searches evaluate parameter copies one by one, because "
                    f"torch.func.vmap cannot trace this model ({error}); they are slower",
                    GenMeasuresWarning,
                    stacklevel=2,
                )
        return torch.stack(
            [
                self.correct(theta, x if shared_data else x[k], y if shared_data else y[k])
                for k, theta in enumerate(thetas)
            ]
        )

    def gradient(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇_θ of the mean cross-entropy of the network at θ on ``(x, y)``, flat."""
        with torch.no_grad():
            self._buffer.copy_(theta)
        with torch.enable_grad():
            loss = F.cross_entropy(self._working(x), y)
            gradients = torch.autograd.grad(loss, self._working_parameters)
        return torch.cat([g.reshape(-1) for g in gradients])


# ---------------------------------------------------------------------------------- the test


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


# ---------------------------------------------------------------------------------- the search


class _Search:
    """One run of a search: its random streams, accuracy set, counters and bisection."""

    def __init__(self, ctx: MeasureContext, search: str, options: dict[str, Any]) -> None:
        self.ctx, self.search, self.options = ctx, search, options
        self.net: _FlatNetwork = ctx.cached("perturbation/network", lambda: _FlatNetwork(ctx))
        inputs, labels = ctx.require_data()
        self.train_inputs, self.train_labels = inputs, labels
        self.purpose = f"perturbation/{search}"
        if options["eval_subset"] is None:
            rows = None
            self.eval_inputs, self.eval_labels = inputs, labels
        else:
            generator = ctx.generator(f"{self.purpose}/eval-subset")
            rows = torch.randperm(len(labels), generator=generator, device=ctx.device)
            rows = rows[: options["eval_subset"]]
            self.eval_inputs, self.eval_labels = inputs[rows], labels[rows]
        self.forward_examples = self.backward_examples = 0
        subset_key = None if rows is None else (search, options["eval_subset"])
        self.base_accuracy: float = ctx.cached(
            ("perturbation/a0", subset_key), self._unperturbed_accuracy
        )
        self.rule = _Rule(self.base_accuracy, options["target"], options["tolerance"])
        self.exact = options["sequential_error"] == 0
        self.samples = options["draws"] if "draws" in options else options["restarts"]
        self.looks = self._look_sizes()
        self.log_term = self._log_term()

    # ------------------------------------------------------------------ evaluation

    @property
    def eval_size(self) -> int:
        return len(self.eval_labels)

    def _look_sizes(self) -> list[int]:
        sizes, size = [], FIRST_LOOK
        while size < self.eval_size and not self.exact:
            sizes.append(size)
            size *= 2
        return [*sizes, self.eval_size]

    def _log_term(self) -> float:
        """``log(1/α')`` of each one-sided bound, α' the per-bound share of the error budget."""
        if self.exact:
            return math.inf
        copies = 1 if "draws" in self.options else self.samples  # draws are pooled, restarts not
        bounds = 2 * self.options["steps"] * len(self.looks) * copies
        return math.log(bounds / self.options["sequential_error"])

    def _unperturbed_accuracy(self) -> float:
        correct = self.count_correct(self.net.theta0[None], None)
        return float(correct[0]) / self.eval_size

    def count_correct(self, thetas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Correct counts of each copy: on all of E (``rows`` None) or on its own ``rows`` of E.

        Each pass scores ``batch_size`` examples on every copy at once.
        """
        copies = len(thetas)
        width = self.eval_size if rows is None else rows.shape[1]
        chunk = self.ctx.batch_size
        total = torch.zeros(copies, dtype=torch.long, device=thetas.device)
        with torch.no_grad():
            for start in range(0, width, chunk):
                if rows is None:
                    x = self.eval_inputs[start : start + chunk]
                    y = self.eval_labels[start : start + chunk]
                else:
                    x = self.eval_inputs[rows[:, start : start + chunk]]
                    y = self.eval_labels[rows[:, start : start + chunk]]
                total += self.net.correct_of_copies(thetas, x, y, shared_data=rows is None)
                self.forward_examples += copies * y.shape[-1]
        return total

    def orders(self) -> torch.Tensor:
        """Each copy's random order of the accuracy set, for the sequential test."""
        return torch.stack(
            [
                torch.randperm(
                    self.eval_size,
                    generator=self.ctx.generator(f"{self.purpose}/order", k),
                    device=self.ctx.device,
                )
                for k in range(self.samples)
            ]
        )

    def score(self, tally: _Tally, copies: list[int], thetas: torch.Tensor, size: int) -> None:
        """Bring the given copies of ``tally`` to ``size`` scored examples."""
        by_start: dict[int, list[int]] = {}
        for index in copies:
            if tally.scored[index] < size:
                by_start.setdefault(tally.scored[index], []).append(index)
        for start, group in by_start.items():
            selected = thetas if len(group) == len(thetas) else thetas[group]
            counts = self.count_correct(selected, tally.order[group, start:size])
            for index, count in zip(group, counts.tolist(), strict=True):
                tally.correct[index] += count
                tally.scored[index] = size

    # ------------------------------------------------------------------ the four estimators

    def pacbayes_step(
        self, scale: float, noise: torch.Tensor, order: torch.Tensor | None
    ) -> _Estimate:
        """``A(s)``: the mean accuracy over the draws (Algorithm 2)."""
        theta0 = self.net.theta0
        if self.search == "pacbayes-sigma":
            thetas = theta0 + scale * noise
        else:
            thetas = theta0 + torch.sqrt(scale**2 * theta0**2 + self.options["eps"] ** 2) * noise
        draws = len(thetas)
        if order is None:
            correct = float(self.count_correct(thetas, None).sum())
            return self.exact_estimate(correct / (draws * self.eval_size))
        tally = _Tally.start(order)
        for size in self.looks:
            self.score(tally, list(range(draws)), thetas, size)
            correct = sum(tally.correct)
            lower, upper = _combined_interval(
                correct, draws * size, draws * self.eval_size, self.log_term
            )
            decision = self.rule.decide_interval(lower, upper)
            if decision is not None:
                return _Estimate(correct / (draws * size), lower, upper, size, decision)
        raise AssertionError("the last look scores all of E, which always decides")

    def sharpness_step(
        self, scale: float, starts: torch.Tensor, batches: torch.Tensor, order: torch.Tensor | None
    ) -> _Estimate:
        """``A(s)``: the least accuracy over restarts after projected ascent (Algorithm 3)."""
        if self.search == "sharpness-alpha":
            radius = torch.full_like(self.net.theta0, scale)
        else:
            radius = scale * self.net.theta0.abs() + self.options["eps"]
        starts = radius * (starts - 0.5)
        restarts = len(starts)
        if order is None:
            finals = self.net.theta0 + self.ascend(starts, radius, batches)
            return self.exact_estimate(
                float(self.count_correct(finals, None).min()) / self.eval_size
            )
        # Restarts are ascended one at a time. Until the last one, A(s) = min_k a_k is only known
        # to be at most the least accuracy so far, which decides when the deviation is already
        # past the band; otherwise the next restart is ascended.
        tally = _Tally.start(order)
        finals = torch.empty(restarts, self.net.size, dtype=starts.dtype, device=starts.device)
        for k in range(restarts):
            finals[k : k + 1] = self.net.theta0 + self.ascend(
                starts[k : k + 1], radius, batches[k : k + 1]
            )
            last = k == restarts - 1
            for size in self.looks:
                self.score(tally, list(range(restarts)) if last else [k], finals, size)
                bounds = [tally.interval(i, self.log_term) for i in range(k + 1)]
                lowest = min(low for low, _ in bounds)
                upper = min(high for _, high in bounds)
                lower = lowest if last else 0.0
                decision = self.rule.decide_interval(lower, upper)
                if decision is not None:
                    accuracy = min(
                        c / n for c, n in zip(tally.correct, tally.scored, strict=True) if n
                    )
                    return _Estimate(accuracy, lower, upper, max(tally.scored), decision)
                if not last and self.rule.decide_interval(0.0, lowest) is None:
                    break  # the exact accuracies so far could not decide: ascend another restart
        raise AssertionError("the last look scores all of E, which always decides")

    def exact_estimate(self, accuracy: float) -> _Estimate:
        """The estimate of a step that scored every copy on all of E."""
        return _Estimate(accuracy, accuracy, accuracy, self.eval_size, self.rule.decide(accuracy))

    def ascend(
        self, starts: torch.Tensor, radius: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """Projected gradient ascent on minibatch cross-entropy from each start (Algorithm 3)."""
        rule = self.options["ascent_rule"]
        step = self.options["step_size"] or STEP_SIZES[rule]
        finals = []
        for u, restart_batches in zip(starts, batches, strict=True):
            for rows in restart_batches:
                gradient = self.net.gradient(
                    self.net.theta0 + u, self.train_inputs[rows], self.train_labels[rows]
                )
                u = u + (step * gradient if rule == "gradient" else step * radius * gradient.sign())
                u = torch.clamp(u, min=-radius, max=radius)
            self.forward_examples += restart_batches.numel()
            self.backward_examples += restart_batches.numel()
            finals.append(u)
        return torch.stack(finals)

    # ------------------------------------------------------------------ random streams

    def noise(self) -> torch.Tensor:
        """Base noise ``z_k ~ N(0, I)`` of every draw."""
        return torch.stack(
            [
                self.net.random(torch.randn, self.ctx.generator(self.purpose, k))
                for k in range(self.samples)
            ]
        )

    def starts_and_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each restart's uniform start ``U_k ~ U[0,1)^ω`` and its ascent minibatch indices."""
        m, batch = len(self.train_labels), self.options["ascent_batch"]
        starts, batches = [], []
        for k in range(self.samples):
            generator = self.ctx.generator(self.purpose, k)
            starts.append(self.net.random(torch.rand, generator))
            if m > batch:
                rows = [
                    torch.randperm(m, generator=generator, device=self.ctx.device)[:batch]
                    for _ in range(self.options["ascent_steps"])
                ]
            else:
                rows = [torch.arange(m, device=self.ctx.device)] * self.options["ascent_steps"]
            batches.append(
                torch.stack(rows)
                if rows
                else torch.empty(0, batch, dtype=torch.long, device=self.ctx.device)
            )
        return torch.stack(starts), torch.stack(batches)

    # ------------------------------------------------------------------ the bisection

    def run(self) -> SearchResult:
        order = None if self.exact else self.orders()
        if self.search.startswith("pacbayes"):
            noise = self.noise()

            def evaluate(scale: float) -> _Estimate:
                return self.pacbayes_step(scale, noise, order)

        else:
            starts, batches = self.starts_and_batches()

            def evaluate(scale: float) -> _Estimate:
                return self.sharpness_step(scale, starts, batches, order)

        return self.bisect(evaluate)

    def bisect(self, evaluate: Callable[[float], _Estimate]) -> SearchResult:
        """Steps 4-6 of ``MEASURES.md`` §2.4's common skeleton."""
        options = self.options
        lo, hi = options["s_min"], options["s_max"]
        moved_lo = moved_hi = False
        history: list[SearchStep] = []
        reason = "max-steps"
        for _ in range(options["steps"]):
            scale = (lo + hi) / 2
            estimate = evaluate(scale)
            history.append(
                SearchStep(
                    scale=scale,
                    accuracy=estimate.accuracy,
                    deviation=abs(self.base_accuracy - estimate.accuracy),
                    lower=estimate.lower,
                    upper=estimate.upper,
                    examples=estimate.examples,
                    decision=estimate.decision,
                )
            )
            if estimate.decision == "tolerance":
                reason = "tolerance"
                break
            if hi - lo < options["interval_tolerance"]:
                reason = "interval"
                break
            if estimate.decision == "above":
                hi, moved_hi = scale, True
            else:
                lo, moved_lo = scale, True
        converged = reason == "tolerance" or (reason == "interval" and moved_lo and moved_hi)
        saturated = None
        if not converged:
            saturated = "high" if not moved_hi else "low" if not moved_lo else None
            if saturated is not None:
                reason = "saturated"
        m = len(self.train_labels)
        return SearchResult(
            search=self.search,
            value=history[-1].scale,
            deviation=history[-1].deviation,
            converged=converged,
            reason=reason,
            saturated=saturated,
            base_accuracy=self.base_accuracy,
            history=tuple(history),
            forward_passes=self.forward_examples / m,
            backward_passes=self.backward_examples / m,
            options=dict(options),
        )


def perturbation_search(ctx: MeasureContext, search: str, **options: Any) -> SearchResult:
    """Run one of the four searches of ``MEASURES.md`` §2.4 on the context's model, once.

    The result is cached in the context under the search's name and options, so the measures
    that share a search (e.g. eqs 48, 49 and 53 share ``pacbayes-sigma``) run it once.

    Args:
        ctx: The model's context; the search needs its training set.
        search: One of :data:`SEARCHES`.
        **options: Any of :data:`SEARCH_OPTIONS` ``[search]`` (each declared there with its
            default and meaning), checked and canonicalized.

    Returns:
        The :class:`SearchResult`. A search that did not converge warns.

    Raises:
        MeasureError: for an unknown search or option, or an option out of range.
        MissingInputError: without a training set.
    """
    options = _validated(search, options, ctx.num_train)
    key = ("perturbation/search", search, tuple(sorted(options.items())))

    def run() -> SearchResult:
        result = _Search(ctx, search, options).run()
        if not result.converged:
            warnings.warn(
                f"perturbation search {search!r} did not converge ({result.reason}"
                + (f", saturated {result.saturated}" if result.saturated else "")
                + f"): value {result.value:.4g} at deviation {result.deviation:.4g}, target "
                f"{options['target']} ± {options['tolerance']}",
                GenMeasuresWarning,
                stacklevel=4,
            )
        return result

    return ctx.cached(key, run)


# ---------------------------------------------------------------------------------- measures


def _parameters(layers: list[WeightLayer]) -> torch.Tensor:
    """θ of ``MEASURES.md`` §1.1, float64: each layer's weight then its bias, in forward order."""
    tensors = []
    for layer in layers:
        tensors.append(layer.weight.detach().double().reshape(-1))
        if layer.bias is not None:
            tensors.append(layer.bias.detach().double().reshape(-1))
    return torch.cat(tensors)


def _reference(ctx: MeasureContext, quantity: str) -> torch.Tensor | None:
    """The reference point of a bound: θ^0 for ``"init"``, the origin for ``"orig"``."""
    if quantity != "init":
        return None
    for layer, initial in zip(ctx.layers, ctx.init_layers, strict=True):
        if (layer.bias is None) != (initial.bias is None):
            raise ModelError(
                f"weight layer {layer.name!r} has a bias in only one of the trained model and "
                "init_model (after BatchNorm folding)"
            )
    return _parameters(ctx.init_layers)


def _flatness(
    ctx: MeasureContext, search: str, quantity: str, options: dict[str, Any]
) -> MeasureOutput:
    """One of the twelve measures of ``MEASURES.md`` §3.7 from its search's scale.

    ``quantity`` is ``"init"`` or ``"orig"`` for a bound (eqs 48-52, 56-60; μ of eq 15, with
    ``sqrt(μ/m)`` in ``extra["bound"]``) and ``"flatness"`` for ``1/scale²`` (eqs 53, 54, 61, 62).
    """
    reference = _reference(ctx, quantity)  # a missing init_model is reported before searching
    result = perturbation_search(ctx, search, **options)
    scale = result.value
    extra = result.diagnostics()
    if quantity == "flatness":
        return MeasureOutput(value=1.0 / scale**2, converged=result.converged, extra=extra)
    theta = _parameters(ctx.layers)
    difference = theta if reference is None else theta - reference
    squared = float(difference.square().sum())
    omega, m = theta.numel(), ctx.num_train
    if search == "pacbayes-sigma":  # eqs 48-49
        value = squared / (4 * scale**2)
    elif search == "sharpness-alpha":  # eqs 51-52
        value = squared * math.log(2 * omega) / (4 * scale**2)
    else:  # eqs 56-57 and 59-60: ¼ Σ_i log(prior variance / posterior variance_i)
        eps = options.get("eps", MAGNITUDE_EPS)
        factor = scale**2 + (
            1 if search == "pacbayes-mag-sigma" else 4 * math.log(2 * omega / DELTA)
        )
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
        family="flatness-pacbayes" if _search.startswith("pacbayes") else "flatness-sharpness",
        needs=("data", "init") if _quantity == "init" else ("data",),
        stochastic="yes",
        aliases=_aliases,
        options=SEARCH_OPTIONS[_search],
        fixed={"quantity": _quantity},
        description=_description,
    )(_FUNCTIONS[_search])
