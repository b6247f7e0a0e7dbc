"""Checks of the fast perturbation searches and the twelve flatness measures (eqs 48-62).

``MEASURES.md`` §2.4 and §3.7. The library's searches are compared with the slow literal reference
``reference.perturbation_search_by_loops`` (exact mode: the same numbers; sequential mode: the
same decisions), with the closed forms of ``closed_forms.py``, and with the bound formulas of the
catalog written out by hand.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from closed_forms import (
    alpha_problem,
    corner_accuracy,
    gaussian_data,
    mag_alpha_problem,
    mag_sigma_accuracy,
    mag_sigma_without_floor,
    sigma_accuracy,
    sigma_of_drop,
    two_row_linear,
)
from conftest import argmax_labels, measure_context, tiny_cnn, tiny_mlp
from torch import nn

import genmeasures as gm
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.perturbation import (
    SEARCH_OPTIONS,
    SEARCHES,
    SearchResult,
    perturbation_search,
)
from genmeasures.measures.perturbation.bisection import _Search
from genmeasures.measures.perturbation.sequential import _combined_interval, _kl_interval, _Rule
from reference import perturbation_search_by_loops

DTYPE = torch.float64

#: The three measures built on each search (``MEASURES.md`` §2.4, "used by").
MEASURES_OF = {
    "pacbayes-sigma": ("pacbayes-init", "pacbayes-orig", "pacbayes-flatness"),
    "pacbayes-mag-sigma": ("pacbayes-mag-init", "pacbayes-mag-orig", "pacbayes-mag-flatness"),
    "sharpness-alpha": ("sharpness-init", "sharpness-orig", "sharpness-flatness"),
    "sharpness-mag-alpha": (
        "pac-sharpness-mag-init",
        "pac-sharpness-mag-orig",
        "sharpness-mag-flatness",
    ),
}
ALL_FLATNESS = [name for names in MEASURES_OF.values() for name in names]


# ----------------------------------------------------------------------------- helpers


def mlp_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny MLP on 200 inputs (more than the first look of 64), labels fitted: a0 = 1."""
    model = tiny_mlp(0)
    inputs = torch.randn(200, 5, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    return model, inputs, argmax_labels(model, inputs)


def cnn_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny CNN on 100 inputs, labels fitted: a0 = 1."""
    model = tiny_cnn(0)
    inputs = torch.randn(100, 2, 6, 6, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    return model, inputs, argmax_labels(model, inputs)


def noisy_mlp_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny MLP with every fifth label changed: a0 = 0.8, and a subset has its own a0."""
    model, inputs, labels = mlp_problem()
    labels = labels.clone()
    labels[::5] = (labels[::5] + 1) % 3
    return model, inputs, labels


PROBLEMS = {"mlp": mlp_problem, "cnn": cnn_problem, "noisy-mlp": noisy_mlp_problem}


def search_quietly(ctx: MeasureContext, search: str, **options) -> SearchResult:
    """:func:`perturbation_search`, without the warning of an unconverged search."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gm.GenMeasuresWarning)
        return perturbation_search(ctx, search, **options)


def reference_search(model, inputs, labels, search: str, **options) -> dict:
    """The reference with the library's option names (``draws``/``restarts`` → ``samples``)."""
    options = dict(options)
    for name in ("draws", "restarts"):
        if name in options:
            options["samples"] = options.pop(name)
    return perturbation_search_by_loops(model, inputs, labels, search=search, **options)


def assert_same_as_reference(result: SearchResult, reference: dict) -> None:
    """Same value, flags and history; the library names an unconverged one-sided end apart."""
    assert result.value == reference["value"]
    assert result.base_accuracy == reference["a0"]
    assert result.converged is reference["converged"]
    saturated = None if reference["converged"] else reference["saturated"]
    assert result.saturated == saturated
    assert result.reason == ("saturated" if saturated is not None else reference["reason"])
    assert len(result.history) == len(reference["history"])
    for step, (scale, accuracy, deviation) in zip(
        result.history, reference["history"], strict=True
    ):
        assert step.scale == pytest.approx(scale, abs=1e-12)
        assert step.accuracy == pytest.approx(accuracy, abs=1e-12)
        assert step.deviation == pytest.approx(deviation, abs=1e-12)


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    """Replace ``owner.name`` by a wrapper that appends to the returned list on every call."""
    calls: list[int] = []
    original = getattr(owner, name)

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def linear_parameters(model: nn.Module) -> torch.Tensor:
    """θ of a model of Linear/Conv layers without BatchNorm: weight then bias, forward order."""
    tensors = []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            tensors += [module.weight.detach().reshape(-1), module.bias.detach().reshape(-1)]
    return torch.cat(tensors).double()


# ----------------------------------------------------------------------------- exact mode


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_exact_mode_equals_the_reference(problem, search):
    model, inputs, labels = PROBLEMS[problem]()
    result = search_quietly(measure_context(model, inputs, labels), search, sequential_error=0)
    assert_same_as_reference(result, reference_search(model, inputs, labels, search))


@pytest.mark.parametrize(
    ("problem", "search", "options", "batch_size"),
    [
        ("mlp", "pacbayes-sigma", {"eval_subset": 150, "tolerance": 0.002}, 512),
        ("noisy-mlp", "pacbayes-sigma", {}, 512),
        ("noisy-mlp", "pacbayes-sigma", {"eval_subset": 50}, 512),
        ("noisy-mlp", "sharpness-alpha", {"eval_subset": 77}, 512),
        # Deviations come in steps of 1/600 here: it ends at max-steps with both ends moved.
        ("mlp", "pacbayes-mag-sigma", {"eval_subset": 60, "tolerance": 0.002}, 512),
        ("cnn", "sharpness-mag-alpha", {"eval_subset": 60}, 512),
        ("mlp", "sharpness-alpha", {"ascent_rule": "sign", "tolerance": 0.002}, 512),
        ("cnn", "sharpness-mag-alpha", {"ascent_rule": "sign", "restarts": 2}, 512),
        ("mlp", "pacbayes-sigma", {"tolerance": 0.002, "draws": 4}, 7),
        ("cnn", "pacbayes-mag-sigma", {"tolerance": 0.002}, 7),
        ("cnn", "sharpness-alpha", {"ascent_batch": 32, "ascent_steps": 5}, 7),
        ("mlp", "sharpness-mag-alpha", {"ascent_batch": 50, "step_size": 0.3}, 512),
        ("mlp", "pacbayes-sigma", {"interval_tolerance": 0.1, "tolerance": 0.0}, 512),
        ("mlp", "pacbayes-sigma", {"interval_tolerance": 1.5}, 512),
        ("mlp", "pacbayes-sigma", {"s_max": 1e-4, "draws": 2}, 512),
    ],
)
def test_exact_mode_equals_the_reference_with_options(problem, search, options, batch_size):
    model, inputs, labels = PROBLEMS[problem]()
    ctx = measure_context(model, inputs, labels, batch_size=batch_size)
    result = search_quietly(ctx, search, sequential_error=0, **options)
    assert_same_as_reference(result, reference_search(model, inputs, labels, search, **options))
    size = options.get("eval_subset", len(labels))
    for step in result.history:  # every step scored on all of E
        assert step.examples == size
        assert step.lower == step.accuracy == step.upper


def test_each_accuracy_set_has_its_own_unperturbed_accuracy():
    """Searches sharing a context: the full set's a0 is shared, a subset's is its own."""
    model, inputs, labels = noisy_mlp_problem()
    ctx = measure_context(model, inputs, labels)
    runs = [
        ("pacbayes-sigma", {}),
        ("pacbayes-mag-sigma", {"eval_subset": 30}),
        ("sharpness-alpha", {"eval_subset": 30, "ascent_steps": 2}),
        ("sharpness-mag-alpha", {"ascent_steps": 2}),
    ]
    a0 = {}
    for search, options in runs:
        result = search_quietly(ctx, search, sequential_error=0, steps=1, **options)
        reference = reference_search(model, inputs, labels, search, steps=1, **options)
        assert result.base_accuracy == reference["a0"], search
        a0[search] = result.base_accuracy
    # The check has teeth: each subset's a0 differs from the full set's.
    assert a0["pacbayes-sigma"] == a0["sharpness-mag-alpha"] == 0.8
    assert a0["pacbayes-mag-sigma"] != 0.8 and a0["sharpness-alpha"] != 0.8


@pytest.mark.parametrize("sequential_error", [0, 0.01])
def test_pacbayes_passes_count_every_example_scored(sequential_error):
    model, inputs, labels = mlp_problem()
    draws = 10
    result = search_quietly(
        measure_context(model, inputs, labels), "pacbayes-sigma", sequential_error=sequential_error
    )
    scored = sum(step.examples for step in result.history)  # per draw; a0 scores all of E once
    assert result.forward_passes == pytest.approx(1 + draws * scored / len(labels), rel=1e-12)
    assert result.backward_passes == 0


def test_exact_sharpness_passes_count_the_ascent_and_the_scoring():
    model, inputs, labels = mlp_problem()
    restarts, ascent_steps, batch, m = 3, 20, 128, len(labels)
    result = search_quietly(
        measure_context(model, inputs, labels), "sharpness-alpha", sequential_error=0
    )
    steps = len(result.history)
    ascent = steps * restarts * ascent_steps * batch / m
    assert result.backward_passes == pytest.approx(ascent, rel=1e-12)
    assert result.forward_passes == pytest.approx(1 + steps * restarts + ascent, rel=1e-12)


# ----------------------------------------------------------------------------- sequential mode


SEQUENTIAL_CASES = [
    *[(problem, search, {}) for problem in ("mlp", "cnn") for search in SEARCHES],
    ("mlp", "pacbayes-sigma", {"tolerance": 0.002}),
    ("mlp", "sharpness-alpha", {"tolerance": 0.002}),
    ("cnn", "sharpness-alpha", {"ascent_rule": "sign"}),
    ("mlp", "pacbayes-sigma", {"eval_subset": 150, "tolerance": 0.002}),
]


@pytest.mark.parametrize(("problem", "search", "options"), SEQUENTIAL_CASES)
def test_sequential_mode_takes_the_exact_decisions(problem, search, options):
    model, inputs, labels = PROBLEMS[problem]()
    exact = search_quietly(
        measure_context(model, inputs, labels), search, sequential_error=0, **options
    )
    fast = search_quietly(measure_context(model, inputs, labels), search, **options)
    assert fast.options["sequential_error"] == 0.01
    assert fast.value == exact.value
    assert (fast.converged, fast.reason, fast.saturated) == (
        exact.converged,
        exact.reason,
        exact.saturated,
    )
    assert [step.scale for step in fast.history] == [step.scale for step in exact.history]
    assert [step.decision for step in fast.history] == [step.decision for step in exact.history]


@pytest.mark.parametrize(("problem", "search", "options"), SEQUENTIAL_CASES)
def test_sequential_intervals_contain_the_exact_accuracy(problem, search, options):
    model, inputs, labels = PROBLEMS[problem]()
    exact = search_quietly(
        measure_context(model, inputs, labels), search, sequential_error=0, **options
    )
    fast = search_quietly(measure_context(model, inputs, labels), search, **options)
    size = options.get("eval_subset", len(labels))
    for step, truth in zip(fast.history, exact.history, strict=True):
        assert step.lower <= truth.accuracy <= step.upper
        assert step.examples <= size
        if step.lower == step.upper:
            assert step.accuracy == truth.accuracy
        if search.startswith("pacbayes") and step.examples == size:
            assert step.lower == step.upper  # every draw scored on all of E
        if search.startswith("sharpness") and step.lower == 0.0 < step.upper:
            # Decided before the last restart: the upper end is a restart's accuracy, A(s) is
            # at most that, and the decision is "above" (the ascent already dropped too much).
            assert step.decision == "above"


@pytest.mark.parametrize("search", ["pacbayes-sigma", "sharpness-alpha"])
def test_sequential_mode_scores_fewer_examples(search):
    model, inputs, labels = mlp_problem()
    exact = search_quietly(measure_context(model, inputs, labels), search, sequential_error=0)
    fast = search_quietly(measure_context(model, inputs, labels), search)
    assert any(step.examples < len(labels) for step in fast.history)
    assert fast.forward_passes < exact.forward_passes
    assert fast.backward_passes <= exact.backward_passes


# ----------------------------------------------------------------------------- closed forms


def test_pacbayes_sigma_finds_the_gaussian_closed_form():
    inputs, labels = gaussian_data()
    result = perturbation_search(
        measure_context(two_row_linear(1.0, shared=0.0), inputs, labels), "pacbayes-sigma", draws=20
    )
    assert result.base_accuracy == 1.0
    assert result.converged and result.reason == "tolerance" and result.saturated is None
    assert 0.085 < 1 - sigma_accuracy(result.value, 1.0) < 0.115
    assert result.value == pytest.approx(sigma_of_drop(1.0), rel=0.1)
    assert result.backward_passes == 0


def test_pacbayes_mag_sigma_finds_the_gaussian_closed_form():
    a, c, eps = 1.0, 1.0, 0.05
    inputs, labels = gaussian_data()
    result = perturbation_search(
        measure_context(two_row_linear(a, shared=c), inputs, labels),
        "pacbayes-mag-sigma",
        draws=20,
        eps=eps,
    )
    assert result.base_accuracy == 1.0
    assert result.converged and result.reason == "tolerance"
    assert 0.085 < 1 - mag_sigma_accuracy(result.value, a, c, eps) < 0.115
    assert result.value < 0.95 * mag_sigma_without_floor(a, c)  # the ε floor is applied


@pytest.mark.parametrize("search", ["sharpness-alpha", "sharpness-mag-alpha"])
def test_sharpness_searches_find_the_box_corner(search):
    eps = 0.05
    if search == "sharpness-alpha":
        model, inputs, labels = alpha_problem()
        options = {}
    else:
        model, inputs, labels = mag_alpha_problem(eps)
        options = {"eps": eps}
    result = perturbation_search(
        measure_context(model, inputs, labels), search, ascent_rule="sign", **options
    )
    assert result.base_accuracy == 1.0
    assert result.converged and result.reason == "tolerance"
    assert 0.109 <= result.value <= 0.111
    for step in result.history:
        assert step.lower <= corner_accuracy(step.scale) <= step.upper
        if step.lower == step.upper:  # exact
            assert step.accuracy == corner_accuracy(step.scale)


def test_sigma_recheck_with_fresh_draws_drops_accuracy_by_the_target():
    """σ of pacbayes-sigma, re-scored with 30 draws it never saw: a mean drop of 0.1 ± 0.02."""
    model = two_row_linear(1.0, shared=0.0)
    inputs, labels = gaussian_data()
    sigma = perturbation_search(measure_context(model, inputs, labels), "pacbayes-sigma").value
    weight, bias = model.weight.detach(), model.bias.detach()
    generator = torch.Generator().manual_seed(20240611)
    accuracies = []
    for _ in range(30):
        noisy_weight = weight + sigma * torch.randn(weight.shape, generator=generator, dtype=DTYPE)
        noisy_bias = bias + sigma * torch.randn(bias.shape, generator=generator, dtype=DTYPE)
        logits = inputs @ noisy_weight.T + noisy_bias
        accuracies.append(float((logits.argmax(dim=1) == labels).double().mean()))
    a0 = float((model(inputs).argmax(dim=1) == labels).double().mean())
    assert a0 == 1.0
    assert abs(a0 - sum(accuracies) / len(accuracies) - 0.1) <= 0.02


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("search", SEARCHES)
def test_same_seed_gives_the_same_result(search):
    model, inputs, labels = mlp_problem()
    first = search_quietly(measure_context(model, inputs, labels, seed=5), search)
    again = search_quietly(measure_context(model, inputs, labels, seed=5), search)
    assert first.value == again.value
    assert first.history == again.history
    assert first == again


def test_another_seed_gives_another_pacbayes_history():
    model, inputs, labels = mlp_problem()
    first = search_quietly(measure_context(model, inputs, labels, seed=0), "pacbayes-sigma")
    other = search_quietly(measure_context(model, inputs, labels, seed=1), "pacbayes-sigma")
    assert [s.accuracy for s in first.history] != [s.accuracy for s in other.history]


# ----------------------------------------------------------------------------- saturation


def test_too_flat_for_the_interval_is_saturated_high_with_a_warning():
    model, inputs, labels = mlp_problem()
    s_max = 1e-4
    with pytest.warns(gm.GenMeasuresWarning, match="pacbayes-sigma") as caught:
        result = perturbation_search(
            measure_context(model, inputs, labels), "pacbayes-sigma", s_max=s_max
        )
    assert "saturated" in str(caught[0].message)
    assert result.converged is False
    assert result.reason == "saturated" and result.saturated == "high"
    assert len(result.history) == 20
    assert all(step.decision == "below" for step in result.history)
    assert result.value == pytest.approx(s_max * (1 - 2**-20), rel=1e-12)


def test_saturated_measure_through_compute_is_unconverged_one_over_sigma_squared():
    model, inputs, labels = mlp_problem()
    with pytest.warns(gm.GenMeasuresWarning) as caught:
        results = gm.compute(
            model,
            (inputs, labels),
            measures=["pacbayes-flatness"],
            options={"pacbayes-flatness": {"s_max": 1e-4}},
        )
    messages = [str(warning.message) for warning in caught]
    assert any("'pacbayes-sigma' did not converge" in message for message in messages)
    assert any(message.startswith("pacbayes-flatness") for message in messages)
    flatness = results["pacbayes-flatness"]
    sigma = flatness.extra["scale"]
    assert flatness.converged is False
    assert flatness.extra["reason"] == "saturated" and flatness.extra["saturated"] == "high"
    assert sigma == pytest.approx(1e-4, rel=1e-5)
    assert flatness.value == pytest.approx(1 / sigma**2, rel=1e-12)


def test_noise_floor_too_large_is_saturated_low():
    """With ε = 1, even s → 0 drops the accuracy by more than the target: ``lo`` never moves."""
    model, inputs, labels = mlp_problem()
    with pytest.warns(gm.GenMeasuresWarning, match="pacbayes-mag-sigma"):
        result = perturbation_search(
            measure_context(model, inputs, labels), "pacbayes-mag-sigma", eps=1.0, steps=6
        )
    assert result.converged is False
    assert result.reason == "saturated" and result.saturated == "low"
    assert all(step.decision == "above" for step in result.history)


def test_interval_tolerance_with_one_end_unmoved_is_saturated():
    # s = 1 and s = 0.5 are both far too noisy (hi ← s); at s = 0.5, hi − lo = 1 < 1.5.
    model, inputs, labels = mlp_problem()
    with pytest.warns(gm.GenMeasuresWarning, match="pacbayes-sigma"):
        result = perturbation_search(
            measure_context(model, inputs, labels), "pacbayes-sigma", interval_tolerance=1.5
        )
    assert [step.scale for step in result.history] == [1.0, 0.5]
    assert result.converged is False
    assert result.reason == "saturated" and result.saturated == "low"
    assert result.value == 0.5


def test_interval_tolerance_with_both_ends_moved_converges():
    model, inputs, labels = mlp_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gm.GenMeasuresWarning)
        result = perturbation_search(
            measure_context(model, inputs, labels),
            "pacbayes-sigma",
            interval_tolerance=0.1,
            tolerance=0.0,
        )
    decisions = [step.decision for step in result.history]
    assert "above" in decisions and "below" in decisions
    assert result.converged is True
    assert result.reason == "interval" and result.saturated is None


# ----------------------------------------------------------------------------- the catalog


def expected_flatness(
    name: str, scale: float, theta: torch.Tensor, theta0: torch.Tensor, m: int, eps: float = 1e-3
) -> float:
    """The measure ``name`` of ``MEASURES.md`` §3.7 from its search's scale, written out."""
    if name.endswith("-flatness"):  # eqs 53, 54, 61, 62
        return 1 / scale**2
    delta = 0.01
    log_term = math.log(m / delta) + 10
    omega = theta.numel()
    # -init: θ − θ0; -orig: the origin is the reference, in the numerator and every denominator.
    difference = theta - theta0 if name.endswith("-init") else theta
    squared = float((difference**2).sum())
    if name in ("pacbayes-init", "pacbayes-orig"):  # eqs 48, 49
        return squared / (4 * scale**2) + log_term
    if name in ("sharpness-init", "sharpness-orig"):  # eqs 51, 52
        return squared * math.log(2 * omega) / (4 * scale**2) + log_term
    if name in ("pacbayes-mag-init", "pacbayes-mag-orig"):  # eqs 56, 57
        factor = scale**2 + 1
    else:  # pac-sharpness-mag-init, -orig: eqs 59, 60
        factor = scale**2 + 4 * math.log(2 * omega / delta)
    numerator = eps**2 + factor * squared / omega
    total = 0.0
    for value in difference.tolist():
        total += math.log(numerator / (eps**2 + scale**2 * value**2))
    return total / 4 + log_term


def test_the_twelve_measures_follow_the_catalog():
    model, inputs, labels = mlp_problem()
    init = tiny_mlp(1)
    results = gm.compute(model, (inputs, labels), measures=ALL_FLATNESS, init_model=init)
    theta, theta0 = linear_parameters(model), linear_parameters(init)
    assert theta.numel() == 5 * 4 + 4 + 4 * 4 + 4 + 4 * 3 + 3
    for name in ALL_FLATNESS:
        result = results[name]
        expected = expected_flatness(name, result.extra["scale"], theta, theta0, len(labels))
        assert result.value == pytest.approx(expected, rel=1e-10), name
        if not name.endswith("flatness"):
            assert result.extra["bound"] == math.sqrt(result.value / len(labels))
            assert result.extra["omega"] == theta.numel()


def test_the_magnitude_measures_use_their_eps_option():
    model, inputs, labels = mlp_problem()
    init = tiny_mlp(1)
    names = ["pacbayes-mag-init", "pac-sharpness-mag-orig", "pacbayes-mag-orig"]
    options = {name: {"eps": 0.05} for name in names[:2]}
    results = gm.compute(model, (inputs, labels), measures=names, init_model=init, options=options)
    theta, theta0 = linear_parameters(model), linear_parameters(init)
    for name in names:
        result = results[name]
        eps = options.get(name, {}).get("eps", 1e-3)
        assert result.params["eps"] == eps
        expected = expected_flatness(
            name, result.extra["scale"], theta, theta0, len(labels), eps=eps
        )
        assert result.value == pytest.approx(expected, rel=1e-10), name
    # Different ε: different noise, hence a search of its own.
    with_eps = results["pacbayes-mag-init"].extra["history"]
    assert with_eps != results["pacbayes-mag-orig"].extra["history"]


def test_the_origin_measures_say_which_reference_they_use():
    model, inputs, labels = mlp_problem()
    results = gm.compute(
        model, (inputs, labels), measures=["pacbayes-mag-orig", "pac-sharpness-mag-orig"]
    )
    for name in results:
        assert "origin" in results[name].extra["reference"]


def test_the_three_measures_of_a_search_share_one_run(monkeypatch):
    runs = count_calls(monkeypatch, _Search, "run")
    unperturbed = count_calls(monkeypatch, _Search, "_unperturbed_accuracy")
    model, inputs, labels = mlp_problem()
    results = gm.compute(model, (inputs, labels), measures=ALL_FLATNESS, init_model=tiny_mlp(1))
    assert len(runs) == len(SEARCHES)
    assert len(unperturbed) == 1
    for search, names in MEASURES_OF.items():
        first = results[names[0]].extra
        assert first["search"] == search
        for name in names[1:]:
            assert results[name].extra["search"] == search
            assert results[name].extra["scale"] == first["scale"]
            assert results[name].extra["history"] == first["history"]
            assert results[name].converged == results[names[0]].converged


def test_a_search_is_cached_in_its_context(monkeypatch):
    runs = count_calls(monkeypatch, _Search, "run")
    ctx = measure_context(*mlp_problem())
    first = search_quietly(ctx, "pacbayes-sigma", draws=10)
    again = search_quietly(ctx, "pacbayes-sigma")  # the same options, defaults spelled or not
    other = search_quietly(ctx, "pacbayes-sigma", draws=3)
    assert again is first and other is not first
    assert len(runs) == 2


# ---------------------------------------------------------------------- the sequential test


@pytest.mark.parametrize("size", [64, 256])
def test_kl_interval_covers_the_mean_of_samples_without_replacement(size):
    population = torch.zeros(1000, dtype=torch.long)
    population[:903] = 1
    mean = 0.903
    alpha, trials = 0.05, 2000
    generator = torch.Generator().manual_seed(7)
    below = above = 0
    for _ in range(trials):
        sample = population[torch.randperm(1000, generator=generator)[:size]]
        sample_mean = float(sample.double().mean())
        lower, upper = _kl_interval(sample_mean, size, math.log(1 / alpha))
        assert 0 <= lower <= sample_mean <= upper <= 1
        below += mean < lower
        above += mean > upper
    slack = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert below / trials <= alpha + slack
    assert above / trials <= alpha + slack
    assert (below + above) / trials <= 2 * alpha + 3 * math.sqrt(2 * alpha / trials)


def kl_bernoulli(p: float, q: float) -> float:
    terms = [p * math.log(p / q) if p > 0 else 0.0]
    terms.append((1 - p) * math.log((1 - p) / (1 - q)) if p < 1 else 0.0)
    return sum(terms)


@pytest.mark.parametrize(("mean", "count"), [(0.9, 64), (0.5, 200), (1.0, 128), (0.0, 64)])
def test_kl_interval_ends_where_the_divergence_reaches_the_budget(mean, count):
    log_term = math.log(1 / 0.01)
    lower, upper = _kl_interval(mean, count, log_term)
    for end, exists in ((lower, mean > 0), (upper, mean < 1)):
        if exists:
            assert count * kl_bernoulli(mean, end) == pytest.approx(log_term, rel=1e-9)
            assert count * kl_bernoulli(mean, end) >= log_term  # the outer end: conservative
    if mean == 0.0:
        assert lower == 0.0
    if mean == 1.0:
        assert upper == 1.0


def test_combined_interval_adds_the_bounds_of_the_unscored_examples():
    log_term = math.log(100)
    assert _combined_interval(0, 0, 1000, log_term) == (0.0, 1.0)
    assert _combined_interval(903, 1000, 1000, log_term) == (0.903, 0.903)
    # 990 of 1000 scored, all correct: at least 990 correct, at most 1000.
    lower, upper = _combined_interval(990, 990, 1000, log_term)
    assert lower >= 0.99 and upper == 1.0
    # Nearly all scored: the deterministic bounds are tighter than Chernoff's.
    chernoff = _kl_interval(900 / 995, 995, log_term)
    lower, upper = _combined_interval(900, 995, 1000, log_term)
    assert (lower, upper) == (max(chernoff[0], 0.9), min(chernoff[1], 0.905))
    assert upper == 0.905


def test_rule_decides_from_the_deviation_on_both_sides_of_a0():
    rule = _Rule(base_accuracy=0.5, target=0.1, tolerance=0.01)  # band: deviation in (0.09, 0.11)
    assert rule.decide(0.4) == rule.decide(0.6) == "tolerance"
    assert rule.decide(0.3) == rule.decide(0.7) == "above"
    assert rule.decide(0.45) == rule.decide(0.55) == rule.decide(0.5) == "below"
    # below a0
    assert rule.decide_interval(0.395, 0.405) == "tolerance"
    assert rule.decide_interval(0.2, 0.38) == "above"
    assert rule.decide_interval(0.42, 0.5) == "below"
    assert rule.decide_interval(0.38, 0.395) is None  # straddles a0 − 0.11
    assert rule.decide_interval(0.405, 0.42) is None  # straddles a0 − 0.09
    # above a0
    assert rule.decide_interval(0.595, 0.605) == "tolerance"
    assert rule.decide_interval(0.62, 0.9) == "above"
    assert rule.decide_interval(0.5, 0.58) == "below"
    assert rule.decide_interval(0.605, 0.62) is None
    # around a0: every deviation is small
    assert rule.decide_interval(0.45, 0.55) == "below"
    assert rule.decide_interval(0.3, 0.7) is None
    assert rule.decide_interval(0.3, 0.95) is None  # both ends and the middle are "above"
    # an exact accuracy
    assert rule.decide_interval(0.4, 0.4) == "tolerance"


def test_rule_without_tolerance_never_stops_and_splits_at_the_target():
    rule = _Rule(base_accuracy=0.75, target=0.125, tolerance=0.0)  # binary fractions: exact
    assert rule.decide(0.625) == "below"  # deviation equal to the target is not above it
    assert rule.decide(0.5) == "above"
    assert rule.decide_interval(0.5, 0.6) == "above"
    assert rule.decide_interval(0.65, 0.75) == "below"
    assert rule.decide_interval(0.6, 0.65) is None
    assert rule.decide_interval(0.5, 0.625) is None  # the end at the target decides "below"
    assert rule.decide_interval(0.8, 0.875) == "below"  # deviation at most the target
    assert rule.decide_interval(0.875, 0.9) is None
    assert rule.decide_interval(0.9, 1.0) == "above"
    assert "tolerance" not in {rule.decide(a / 64) for a in range(65)}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("search", "options", "option"),
    [
        ("pacbayes-sigma", {"foo": 1}, "foo"),
        ("sharpness-alpha", {"draws": 3}, "draws"),
        ("pacbayes-sigma", {"s_min": 1.0, "s_max": 1.0}, "s_min"),
        ("pacbayes-sigma", {"s_min": 1.5, "s_max": 1.0}, "s_max"),
        ("pacbayes-mag-sigma", {"draws": 0}, "draws"),
        ("sharpness-alpha", {"eval_subset": 201}, "eval_subset"),
        ("sharpness-mag-alpha", {"ascent_rule": "foo"}, "ascent_rule"),
        ("pacbayes-sigma", {"sequential_error": 1}, "sequential_error"),
        ("pacbayes-mag-sigma", {"eps": 0.0}, "eps"),
        ("sharpness-alpha", {"restarts": 0}, "restarts"),
    ],
)
def test_bad_search_options_raise(search, options, option):
    ctx = measure_context(*mlp_problem())
    with pytest.raises(gm.MeasureError, match=search) as raised:
        perturbation_search(ctx, search, **options)
    assert option in str(raised.value)


def test_unknown_search_raises():
    with pytest.raises(gm.MeasureError, match="'sharpness'"):
        perturbation_search(measure_context(*mlp_problem()), "sharpness")


@pytest.mark.parametrize(
    ("measure", "options", "option"),
    [
        ("pacbayes-flatness", {"draws": 0}, "draws"),
        ("sharpness-init", {"foo": 1}, "foo"),
        ("sharpness-mag-flatness", {"ascent_rule": "foo"}, "ascent_rule"),
        ("pacbayes-mag-orig", {"sequential_error": 1.0}, "sequential_error"),
        ("sharpness-flatness", {"eval_subset": 1000}, "eval_subset"),
    ],
)
def test_bad_measure_options_raise_naming_the_measure(measure, options, option):
    model, inputs, labels = mlp_problem()
    with pytest.raises(gm.MeasureError, match=measure) as raised:
        gm.compute(
            model,
            (inputs, labels),
            measures=[measure],
            init_model=tiny_mlp(1),
            options={measure: options},
        )
    assert option in str(raised.value)


@pytest.mark.parametrize(
    "measure", ["pacbayes-init", "sharpness-init", "pacbayes-mag-init", "pac-sharpness-mag-init"]
)
def test_init_measure_without_init_model_raises_before_searching(monkeypatch, measure):
    runs = count_calls(monkeypatch, _Search, "run")
    model, inputs, labels = mlp_problem()
    with pytest.raises(gm.MissingInputError, match="init_model"):
        gm.compute(model, (inputs, labels), measures=[measure])
    assert runs == []


# ----------------------------------------------------------------------------- models


class ItemScale(nn.Module):
    """Multiplies by 1 read with ``.item()``, which ``torch.func.vmap`` cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float((x.sum() * 0 + 1).item())


def mlp_with(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), middle, nn.Linear(4, 3)).double()


@pytest.mark.parametrize("search", ["pacbayes-sigma", "sharpness-alpha"])
def test_a_model_vmap_cannot_trace_is_evaluated_copy_by_copy(search):
    inputs = torch.randn(200, 5, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    plain = mlp_with(nn.Identity())
    labels = argmax_labels(plain, inputs)
    options = {"ascent_steps": 3} if search == "sharpness-alpha" else {}
    expected = search_quietly(measure_context(plain, inputs, labels), search, **options)
    traced = mlp_with(ItemScale())
    with pytest.warns(gm.GenMeasuresWarning, match="vmap") as caught:
        result = perturbation_search(measure_context(traced, inputs, labels), search, **options)
    assert sum("vmap" in str(w.message) for w in caught) == 1
    assert result.value == expected.value
    assert result.history == expected.history


def test_the_callers_model_is_unchanged():
    model, inputs, labels = mlp_problem()
    init = tiny_mlp(1)
    model.train()
    model[1].bias.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gm.GenMeasuresWarning)
        gm.compute(model, (inputs, labels), measures=ALL_FLATNESS, init_model=init)
    assert model.training
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
        assert parameter.requires_grad == grad_flags[name], name
        assert parameter.grad is None, name


@pytest.mark.parametrize(
    "measure",
    ["pacbayes-init", "pacbayes-mag-orig", "sharpness-flatness", "pac-sharpness-mag-init"],
)
def test_each_measure_accepts_exactly_its_search_options_with_the_same_defaults(measure):
    spec = gm.get_measure(measure)
    search = {
        "pacbayes": "pacbayes-sigma",
        "pacbayes-mag": "pacbayes-mag-sigma",
        "sharpness": "sharpness-alpha",
        "pac-sharpness-mag": "sharpness-mag-alpha",
    }[measure.rsplit("-", 1)[0]]
    assert spec.options is SEARCH_OPTIONS[search]
    assert spec.fixed == {"quantity": measure.rsplit("-", 1)[1]}


def test_sharpness_results_record_the_step_size_they_used():
    model, inputs, labels = mlp_problem()
    result = gm.compute(
        model,
        (inputs, labels),
        measures="sharpness-flatness",
        options={"sharpness-flatness": {"ascent_rule": "sign"}},
    )
    assert result["sharpness-flatness"].extra["step_size"] == 0.25
    assert result["sharpness-flatness"].params["ascent_rule"] == "sign"
