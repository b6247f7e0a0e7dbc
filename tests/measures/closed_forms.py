"""One-layer float64 classifiers whose perturbed accuracy has a closed form.

Shared by the checks of the reference perturbation search (``test_reference_search.py``) and of
the library's fast searches (``test_perturbation.py``). Each builder returns data, or a model with
its data, for which the scale the search should find is known without running any search.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm
from torch import nn

DTYPE = torch.float64


def linear(weight: list[list[float]] | torch.Tensor, bias: list[float]) -> nn.Linear:
    """A float64 ``nn.Linear`` with the given weight (out × in) and bias."""
    weight = torch.as_tensor(weight, dtype=DTYPE)
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=DTYPE)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.as_tensor(bias, dtype=DTYPE))
    return layer


# ----------------------------------------------------------------------------- PAC-Bayes

# Gaussian data: x_j = (2y_j − 1)·μ·e1 + ρ·z_j, z_j a random unit vector orthogonal to e1.
DIM, EXAMPLES, MU, RHO = 400, 2000, 1.0, 10.0


def gaussian_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    labels = torch.arange(EXAMPLES) % 2
    z = torch.randn(EXAMPLES, DIM - 1, generator=generator, dtype=DTYPE)
    z = z / z.norm(dim=1, keepdim=True)
    inputs = torch.cat([((2 * labels - 1) * MU).to(DTYPE)[:, None], RHO * z], dim=1)
    return inputs, labels


def two_row_linear(a: float, shared: float) -> nn.Linear:
    """Rows w0 = −a·e1 + c·(0, 1, …, 1), w1 = +a·e1 + c·(0, 1, …, 1) with c = ``shared``; bias 0.

    The logit difference is (w1 − w0)·x = 2a·x_1 = 2aμ(2y − 1): every example is correct, a0 = 1.
    """
    weight = torch.full((2, DIM), shared, dtype=DTYPE)
    weight[0, 0], weight[1, 0] = -a, a
    return linear(weight, [0.0, 0.0])


def sigma_accuracy(s: float, a: float) -> float:
    """Probability that an example of :func:`gaussian_data` stays correct under ``N(0, s²I)``.

    u ~ N(0, s²I) on every weight and bias of :func:`two_row_linear` ``(a, 0)``. The logit
    difference of example x moves by (u_w1 − u_w0)·x + (u_b1 − u_b0) ~ N(0, 2s²(‖x‖² + 1)), with
    ‖x‖² = μ² + ρ². So each example stays correct with probability
    Φ(2aμ / (s·sqrt(2(μ² + ρ² + 1)))). The terms shared between examples (along e1 and the
    biases) carry only (μ² + 1)/(μ² + ρ² + 1) ≈ 2% of the variance, so the mean accuracy over
    draws is close to this probability.
    """
    return float(norm.cdf(2 * a * MU / (s * math.sqrt(2 * (MU**2 + RHO**2 + 1)))))


def sigma_of_drop(a: float) -> float:
    """The σ at which :func:`sigma_accuracy` is exactly 0.9 (about 0.11 for a = 1)."""
    return 2 * a * MU / (norm.ppf(0.9) * math.sqrt(2 * (MU**2 + RHO**2 + 1)))


def mag_sigma_accuracy(s: float, a: float, c: float, eps: float) -> float:
    """Probability that an example stays correct under ``u_i ~ N(0, s²θ0_i² + ε²)``.

    The second argument is the variance. θ0 is :func:`two_row_linear` ``(a, c)``: rows
    w0 = −a·e1 + c·1', w1 = +a·e1 + c·1' with 1' = (0, 1, …, 1), biases 0. Since x_1 = ±μ and
    Σ_{i≥2} x_i² = ρ²‖z‖² = ρ², the logit difference moves by
      (u_w1 − u_w0)·x + (u_b1 − u_b0)
      ~ N(0, 2(s²a² + ε²)·μ² + 2(s²c² + ε²)·ρ² + 2ε²),
    each difference of two independent entries doubling the variance of one. Every example
    starts at logit difference 2aμ(2y − 1), so it stays correct with probability
      Φ(2aμ / sqrt(2((s²a² + ε²)μ² + (s²c² + ε²)ρ² + ε²))).
    With a = c = μ = 1 and ρ = 10, the share of the variance common to all examples (along e1 and
    the biases) is about 1%.
    """
    variance = 2 * ((s**2 * a**2 + eps**2) * MU**2 + (s**2 * c**2 + eps**2) * RHO**2 + eps**2)
    return float(norm.cdf(2 * a * MU / math.sqrt(variance)))


def mag_sigma_without_floor(a: float, c: float) -> float:
    """The σ' of an analytic drop of 0.1 if the ε floor were left out."""
    return math.sqrt(((2 * a * MU / norm.ppf(0.9)) ** 2 / 2) / (a**2 * MU**2 + c**2 * RHO**2))


# ----------------------------------------------------------------------------- sharpness

# All labels are 1 and every input is nonnegative. Perturbing a two-row Linear changes the logit
# difference l1 − l0 of x by (u_w1 − u_w0)·x + (u_b1 − u_b0). Over a box |u_i| ≤ r_i its minimum
# is −Σ_i (r_w1,i + r_w0,i)·x_i − r_b1 − r_b0, at the corner u_w1 = −r_w1, u_w0 = +r_w0,
# u_b1 = −r_b1, u_b0 = +r_b0, the same corner for every example. So the worst-case accuracy at
# scale s is the fraction of examples whose logit difference stays positive there. The cross-
# entropy gradient for label 1 has the sign of that corner (∂ℓ/∂w1 = (p1 − 1)·x ≤ 0,
# ∂ℓ/∂w0 = p0·x ≥ 0), so the sign ascent reaches it in at most six steps of 0.25·r.
SHARP_EXAMPLES, SHARP_DIM = 1000, 6


def thresholds() -> torch.Tensor:
    """t_j spread uniformly over [0.1, 0.2): the fraction of t_j > s drops by 0.1 at s = 0.11."""
    return 0.1 + 0.1 * (torch.arange(SHARP_EXAMPLES, dtype=DTYPE) + 0.5) / SHARP_EXAMPLES


def corner_accuracy(s: float) -> float:
    """The worst-case accuracy at scale s of both sharpness problems: the fraction of t_j > s."""
    return float((thresholds() > s).double().mean())


def rest_of_inputs() -> torch.Tensor:
    """Coordinates 2..D of the inputs: uniform on [0, 1), shuffled with respect to t_j."""
    generator = torch.Generator().manual_seed(99)
    return torch.rand(SHARP_EXAMPLES, SHARP_DIM - 1, generator=generator, dtype=DTYPE)


def alpha_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    # w1 = e1, w0 = 0, biases 0: the logit difference is Δ_j = x_j1. In the box |u_i| ≤ s the
    # worst case lowers it by 2s(‖x_j‖₁ + 1), so example j survives iff
    # t_j = Δ_j / (2(‖x_j‖₁ + 1)) > s. With R_j = Σ_{i≥2} x_ji, x_j1 = 2t_j(x_j1 + R_j + 1)
    # gives x_j1 = 2t_j(R_j + 1)/(1 − 2t_j).
    t, rest = thresholds(), rest_of_inputs()
    first = 2 * t * (rest.sum(dim=1) + 1) / (1 - 2 * t)
    inputs = torch.cat([first[:, None], rest], dim=1)
    weight = torch.zeros(2, SHARP_DIM, dtype=DTYPE)
    weight[1, 0] = 1.0
    model = linear(weight, [0.0, 0.0])
    survive = inputs[:, 0] / (2 * (inputs.sum(dim=1) + 1))
    torch.testing.assert_close(survive, t)
    return model, inputs, torch.ones(SHARP_EXAMPLES, dtype=torch.long)


def mag_alpha_problem(eps: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    # w1 = c·e1, w0 = 0, biases 0: Δ_j = c·x_j1. The box r_i = s|θ0_i| + ε is s·c + ε on w1's
    # first entry and ε everywhere else, so the worst case lowers Δ_j by
    #   s·c·x_j1 + ε(2‖x_j‖₁ + 2)
    # and example j survives iff t_j = (c·x_j1 − 2ε(‖x_j‖₁ + 1)) / (c·x_j1) > s. Solving
    # c·x_j1(1 − t_j) = 2ε(x_j1 + R_j + 1) gives x_j1 = 2ε(R_j + 1)/(c(1 − t_j) − 2ε).
    c = 1.0
    t, rest = thresholds(), rest_of_inputs()
    first = 2 * eps * (rest.sum(dim=1) + 1) / (c * (1 - t) - 2 * eps)
    inputs = torch.cat([first[:, None], rest], dim=1)
    weight = torch.zeros(2, SHARP_DIM, dtype=DTYPE)
    weight[1, 0] = c
    model = linear(weight, [0.0, 0.0])
    survive = (c * inputs[:, 0] - 2 * eps * (inputs.sum(dim=1) + 1)) / (c * inputs[:, 0])
    torch.testing.assert_close(survive, t)
    return model, inputs, torch.ones(SHARP_EXAMPLES, dtype=torch.long)
