"""Checks of the reference perturbation searches against closed forms computed without them.

The library's fast searches are compared with ``reference.perturbation_search_by_loops``; these
tests make that reference trustworthy. Each builds a one-layer float64 classifier whose perturbed
accuracy has a closed form, runs the reference search and checks the value it returns against
the closed form, which never calls the reference.
"""

from __future__ import annotations

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

from reference import perturbation_search_by_loops

# ----------------------------------------------------------------------------- PAC-Bayes


def test_pacbayes_sigma_matches_gaussian_closed_form():
    # The mean accuracy over draws is close to closed_forms.sigma_accuracy (see its docstring).
    a = 1.0
    inputs, labels = gaussian_data()
    model = two_row_linear(a, shared=0.0)
    result = perturbation_search_by_loops(
        model, inputs, labels, search="pacbayes-sigma", samples=20
    )
    assert result["a0"] == 1.0
    assert result["reason"] == "tolerance" and result["converged"]
    assert result["saturated"] is None
    assert 0.085 < 1 - sigma_accuracy(result["value"], a) < 0.115
    # The σ of an analytic drop of exactly 0.1, for scale: about 0.11.
    assert result["value"] == pytest.approx(sigma_of_drop(a), rel=0.1)
    assert result["ascent_steps_run"] == 0
    assert result["evaluations"] == 1 + 20 * len(result["history"])


def test_pacbayes_mag_sigma_matches_gaussian_closed_form():
    # The mean accuracy over draws is close to closed_forms.mag_sigma_accuracy (see its
    # docstring). ε = 0.05 makes the floor a visible part of the noise.
    a, c, eps = 1.0, 1.0, 0.05
    inputs, labels = gaussian_data()
    model = two_row_linear(a, shared=c)
    result = perturbation_search_by_loops(
        model, inputs, labels, search="pacbayes-mag-sigma", samples=20, eps=eps
    )
    assert result["a0"] == 1.0
    assert result["reason"] == "tolerance" and result["converged"]
    assert 0.085 < 1 - mag_sigma_accuracy(result["value"], a, c, eps) < 0.115
    # Without the ε floor the analytic σ' would be about 12% larger: the floor is being applied.
    assert result["value"] < 0.95 * mag_sigma_without_floor(a, c)


# ----------------------------------------------------------------------------- sharpness


def test_sharpness_alpha_finds_the_box_corner():
    model, inputs, labels = alpha_problem()
    result = perturbation_search_by_loops(
        model, inputs, labels, search="sharpness-alpha", ascent_rule="sign"
    )
    assert result["a0"] == 1.0
    assert result["reason"] == "tolerance" and result["converged"]
    assert 0.109 <= result["value"] <= 0.111
    # At the corner the accuracy is exactly the fraction of t_j > s (see closed_forms).
    for s, accuracy, _ in result["history"]:
        assert accuracy == corner_accuracy(s)
    steps = len(result["history"])
    assert result["evaluations"] == 1 + 3 * steps
    assert result["ascent_steps_run"] == 3 * 20 * steps


def test_sharpness_alpha_gradient_rule_with_a_large_step_reaches_the_same_corner():
    model, inputs, labels = alpha_problem()
    sign = perturbation_search_by_loops(
        model, inputs, labels, search="sharpness-alpha", ascent_rule="sign"
    )
    gradient = perturbation_search_by_loops(
        model, inputs, labels, search="sharpness-alpha", step_size=1e4, ascent_steps=3
    )
    assert gradient["history"] == sign["history"]


def test_sharpness_mag_alpha_finds_the_box_corner():
    eps = 0.05
    model, inputs, labels = mag_alpha_problem(eps)
    result = perturbation_search_by_loops(
        model, inputs, labels, search="sharpness-mag-alpha", ascent_rule="sign", eps=eps
    )
    assert result["a0"] == 1.0
    assert result["reason"] == "tolerance" and result["converged"]
    assert 0.109 <= result["value"] <= 0.111
    for s, accuracy, _ in result["history"]:
        assert accuracy == corner_accuracy(s)


# ----------------------------------------------------------------------------- bisection


def test_too_flat_for_the_interval_ends_at_max_steps_saturated_high():
    inputs, labels = gaussian_data()
    model = two_row_linear(1.0, shared=0.0)
    s_max = 1e-4
    result = perturbation_search_by_loops(
        model, inputs, labels, search="pacbayes-sigma", s_max=s_max, samples=2
    )
    assert result["converged"] is False
    assert result["reason"] == "max-steps"
    assert result["saturated"] == "high"
    assert len(result["history"]) == 20
    # Every step moved lo up: the last midpoint is s_max·(1 − 2⁻²⁰).
    assert result["value"] == pytest.approx(s_max * (1 - 2**-20), rel=1e-12)
    assert all(deviation == 0.0 for _, _, deviation in result["history"])
    assert result["evaluations"] == 1 + 2 * 20


def test_sharpness_counts_every_restart_and_ascent_step():
    model, inputs, labels = alpha_problem()
    result = perturbation_search_by_loops(
        model,
        inputs,
        labels,
        search="sharpness-alpha",
        s_max=1e-3,
        steps=4,
        samples=2,
        ascent_steps=5,
    )
    assert result["reason"] == "max-steps" and result["saturated"] == "high"
    assert result["evaluations"] == 1 + 4 * 2
    assert result["ascent_steps_run"] == 4 * 2 * 5


def test_interval_tolerance_stops_the_bisection():
    # [0, 2]: step 1 at s = 1 (far too noisy, hi ← 1), step 2 at s = 0.5 where hi − lo = 1 < 1.5.
    inputs, labels = gaussian_data()
    model = two_row_linear(1.0, shared=0.0)
    result = perturbation_search_by_loops(
        model, inputs, labels, search="pacbayes-sigma", samples=2, interval_tolerance=1.5
    )
    assert [s for s, _, _ in result["history"]] == [1.0, 0.5]
    assert result["reason"] == "interval"
    assert result["converged"] is False
    assert result["saturated"] == "low"
    assert result["value"] == 0.5


def test_eval_subset_scores_that_many_examples():
    inputs, labels = gaussian_data()
    model = two_row_linear(1.0, shared=0.0)
    result = perturbation_search_by_loops(
        model, inputs, labels, search="pacbayes-sigma", samples=3, eval_subset=50
    )
    for _, accuracy, _ in result["history"]:
        count = accuracy * 3 * 50
        assert count == pytest.approx(round(count), abs=1e-9)
    assert result["evaluations"] == 1 + 3 * len(result["history"])


def test_same_seed_same_result_and_other_seed_other_history():
    inputs, labels = gaussian_data()
    model = two_row_linear(1.0, shared=0.0)

    def run(seed: int) -> dict:
        return perturbation_search_by_loops(
            model, inputs, labels, search="pacbayes-sigma", samples=2, seed=seed
        )

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first["history"] != other["history"]


def test_the_model_is_not_modified():
    model, inputs, labels = alpha_problem()
    before = [p.detach().clone() for p in model.parameters()]
    perturbation_search_by_loops(
        model, inputs, labels, search="sharpness-alpha", steps=2, samples=1, ascent_steps=2
    )
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
        assert p.grad is None


@pytest.mark.parametrize(
    "arguments",
    [
        {"search": "sharpness"},
        {"search": "pacbayes-sigma", "ascent_rule": "newton"},
        {"search": "pacbayes-sigma", "s_min": 1.0, "s_max": 1.0},
        {"search": "pacbayes-sigma", "eval_subset": 0},
    ],
)
def test_bad_arguments_raise(arguments):
    model, inputs, labels = alpha_problem()
    with pytest.raises(ValueError):
        perturbation_search_by_loops(model, inputs, labels, **arguments)
