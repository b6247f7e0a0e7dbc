"""Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023), worst- and average-case.

The perturbation of the parameters w is ``δ = T_w ε`` with ``T_w = diag(|w|)`` (elementwise, no
additive ξ: Andriushchenko et al.'s definition and code; ASAM's ``|w| + η`` would break the
invariance below). With ``L_B`` the mean cross-entropy on a batch B of m examples:

* worst-case (``adaptive-sharpness-linf``, ``adaptive-sharpness-l2``)::

      S_max = E_B [ max_{‖ε‖_p ≤ ρ} L_B(w + |w| ⊙ ε) − L_B(w) ],   p ∈ {∞, 2},

  the maximum taken per batch of m examples and then averaged over the batches (m-sharpness);
* average-case (``adaptive-sharpness-avg``)::

      S_avg = E_B E_{ε ~ N(0, ρ² I)} [ L_B(w + |w| ⊙ ε) − L_B(w) ],

  estimated per batch with ``draws`` seeded Gaussian draws.

Because ``w + |w| ⊙ ε = c (w' + |w'| ⊙ ε)`` when ``w = c w'`` (c > 0), a rescaling that leaves a
ReLU network's function unchanged (a layer or a node multiplied by c, the next divided by c)
leaves the perturbed functions unchanged for every ε: both values are invariant, draw by draw and
ascent step by ascent step.

The maximum is searched by projected gradient ascent in ε-space, with the step-size schedule of
Auto-PGD (Croce & Hein 2020) as the authors' code applies it (``sharpness.py`` of
tml-epfl/sharpness-vs-generalization): ε starts at 0, the first step is 2ρ, each step moves to
``ε_{k+1} = 0.75 z + 0.25 ε_{k-1}`` with ``z = P(ε_k + η d_k)`` (``d_k`` the sign of the
ε-gradient for ℓ∞, taken as that of ∇_w L, equal where w ≠ 0; the ε-gradient over its ℓ2 norm
for ℓ2; P the projection on the ball), and at Auto-PGD's checkpoints (22%, 41%, 57%, … of
the steps) the step is halved and the ascent restarted from the best iterate if fewer than 75%
of the steps since the last checkpoint improved the loss or nothing changed. The value is the
largest loss seen. Each step's forward pass scores the previous iterate, so ``steps`` ascent
steps cost ``steps`` forward-backward passes plus one forward pass (for the last iterate); the
unperturbed loss comes from the first step (ε = 0).

Parameters (``biases_and_norms``): by default only the parameters with two or more dimensions
(weights of linear and convolution layers, attention projections, embeddings) are perturbed; with
``biases_and_norms=True``, every parameter (biases and normalization scales and shifts too). The
network is the unfolded model in eval mode, so it applies to any differentiable network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genmeasures.errors import MeasureError, ModelError, NumericalError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput
from genmeasures.validation import Flag, Integer, Real, Settings, setting

__all__ = [
    "AverageOptions",
    "WorstCaseL2Options",
    "WorstCaseLinfOptions",
    "apgd_checkpoints",
    "average_sharpness",
    "worst_case_sharpness",
]

FAMILY = "flatness-adaptive"
EXAMPLES_PURPOSE = "adaptive-sharpness/examples"
NOISE_PURPOSE = "adaptive-sharpness-avg/noise"

#: Auto-PGD's momentum α (Croce & Hein 2020), as in the authors' code.
MOMENTUM = 0.75
#: The fraction of steps since the last checkpoint that must improve the loss (Auto-PGD's ρ).
MIN_UPDATE_RATIO = 0.75
#: The floor of the logit norm under logit normalization (the authors' code).
LOGIT_NORM_FLOOR = 1e-10

_PAPERS = (
    "Kwon et al., ICML 2021 (ASAM); Andriushchenko, Croce, Müller, Hein & Flammarion, ICML 2023"
)


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class AdaptiveOptions(Settings):
    """Options shared by the three adaptive sharpness measures."""

    WHERE = "adaptive sharpness options"
    ERROR = MeasureError

    rho: float = setting(0.1, Real(0.0, open_minimum=True), "radius ρ of the ε-ball (or σ)")
    examples: int = setting(
        1024,
        Integer(1),
        "training examples evaluated: a seeded subset of this many (all, in order, if the set is "
        "not larger)",
    )
    m: int = setting(128, Integer(1), "batch size m: the loss is taken per batch of m examples")
    biases_and_norms: bool = setting(
        False, Flag(), "perturb biases and normalization parameters too (1-D parameters)"
    )
    normalize_logits: bool = setting(
        False, Flag(), "center the logits and divide them by their ℓ2 norm before the loss"
    )


@dataclass(frozen=True)
class WorstCaseLinfOptions(AdaptiveOptions):
    """Options of ``adaptive-sharpness-linf``."""

    rho: float = setting(0.002, Real(0.0, open_minimum=True), "radius ρ of the ℓ∞ ε-ball")
    steps: int = setting(20, Integer(1), "projected gradient ascent steps per batch")


@dataclass(frozen=True)
class WorstCaseL2Options(AdaptiveOptions):
    """Options of ``adaptive-sharpness-l2``."""

    rho: float = setting(0.5, Real(0.0, open_minimum=True), "radius ρ of the ℓ2 ε-ball")
    steps: int = setting(20, Integer(1), "projected gradient ascent steps per batch")


@dataclass(frozen=True)
class AverageOptions(AdaptiveOptions):
    """Options of ``adaptive-sharpness-avg``."""

    rho: float = setting(
        0.1, Real(0.0, open_minimum=True), "standard deviation ρ of ε ~ N(0, ρ² I)"
    )
    draws: int = setting(20, Integer(1), "Gaussian draws of ε per batch")


# ------------------------------------------------------------------------------------ network


class AdaptiveNetwork:
    """The unfolded network as a function of ε: ``w = w⁰ + |w⁰| ⊙ ε`` on the chosen parameters.

    The parameters are views of one flat buffer in a working copy of the model, so that a
    perturbed point costs one fused write and its gradient one plain backward pass.

    Args:
        model: The network (eval mode; never modified).
        biases_and_norms: Whether parameters with fewer than two dimensions are perturbed.
        normalize_logits: Whether the loss sees logits centered and divided by their norm.
    """

    def __init__(
        self, model: torch.nn.Module, *, biases_and_norms: bool, normalize_logits: bool
    ) -> None:
        self.working = copy.deepcopy(model).eval()
        self.normalize_logits = normalize_logits
        params = dict(self.working.named_parameters())  # a shared parameter appears once
        self.names = [
            name
            for name, parameter in params.items()
            if parameter.is_floating_point() and (biases_and_norms or parameter.dim() >= 2)
        ]
        if not self.names:
            raise ModelError(
                "the model has no parameter with two or more dimensions to perturb"
                + ("" if biases_and_norms else " (set biases_and_norms=True to perturb all)")
            )
        tensors = [params[name].detach() for name in self.names]
        for name, tensor in zip(self.names, tensors, strict=True):
            if not torch.isfinite(tensor).all():
                raise NumericalError(f"model: parameter {name!r} is not finite")
        self.theta0 = torch.cat([tensor.reshape(-1) for tensor in tensors]).clone()
        self.scale = self.theta0.abs()
        self._buffer = self.theta0.clone()
        self._parameters = [params[name] for name in self.names]
        self.description = (
            "all parameters (unfolded)" if biases_and_norms else "weights: parameters of ≥ 2 dims"
        )
        self._sizes = [tensor.numel() for tensor in tensors]
        for parameter, view in zip(self._parameters, self._buffer.split(self._sizes), strict=True):
            parameter.data = view.view(parameter.shape)
            parameter.requires_grad_(True)

    @property
    def size(self) -> int:
        """ω, the number of perturbed parameters."""
        return self.theta0.numel()

    def _set(self, eps: torch.Tensor) -> None:
        torch.addcmul(self.theta0, self.scale, eps, out=self._buffer)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.working(x)
        if logits.ndim != 2:
            raise ModelError(
                f"the model must output logits of shape (batch, classes), got {tuple(logits.shape)}"
            )
        if self.normalize_logits:
            logits = logits - logits.mean(dim=-1, keepdim=True)
            logits = logits / logits.norm(dim=-1, keepdim=True).clamp_min(LOGIT_NORM_FLOOR)
        return F.cross_entropy(logits, y)

    def loss(self, eps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        """``L_B(w⁰ + |w⁰| ⊙ ε)``, the mean cross-entropy on ``(x, y)``."""
        with torch.no_grad():
            self._set(eps)
            return float(self._loss(x, y))

    def loss_and_ascent_direction(
        self, eps: torch.Tensor, x: torch.Tensor, y: torch.Tensor, norm: str, out: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """The loss at ε, and what the ascent step of ``norm`` needs of its gradient, into ``out``.

        For ℓ2 that is the gradient with respect to ε, ``|w⁰| ⊙ ∇_w L_B``; for ℓ∞ its sign,
        written as ``sign(∇_w L_B)``, equal wherever ``w⁰ ≠ 0`` (elsewhere ε does not move w).
        Each parameter's gradient is written straight into its slice of ``out`` (no separate
        flattening pass: on a network with few examples per batch and many weights, the passes
        over the ω numbers are a visible share of a step).

        Args:
            eps: The point ε.
            x: Inputs of the batch.
            y: Labels of the batch.
            norm: ``"linf"`` or ``"l2"``.
            out: A flat tensor of ω numbers to write into.
        """
        with torch.no_grad():
            self._set(eps)
        with torch.enable_grad():
            loss = self._loss(x, y)
            gradients = torch.autograd.grad(loss, self._parameters, allow_unused=True)
        with torch.no_grad():
            for gradient, target, scale in zip(
                gradients, out.split(self._sizes), self.scale.split(self._sizes), strict=True
            ):
                if gradient is None:
                    target.zero_()
                elif norm == "linf":
                    torch.sign(gradient.reshape(-1), out=target)
                else:
                    torch.mul(gradient.reshape(-1), scale, out=target)
        return float(loss.detach()), out


def _network(ctx: MeasureContext, options: AdaptiveOptions) -> AdaptiveNetwork:
    key = ("adaptive/network", options.biases_and_norms, options.normalize_logits)
    return ctx.cached(
        key,
        lambda: AdaptiveNetwork(
            ctx.model,
            biases_and_norms=options.biases_and_norms,
            normalize_logits=options.normalize_logits,
        ),
    )


def _batches(ctx: MeasureContext, examples: int, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluated examples in batches of m: a seeded subset (sorted), or all in order."""
    inputs, labels = ctx.require_data()
    n = len(labels)
    if examples < n:
        chosen = torch.randperm(n, generator=ctx.generator(EXAMPLES_PURPOSE), device=ctx.device)
        index = chosen[:examples].sort().values
        inputs, labels = inputs[index], labels[index]
    return [
        (inputs[start : start + m], labels[start : start + m]) for start in range(0, len(labels), m)
    ]


# ------------------------------------------------------------------------------------ worst case


def apgd_checkpoints(steps: int) -> list[int]:
    """Auto-PGD's checkpoints ``⌈p_j · steps⌉`` (Croce & Hein 2020, §3.1; the authors' code).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``.
    """
    p = [0.0, 0.22]
    w = [0, math.ceil(steps * 0.22)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return w[1:]


def _free(pool: list[torch.Tensor], *used: torch.Tensor | None) -> torch.Tensor:
    """A buffer of ``pool`` that is none of ``used`` (by identity)."""
    return next(buffer for buffer in pool if all(buffer is not u for u in used))


def worst_case_sharpness(
    network: AdaptiveNetwork, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int, norm: str
) -> tuple[float, float]:
    """``max_{‖ε‖_p ≤ ρ} L_B(w + |w| ⊙ ε)`` by projected ascent, and ``L_B(w)``, on one batch.

    The vectors live in preallocated buffers (a few passes over ω numbers per step, no
    allocation), so that the ascent costs little more than its forward-backward passes.

    Returns:
        The largest loss found and the unperturbed loss (its difference is the batch's value).
    """
    # The loss of iterate i + 1 is read at step i + 1, where the checkpoint after i is decided.
    checks = {i + 1 for i in apgd_checkpoints(steps)}
    theta0 = network.theta0
    points = [torch.zeros_like(theta0) for _ in range(4)]  # ε_k, ε_{k-1}, the best, the next
    gradients = [torch.empty_like(theta0) for _ in range(3)]  # at ε_k, at the best, the next
    z = torch.empty_like(theta0)
    eps, previous = points[0], points[1]
    step = 2.0 * rho
    base = best = -math.inf
    best_eps: torch.Tensor = eps
    best_gradient: torch.Tensor | None = None
    updates, last_check, last_step, last_best = 0, 0, step, -math.inf
    for k in range(steps):
        buffer = _free(gradients, best_gradient)
        loss, gradient = network.loss_and_ascent_direction(eps, x, y, norm, buffer)
        if k == 0:
            base = best = loss
            best_eps, best_gradient = eps, gradient
        elif loss > best:
            best, best_eps, best_gradient = loss, eps, gradient
            updates += 1
        if k in checks:
            few = updates < MIN_UPDATE_RATIO * (k - last_check)
            stalled = last_step == step and last_best == best
            last_check, last_step, last_best, updates = k, step, best, 0
            if few or stalled:
                step /= 2
                eps, gradient = best_eps, best_gradient
        if norm == "linf":
            torch.add(eps, gradient, alpha=step, out=z).clamp_(-rho, rho)  # gradient: its sign
        else:
            length = float(gradient.norm())
            torch.add(eps, gradient, alpha=step / length if length > 0 else 0.0, out=z)
            radius = float(z.norm())
            if radius > rho:
                z.mul_(rho / radius)
        following = _free(points, eps, previous, best_eps)
        torch.lerp(previous, z, MOMENTUM, out=following)  # 0.75 z + 0.25 ε_{k-1}
        eps, previous = following, eps
    best = max(best, network.loss(eps, x, y))
    return best, base


def _worst_case(ctx: MeasureContext, options: AdaptiveOptions, norm: str) -> MeasureOutput:
    network = _network(ctx, options)
    batches = _batches(ctx, options.examples, options.m)
    values, bases = [], []
    for x, y in batches:
        worst, base = worst_case_sharpness(network, x, y, options.rho, options.steps, norm)
        values.append(worst - base)
        bases.append(base)
    return _output(network, values, bases, batches)


def _output(
    network: AdaptiveNetwork,
    values: list[float],
    bases: list[float],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> MeasureOutput:
    value = sum(values) / len(values)
    if not math.isfinite(value):
        raise NumericalError("the perturbed training loss is not finite")
    return MeasureOutput(
        value=value,
        extra={
            "parameters": network.description,
            "perturbed": network.size,
            "examples": sum(len(y) for _, y in batches),
            "batches": len(batches),
            "loss": sum(bases) / len(bases),
            "per_batch": values,
        },
    )


# ------------------------------------------------------------------------------------ average case


def average_sharpness(
    network: AdaptiveNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    rho: float,
    draws: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """``E_ε L_B(w + |w| ⊙ ε)`` with ε ~ N(0, ρ² I), over ``draws`` draws, and ``L_B(w)``."""
    theta0 = network.theta0
    base = network.loss(torch.zeros_like(theta0), x, y)
    total = 0.0
    for _ in range(draws):
        eps = torch.randn(
            theta0.shape, generator=generator, dtype=theta0.dtype, device=theta0.device
        )
        total += network.loss(eps.mul_(rho), x, y)
    return total / draws, base


# ------------------------------------------------------------------------------------ measures


@register_measure(
    "adaptive-sharpness-linf",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("asam-linf", "adaptive-sharpness-max-linf", "m-sharpness-adaptive-linf"),
    options=WorstCaseLinfOptions,
    description="Worst-case adaptive sharpness: E_B max_{‖ε‖∞≤ρ} L_B(w + |w|⊙ε) − L_B(w), "
    f"m-sharpness by projected ascent ({_PAPERS})",
    domain="differentiable",
)
def adaptive_sharpness_linf(ctx: MeasureContext, *, options: WorstCaseLinfOptions) -> MeasureOutput:
    """Worst-case adaptive sharpness in an ℓ∞ ball."""
    return _worst_case(ctx, options, "linf")


@register_measure(
    "adaptive-sharpness-l2",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("asam-l2", "adaptive-sharpness-max-l2", "m-sharpness-adaptive-l2"),
    options=WorstCaseL2Options,
    description="Worst-case adaptive sharpness: E_B max_{‖ε‖₂≤ρ} L_B(w + |w|⊙ε) − L_B(w), "
    f"m-sharpness by projected ascent ({_PAPERS})",
    domain="differentiable",
)
def adaptive_sharpness_l2(ctx: MeasureContext, *, options: WorstCaseL2Options) -> MeasureOutput:
    """Worst-case adaptive sharpness in an ℓ2 ball."""
    return _worst_case(ctx, options, "l2")


@register_measure(
    "adaptive-sharpness-avg",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("asam-avg", "average-adaptive-sharpness", "adaptive-sharpness-average"),
    options=AverageOptions,
    description="Average-case adaptive sharpness: E_B E_{ε~N(0,ρ²I)} L_B(w + |w|⊙ε) − L_B(w), "
    f"Monte-Carlo ({_PAPERS})",
    domain="differentiable",
)
def adaptive_sharpness_avg(ctx: MeasureContext, *, options: AverageOptions) -> MeasureOutput:
    """Average-case adaptive sharpness under Gaussian noise."""
    network = _network(ctx, options)
    batches = _batches(ctx, options.examples, options.m)
    generator = ctx.generator(NOISE_PURPOSE)
    values, bases = [], []
    for x, y in batches:
        mean, base = average_sharpness(network, x, y, options.rho, options.draws, generator)
        values.append(mean - base)
        bases.append(base)
    return _output(network, values, bases, batches)
