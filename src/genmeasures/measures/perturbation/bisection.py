"""One search run: its random streams, accuracy set, the estimates of ``A(s)``, the bisection."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from genmeasures.errors import GenMeasuresWarning, MeasureError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.perturbation.network import (
    _FlatNetwork,
)
from genmeasures.measures.perturbation.options import (
    STEP_SIZES,
)
from genmeasures.measures.perturbation.results import (
    SearchResult,
    SearchStep,
)
from genmeasures.measures.perturbation.searches import (
    SEARCH_OPTIONS,
    SEARCH_TABLE,
    SEARCHES,
)
from genmeasures.measures.perturbation.sequential import (
    FIRST_LOOK,
    _combined_interval,
    _Estimate,
    _Rule,
    _Tally,
)
from genmeasures.validation import (
    check_settings,
    rejection,
)


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


class _Search:
    """One run of a search: its random streams, accuracy set, counters and bisection."""

    def __init__(self, ctx: MeasureContext, search: str, options: dict[str, Any]) -> None:
        self.ctx, self.search, self.options = ctx, search, options
        self.spec = SEARCH_TABLE[search]
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
        self.samples = options[self.spec.noise.copies]
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
        copies = 1 if self.spec.noise.pooled else self.samples
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

    # ------------------------------------------------------------------ the estimates

    def width(self, scale: float) -> float | torch.Tensor:
        """The noise scale or box half-width at ``s``, by the search's noise kind."""
        eps = self.options["eps"] if self.spec.magnitude_aware else None
        return self.spec.noise.width(scale, self.net.theta0, eps)

    def gaussian_step(
        self, scale: float, noise: torch.Tensor, order: torch.Tensor | None
    ) -> _Estimate:
        """``A(s)``: the mean accuracy over the draws (Algorithm 2)."""
        theta0 = self.net.theta0
        thetas = theta0 + self.width(scale) * noise
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

    def box_step(
        self,
        scale: float,
        streams: tuple[torch.Tensor, torch.Tensor],
        order: torch.Tensor | None,
    ) -> _Estimate:
        """``A(s)``: the least accuracy over restarts after projected ascent (Algorithm 3)."""
        starts, batches = streams
        radius = self.width(scale)
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
        draw, step = _STEPS[self.spec.noise.name]
        streams = draw(self)

        def evaluate(scale: float) -> _Estimate:
            return step(self, scale, streams, order)

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


#: Noise kind → how a search draws its random streams once, and estimates ``A(s)`` from them.
_STEPS: dict[str, tuple[Callable[[_Search], Any], Callable[..., _Estimate]]] = {
    "gaussian": (_Search.noise, _Search.gaussian_step),
    "box": (_Search.starts_and_batches, _Search.box_step),
}
